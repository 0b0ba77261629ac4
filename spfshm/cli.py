"""Command line: argument parsing and dispatch only.

Exit status: 0 clean, 1 violations found, 2 usage error (one line naming the argument),
3 hang, crash or internal error.
"""
import argparse
import os
import sys

from . import __version__
from .bugs import CatalogueError

EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, naming the bad argument, exit 2 (argparse would print the usage too).
        sys.stderr.write("%s: error: %s\n" % (self.prog, message))
        sys.exit(EXIT_USAGE)


def writable_path(value):
    """An output file whose directory exists and is writable (checked before any run)."""
    d = os.path.dirname(os.path.abspath(value)) or "."
    if not os.path.isdir(d):
        raise argparse.ArgumentTypeError("directory %r does not exist" % d)
    if not os.access(d, os.W_OK):
        raise argparse.ArgumentTypeError("directory %r is not writable" % d)
    return value


def _number(kind, lowest, strict):
    """An argparse type: a number of ``kind`` >= lowest (> lowest when strict)."""
    def parse(value):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not %s" % (
                value, "an integer" if kind is int else "a number"))
        if v < lowest or (strict and v == lowest):
            raise argparse.ArgumentTypeError("must be %s %g, got %s" % (
                ">" if strict else ">=", lowest, value))
        return v
    return parse


nonneg_int = _number(int, 0, False)
pos_int = _number(int, 0, True)
pos_float = _number(float, 0, True)
nonneg_float = _number(float, 0, False)


def csv_list(kind, choices=None, name="value"):
    """An argparse type: a comma list of distinct ``kind`` values (in ``choices``)."""
    def parse(value):
        items = [x.strip() for x in value.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma list, got %r" % value)
        out = []
        for x in items:
            if kind is int:
                try:
                    v = int(x)
                except ValueError:
                    raise argparse.ArgumentTypeError("%r is not an integer" % x)
                if v < 1:
                    raise argparse.ArgumentTypeError("must be >= 1, got %d" % v)
            else:
                v = x
                if choices and v not in choices:
                    raise argparse.ArgumentTypeError("unknown %s %r (choose from %s)"
                                                     % (name, v, ",".join(choices)))
            if v in out:
                raise argparse.ArgumentTypeError("%r given twice" % x)
            out.append(v)
        return out
    return parse


def delay_spec(value):
    """P or P:MAX_US."""
    p, _, mx = value.partition(":")
    try:
        return float(p), (float(mx) if mx else None)
    except ValueError:
        raise argparse.ArgumentTypeError("expected P or P:MAX_US, got %r" % value)


def add_config_args(p):
    from .config import (COLLAPSE, MADVISE_LOCK, PCP, RECLAIM, TABLE_FREE, TLB_FLUSH,
                         VMA_LOCK, WALK_MODES, Config)
    d = Config()
    p.add_argument("--cpus", type=pos_int, default=None,
                   help="worker processes (default: usable cores, at least 2)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=pos_float, default=None, metavar="SEC",
                   help="run time in seconds (default %g)" % d.duration)
    g.add_argument("--ops", type=pos_int, default=None, metavar="N",
                   help="operations per CPU instead of a duration")
    p.add_argument("--seed", type=nonneg_int, default=d.seed)
    p.add_argument("--fault-mode", default=d.fault_mode, metavar="MODES",
                   help="classic, spf, pervma, or a comma list (CPU i uses the i-th, "
                        "cyclically) so the paths race each other (default %s)" % d.fault_mode)
    p.add_argument("--workload", default=d.workload, metavar="KIND",
                   help="mixed (default: the race finder's churn), faults (loads, stores "
                        "and DONTNEED only), faults+writer (and CPU 0 maps/unmaps in a loop), "
                        "pf1, pf1+writer (page_fault1's shape: private slices, touched "
                        "in order, then zapped whole)")
    p.add_argument("--writer-rate", type=nonneg_float, default=d.writer_rate, metavar="R",
                   help="with a +writer workload: the writer's mmap+munmap pairs per second "
                        "(0, the default: as fast as it can)")
    p.add_argument("--walk", choices=WALK_MODES, default=d.walk,
                   help="how lockless walkers protect themselves (auto: the kernel's "
                        "pairing with --table-free)")
    p.add_argument("--tlb-flush", choices=TLB_FLUSH, default=d.tlb_flush,
                   help="ipi: the flush interrupts every CPU (x86); no-ipi: remote "
                        "invalidation that waits for no IRQs-off section (arm64's TLBI)")
    p.add_argument("--reclaim", choices=RECLAIM, default=d.reclaim,
                   help="page-table reclaim: seed (scan under mmap_lock read, remove under "
                        "write; Hildenbrand's plan) or ptreclaim (at MADV_DONTNEED, "
                        "CONFIG_PT_RECLAIM; needs RCU table freeing); auto (default): "
                        "ptreclaim with --table-free rcu or rcu-always, else off")
    p.add_argument("--reclaimer", action="store_true",
                   help="run the seed scanner on its own CPU (the last one)")
    p.add_argument("--collapse", choices=COLLAPSE, default=d.collapse,
                   help="khugepaged collapse op in the mix: write-lock (anonymous "
                        "collapse_huge_page, under mmap_lock write; the old table is "
                        "deposited); auto (default): write-lock, off for the pf1 workloads")
    p.add_argument("--madvise-lock", choices=MADVISE_LOCK, default=d.madvise_lock,
                   help="MADV_DONTNEED under mmap_lock read (default) or, as 6.17 does "
                        "(MADVISE_VMA_READ_LOCK), under the read lock of the one VMA the "
                        "range lies in (PT_RECLAIM then frees tables under it)")
    p.add_argument("--vma-lock", choices=VMA_LOCK, default=d.vma_lock,
                   help="the per-VMA lock: rwsem (default; v6.4 to v6.14, an rw_semaphore "
                        "per VMA, VMAs freed by RCU) or refcnt (v6.15+ vm_refcnt: readers "
                        "take a reference, writers wait for it; VMA records reused at once, "
                        "by this mm or another; no SPF: faults pervma,classic by default)")
    p.add_argument("--pcp", choices=PCP, default=d.pcp,
                   help="the allocators' per-CPU caches: on (default) or off, as "
                        "zone_pcp_disable() leaves them: an object one CPU frees is the "
                        "next one any CPU allocates")
    p.add_argument("--ipi-timeout", type=pos_float, default=d.ipi_timeout, metavar="SEC",
                   help="an IPI not acked for this long ends the run as a deadlock")
    p.add_argument("--table-free", choices=TABLE_FREE, default=d.table_free,
                   help="tlb_remove_table policy: ipi (free after the flush IPI), rcu "
                        "(MMU_GATHER_RCU_TABLE_FREE: a batch freed after a grace period; "
                        "when no batch page can be had, tlb_remove_table_one: an IPI sync "
                        "then the free, or call_rcu with --reclaim ptreclaim), rcu-always "
                        "(a grace period every time)")
    p.add_argument("--check-every", type=nonneg_float, default=d.check_every, metavar="SEC",
                   help="seconds between stop-the-world sweeps (0: only at the end)")
    p.add_argument("--bug", action="append", default=[], metavar="NAME",
                   help="switch on a busted variant (repeatable; see 'spfshm bugs')")
    p.add_argument("--window-pages", type=pos_int, default=d.window_pages,
                   help="pages in the address window the workload uses")
    p.add_argument("--tlb-entries", type=pos_int, default=d.tlb_entries)
    p.add_argument("--max-map-count", type=pos_int, default=d.max_map_count, metavar="N",
                   help="sysctl vm.max_map_count: the VMAs an mm may have, 1..%d (an mmap or "
                        "a split past it fails with ENOMEM; default %d)"
                        % (d.max_map_count, d.max_map_count))
    p.add_argument("--fail-nth", type=pos_int, default=d.fail_nth, metavar="N",
                   help="systematic fault injection (syzkaller's fail-nth): each CPU's N-th "
                        "allocation that may fail fails, and no other (default: each kind "
                        "fails at random at its own rate)")
    p.add_argument("--delay", type=delay_spec, default=None, metavar="P[:MAX_US]",
                   help="pause with probability P (up to MAX_US, default %g) at named "
                        "protocol points; 0 turns perturbation off" % d.delay_max_us)
    p.add_argument("--delay-points", type=lambda v: tuple(x for x in v.split(",") if x),
                   default=(), metavar="A,B", help="restrict --delay to these points")
    p.add_argument("--perturb", default=d.perturb, metavar="PROFILE",
                   help="generic perturbation, a seeded chance of a pause at every "
                        "primitive: off, chaos, kcsan, sleepy, mixed, or auto (default: "
                        "chosen by the seed); independent of --delay")
    p.add_argument("--stall-timeout", type=pos_float, default=d.stall_timeout, metavar="SEC",
                   help="a CPU without progress this long ends the run as a hang (exit 3)")
    p.add_argument("--kill-worker", type=_number(float, 0, False), default=d.kill_worker,
                   metavar="P", help="fault injection: chance per 50 ms to SIGKILL a CPU")
    p.add_argument("--kill-at", default=d.kill_at, metavar="WHEN",
                   help="with --kill-worker, wait (up to 0.5 s) for the victim to be: any, idle "
                        "(between operations), lock (holding a lock), rcu (in a read-side "
                        "section), irqs-off")
    p.add_argument("--artifacts", default=d.artifacts, metavar="DIR",
                   help="where failure artifacts go (default: ./%s)" % d.artifacts)
    p.add_argument("--no-pin", action="store_true", help="do not pin workers to cores")
    p.add_argument("--sched", default="", metavar="SPEC",
                   help="the controlled scheduler: one CPU runs between scheduling points "
                        "and the schedule is a function of the seed: random[:PER_MILLION], "
                        "pct[:DEPTH[:K]] (PCT, depth 3 by default), or replay:TOKEN (the "
                        "run a token names; every other option is the token's)")


def add_search_budget(p, when, runs, secs):
    """The budget of a schedule search (sched/replay.py find_schedule)."""
    p.add_argument("--budget-runs", type=pos_int, default=runs, metavar="N",
                   help="%s: schedules the search may try (default %d)" % (when, runs))
    p.add_argument("--budget", type=pos_float, default=secs, metavar="SEC",
                   help="%s: seconds the search may take (default %g)" % (when, secs))


def config_from_args(a):
    from .config import Config, ConfigError
    if a.sched.startswith("replay:"):
        from .run.sched import TokenError, read_token
        try:
            return Config.from_dict(dict(read_token(a.sched[len("replay:"):])[0],
                                         artifacts=a.artifacts, pin=not a.no_pin))
        except TokenError as e:
            raise ConfigError("--sched replay: %s" % e)
    d = Config()
    delay, delay_max = a.delay if a.delay else (d.delay, None)
    return Config(cpus=a.cpus or 0, duration=a.duration or d.duration, ops=a.ops or 0,
                  delay=delay, delay_max_us=delay_max or d.delay_max_us,
                  delay_points=a.delay_points, perturb=a.perturb,
                  seed=a.seed, fault_mode=a.fault_mode, table_free=a.table_free,
                  walk=a.walk, ipi_timeout=a.ipi_timeout, workload=a.workload,
                  writer_rate=a.writer_rate,
                  tlb_flush=a.tlb_flush, reclaim=a.reclaim, reclaimer=a.reclaimer,
                  collapse=a.collapse, madvise_lock=a.madvise_lock, vma_lock=a.vma_lock,
                  pcp=a.pcp,
                  stall_timeout=a.stall_timeout, kill_worker=a.kill_worker, kill_at=a.kill_at,
                  artifacts=a.artifacts,
                  check_every=a.check_every, bugs=tuple(a.bug), window_pages=a.window_pages,
                  tlb_entries=a.tlb_entries, max_map_count=a.max_map_count,
                  fail_nth=a.fail_nth,
                  pin=not a.no_pin, sched=a.sched)


def build_parser():
    p = _Parser(prog="spfshm", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version="spfshm " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    stress = sub.add_parser("stress", help="run the model on real parallel CPUs and check it")
    add_config_args(stress)
    stress.add_argument("--json", type=writable_path, metavar="PATH",
                        help="write the full report as JSON")
    stress.add_argument("--quiet", action="store_true", help="no progress, summary only")

    sub.add_parser("bugs", help="list the busted variants (--bug NAME)")

    ex = sub.add_parser("explore", help="run every schedule of a litmus scenario with at "
                                        "most K preemptions (iterative context bounding)")
    ex.add_argument("scenario", metavar="SCENARIO",
                    help="a scenario file (README: Litmus scenarios; stress/scenarios/)")
    ex.add_argument("--preemptions", type=nonneg_int, required=True, metavar="K",
                    help="the preemption bound (forced switches are free)")
    ex.add_argument("--config", action="append", default=[], metavar="'NAME=VALUE ...'",
                    help="options over the scenario's config line (the same syntax; "
                         "repeatable), e.g. --config 'walk=rcu table-free=ipi'")
    ex.add_argument("--max-schedules", type=pos_int, default=0, metavar="N",
                    help="stop after N schedules (the verdict then says not exhaustive)")
    ex.add_argument("--sample", type=nonneg_int, default=0, metavar="S",
                    help="once every schedule up to K has run: S schedules drawn at random "
                         "(seeded) from those with K+1 preemptions")
    ex.add_argument("--sample-seed", type=nonneg_int, default=0, metavar="N",
                    help="the sample's seed (default 0)")
    ex.add_argument("--fail-nth-sweep", action="store_true",
                    help="then, if clean, systematic fault injection: the schedule without "
                         "preemption once per N = 1, 2, ... with --fail-nth N, until a run "
                         "injects nothing (every out-of-memory exit, one at a time)")
    ex.add_argument("--artifacts", default=None, metavar="DIR",
                    help="where the failing schedule's artifacts go (default: "
                         "./spfshm-artifacts)")
    ex.add_argument("--json", type=writable_path, metavar="PATH",
                    help="write the result (counts, verdict, the failure and its token)")
    ex.add_argument("--quiet", action="store_true", help="no progress line")

    dk = sub.add_parser("diff-kernel", help="compare the model with the real kernel, step by step")
    src = dk.add_mutually_exclusive_group()
    src.add_argument("--script", metavar="FILE.json", help="a JSON list of ops (see README)")
    src.add_argument("--seed", type=nonneg_int, default=None, help="generate ops from a seed")
    dk.add_argument("--seeds", type=pos_int, default=1, metavar="N",
                    help="with --seed S: run seeds S..S+N-1")
    dk.add_argument("--ops", type=pos_int, default=200, help="ops per generated sequence")
    dk.add_argument("--pages", type=pos_int, default=64, help="pages in the window")
    dk.add_argument("--madvise-lock", choices=("mmap", "vma"), default="mmap",
                    help="the model's MADV_DONTNEED lock, as stress's option (default "
                         "mmap; vma: the VMA's read lock, v6.17)")
    dk.add_argument("--bug", action="append", default=[], metavar="NAME",
                    help="run the model with a busted variant a single CPU can show "
                         "(a planted divergence, e.g. zap_skip_last_pte; repeatable)")
    shr = dk.add_mutually_exclusive_group()
    shr.add_argument("--no-shrink", action="store_true",
                     help="report the first divergence as it is, without shrinking it")
    shr.add_argument("--shrunk-out", type=writable_path, metavar="PATH",
                     help="where the shrunk script goes (default: ./spfshm-artifacts/"
                          "diff-kernel-<seed N or script name>-shrunk.json)")

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bsub.required = True
    prim = bsub.add_parser("primitives", help="per-operation costs of the native core")
    prim.add_argument("--json", type=writable_path, metavar="PATH",
                      help="also write the results as JSON")
    prim.add_argument("--quick", action="store_true", help="fewer rounds (seconds, noisier)")
    det = bsub.add_parser("detect", help="time to first detection of every busted variant")
    det.add_argument("--bugs", default="", metavar="A,B", help="these variants (default: all)")
    det.add_argument("--seeds", type=pos_int, default=5)
    det.add_argument("--cpus", type=pos_int, default=2)
    det.add_argument("--max-duration", type=pos_float, default=30.0, metavar="SEC",
                     help="give up on a seed after this long (default 30)")
    det.add_argument("--perturbation", choices=("generic", "named", "both", "off"),
                     default="generic",
                     help="what explores the windows: generic (the default run's "
                          "perturbation at every primitive; default), named (every named "
                          "delay point alike), both, off")
    det.add_argument("--no-control", action="store_true",
                     help="skip each seed's control run (the same run without the bug)")
    det.add_argument("--json", type=writable_path, metavar="PATH")

    bs = bsub.add_parser("sched", help="the controlled scheduler: runs to catch every busted "
                                       "variant, and its cost against parallel runs")
    bs.add_argument("--sched", default="pct:3", metavar="SPEC",
                    help="the schedule policy (default pct:3)")
    bs.add_argument("--bugs", default="", metavar="A,B", help="these variants (default: all)")
    bs.add_argument("--seeds", type=pos_int, default=5)
    bs.add_argument("--cpus", type=pos_int, default=3)
    bs.add_argument("--ops", type=pos_int, default=100, help="ops per CPU per run")
    bs.add_argument("--max-runs", type=pos_int, default=200, metavar="N",
                    help="give up on a seed after N runs (default 200)")
    bs.add_argument("--cost-ops", type=pos_int, default=2000, metavar="N",
                    help="ops per CPU of the cost comparison (default 2000)")
    bs.add_argument("--cost-only", action="store_true", help="only the cost comparison")
    bs.add_argument("--from-parallel", action="store_true",
                    help="instead: per variant, a parallel failure -> replay --deterministic "
                         "-> token replayed 10 times -> shrink")
    bs.add_argument("--parallel-s", type=pos_float, default=15.0, metavar="SEC",
                    help="--from-parallel: each parallel run's length (default 15)")
    add_search_budget(bs, "--from-parallel", 100, 180.0)
    bs.add_argument("--shrink-budget", type=pos_float, default=60.0, metavar="SEC",
                    help="--from-parallel: seconds each shrink may take (default 60)")
    bs.add_argument("--json", type=writable_path, metavar="PATH")

    from .config import FAULT_MODES, TABLE_FREE
    sc = bsub.add_parser("scaling", help="fault throughput vs CPUs per fault path (and the "
                                         "real kernel's page-fault rate)")
    sc.add_argument("--cpus", type=csv_list(int), default=None, metavar="1,2,4",
                    help="fault CPUs to measure (default: 1, 2, 4, ... up to the usable "
                         "cores); with the writer, the run has one worker more")
    sc.add_argument("--fault-modes", type=csv_list(str, FAULT_MODES, "fault mode"),
                    default=list(FAULT_MODES), metavar="MODES",
                    help="comma list of classic, spf, pervma (default: all)")
    sc.add_argument("--workload", type=csv_list(str, ("faults", "pf1"), "workload"),
                    default=["faults"], metavar="faults,pf1",
                    help="faults (the stress workload: shared hot spots, a DONTNEED every "
                         "few faults; default) and/or pf1 (page_fault1's shape: private "
                         "slices, touched in order, zapped whole); +writer added for "
                         "--writer on")
    sc.add_argument("--writer", type=csv_list(str, ("off", "on"), "writer setting"),
                    default=["off", "on"], metavar="off,on",
                    help="without (faults) and/or with (faults+writer) the mmap/munmap "
                         "writer (default: both)")
    sc.add_argument("--writer-rate", type=nonneg_float, default=0.0, metavar="R",
                    help="the writer's mmap+munmap pairs per second (0, the default: "
                         "flat out)")
    sc.add_argument("--table-free", type=csv_list(str, TABLE_FREE, "table-free policy"),
                    default=["ipi"], metavar="ipi,rcu", help="default: ipi")
    sc.add_argument("--duration", type=pos_float, default=None, metavar="SEC",
                    help="seconds per run (default 5; 1 with --quick)")
    sc.add_argument("--repeat", type=pos_int, default=None, metavar="K",
                    help="runs per configuration, reported as median with min/max "
                         "(default 3; 1 with --quick)")
    sc.add_argument("--seed", type=nonneg_int, default=1,
                    help="repeat k uses seed SEED+k")
    sc.add_argument("--max-noise", type=nonneg_float, default=None, metavar="CORES",
                    help="on a shared machine: re-run (after a pause, up to 5 times) a run "
                         "during which other processes used more than CORES cores")
    sc.add_argument("--quick", action="store_true",
                    help="--duration 1 --repeat 1 unless given (a smoke test)")
    sc.add_argument("--no-kernel", dest="kernel", action="store_false",
                    help="skip the real kernel's page-fault rate")
    sc.add_argument("--json", type=writable_path, metavar="PATH",
                    help="everything, including every repeat's report")
    sc.add_argument("--csv", type=writable_path, metavar="PATH",
                    help="one row per configuration per metric (median, min, max)")
    sc.add_argument("--plot", type=writable_path, metavar="PNG",
                    help="faults/s vs CPUs (needs matplotlib: pip install 'spfshm[plot]')")
    sc.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    fz = sub.add_parser("fuzz", help="a seed campaign over the correct configurations")
    fz.add_argument("--seeds", default="0:50", metavar="A:B", help="seeds A..B-1 (default 0:50)")
    fz.add_argument("--jobs", default="auto", metavar="N",
                    help="parallel pytest-xdist workers (default auto)")
    fz.add_argument("--shard", default="0/1", metavar="I/N",
                    help="run only seeds with (seed - A) %% N == I (CI matrix jobs)")
    fz.add_argument("--ops", type=pos_int, default=1500, help="operations per CPU per seed")
    fz.add_argument("--sched", default="", metavar="SPEC",
                    help="every seed under the controlled scheduler (random[:PM] or "
                         "pct[:DEPTH[:K]]); a failure prints its token")
    fz.add_argument("--corpus", default=None, metavar="DIR",
                    help="add new failure signatures here (e.g. stress/corpus)")
    fz.add_argument("--json", type=writable_path, metavar="PATH",
                    help="the merged results")
    fz.add_argument("--merge", nargs="+", metavar="SHARD.json",
                    help="instead of running: merge shard results (from --json) into one")

    mu = sub.add_parser("mutate", help="mutation testing: does a campaign catch a wrong "
                                       "protocol? (mutants of the source, each a campaign)")
    mu.add_argument("paths", nargs="*", metavar="PATHS",
                    help="files or directories of spfshm/ (.py) or native/ (.c, .h) to "
                         "mutate (default spfshm/mm/)")
    mu.add_argument("--operators", default=None, metavar="A,B",
                    help="recheck, sync, lock, unlock_early, trylock, section, swap, c_order "
                         "(default: all)")
    mu.add_argument("--list", action="store_true",
                    help="print the mutants (id, file:line, operator, edit); run nothing")
    mu.add_argument("--sample", type=pos_int, default=None, metavar="N",
                    help="a seeded sample of N mutants")
    mu.add_argument("--seed", type=nonneg_int, default=0, help="the sample's seed (default 0)")
    mu.add_argument("--ids", default=None, metavar="ID,ID",
                    help="only these mutants (ids as --list and the report print them, "
                         "e.g. a previous run's survivors)")
    mu.add_argument("--campaign", default="", metavar="SPEC",
                    help="KEY=VALUE,... over the default seeds=0:20,ops=1500,cpus=2,"
                         "perturb=auto,diffkernel=on,scenarios=1,deeper=1500 (keys: seeds, "
                         "ops, cpus, perturb, delay, stall, diffkernel, scenarios, deeper)")
    mu.add_argument("--time-limit", type=pos_float, default=60.0, metavar="SEC",
                    help="per mutant: its campaign stops here (outcome timeout; default 60)")
    mu.add_argument("--jobs", default="auto", metavar="N",
                    help="mutants run in parallel (pytest-xdist workers, default auto)")
    mu.add_argument("--json", type=writable_path, metavar="PATH",
                    help="every mutant's result, the totals and the survivors")

    rp = sub.add_parser("replay", help="re-run a failure artifact and measure its hit "
                                       "rate, or replay a --sched token exactly")
    rp.add_argument("artifact", metavar="ARTIFACT", nargs="?", help="an artifact directory")
    rp.add_argument("--token", metavar="T", help="a token printed by a --sched run: replay "
                                                 "its run (the same schedule every time)")
    rp.add_argument("--deterministic", action="store_true",
                    help="with ARTIFACT (of a parallel run): search schedules of its "
                         "configuration until the same violation appears; print the token")
    add_search_budget(rp, "--deterministic", 300, 600.0)
    rp.add_argument("--repeat", type=pos_int, default=None, metavar="K",
                    help="runs (default 5 for an artifact, 10 for a token)")
    rp.add_argument("--cpus", type=pos_int, default=None, help="change the CPU count")
    rp.add_argument("--artifacts", default="spfshm-artifacts", metavar="DIR",
                    help="where the runs of a token or a search write their artifacts")
    rp.add_argument("--json", type=writable_path, metavar="PATH")

    sh = sub.add_parser("shrink", help="shrink a --sched token to the fewest switches and "
                                       "operations that still fail; print its timeline")
    sh.add_argument("token", metavar="TOKEN")
    sh.add_argument("--artifacts", default="spfshm-artifacts", metavar="DIR",
                    help="where the shrunk run's artifact (timeline, trace.json) goes")
    sh.add_argument("--budget", type=pos_float, default=600.0, metavar="SEC",
                    help="stop shrinking after this long and keep the smallest failing "
                         "schedule found (default 600)")
    sh.add_argument("--json", type=writable_path, metavar="PATH")
    return p


def cmd_stress(args):
    from .config import ConfigError
    from .run.progress import Progress
    from .run.report import summary, write_json
    from .run.runner import run_stress
    from .run import artifacts
    try:
        cfg = config_from_args(args).resolved()
        artifacts.check_writable(cfg.artifacts)
    except ConfigError as e:
        raise UsageError(str(e))
    except PermissionError as e:
        raise UsageError("--artifacts: %s" % e)
    from .arena import ArenaError, check_fits
    from .run.runner import RunState
    size = RunState.layout_for(cfg).size
    try:
        check_fits(size)
    except ArenaError as e:
        raise UsageError("%s (lower --cpus or --window-pages)" % e)
    if not args.quiet:
        print("spfshm stress: %s\n  re-run: %s" % (cfg.describe(), cfg.repro()), flush=True)
        print("arena: %.1f MiB (%s)" % (size / 2**20, RunState.geometry_text(cfg)), flush=True)
    prog = Progress(args.quiet)
    rep = run_stress(cfg, prog)
    prog.done()
    print(summary(rep), flush=True)
    if args.json:
        write_json(rep, args.json)
    return rep["exit_code"]


def cmd_explore(args):
    import json
    from .config import Config, ConfigError
    from .run import artifacts, scenario
    from .run.explore import Explorer, Progress
    from .run.inject import Sweep
    try:
        cfg = scenario.config_of(args.scenario, [x for c in args.config for x in c.split()],
                                 artifacts=args.artifacts or Config.artifacts,
                                 sched="list").resolved()
        artifacts.check_writable(cfg.artifacts)
    except ConfigError as e:
        raise UsageError(str(e))
    except PermissionError as e:
        raise UsageError("--artifacts: %s" % e)
    if not args.quiet:
        print("spfshm explore %s: %s, up to %d preemption(s)%s%s" % (
            args.scenario, cfg.describe(), args.preemptions,
            ", at most %d schedules" % args.max_schedules if args.max_schedules else "",
            ", then %d sampled with %d (seed %d)" % (args.sample, args.preemptions + 1,
                                                     args.sample_seed) if args.sample else ""),
            flush=True)
    prog = Progress(args.quiet)
    ex = Explorer(cfg, args.preemptions, args.max_schedules, progress=prog,
                  sample=args.sample, sample_seed=args.sample_seed).explore()
    prog.done()
    f = ex.failure
    sweep = Sweep(cfg).run() if args.fail_nth_sweep and not f and not ex.interrupted else None
    if sweep and sweep.failure:
        f = sweep.failure
        for v in f["violations"]:
            print("VIOLATION %s (CPU %d, va %#x): %s" % (v["signature"], v["cpu"], v["va"],
                                                         v["detail"]))
        for e in f["errors"]:
            print("error: %s" % e)
    print("schedules by preemptions: %s" % ex.levels())
    print(ex.verdict())
    if sweep:
        print(sweep.verdict())
    if f:
        print("  replay: %s\n     (or: spfshm stress --sched replay:%s)"
              % (f["repro"], f["token"]))
        if f["artifacts"]:
            print("  artifacts: %s" % f["artifacts"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(ex.to_dict(), fail_nth_sweep=sweep and {
                "runs": sweep.runs, "exhausted": sweep.exhausted, "failure": sweep.failure,
                "verdict": sweep.verdict()}), fh, indent=2)
    return EXIT_VIOLATIONS if f else ex.interrupted or EXIT_OK


def cmd_fuzz(args):
    import json
    import subprocess
    import tempfile
    from .config import ConfigError
    from .run import campaign, campaign_tests
    if args.merge:
        try:
            merged = campaign.merge_json(args.merge)
        except (OSError, ValueError, KeyError) as e:
            raise UsageError("--merge: %s" % e)
        print("fuzz: merged %d shard(s): %d runs, %d clean, %d failure signature(s)"
              % (len(args.merge), merged["runs"], merged["clean"], len(merged["failures"])))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(merged, f, indent=2)
        return EXIT_OK if not merged["failures"] else EXIT_VIOLATIONS
    try:
        seeds = campaign.seeds_of(args.seeds, args.shard)
        if args.sched:
            from .run.sched import parse_spec
            if parse_spec(args.sched)[0] not in ("random", "pct"):
                raise ConfigError("fuzz --sched must be random or pct, got %r" % args.sched)
    except (ConfigError, ValueError) as e:
        raise UsageError(str(e))
    if not (args.jobs == "auto" or args.jobs.isdigit() and int(args.jobs) > 0):
        raise UsageError("--jobs must be a positive integer or auto, got %r" % args.jobs)
    with tempfile.TemporaryDirectory() as results:
        env = dict(os.environ, SPFSHM_SEEDS=args.seeds, SPFSHM_SHARD=args.shard,
                   SPFSHM_RESULTS=results, SPFSHM_OPS=str(args.ops),
                   SPFSHM_SCHED=args.sched)
        print("fuzz: %d seeds (%s, shard %s), %d ops per CPU, %s jobs"
              % (len(seeds), args.seeds, args.shard, args.ops, args.jobs), flush=True)
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-n", args.jobs, "--rootdir", os.path.dirname(campaign_tests.__file__),
                        campaign_tests.__file__], env=env)
        merged = campaign.merge(results)
    merged.update(seed_spec=args.seeds, shard=args.shard)
    print("fuzz: %d runs, %d clean, %d failure signature(s)"
          % (merged["runs"], merged["clean"], len(merged["failures"])))
    for sig, f in merged["failures"].items():
        print("  %s: seeds %s\n    re-run: %s" % (sig, f["seeds"], f["repro"]))
    if args.corpus:
        for path in campaign.add_to_corpus(args.corpus, merged):
            print("  added to the corpus: %s" % path)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(merged, f, indent=2)
    missing = len(seeds) - merged["runs"]
    if missing:
        print("fuzz: %d seed(s) left no result (crashed worker?)" % missing)
    return EXIT_OK if not merged["failures"] and not missing else EXIT_VIOLATIONS


def cmd_mutate(args):
    from .mutate import harness
    from .mutate.operators import OPERATORS, short_name
    try:
        ops = harness.parse_operators(args.operators) if args.operators else list(OPERATORS)
        campaign = harness.parse_campaign(args.campaign) if args.campaign \
            else dict(harness.DEFAULT_CAMPAIGN)
        paths = harness.resolve_paths(harness.root(), args.paths or [
            os.path.join("spfshm", "mm")])
        ids = [i for i in (args.ids or "").split(",") if i]
        harness.plan(paths, ops, args.sample, args.seed, ids=ids)
    except harness.MutateError as e:
        raise UsageError(str(e))
    if not (args.jobs == "auto" or args.jobs.isdigit() and int(args.jobs) > 0):
        raise UsageError("--jobs must be a positive integer or auto, got %r" % args.jobs)
    if args.list:
        for m in harness.plan(paths, ops, args.sample, args.seed, ids=ids):
            print("%s  %s:%d  %s  %s" % (m.id, short_name(m.file), m.line, m.operator,
                                         m.description))
        return EXIT_OK
    if not harness.plan(paths, ops, args.sample, args.seed, ids=ids):
        raise UsageError("no mutants: operators %s find nothing in %s"
                         % (",".join(ops), " ".join(paths)))
    return harness.main(paths, ops, campaign, args.time_limit, args.jobs, args.sample,
                        args.seed, args.json, ids=ids)


def cmd_bench_scaling(args):
    from .arena import ArenaError, check_fits
    from .bench import scaling
    from .config import ConfigError
    from .run.runner import RunState
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.cpus = args.cpus or scaling.default_cpus()
    if args.writer_rate and "on" not in args.writer:
        raise UsageError("--writer-rate needs the writer (--writer on)")
    for c in scaling.configurations(args):       # every configuration valid before any run
        try:
            cfg = scaling.config_for(c, args, args.seed, ".")
            check_fits(RunState.layout_for(cfg).size)
        except ConfigError as e:
            raise UsageError("%s (cpus %d%s)" % (e, c["cpus"], ", with the writer"
                                                 if c["writer"] == "on" else ""))
        except ArenaError as e:
            raise UsageError("%s (lower --cpus)" % e)
    if args.plot:
        try:
            scaling.check_plot_available()
        except scaling.PlotUnavailable as e:
            raise UsageError(str(e))
    return scaling.main(args)


def cmd_replay(args):
    import json
    from .config import ConfigError
    from .run.replay import replay
    if args.token:
        return cmd_replay_token(args)
    if not args.artifact:
        raise UsageError("replay needs an ARTIFACT directory or --token T")
    if args.deterministic:
        return cmd_replay_deterministic(args)
    args.repeat = args.repeat or 5
    try:
        r = replay(args.artifact, args.repeat, args.cpus)
    except ConfigError as e:
        raise UsageError(str(e))
    print("replayed %s %d times on %d CPUs: signature %s hit %d/%d (%.0f%%), time to hit "
          "median %s s, max %s s" % (args.artifact, r["repeat"], r["cpus"], r["signature"],
                                     r["hits"], r["repeat"], 100 * r["hit_rate"],
                                     r["time_to_hit_median_s"], r["time_to_hit_max_s"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return EXIT_OK if r["hits"] else EXIT_VIOLATIONS


def cmd_replay_token(args):
    import json
    from .run.sched import TokenError
    from .sched.replay import replay_token
    if args.artifact or args.deterministic or args.cpus:
        raise UsageError("--token replays the token's own configuration: no ARTIFACT, "
                         "--deterministic or --cpus with it")
    try:
        r = replay_token(args.token, args.repeat or 10, args.artifacts)
    except TokenError as e:
        raise UsageError("--token: %s" % e)
    print("replayed the token %d times (%s): signature %s hit %d/%d, digest %s the same "
          "%d/%d" % (r["repeat"], r["config_line"], r["signature"], r["hits"], r["repeat"],
                     r["digest"], r["same_digest"], r["repeat"]))
    last = r.pop("last_report")
    if last and last.get("artifacts"):
        print("last run's artifacts: %s" % last["artifacts"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return EXIT_OK if r["hits"] == r["same_digest"] == r["repeat"] else EXIT_VIOLATIONS


def cmd_replay_deterministic(args):
    import json
    from .config import ConfigError
    from .sched.replay import find_schedule
    try:
        r = find_schedule(args.artifact, args.budget_runs, args.budget, args.artifacts)
    except ConfigError as e:
        raise UsageError(str(e))
    if r["found"]:
        print("found %s under --sched %s after %d schedule(s), %.1f s%s\n  spfshm replay "
              "--token %s" % (r["signature"], r["schedule"], r["tries"], r["seconds"],
                              " (guided by the recorded event order first)"
                              if r["guided"] else "", r["token"]))
    else:
        print("not found: %s in %d schedule(s), %.1f s (raise --budget-runs/--budget)"
              % (r["signature"], r["tries"], r["seconds"]))
        if r["other"]:
            print("  another violation of the same operations, at schedule %d: %s\n  spfshm "
                  "replay --token %s" % (r["other"]["try"], r["other"]["signature"],
                                         r["other"]["token"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return EXIT_OK if r["found"] else EXIT_VIOLATIONS


def cmd_shrink(args):
    import json
    from .run.sched import TokenError
    from .sched.shrink import shrink_token
    try:
        r = shrink_token(args.token, args.artifacts, budget_s=args.budget,
                         progress=lambda line: print(line, flush=True))
    except TokenError as e:
        raise UsageError("TOKEN: %s" % e)
    except ValueError as e:
        print("shrink: %s" % e)
        return EXIT_VIOLATIONS
    b, a = r["before"], r["after"]
    print("shrunk %s in %d runs, %.1f s%s:\n  switches %d -> %d, preemptions %d -> %d, steps "
          "%d -> %d, ops per CPU %s -> %s" % (
              r["signature"], r["runs"], r["seconds"],
              "" if r["complete"] else " (out of time: the smallest so far)",
              b["switches"], a["switches"],
              b["preemptions"], a["preemptions"], b["steps"], a["steps"],
              "/".join(map(str, b["ops_per_cpu"])), "/".join(map(str, a["ops_per_cpu"]))))
    if r["artifacts"]:
        import os
        with open(os.path.join(r["artifacts"], "timeline.txt")) as f:
            print(f.read().rstrip())
        print("artifacts (timeline.txt, trace.json for https://ui.perfetto.dev): %s"
              % r["artifacts"])
    print("  spfshm replay --token %s" % r["token"])
    if args.json:
        r.pop("report")
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return EXIT_OK


def cmd_diff_kernel(args):
    from . import diffkernel as dk
    from .config import Config
    from .run import artifacts
    if args.pages > 4096:
        raise UsageError("--pages must be <= 4096, got %d" % args.pages)
    try:
        dk.check_bugs(args.bug)
    except ValueError as e:
        raise UsageError(str(e))
    if args.script:
        try:
            runs = [("script %s" % args.script, dk.load_script(args.script))]
        except dk.ScriptError as e:
            raise UsageError(str(e))
    else:
        s0 = args.seed if args.seed is not None else 0
        runs = [("seed %d" % s, dk.random_ops(s, args.ops, args.pages))
                for s in range(s0, s0 + args.seeds)]
    if not (args.no_shrink or args.shrunk_out):
        try:
            artifacts.check_writable(Config.artifacts)
        except PermissionError as e:
            raise UsageError("--shrunk-out: %s (give a path)" % e)
    bugs = "".join(" --bug %s" % b for b in args.bug) + (
        " --madvise-lock vma" if args.madvise_lock == "vma" else "")
    for name, ops in runs:
        try:
            d = dk.compare(ops, args.pages, bugs=args.bug, madvise_lock=args.madvise_lock)
        except ValueError as e:
            raise UsageError(str(e))
        if d is None:
            print("%s: %d ops, model and kernel agree" % (name, len(ops)))
            continue
        print("%s: %s" % (name, dk.format_divergence(d)))
        print("re-run: spfshm diff-kernel %s --pages %d%s" % (
            "--script %s" % args.script if args.script else
            "--seed %s --ops %d" % (name.split()[1], args.ops), args.pages, bugs))
        if args.no_shrink:
            return EXIT_VIOLATIONS
        sys.stdout.flush()                       # before the shrink's progress on stderr
        try:
            small, sh = dk.shrink_divergence(ops, args.pages, d, bugs=args.bug,
                                             progress=lambda line: print(
                                                 line, file=sys.stderr, flush=True),
                                             madvise_lock=args.madvise_lock)
        except ValueError:                       # the kernel's answers changed meanwhile
            print("not shrunk: its first %d ops no longer diverge that way" % (d["step"] + 1))
            return EXIT_VIOLATIONS
        stem = os.path.splitext(os.path.basename(args.script))[0] if args.script else \
            name.replace(" ", "")
        out = args.shrunk_out or os.path.join(Config.artifacts,
                                              "diff-kernel-%s-shrunk.json" % stem)
        if not args.shrunk_out:
            os.makedirs(Config.artifacts, exist_ok=True)
        script = dk.format_script(small)
        with open(out, "w") as f:
            f.write(script)
        print("shrunk: %d -> %d ops in %d diff runs, %.1f s; still diverges the same way "
              "(%s):" % (len(ops), len(small), sh.runs, sh.elapsed(),
                         dk.format_kind(dk.divergence_kind(d))))
        print(script, end="")
        print("written to %s; re-run: spfshm diff-kernel --script %s --pages %d%s"
              % (out, out, args.pages, bugs))
        return EXIT_VIOLATIONS
    return EXIT_OK


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "stress":
            return cmd_stress(args)
        if args.command == "explore":
            return cmd_explore(args)
        if args.command == "diff-kernel":
            return cmd_diff_kernel(args)
        if args.command == "bugs":
            from .bugs import format_table
            print(format_table())
            return EXIT_OK
        if args.command == "bench" and args.bench == "detect":
            from .bugs import BY_NAME
            from .bench import detect
            bad = [b for b in args.bugs.split(",") if b and b not in BY_NAME]
            if bad:
                raise UsageError("--bugs: unknown bug %r (see 'spfshm bugs')" % bad[0])
            return detect.main(args)
        if args.command == "replay":
            return cmd_replay(args)
        if args.command == "shrink":
            return cmd_shrink(args)
        if args.command == "fuzz":
            return cmd_fuzz(args)
        if args.command == "mutate":
            return cmd_mutate(args)
        if args.command == "bench" and args.bench == "sched":
            from .bugs import BY_NAME
            from .bench import sched as bench_sched
            from .run.sched import parse_spec
            bad = [b for b in args.bugs.split(",") if b and b not in BY_NAME]
            if bad:
                raise UsageError("--bugs: unknown bug %r (see 'spfshm bugs')" % bad[0])
            if args.max_runs > bench_sched.SEED_STRIDE:
                raise UsageError("--max-runs: at most %d (a seed's runs would be the next "
                                 "seed's)" % bench_sched.SEED_STRIDE)
            try:
                if parse_spec(args.sched)[0] not in ("random", "pct"):
                    raise ValueError("bench sched --sched must be random or pct")
            except ValueError as e:
                raise UsageError(str(e))
            return bench_sched.main(args)
        if args.command == "bench" and args.bench == "scaling":
            return cmd_bench_scaling(args)
        if args.command == "bench" and args.bench == "primitives":
            from .bench import primitives
            return primitives.main(args)
    except UsageError as e:
        sys.stderr.write("spfshm: error: %s\n" % e)
        return EXIT_USAGE
    except CatalogueError as e:
        sys.stderr.write("spfshm: internal error: %s\n" % e)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        sys.stderr.write("spfshm: interrupted\n")
        return 130
    return EXIT_INTERNAL
