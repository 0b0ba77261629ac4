"""A run's configuration: every parameter, validated before any process starts, and the
exact command line that re-runs it."""
import dataclasses
import os
import shlex

from . import bugs as bugs_mod
from . import native

TABLE_FREE = ("ipi", "rcu")
FAULT_MODES = ("classic",)
PAGE = 4096


class ConfigError(ValueError):
    """Bad input: the message names the parameter (exit 2)."""


@dataclasses.dataclass
class Config:
    cpus: int = 0                  # 0: one per usable core
    duration: float = 10.0
    ops: int = 0                   # per CPU; 0: run for `duration`
    seed: int = 1
    fault_mode: str = "classic"
    table_free: str = "ipi"
    check_every: float = 1.0       # seconds between quiescent sweeps; 0: only at the end
    bugs: tuple = ()
    window_pages: int = 4096       # the address window the workload uses (16 MiB)
    tlb_entries: int = 64
    ipi_timeout: float = 10.0
    pin: bool = True

    def resolved(self):
        """A copy with defaults filled in (cpus=0 -> usable cores), validated."""
        c = dataclasses.replace(self)
        if c.cpus == 0:
            c.cpus = max(2, len(os.sched_getaffinity(0)))
        c.validate()
        return c

    def validate(self):
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)
        need(1 <= self.cpus <= native.MAX_CPUS - 1,
             "--cpus must be 1..%d, got %d" % (native.MAX_CPUS - 1, self.cpus))
        need(self.duration > 0, "--duration must be positive, got %g" % self.duration)
        need(self.ops >= 0, "--ops must be >= 0, got %d" % self.ops)
        need(self.seed >= 0, "--seed must be >= 0, got %d" % self.seed)
        need(self.fault_mode in FAULT_MODES,
             "--fault-mode must be one of %s, got %r" % (",".join(FAULT_MODES), self.fault_mode))
        need(self.table_free in TABLE_FREE,
             "--table-free must be ipi or rcu, got %r" % self.table_free)
        need(self.check_every >= 0, "--check-every must be >= 0, got %g" % self.check_every)
        need(64 <= self.window_pages <= 1 << 20 and self.window_pages % 64 == 0,
             "--window-pages must be a multiple of 64 in 64..1048576, got %d" % self.window_pages)
        need(self.tlb_entries in (8, 16, 32, 64, 128, 256, 512),
             "--tlb-entries must be a power of two in 8..512, got %d" % self.tlb_entries)
        need(self.ipi_timeout > 0, "--ipi-timeout must be positive")
        try:
            bugs_mod.Bugs(self.bugs)
        except ValueError as e:
            raise ConfigError("--bug: %s" % e)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["bugs"] = list(self.bugs)
        return d

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError("unknown config key %r" % sorted(unknown)[0])
        d = dict(d)
        d["bugs"] = tuple(d.get("bugs", ()))
        return cls(**d)

    def repro(self):
        """The exact command that re-runs this configuration."""
        a = ["spfshm", "stress", "--cpus", str(self.cpus), "--seed", str(self.seed)]
        a += ["--ops", str(self.ops)] if self.ops else ["--duration", "%g" % self.duration]
        a += ["--fault-mode", self.fault_mode, "--table-free", self.table_free,
              "--check-every", "%g" % self.check_every]
        if self.window_pages != Config.window_pages:
            a += ["--window-pages", str(self.window_pages)]
        if self.tlb_entries != Config.tlb_entries:
            a += ["--tlb-entries", str(self.tlb_entries)]
        for b in self.bugs:
            a += ["--bug", b]
        return " ".join(shlex.quote(x) for x in a)
