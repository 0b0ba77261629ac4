#pragma once
/* spf_kfault.h - the real kernel's page-fault rate (will-it-scale page_fault1 style):
 * each of nprocs processes (one per usable core when pin) maps region_bytes of anonymous
 * memory (MADV_NOHUGEPAGE: 4 KiB faults), touches one byte per page, unmaps, and repeats
 * for duration_ns.  faults[i] and elapsed_ns[i] are process i's page count and run time.
 * Returns 0, or -errno (the first failure of a child or of the set-up). */
#define SPF_KFAULT_MAX_PROCS 256
int spf_kfault_run(int nprocs, uint64_t region_bytes, uint64_t duration_ns, int pin,
                   uint64_t *faults, uint64_t *elapsed_ns);
