"""The busted-variant catalogue (rcutorture's "busted" flavour, one per protocol step).

Each entry names the protocol step it breaks, the real kernel bug or CVE it mirrors, and
the violation kind the checkers must report.  The model asks ``bugs.on(NAME)`` where the
step lives; ``spfshm bugs`` lists the table; ``spfshm stress --bug NAME`` switches it on.
"""
from collections import namedtuple

Bug = namedtuple("Bug", "name step origin expect description")

CATALOGUE = [
    Bug("free_table_no_sync", "free_pgtables -> tlb_remove_table",
        "bug class 1: table freed with no IPI sync or grace period "
        "(cf. 2ba99c5e0881 'mm/khugepaged: fix GUP-fast interaction by sending IPI')",
        "pt_uaf",
        "munmap frees an emptied page table at once, while a lockless walker may be in it"),
    Bug("free_frame_before_flush", "zap_pte_range -> tlb_finish_mmu",
        "bug class 5: CVE-2018-18281 (mremap/ftruncate freed pages before the TLB flush)",
        "frame_uaf",
        "zap frees the frames before the TLB shootdown; another CPU's stale TLB entry "
        "still reaches them"),
    Bug("mprotect_no_flush", "change_protection -> flush_tlb_range",
        "stale writable TLB entries after a permission downgrade "
        "(cf. 4647706ebeee 'mm: always flush VMA ranges affected by zap_page_range')",
        "stale_tlb",
        "mprotect makes PTEs read-only but skips the TLB flush"),
    Bug("zap_skip_last_pte", "zap_pte_range",
        "incomplete zap leaves a mapped page behind (bad rss-counter / leaked page class)",
        "stale_pte",
        "munmap and DONTNEED miss the last PTE of the range"),
    Bug("rss_no_dec", "zap_pte_range -> add_mm_rss_vec",
        "'BUG: Bad rss-counter state' reports (RSS accounting drift)",
        "rss",
        "zap forgets to decrement the RSS counter"),
    Bug("fault_no_ptl", "do_anonymous_page -> pte_offset_map_lock",
        "installing a PTE without the page table lock (two faulters both see pte_none)",
        "frame_leak",
        "the classical fault checks pte_none and installs the frame without taking the ptl"),
    Bug("pte_alloc_no_recheck", "__pte_alloc -> pmd_populate",
        "'someone populated it meanwhile' re-check missing in a table allocation",
        "pt_leak",
        "a new PTE table is installed without re-checking the pmd under the pmd lock, "
        "overwriting a table another CPU just populated"),
]

BY_NAME = {b.name: b for b in CATALOGUE}


class Bugs:
    """The set switched on for this run (read by the model at each step)."""

    __slots__ = ("names",)

    def __init__(self, names=()):
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise ValueError("unknown bug %r (see 'spfshm bugs')" % unknown[0])
        self.names = frozenset(names)

    def on(self, name):
        return name in self.names


def format_table():
    lines = []
    for b in CATALOGUE:
        lines.append("%s\n    breaks:  %s\n    expect:  %s\n    origin:  %s\n    what:    %s"
                     % (b.name, b.step, b.expect, b.origin, b.description))
    return "\n".join(lines)
