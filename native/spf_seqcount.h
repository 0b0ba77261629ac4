#pragma once
/* spf_seqcount.h - the kernel's seqcount_t (mmap_seq, mm_lock_seq).
 *
 * Protocol (readers never block writers):
 *   writer: (1) seq += 1 (odd)  (2) smp_wmb  (3) write data  (4) smp_wmb  (5) seq += 1 (even)
 *   reader: (a) s = seq, acquire  (b) read data  (c) smp_rmb  (d) seq == s ?
 * (2) pairs with (c): a reader that saw data from (3) sees seq moved at (d).
 * (4) pairs with (a): a reader that saw seq from (5) sees all of (3).
 * Writers are serialised by the caller (mmap_lock for mmap_seq).
 *
 * spf_seq_read_begin spins while odd (read_seqcount_begin); spf_seq_try_begin returns the
 * value at once, and an odd value means "a writer is active, give up" (SPF never spins).
 */
uint64_t spf_seq_read_begin(const uint64_t *seq);
uint64_t spf_seq_try_begin(const uint64_t *seq);
int      spf_seq_read_retry(const uint64_t *seq, uint64_t start);   /* 1 = retry */
void     spf_seq_write_begin(uint64_t *seq);
void     spf_seq_write_end(uint64_t *seq);

/* Busted twin: write_begin that leaves the count even (readers cannot see the writer). */
void     spf_seq_write_begin_busted(uint64_t *seq);
void     spf_seq_write_end_busted(uint64_t *seq);
