"""A run's configuration: every parameter, validated before any process starts, and the
exact command line that re-runs it."""
import dataclasses
import os
import shlex

from . import bugs as bugs_mod
from . import native

TABLE_FREE = ("ipi", "rcu", "rcu-always")
FAULT_MODES = ("classic", "spf", "pervma")
REFCNT_FAULT_MODE = "pervma,classic"   # the default with --vma-lock refcnt (no SPF)
WALK_MODES = ("auto", "irq", "rcu")
TLB_FLUSH = ("ipi", "no-ipi")
RECLAIM = ("auto", "off", "seed", "ptreclaim")
COLLAPSE = ("auto", "off", "write-lock")
MADVISE_LOCK = ("mmap", "vma")
VMA_LOCK = ("rwsem", "refcnt")
PCP = ("on", "off")
KILL_AT = ("any", "idle", "lock", "rcu", "irqs-off")
PERTURB_PROFILES = ("chaos", "kcsan", "sleepy", "mixed")   # auto: the (seed mod 4)-th
PERTURB = ("off", "auto") + PERTURB_PROFILES
PAGE = 4096


class ConfigError(ValueError):
    """Bad input: the message names the parameter (exit 2)."""


@dataclasses.dataclass
class Config:
    cpus: int = 0                  # 0: one per usable core, at least one per fault mode
    duration: float = 10.0
    ops: int = 0                   # per CPU; 0: run for `duration`
    seed: int = 1
    fault_mode: str = "spf,pervma,classic"    # the three paths race each other
    table_free: str = "rcu"        # MMU_GATHER_RCU_TABLE_FREE, as current x86 frees tables
    #                                (PT_RECLAIM depends on it), with tlb_remove_table_one's
    #                                fallback; rcu-always: a grace period every time
    walk: str = "auto"             # lockless walkers' protection; auto pairs with table_free
    tlb_flush: str = "ipi"         # ipi: interrupt every CPU; no-ipi: remote invalidation
    reclaim: str = "auto"          # page-table reclaim: off, seed (scanner), ptreclaim;
    #                                auto: ptreclaim where the kernel has it (table_free rcu)
    reclaimer: bool = False        # the seed scanner runs on its own CPU (the last one)
    collapse: str = "auto"         # khugepaged collapse: off, write-lock;
    #                                auto: write-lock (anon collapse_huge_page) where the
    #                                workload has an op mix
    madvise_lock: str = "mmap"     # MADV_DONTNEED under mmap_lock read, or (6.17,
    #                                MADVISE_VMA_READ_LOCK) under the VMA's read lock
    vma_lock: str = "rwsem"        # the per-VMA lock (mm/vma_lock.py): rwsem (v6.4-v6.14)
    #                                or refcnt (v6.15+ vm_refcnt, typesafe VMA records)
    fail_nth: int = 0              # fault injection: 0, random (each kind at its rate); N:
    #                                each CPU's N-th allocation that may fail fails, no other
    pcp: str = "on"                # off: no per-CPU caches in the allocators (zone_pcp_disable):
    #                                a freed object is the next one any CPU allocates
    check_every: float = 1.0       # seconds between quiescent sweeps; 0: only at the end
    workload: str = "mixed"
    writer_rate: float = 0.0       # +writer workloads: mmap+munmap pairs/s (0: flat out)
    bugs: tuple = ()
    window_pages: int = 4096       # the address window the workload uses (16 MiB)
    max_map_count: int = 512       # sysctl vm.max_map_count: VMAs an mm may have (the
    #                                model's tree holds 512; mmap and splits beyond: ENOMEM)
    tlb_entries: int = 64
    ipi_timeout: float = 10.0
    delay: float = 0.0             # perturbation: probability of a pause at each named point
    delay_max_us: float = 200.0
    delay_points: tuple = ()       # empty: every point
    perturb: str = "auto"          # generic perturbation at every primitive: a profile of
    #                                PERTURB (mm/perturb.py); auto: one chosen by the seed
    stall_timeout: float = 20.0    # a CPU without progress this long is a hang (exit 3)
    kill_worker: float = 0.0       # fault injection: chance per 50 ms tick to SIGKILL a CPU
    kill_at: str = "any"           # ... at a moment when it: any, idle, lock, rcu, irqs-off
    artifacts: str = "spfshm-artifacts"   # where failure artifacts go (not in repro)
    pin: bool = True
    sched: str = ""                # the controlled scheduler (run/sched.py): random[:PM],
    #                                pct[:DEPTH[:K]] or list; "": truly parallel
    sched_list: tuple = ()         # list: the switches to make, (step << 16) | cpu
    sched_choices: int = 0         # exploration: record the choices of this many steps
    cpu_ops: tuple = ()            # per CPU, instead of ops (a shrunk schedule's)
    sched_seed: int = 0            # varies the schedule, not the workload (a search's)
    scenario: str = ""             # a litmus scenario (run/scenario.py), normalized JSON:
    #                                its layout and each CPU's ops instead of the workload

    def resolved(self):
        """A copy with defaults filled in (cpus=0 -> usable cores; what each --bug needs
        to be reachable, where the setting was left at its default; reclaim and collapse
        "auto" -> what the kernel pairs with the rest), validated."""
        c = dataclasses.replace(self)
        if c.scenario:              # the CPUs and their ops are the scenario's
            from .run.scenario import ncpus_and_ops
            try:
                n, most = ncpus_and_ops(c.scenario)
            except (ValueError, KeyError, TypeError):
                raise ConfigError("scenario: not a normalized scenario (run/scenario.py)")
            c.cpus, c.ops = c.cpus or n, max(1, most)
        if c.sched:
            # One CPU runs at a time and time is logical: the run is a number of ops, a
            # sweep only at the end, and the scheduler is the only perturbation.
            from .run.sched import DEFAULT_OPS
            c.ops = c.ops or DEFAULT_OPS
            c.check_every, c.perturb, c.delay = 0.0, "off", 0.0
        c.refcnt_fault_mode()
        if c.cpus == 0:
            c.cpus = max(2, len(c.fault_modes()), len(os.sched_getaffinity(0)))
        c.validate()
        for name in c.bugs:
            for key, value in bugs_mod.BY_NAME[name].config.items():
                if getattr(c, key) == getattr(Config, key):
                    setattr(c, key, value)
        c.refcnt_fault_mode()
        c.validate()
        if c.reclaim == "auto":
            c.reclaim = "off" if c.table_free == "ipi" else "ptreclaim"
        if c.collapse == "auto":
            c.collapse = "off" if c.workload.startswith("pf1") else "write-lock"
        c.validate()
        return c

    def refcnt_fault_mode(self):
        """--vma-lock refcnt has no SPF: the default fault modes become pervma,classic."""
        if self.vma_lock == "refcnt" and self.fault_mode == Config.fault_mode:
            self.fault_mode = REFCNT_FAULT_MODE

    def validate(self):
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)
        need(1 <= self.cpus <= native.MAX_CPUS - 1,
             "--cpus must be 1..%d, got %d" % (native.MAX_CPUS - 1, self.cpus))
        need(self.duration > 0, "--duration must be positive, got %g" % self.duration)
        need(self.ops >= 0, "--ops must be >= 0, got %d" % self.ops)
        need(self.seed >= 0, "--seed must be >= 0, got %d" % self.seed)
        modes = self.fault_mode.split(",")
        need(all(m in FAULT_MODES for m in modes) and len(set(modes)) == len(modes),
             "--fault-mode must be a list of %s, got %r" % ("/".join(FAULT_MODES),
                                                           self.fault_mode))
        from .run.workload import WORKLOADS, WRITER_WORKLOADS
        need(self.workload in WORKLOADS,
             "--workload must be one of %s, got %r" % (",".join(WORKLOADS), self.workload))
        need(self.workload not in WRITER_WORKLOADS or self.cpus >= 2,
             "--workload %s needs --cpus >= 2 (CPU 0 is the writer)" % self.workload)
        need(self.writer_rate >= 0, "--writer-rate must be >= 0, got %g" % self.writer_rate)
        need(not self.writer_rate or self.workload in WRITER_WORKLOADS,
             "--writer-rate needs --workload faults+writer or pf1+writer")
        need(self.tlb_flush in TLB_FLUSH,
             "--tlb-flush must be ipi or no-ipi, got %r" % self.tlb_flush)
        need(self.reclaim in RECLAIM,
             "--reclaim must be one of %s, got %r" % (",".join(RECLAIM), self.reclaim))
        need(self.reclaim != "ptreclaim" or self.table_free != "ipi",
             "--reclaim ptreclaim needs --table-free rcu or rcu-always (CONFIG_PT_RECLAIM "
             "depends on "
             "MMU_GATHER_RCU_TABLE_FREE: faults map a PTE table under RCU)")
        need(self.collapse in COLLAPSE,
             "--collapse must be one of %s, got %r" % (",".join(COLLAPSE), self.collapse))
        need(self.madvise_lock in MADVISE_LOCK,
             "--madvise-lock must be mmap or vma, got %r" % self.madvise_lock)
        need(self.vma_lock in VMA_LOCK,
             "--vma-lock must be rwsem or refcnt, got %r" % self.vma_lock)
        need(self.vma_lock != "refcnt" or "spf" not in modes,
             "--vma-lock refcnt (v6.15+) frees VMA records at once (SLAB_TYPESAFE_BY_RCU), "
             "which the SPF series' lockless VMA copy does not survive: use --fault-mode "
             "without spf (its default is then %s)" % REFCNT_FAULT_MODE)
        need(self.pcp in PCP, "--pcp must be on or off, got %r" % self.pcp)
        need(self.fail_nth >= 0, "--fail-nth must be >= 0, got %r" % self.fail_nth)
        need(not self.workload.startswith("pf1") or (
                 self.collapse in ("off", "auto")
                 and (self.reclaim != "seed" or self.reclaimer)),
             "--workload %s runs no op mix: --collapse and an inline --reclaim seed need "
             "another workload (or use --reclaimer)" % self.workload)
        need(not self.reclaimer or (self.reclaim == "seed" and self.cpus >= 2),
             "--reclaimer needs --reclaim seed and --cpus >= 2 (the last CPU scans)")
        need(self.walk in WALK_MODES,
             "--walk must be one of %s, got %r" % (",".join(WALK_MODES), self.walk))
        need(self.table_free in TABLE_FREE,
             "--table-free must be one of %s, got %r" % (",".join(TABLE_FREE), self.table_free))
        need(self.check_every >= 0, "--check-every must be >= 0, got %g" % self.check_every)
        need(64 <= self.window_pages <= 1 << 20 and self.window_pages % 64 == 0,
             "--window-pages must be a multiple of 64 in 64..1048576, got %d" % self.window_pages)
        need(1 <= self.max_map_count <= 512,
             "--max-map-count must be in 1..512, got %d" % self.max_map_count)
        need(self.tlb_entries in (8, 16, 32, 64, 128, 256, 512),
             "--tlb-entries must be a power of two in 8..512, got %d" % self.tlb_entries)
        need(self.ipi_timeout > 0, "--ipi-timeout must be positive")
        need(self.stall_timeout > 0, "--stall-timeout must be positive, got %g"
             % self.stall_timeout)
        need(self.kill_at in KILL_AT,
             "--kill-at must be one of %s, got %r" % (",".join(KILL_AT), self.kill_at))
        need(0 <= self.kill_worker <= 1, "--kill-worker must be a probability in [0, 1], "
             "got %g" % self.kill_worker)
        need(0 <= self.delay <= 1, "--delay probability must be in [0, 1], got %g" % self.delay)
        need(0 < self.delay_max_us <= 1e6,
             "--delay MAX_US must be in (0, 1000000], got %g" % self.delay_max_us)
        from .mm.perturb import POINTS
        bad = [p for p in self.delay_points if p not in POINTS]
        need(not bad, "--delay-points: unknown point %r (known: %s)"
             % (bad[0] if bad else "", ",".join(POINTS)))
        need(self.perturb in PERTURB, "--perturb must be one of %s, got %r"
             % (",".join(PERTURB), self.perturb))
        if self.sched:
            from .run.sched import parse_spec
            try:
                parse_spec(self.sched)
            except ValueError as e:
                raise ConfigError(str(e))
            need(not self.kill_worker, "--kill-worker needs truly parallel CPUs, not --sched")
            need(self.cpus <= 256, "--sched runs at most 256 CPUs")
        need(not self.cpu_ops or (len(self.cpu_ops) == self.cpus and self.sched
                                  and all(n >= 0 for n in self.cpu_ops)),
             "per-CPU op counts need --sched and one count per CPU")
        need(not self.sched_list or self.sched.split(":")[0] in ("list", "guided"),
             "a switch list or guide needs --sched list or guided (from a token)")
        if self.scenario:
            from .run.scenario import validate
            validate(self)
        try:
            bugs_mod.Bugs(self.bugs)
        except ValueError as e:
            raise ConfigError("--bug: %s" % e)

    def fault_modes(self):
        """The fault path of each CPU: CPU i uses the (i mod n)-th listed mode."""
        return self.fault_mode.split(",")

    def walk_mode(self):
        """irq or rcu: --walk, or with auto the one the kernel pairs with --table-free."""
        if self.walk != "auto":
            return self.walk
        return "rcu" if self.table_free_always_rcu() else "irq"

    def table_free_always_rcu(self):
        """Whether every unlinked table waits for a grace period: rcu-always, or rcu with
        CONFIG_PT_RECLAIM, whose tlb_remove_table_one falls back to call_rcu (v6.14
        mm/mmu_gather.c __tlb_remove_table_one); plain rcu's fallback is an IPI sync
        then an immediate free, which an rcu_read_lock()-only walker does not survive."""
        return self.table_free == "rcu-always" or (
            self.table_free == "rcu" and self.reclaim == "ptreclaim")

    def perturb_profile(self):
        """off or a profile: --perturb, or with auto the (seed mod 4)-th of
        PERTURB_PROFILES (mm/perturb.py resolves the profile's values)."""
        if self.perturb != "auto":
            return self.perturb
        return PERTURB_PROFILES[self.seed % len(PERTURB_PROFILES)]

    def describe(self):
        """Every setting that decides what the run models, resolved (the echo a run
        starts with)."""
        modes = self.fault_modes()
        return ("cpus=%d (%s) seed=%d fault_mode=%s table_free=%s walk=%s tlb_flush=%s "
                "reclaim=%s%s collapse=%s madvise_lock=%s vma_lock=%s pcp=%s workload=%s "
                "delay=%g%s "
                "perturb=%s bugs=%s%s"
                % (self.cpus, " ".join("%d:%s" % (i, modes[i % len(modes)])
                                       for i in range(self.cpus)),
                   self.seed, self.fault_mode, self.table_free, self.walk_mode(),
                   self.tlb_flush, self.reclaim, "+reclaimer" if self.reclaimer else "",
                   self.collapse, self.madvise_lock, self.vma_lock, self.pcp,
                   "scenario" if self.scenario else self.workload, self.delay,
                   ":%s" % ",".join(self.delay_points) if self.delay_points else "",
                   self.perturb_profile(), ",".join(self.bugs) or "none",
                   " sched=%s" % self.sched if self.sched else "")
                + (" fail_nth=%d" % self.fail_nth if self.fail_nth else ""))

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["bugs"] = list(self.bugs)
        d["delay_points"] = list(self.delay_points)
        d["sched_list"] = list(self.sched_list)
        d["cpu_ops"] = list(self.cpu_ops)
        return d

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError("unknown config key %r" % sorted(unknown)[0])
        d = dict(d)
        d["bugs"] = tuple(d.get("bugs", ()))
        d["delay_points"] = tuple(d.get("delay_points", ()))
        d["sched_list"] = tuple(d.get("sched_list", ()))
        d["cpu_ops"] = tuple(d.get("cpu_ops", ()))
        return cls(**d)

    def repro(self):
        """The exact command that re-runs this configuration."""
        a = ["spfshm", "stress", "--cpus", str(self.cpus), "--seed", str(self.seed)]
        a += ["--ops", str(self.ops)] if self.ops else ["--duration", "%g" % self.duration]
        a += ["--fault-mode", self.fault_mode, "--table-free", self.table_free,
              "--check-every", "%g" % self.check_every]
        if self.walk != "auto":
            a += ["--walk", self.walk]
        if self.tlb_flush != "ipi":
            a += ["--tlb-flush", self.tlb_flush]
        if self.reclaim != Config.reclaim:
            a += ["--reclaim", self.reclaim]
        if self.reclaimer:
            a += ["--reclaimer"]
        if self.collapse != Config.collapse:
            a += ["--collapse", self.collapse]
        if self.madvise_lock != Config.madvise_lock:
            a += ["--madvise-lock", self.madvise_lock]
        if self.vma_lock != Config.vma_lock:
            a += ["--vma-lock", self.vma_lock]
        if self.pcp != Config.pcp:
            a += ["--pcp", self.pcp]
        if self.fail_nth:
            a += ["--fail-nth", str(self.fail_nth)]
        if self.stall_timeout != Config.stall_timeout:
            a += ["--stall-timeout", "%g" % self.stall_timeout]
        if self.kill_worker:
            a += ["--kill-worker", "%g" % self.kill_worker, "--kill-at", self.kill_at]
        if self.workload != Config.workload:
            a += ["--workload", self.workload]
        if self.writer_rate:
            a += ["--writer-rate", "%g" % self.writer_rate]
        if self.ipi_timeout != Config.ipi_timeout:
            a += ["--ipi-timeout", "%g" % self.ipi_timeout]
        if self.delay != Config.delay or self.delay_max_us != Config.delay_max_us:
            a += ["--delay", "%g:%g" % (self.delay, self.delay_max_us)]
        if self.delay_points:
            a += ["--delay-points", ",".join(self.delay_points)]
        if self.perturb != Config.perturb:
            a += ["--perturb", self.perturb]
        if self.window_pages != Config.window_pages:
            a += ["--window-pages", str(self.window_pages)]
        if self.tlb_entries != Config.tlb_entries:
            a += ["--tlb-entries", str(self.tlb_entries)]
        if self.max_map_count != Config.max_map_count:
            a += ["--max-map-count", str(self.max_map_count)]
        for b in self.bugs:
            a += ["--bug", b]
        if self.sched:              # a list schedule re-runs from its token (run/sched.py)
            a += ["--sched", self.sched]
        return " ".join(shlex.quote(x) for x in a)
