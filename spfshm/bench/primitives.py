"""``spfshm bench primitives``: per-operation costs of the native core, measured from
Python in real worker processes (what the model pays per call).

Uncontended costs are the median over several batches of the loop time per iteration
minus the same loop's empty-body time.  Round trips (futex wake, IPI) are timed one by one
and reported as p50/p99.  IPIs go to 1, 2, 4 and 8 busy targets: beyond the core count the
targets are oversubscribed and must be scheduled to ack, which is what the figures show.
"""
import json
import time

import numpy as np

from .. import native
from ..arena import Arena, Layout
from ..run.workers import run_workers
from ..smp import Smp, smp_regions

IPI_TARGETS = (1, 2, 4, 8)
RWSEM_DTYPE = native.struct_dtype("struct spf_rwsem")


def _loop_cost(fn, n, batches=7):
    """ns per call of fn(), empty-loop overhead removed.

    The fastest batch of each is the one least disturbed by other processes: fn() does
    strictly more than the empty body, so the difference of the minima stays positive
    on a busy machine, where a difference of medians can fall to zero or below."""
    def timed(body):
        t = time.perf_counter_ns()
        for _ in range(n):
            body()
        return (time.perf_counter_ns() - t) / n
    nothing = lambda: None          # noqa: E731
    pairs = [(timed(fn), timed(nothing)) for _ in range(batches)]
    return min(f for f, _ in pairs) - min(e for _, e in pairs)


def _percentiles(samples_ns, unit=1000.0):
    a = np.asarray(samples_ns, dtype=np.float64) / unit
    return {"p50": round(float(np.percentile(a, 50)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "n": int(a.size)}


def _uncontended(arena, out, n):
    ctr, lock, seq = arena.ptr("ctr"), arena.ptr("lock", "uint32_t"), arena.ptr("seq")
    sem = arena.ptr("rw", "struct spf_rwsem")
    fa, sl, su = native.fetch_add, native.spin_lock, native.spin_unlock
    dr, ur = native.lib.spf_down_read, native.lib.spf_up_read
    tb, rr = native.seq_try_begin, native.seq_read_retry
    di, ei = native.local_irq_disable, native.local_irq_enable
    rl, ru = native.rcu_read_lock, native.rcu_read_unlock
    res = {
        "atomic_fetch_add_ns": _loop_cost(lambda: fa(ctr, 1), n),
        "spin_lock_unlock_ns": _loop_cost(lambda: (sl(lock, 0), su(lock)), n),
        "rwsem_read_lock_unlock_ns": _loop_cost(lambda: (dr(sem), ur(sem)), n),
        "seq_read_ns": _loop_cost(lambda: rr(seq, tb(seq)), n),
        "irq_disable_enable_ns": _loop_cost(lambda: (di(), ei()), n),
        "rcu_read_lock_unlock_ns": _loop_cost(lambda: (rl(), ru()), n),
    }
    for k, v in res.items():
        out[k] = round(v, 1)


def _futex_pingpong(arena, cpu, rounds, samples):
    """CPU 0 posts word=odd and wakes; CPU 1 answers with the next even; CPU 0 times it."""
    w = arena.ptr("fx", "uint32_t")
    fx = arena["fx"]
    for r in range(rounds):
        mine, theirs = (2 * r + 1, 2 * r + 2) if cpu == 0 else (2 * r + 2, 2 * r + 1)
        if cpu == 0:
            t = native.now_ns()
            native.store32_release(w, mine)
            native.futex_wake(w, 1)
            while native.load32_acquire(w) != theirs:
                native.futex_wait(w, mine, 1_000_000_000)
            samples[r] = native.now_ns() - t
        else:
            while native.load32_acquire(w) != theirs:
                native.futex_wait(w, int(fx[0]), 1_000_000_000)
            native.store32_release(w, mine)
            native.futex_wake(w, 1)


def _ipi_rounds(arena, i, ntargets, rounds, samples):
    mask = native.CpuMask(ntargets + 1, range(1, ntargets + 1))
    while arena["ready"][i] < ntargets:          # every target registered and running
        native.sleep_ns(100_000)
    for r in range(rounds):
        t = native.now_ns()
        native.ipi_sync(mask, native.IPI_SYNC, timeout_s=30)
        samples[r] = native.now_ns() - t


def _busy_until(arena, idx):
    native.fetch_add(arena.ptr("ready", index=idx), 1)
    stop = arena["stop"]
    while stop[idx] == 0:
        for _ in range(200):
            pass


def run(quick=False):
    """Measure everything; returns the result dict (also the JSON document)."""
    n = 20_000 if quick else 200_000
    rounds = {1: 100, 2: 60, 4: 30, 8: 20} if quick else {1: 2000, 2: 600, 4: 200, 8: 100}
    fx_rounds = 200 if quick else 2000
    ncpus = max(IPI_TARGETS) + 1
    arena = Arena(Layout(list(smp_regions(ncpus)) + [
        ("ctr", np.uint64, 8), ("lock", np.uint32, 16), ("seq", np.uint64, 8),
        ("rw", RWSEM_DTYPE, 1), ("fx", np.uint32, 16), ("stop", np.uint64, 16), ("ready", np.uint64, 16),
        ("samples", np.uint64, (len(IPI_TARGETS) + 1, max(max(rounds.values()), fx_rounds))),
        ("unc", np.float64, 8)]))
    try:
        smp = Smp(arena, ncpus)
        smp.init()
        native.RWSem(arena.ptr("rw", "struct spf_rwsem")).init()
        keys = ["atomic_fetch_add_ns", "spin_lock_unlock_ns", "rwsem_read_lock_unlock_ns",
                "seq_read_ns", "irq_disable_enable_ns", "rcu_read_lock_unlock_ns"]

        def uncontended(cpu):
            d = {}
            _uncontended(arena, d, n)
            arena["unc"][:len(keys)] = [d[k] for k in keys]

        run_workers(smp, 1, uncontended)
        out = {k: float(v) for k, v in zip(keys, arena["unc"][:len(keys)])}

        fxs = arena["samples"][len(IPI_TARGETS)]
        run_workers(smp, 2, lambda cpu: _futex_pingpong(arena, cpu, fx_rounds, fxs))
        out["futex_wake_roundtrip_us"] = _percentiles(fxs[:fx_rounds])

        out["ipi_roundtrip_us"] = {}
        for i, nt in enumerate(IPI_TARGETS):
            arena["stop"][i] = 0
            samples = arena["samples"][i]

            def body(cpu, i=i, nt=nt, samples=samples):
                if cpu == 0:
                    _ipi_rounds(arena, i, nt, rounds[nt], samples)
                    arena["stop"][i] = 1
                else:
                    _busy_until(arena, i)
            run_workers(smp, nt + 1, body, timeout=600)
            out["ipi_roundtrip_us"][str(nt)] = _percentiles(samples[:rounds[nt]])
        return out
    finally:
        arena.close()


def format_table(res):
    lines = ["%-28s %10s" % ("operation", "cost")]
    for k, v in res.items():
        if isinstance(v, dict) and "p50" in v:
            lines.append("%-28s p50 %8.2f  p99 %8.2f  (n=%d)" % (k, v["p50"], v["p99"], v["n"]))
        elif isinstance(v, dict):
            for t, s in v.items():
                lines.append("%-28s p50 %8.2f  p99 %8.2f  (n=%d)"
                             % ("%s[%s targets]" % (k, t), s["p50"], s["p99"], s["n"]))
        else:
            lines.append("%-28s %10.1f" % (k, v))
    return "\n".join(lines)


def main(args):
    res = run(quick=args.quick)
    print(format_table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "primitives", "results": res}, f, indent=2)
        print("wrote %s" % args.json)
    return 0
