"""Perturbation: pauses at named protocol points (KCSAN's and rcutorture's delays, but
seeded), and generic pauses at every primitive (KCSAN's random delays, rr's chaos mode).

At each named point a CPU pauses with probability ``--delay P`` for up to ``MAX_US``
(uniform), drawing from its own RNG stream of (seed, cpu), so a run's perturbation is part
of its configuration.  ``--delay-points a,b`` restricts the points.  Each point counts its
hits per CPU.  Pauses inside IRQs-off sections are what make windows wide: a walker with
IRQs off that pauses holds every TLB-flush IPI, a writer that pauses between two steps
exposes its intermediate state.

Generic perturbation (``--perturb PROFILE``, independent of the named points) needs no
point at all: every native primitive a CPU calls, and every shared read of a lockless
walk (``mm.walk_point``), draws from the CPU's stream whether to pause (native
spf_perturb.h; KCSAN's random delays, rr's chaos mode).  A profile fixes the chance,
the mix of spins, yields and sleeps and their lengths, and how one CPU (another each
period) is made slow; the seed picks the profile (auto) and its values within the
profile's ranges.  ``generic_profile`` is the one place they are resolved.
"""
import random

from .. import native

POINTS = {
    "spf_after_seq_read": "SPF: after the mmap_seq read (step 1)",
    "vma_copy": "lockless VMA copy: between reading the fields",
    "spf_before_ptl": "SPF: between the pmd re-read and spin_trylock(ptl) (step 6)",
    "fault_before_ptl": "classical fault: between the table walk and the ptl",
    "install_pte": "anonymous fault: between the pte_none check and setting the PTE",
    "pte_alloc": "__pte_alloc: between finding the pmd empty and taking the pmd lock",
    "gup_pin": "gup_fast: between reading the PTE and taking the reference",
    "gup_hold": "gup_fast holder: between pinning pages and releasing them (DMA)",
    "pervma_lookup": "per-VMA fault: between the RCU lookup and vma_start_read",
    "vma_start_read": "vma_start_read: between the sequence check and the trylock "
                      "(refcnt: the reference)",
    "vma_ref_held": "vma_start_read (refcnt): the reference taken, before the vm_mm and "
                    "sequence checks",
    "hw_walk": "hardware walk (IRQs off): between reading the PMD and the PTE",
    "zap_under_ptl": "zap_pte_range: PTEs cleared, ptl held, before the forced flush",
    "zap_ptl_dropped": "zap_pte_range: ptl dropped to free a batch, before taking it again",
    "tlb_finish_mmu": "tlb_finish_mmu: the zap's ptls released, before the nested test",
    "pmd_clear_to_free": "free_pgtables: between clearing the pmd and freeing the table",
    "collapse_flush": "khugepaged: pmd cleared, ptl and pmd lock held, before the flush",
    "collapse_vma_lock": "khugepaged: the pmd checked, before vma_start_write (a busted order)",
    "split_vma": "__split_vma: between updating the bounds and the flags",
    "ipi_handler": "inside the IPI handler, before the ack (native)",
}
POINT_NAMES = list(POINTS)
POINT_ID = {p: i for i, p in enumerate(POINT_NAMES)}


class Perturb:
    """Per CPU; ``delay(point)`` is a no-op method when perturbation is off."""

    def __init__(self, cfg, cpu, hits_row):
        self.p = cfg.delay
        self.max_ns = int(cfg.delay_max_us * 1000)
        self.points = set(cfg.delay_points or POINT_NAMES)
        self.rng = random.Random("spfshm-delay:%d:%d" % (cfg.seed, cpu))
        self.hits = hits_row
        if "ipi_handler" in self.points and self.p > 0:
            native.lib.spf_ipi_set_handler_delay(int(self.p * 1e6), self.max_ns,
                                                 self.rng.getrandbits(64))

    def delay(self, point):
        if point in self.points and self.rng.random() < self.p:
            self.hits[POINT_ID[point]] += 1
            native.sleep_ns(self.rng.randrange(self.max_ns + 1))


def no_delay(point):
    pass


# -- generic perturbation -----------------------------------------------------------------
# Per profile, the ranges its values are drawn from (uniform; the seed draws them):
# per_million: chance of a pause per primitive call; shares: spin/yield/sleep per mille;
# spin_max: spins; sleep_max_us; read: at a lockless walk's shared read (where this
# field's windows are: a pointer read, then relied on), the chance multiplier and the
# sleeps' maximum; slow: the slow CPU's cycle (period_ms, window as a share of the
# period, chance multiplier, sleep_max_us inside the window).
# Lengths are scaled to the model's time: an operation here takes 100-300 us where the
# kernel's takes about 1 us, so a pause that lets another CPU run a whole conflicting
# operation (unlink, flush, free) inside a window is a fraction of a millisecond to a
# few milliseconds, as KCSAN's tens of microseconds are in the kernel.
RANGES = {
    # rr's chaos mode: rare pauses, mostly long sleeps, and one CPU starved now and then
    "chaos": {"per_million": (1000, 5000), "shares": (300, 200, 500), "spin_max": (200, 2000),
              "sleep_max_us": (200, 2000), "read": {"factor": (5, 20), "sleep_max_us": (1000, 3000)},
              "slow": {"period_ms": (50, 200), "window": (0.1, 0.3), "factor": (20, 100),
                       "sleep_max_us": (1000, 5000)}},
    # KCSAN's delays: frequent pauses, mostly short spins, some long enough to span an
    # operation of another CPU; now and then a CPU lags for a moment.  A walk's read
    # sleeps as long as in the other profiles (a whole unmap, flush and free of another
    # CPU must fit in it: shorter, the walker-against-free pairings went unseen for
    # 60 s on this profile's seeds)
    "kcsan": {"per_million": (10000, 40000), "shares": (700, 100, 200), "spin_max": (200, 2000),
              "sleep_max_us": (20, 300), "read": {"factor": (2, 5), "sleep_max_us": (1000, 3000)},
              "slow": {"period_ms": (100, 300), "window": (0.05, 0.15), "factor": (3, 10),
                       "sleep_max_us": (300, 1500)}},
    # the scheduler's hand: yields and sleeps, and a CPU descheduled now and then
    "sleepy": {"per_million": (2000, 10000), "shares": (0, 500, 500), "spin_max": None,
               "sleep_max_us": (50, 500), "read": {"factor": (5, 20),
                                                   "sleep_max_us": (500, 2000)},
               "slow": {"period_ms": (50, 200), "window": (0.1, 0.3), "factor": (5, 20),
                        "sleep_max_us": (1000, 3000)}},
    # a bit of everything, and a slow CPU
    "mixed": {"per_million": (5000, 20000), "shares": (600, 250, 150), "spin_max": (100, 1000),
              "sleep_max_us": (100, 1000), "read": {"factor": (3, 10), "sleep_max_us": (500, 2000)},
              "slow": {"period_ms": (100, 300), "window": (0.1, 0.3), "factor": (5, 15),
                       "sleep_max_us": (500, 2000)}},
}


def generic_profile(cfg):
    """The concrete parameters of ``cfg.perturb_profile()`` for ``cfg.seed`` (None when
    off): the profile, the chance per primitive call, the shares of spins, yields and
    sleeps, their maxima, and the slow CPU's cycle."""
    name = cfg.perturb_profile()
    if name == "off":
        return None
    rng = random.Random("spfshm-perturb:%s:%d" % (name, cfg.seed))
    r = RANGES[name]
    spin, yld, sleep = r["shares"]
    prof = {"profile": name,
            "per_million": rng.randint(*r["per_million"]),
            "spin_pm": spin, "yield_pm": yld, "sleep_pm": sleep,
            "spin_max": rng.randint(*r["spin_max"]) if r["spin_max"] else 0,
            "sleep_max_us": rng.randint(*r["sleep_max_us"]) if r["sleep_max_us"] else 0,
            "read_factor": rng.randint(*r["read"]["factor"]),
            "read_sleep_max_us": rng.randint(*r["read"]["sleep_max_us"])}
    s = r["slow"]
    period = rng.randint(*s["period_ms"])
    prof["slow"] = {"key": rng.getrandbits(64), "period_ms": period,
                    "window_ms": max(1, round(period * rng.uniform(*s["window"]))),
                    "phase_ms": rng.randrange(period),
                    "factor": rng.randint(*s["factor"]),
                    "sleep_max_us": rng.randint(*s["sleep_max_us"])}
    return prof


def _native_profile(prof, ncpus):
    s, ms = prof["slow"], 1000000
    out = {"per_million": prof["per_million"], "spin_pm": prof["spin_pm"],
           "yield_pm": prof["yield_pm"], "spin_max": prof["spin_max"],
           "sleep_max_ns": prof["sleep_max_us"] * 1000,
           "read_factor": prof["read_factor"], "read_sleep_ns": prof["read_sleep_max_us"] * 1000,
           "slow": 1, "slow_cpus": ncpus, "slow_key": s["key"], "slow_factor": s["factor"],
           "slow_period_ns": s["period_ms"] * ms, "slow_window_ns": s["window_ms"] * ms,
           "slow_phase_ns": s["phase_ms"] * ms, "slow_sleep_ns": s["sleep_max_us"] * 1000}
    return out


def arm_generic(cfg, cpu, ncpus, hits_ptr):
    """Arm generic perturbation in this process when it runs as CPU ``cpu`` (not the
    parent's row, not a CPU that is only arena rows here) and ``cfg.perturb`` is on.
    Returns the lockless walk's hook: the native pause decision when armed, else a
    no-op.  spf_cpu_unregister disarms."""
    prof = generic_profile(cfg)
    if prof is None or cpu >= ncpus or native.lib.spf_cpu_id() != cpu:
        return no_walk_point
    native.perturb_arm(_native_profile(prof, ncpus), cfg.seed, cpu, hits_ptr)
    return native.perturb_walk


def no_walk_point():
    pass


def generic_report(cfg, hits):
    """The run report's "perturb" facts: the resolved profile and the pauses the CPUs
    took (``hits``: their rows), per class, per kind, in slow windows, in the IPI
    handler, per CPU."""
    prof = generic_profile(cfg)
    tot = hits.sum(axis=0)
    ncls = len(native.PERTURB_CLASSES)
    return {"profile": prof["profile"] if prof else "off", "requested": cfg.perturb,
            "params": prof, "pauses": int(tot[:ncls].sum()),
            "by_class": {c: int(tot[i]) for i, c in enumerate(native.PERTURB_CLASSES)},
            "by_kind": {k: int(tot[native.PH_KIND + i])
                        for i, k in enumerate(native.PERTURB_KINDS)},
            "in_slow_window": int(tot[native.PH_SLOW]),
            "in_ipi_handler": int(tot[native.PH_HANDLER]),
            "per_cpu": [{c: int(row[i]) for i, c in enumerate(native.PERTURB_CLASSES)}
                        for row in hits]}


def perturb_line(p):
    """The summary line of a report's "perturb" facts."""
    if p["params"] is None:
        return "perturbation: generic off"
    a, s = p["params"], p["params"]["slow"]
    how = "p=%.2f%%, pauses spin/yield/sleep %d/%d/%d%%" % (
        a["per_million"] / 1e4, a["spin_pm"] // 10, a["yield_pm"] // 10, a["sleep_pm"] // 10)
    if a["spin_pm"]:
        how += ", spins<=%d" % a["spin_max"]
    if a["sleep_pm"]:
        how += ", sleeps<=%dus" % a["sleep_max_us"]
    how += "; shared reads of a walk x%d, sleeps<=%dus" % (a["read_factor"],
                                                           a["read_sleep_max_us"])
    how += ("; a slow CPU, another each period (by the seed): %d of every %d ms x%d, "
            "sleeps<=%dus (%d pauses)" % (s["window_ms"], s["period_ms"], s["factor"],
                                          s["sleep_max_us"], p["in_slow_window"]))
    return "perturbation: generic profile %s (%s%s): %d pauses (%s; %d in the IPI handler)" % (
        p["profile"], "chosen by the seed; " if p["requested"] == "auto" else "", how,
        p["pauses"],
        ", ".join("%s %d" % kv for kv in p["by_class"].items()), p["in_ipi_handler"])
