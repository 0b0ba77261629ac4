"""The failure artifact: a directory a person (or ``spfshm replay``) can work from.

  config.json    every parameter, the seed and the version
  report.json    the full report (violations, counters, errors)
  violations.txt one line per violation, with its signature
  dump.txt       per CPU: what it was doing, holds, waits for, IRQ/RCU state, last events
                 (after a hang, first as it was then, with what the OS said of its process)
  timeline.txt   one column per CPU, one row per event in global order, around the first
                 violation (or the end); under --sched in steps, with lock holds, IRQs-off
                 and RCU sections and the switches
  trace.json     the run as Chrome trace-event JSON (trace.py): one lane per CPU, lock
                 holds and IRQs-off and RCU sections as slices, IPIs as arrows,
                 violations as instants; opens in https://ui.perfetto.dev
  repro.txt      the command that re-runs it
  events.json    every CPU's ring records (cpu, stamp, type, a0, a1, a2) in stamp order,
                 and whether a ring wrapped (``replay --deterministic`` is guided by them)
"""
import json
import os
import tempfile
import time

from .. import __version__
from .events import lock_namer, timeline
from .trace import chrome_trace
from .watchdog import dump_cpu, format_dump


def check_writable(root):
    """Usage check before a run: the artifact root can be created and written (tried for
    real: permission bits say nothing to root, or about /proc)."""
    base = os.path.abspath(root)
    while not os.path.exists(base):              # created on the first failure, not now
        base = os.path.dirname(base)
    try:
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".spfshm-probe-"))
    except OSError as e:
        raise PermissionError("artifact directory %r is not writable (%s)"
                              % (root, e.strerror or e))


def ring_records(smp, ncpus):
    """{"wrapped": [cpu...], "events": [[cpu, stamp, type, a0, a1, a2], ...]}"""
    tl = smp.timeline(list(range(ncpus)))
    heads = smp.rings[:ncpus, 0]
    return {"wrapped": [c for c in range(ncpus) if int(heads[c]) > smp.capacity],
            "events": [[int(e["cpu"]), int(e["stamp"]), int(e["type"]), int(e["a0"]),
                        int(e["a1"]), int(e["a2"])] for e in tl]}


def write(st, rep, root):
    cfg = st.cfg
    base = os.path.join(root, "%s-seed%d-%d" % (time.strftime("%Y%m%d-%H%M%S"), cfg.seed,
                                                os.getpid()))
    os.makedirs(root, exist_ok=True)
    d, n = base, 1
    while True:                     # runs of one process within a second: one dir each
        try:
            os.mkdir(d)
            break
        except FileExistsError:
            n += 1
            d = "%s-%d" % (base, n)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(dict(cfg.to_dict(), version=__version__), f, indent=2)
    with open(os.path.join(d, "report.json"), "w") as f:
        json.dump(rep, f, indent=2)
    with open(os.path.join(d, "violations.txt"), "w") as f:
        for v in rep["violations"]:
            f.write("%s CPU %d va %#x: %s\n" % (v["signature"], v["cpu"], v["va"], v["detail"]))
        for v in rep["violations_after_first"]:
            f.write("%s CPU %d va %#x (after the first violation): %s\n"
                    % (v["signature"], v["cpu"], v["va"], v["detail"]))
        for e in rep["errors"]:
            f.write("ERROR: %s\n" % e)
    with open(os.path.join(d, "dump.txt"), "w") as f:
        if rep["hang_dump"]:
            f.write("--- at the hang ---\n%s\n\n--- at the end ---\n"
                    % "\n".join(rep["hang_dump"]))
        for c in range(cfg.cpus):
            f.write(format_dump(dump_cpu(st, c, nevents=64, process=False)) + "\n\n")
    # Under --sched the CPUs' stamps are logical and the sweeper's (the parent's) are not:
    # the timeline is then around the first violation a CPU found, the sweep's at the end.
    first = next((v["stamp"] for v in rep["violations"] if v["cpu"] >= 0 or not cfg.sched),
                 None)
    marks = [(None if cfg.sched else v["stamp"],
              "VIOLATION %s (%s): %s" % (v["signature"], "sweep" if v["cpu"] < 0
                                         else "CPU %d" % v["cpu"], v["detail"]))
             for v in rep["violations"] if v["cpu"] < 0]
    with open(os.path.join(d, "timeline.txt"), "w") as f:
        f.write("\n".join(timeline(st.smp, list(range(cfg.cpus)), around=first, marks=marks,
                                   lock_name=lock_namer(st.arena), sched=bool(cfg.sched)))
                + "\n")
    with open(os.path.join(d, "events.json"), "w") as f:
        json.dump(ring_records(st.smp, cfg.cpus), f)
    with open(os.path.join(d, "trace.json"), "w") as f:
        json.dump(chrome_trace(st), f)
    with open(os.path.join(d, "repro.txt"), "w") as f:
        f.write(rep["repro"] + "\n")
    return d
