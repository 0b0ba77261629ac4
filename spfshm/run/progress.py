"""Live progress: one rewritten line on a terminal, plain lines every few seconds when
not a terminal, nothing with --quiet.  Reads only per-CPU counters (no shared one)."""
import sys

from .. import debug
from ..mm.mm_types import STAT


class Progress:
    def __init__(self, quiet, stream=sys.stderr, every_s=5.0):
        self.quiet = quiet
        self.stream = stream
        self.tty = stream.isatty()
        self.every = 0.5 if self.tty else every_s
        self.next = 0.0
        self.last = None

    def __call__(self, st, elapsed, sweeps):
        if self.quiet or elapsed < self.next:
            return
        self.next = elapsed + self.every
        stats = st.arena["stats"][:st.cfg.cpus]
        ops = int(stats[:, STAT["ops"]].sum())
        faults = int(stats[:, [STAT["fault_classic"], STAT["spf_ok"], STAT["vma_lock_success"]]].sum())
        rate = 0.0 if self.last is None else \
            (ops - self.last[1]) / max(1e-9, elapsed - self.last[0])
        self.last = (elapsed, ops)
        line = "[%6.1fs] ops %d (%.0f/s)  faults %d  sweeps %d  violations %d" % (
            elapsed, ops, rate, faults, sweeps, debug.total(st.arena))
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self):
        if self.tty and not self.quiet and self.last is not None:
            self.stream.write("\n")
            self.stream.flush()
