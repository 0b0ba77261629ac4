"""The run's verdict: summary lines, the JSON document, and the exit status.

Exit status: 1 when the run found a violation (a hang or crash in the same run is
reported too), else 3 for a hang (the watchdog's ``hang`` record is not a violation of
the model's rules), a crash or an internal error, else 0; 128 + signal when interrupted.
What the final sweep finds after the first violation or crash is reported apart
(``violations_after_first``) and never changes the verdict.
"""
import json

import numpy as np

from .. import __version__, debug
from ..mm import pipe
from ..mm.mm_types import IPI_HIST_BUCKETS, SPF_ABORTS, STATS
from ..mm.perturb import generic_report, perturb_line
from . import workload

from .workload import OPS as OP_KINDS


def _hist_percentile(hist, q):
    """Upper bound (us) of the bucket holding the q-quantile of a log2/4 histogram."""
    total = hist.sum()
    if not total:
        return 0.0
    k = int(np.searchsorted(np.cumsum(hist), q * total))
    return round(2 ** ((k + 1) / 4.0) - 1, 1)


def signal_name(signum):
    import signal
    return signal.Signals(signum).name if signum else None


def delay_hits(arena, ncpus):
    """Perturbation pauses taken, per named point (every point listed, hit or not)."""
    from ..mm.perturb import POINT_NAMES
    hits = arena["delay_hits"][:ncpus].sum(axis=0)
    out = {p: int(hits[i]) for i, p in enumerate(POINT_NAMES) if p != "ipi_handler"}
    out["ipi_handler"] = int(arena["percpu"]["handler_delays"][:ncpus].sum())
    return out


def totals(arena, ncpus):
    return dict(zip(STATS, arena["stats"][:ncpus + 1].sum(axis=0).tolist()))


def _rcu_latency(arena, ncpus):
    """call_rcu -> invocation latency (a grace period plus the wait for the next
    rcu_process_callbacks), over every CPU's callbacks."""
    from .runner import ACCT_RCU_MAX, ACCT_RCU_N, ACCT_RCU_SUM
    acct = arena["cpu_acct"][:ncpus]
    n, total = int(acct[:, ACCT_RCU_N].sum()), int(acct[:, ACCT_RCU_SUM].sum())
    return {"callbacks_invoked": n,
            "cb_latency_mean_us": round(total / n / 1000.0, 1) if n else 0.0,
            "cb_latency_max_us": round(int(acct[:, ACCT_RCU_MAX].max()) / 1000.0, 1)
            if n else 0.0}


def _run_seconds(arena, ncpus, start, end):
    """How long each CPU ran its operation loop (start-up and the final sweep excluded),
    in wall time or in its own CPU time."""
    acct = arena["cpu_acct"][:ncpus]
    return [round((int(e) - int(s)) / 1e9, 4) if e > s else 0.0
            for s, e in zip(acct[:, start], acct[:, end])]


def build_report(st, stress, elapsed):
    from .runner import ACCT_CPU, ACCT_CPU0, ACCT_END, ACCT_START
    cfg, arena = st.cfg, st.arena
    t = totals(arena, cfg.cpus)
    rows = arena["stats"][:cfg.cpus]
    per_cpu_faults = (rows[:, STATS.index("fault_classic")] + rows[:, STATS.index("spf_ok")]
                      + rows[:, STATS.index("vma_lock_success")]).tolist()
    hist = arena["ipi_hist"].sum(axis=0)
    viols, after = [], []
    for v in debug.collect(arena):
        v["after_first"] = stress.after_first_from is not None and \
            v["stamp"] >= stress.after_first_from
        (after if v["after_first"] else viols).append(v)
    exit_code = exit_status(stress, viols)
    aborts = {r: t["spf_abort_" + r] for r in SPF_ABORTS if t["spf_abort_" + r]}
    spf_tries = t["spf_ok"] + sum(aborts.values())
    vma_lock = {e: t["vma_lock_" + e] for e in ("success", "abort", "retry", "miss")}
    pervma_fallback = vma_lock["abort"] + vma_lock["retry"]
    pervma_tries = vma_lock["success"] + pervma_fallback
    faults = {"classic": t["fault_classic"], "spf_ok": t["spf_ok"], "spf_abort": aborts,
              "spf_abort_rate": round(sum(aborts.values()) / spf_tries, 4) if spf_tries else 0.0,
              "pervma_ok": vma_lock["success"], "pervma_fallback": pervma_fallback,
              "vma_lock": vma_lock, "other_mm_reuse": t["other_mm_reuse"],
              "pervma_fallback_rate": round(pervma_fallback / pervma_tries, 4)
              if pervma_tries else 0.0,
              "retry": t["fault_retry"], "segv": t["segv"], "oom": t["oom"],
              "tlb_miss": t["tlb_miss"], "tlb_fill": t["tlb_fill"]}
    handled = t["fault_classic"] + t["spf_ok"] + vma_lock["success"]
    return {
        "paths": paths(cfg, rows),
        "config": dict(cfg.to_dict(), version=__version__),
        "config_line": cfg.describe(),
        "ops": {k: t[k] for k in OP_KINDS},
        "ops_total": t["ops"],
        "op_errors": {k: t[k + "_err"] for k in OP_KINDS[2:6]},
        "faults": faults,
        "faults_per_s": round(handled / elapsed, 1) if elapsed else 0.0,
        "faults_per_s_per_cpu": [round(f / elapsed, 1) for f in per_cpu_faults],
        "ops_per_cpu": rows[:, STATS.index("ops")].tolist(),
        "faults_per_cpu": per_cpu_faults,
        "cpu_run_s": _run_seconds(arena, cfg.cpus, ACCT_START, ACCT_END),
        "cpu_busy_s": _run_seconds(arena, cfg.cpus, ACCT_CPU0, ACCT_CPU),
        "ops_per_s": round(t["ops"] / elapsed, 1) if elapsed else 0.0,
        "ipi": {"sent": t["ipi_sent"], "flushes": t["tlb_flush"],
                "p50_us": _hist_percentile(hist, 0.5), "p99_us": _hist_percentile(hist, 0.99),
                "hist_buckets": IPI_HIST_BUCKETS},
        "rcu": dict({"grace_periods": int(st.arena["rcu_gp_seq"][0]) - 1,
                     "callbacks": t["call_rcu"], "max_backlog": t["rcu_backlog_max"]},
                    **_rcu_latency(arena, cfg.cpus)),
        "tables": {"allocated": t["tables_alloc"], "freed": t["tables_freed"],
                   "alloc_races": t["pte_alloc_race"], "reclaimed": t["pt_reclaimed"],
                   "reclaimed_per_s": round(t["pt_reclaimed"] / elapsed, 1) if elapsed else 0,
                   "reclaim_scans": t["reclaim"],
                   "vmpte_kb_end": st.vmpte_kb_end, "vmpte_kb_peak": st.vmpte_kb_peak},
        "thp": {"collapsed": t["thp_collapsed"], "collapse_failed": t["thp_collapse_fail"],
                "collapse_scans": t["collapse"], "split": t["thp_split"],
                "zapped": t["thp_zap"], "oom": t["thp_oom"]},
        "fail_nth": {"n": cfg.fail_nth, "injected": t["fail_nth_injected"],
                     "per_cpu": rows[:, [STATS.index("fail_nth_attempts"),
                                         STATS.index("fail_nth_injected"),
                                         STATS.index("fail_nth_at")]].tolist()},
        "pipe_ages": dict(pipe.histograms(arena, cfg.cpus), legal_max=pipe.LEGAL_AGE),
        "frames_freed": t["frames_freed"],
        "mmap_lock_wait_ms": round(t["mmap_lock_wait_ns"] / 1e6, 1),
        "delay_hits": delay_hits(arena, cfg.cpus),
        "perturb": generic_report(cfg, arena["perturb_hits"][:cfg.cpus]),
        "contention": dict(zip(("hot_spots", "radius_pages"),
                               workload.contention(cfg.seed, cfg.cpus))),
        "violations": viols,
        "violation_count": debug.total(arena) - stress.after_first,
        "violations_after_first": after,
        "violation_count_after_first": stress.after_first,
        "invariant_checks": {"sweeps": stress.sweeps, "objects_checked": stress.checked},
        "arena_bytes": st.layout.size,
        "errors": stress.errors,
        "notes": stress.notes,
        "kills": stress.kills,
        "hang_dump": stress.hang,
        "interrupted": signal_name(stress.interrupted),
        "elapsed_s": round(elapsed, 3),
        "repro": cfg.repro(),
        "exit_code": exit_code,
    }


def paths(cfg, rows):
    """Per fault path: its CPUs, their ops, and the faults its own code completed (a
    speculative or per-VMA fault that falls back completes on the classical path)."""
    modes = cfg.fault_modes()
    own = {"classic": "fault_classic", "spf": "spf_ok", "pervma": "vma_lock_success"}
    out = {}
    for m in modes:
        cpus = [i for i in range(cfg.cpus) if modes[i % len(modes)] == m]
        out[m] = {"cpus": cpus,
                  "ops": int(rows[cpus, STATS.index("ops")].sum()) if cpus else 0,
                  "faults": int(rows[cpus, STATS.index(own[m])].sum()) if cpus else 0,
                  "fallbacks": int(rows[cpus, STATS.index("fault_classic")].sum())
                  if cpus and m != "classic" else 0}
    return out


def exit_status(stress, viols):
    """See the module docstring: a violation beats a hang or crash, which beats success."""
    if stress.interrupted:
        return 128 + stress.interrupted
    if any(v["kind"] != "hang" for v in viols):
        return 1
    return 3 if stress.errors or stress.hang or viols else 0


def summary(rep):
    c = rep["config"]
    f = rep["faults"]
    lines = ["--- spfshm stress: %s ---" % rep["config_line"],
             "per path: %s" % "; ".join(
                 "%s (CPU %s): ops %d, faults %d%s" % (
                     m, ",".join(map(str, p["cpus"])) or "-", p["ops"], p["faults"],
                     " (+%d fallen back)" % p["fallbacks"] if m != "classic" else "")
                 for m, p in rep["paths"].items()),
             "ops %d in %.1fs (%.0f/s): %s" % (rep["ops_total"], rep["elapsed_s"],
                                               rep["ops_per_s"], _kv(rep["ops"])),
             "faults classic=%d spf_ok=%d (abort rate %.1f%%: %s) pervma_ok=%d "
             "(fallback %.1f%%: vma_lock %s%s); segv=%d oom=%d tlb_miss=%d"
             % (f["classic"], f["spf_ok"], 100 * f["spf_abort_rate"],
                _kv(f["spf_abort"]) or "-", f["pervma_ok"], 100 * f["pervma_fallback_rate"],
                _kv(f["vma_lock"]), "; VMA records the other mm reused %d"
                % f["other_mm_reuse"] if c.get("vma_lock") == "refcnt" else "",
                f["segv"], f["oom"], f["tlb_miss"]),
             "%.0f faults/s handled (per CPU %s)"
             % (rep["faults_per_s"], "/".join("%.0f" % x for x in rep["faults_per_s_per_cpu"])),
             "ipi: %d sent, p50 %.1f us, p99 %.1f us; rcu: %d grace periods; tables "
             "allocated %d freed %d reclaimed %d (%.0f/s); VmPTE at the end %d kB"
             % (rep["ipi"]["sent"], rep["ipi"]["p50_us"], rep["ipi"]["p99_us"],
                rep["rcu"]["grace_periods"], rep["tables"]["allocated"],
                rep["tables"]["freed"], rep["tables"]["reclaimed"],
                rep["tables"]["reclaimed_per_s"],
                rep["tables"]["vmpte_kb_end"]),
             "thp: collapsed %d (%.0f/s, failed %d), split %d, zapped %d; retired objects read by "
             "lockless walkers (pipe ages 0/1+): %s"
             % (rep["thp"]["collapsed"],
                rep["thp"]["collapsed"] / rep["elapsed_s"] if rep["elapsed_s"] else 0,
                rep["thp"]["collapse_failed"], rep["thp"]["split"],
                rep["thp"]["zapped"],
                " ".join("%s=%d/%d" % (k, h[0], sum(h[1:]))
                         for k, h in rep["pipe_ages"].items() if k != "legal_max")),
             "sweeps %d (%d objects checked)" % (rep["invariant_checks"]["sweeps"],
                                                 rep["invariant_checks"]["objects_checked"])]
    if c["delay"]:
        lines.append("delays taken: %s" % (_kv({k: v for k, v in rep["delay_hits"].items()
                                                 if v}) or "none"))
    lines.append(perturb_line(rep["perturb"]))
    if rep.get("sched"):
        from .sched import summary_line
        lines.append(summary_line(rep))
    lines.append("contention (chosen by the seed): %(hot_spots)d hot spot(s) shared by every "
                 "CPU, each CPU mostly within %(radius_pages)d pages of its own at first "
                 "(the radius changes as CPUs wander)"
                 % rep["contention"])
    for e in rep["errors"]:
        lines.append("ERROR: %s" % e)
    for n in rep["notes"]:
        lines.append("note: %s" % n)
    for v in rep["violations"][:20]:
        lines.append("VIOLATION %s (CPU %d, va %#x): %s"
                     % (v["signature"], v["cpu"], v["va"], v["detail"]))
    if rep["violation_count"] > 20:
        lines.append("... %d violations in all" % rep["violation_count"])
    for v in rep["violations_after_first"][:10]:
        lines.append("VIOLATION %s (CPU %d, va %#x) [after the first violation]: %s"
                     % (v["signature"], v["cpu"], v["va"], v["detail"]))
    if rep["violation_count_after_first"] > 10:
        lines.append("... %d violations after the first in all"
                     % rep["violation_count_after_first"])
    for d in rep["hang_dump"] or ():
        lines.append(d)
    verdict = {0: "SUCCESS", 3: "FAILURE: hang/crash/internal",
               1: "FAILURE: violations" + (" (and hang/crash/internal errors)"
                                           if rep["errors"] else "")}
    v = verdict.get(rep["exit_code"], "INTERRUPTED by %s (partial results)" % rep["interrupted"])
    lines.append("--- End of test: %s (exit %d) ---" % (v, rep["exit_code"]))
    if rep.get("artifacts"):
        lines.append("artifacts: %s" % rep["artifacts"])
        lines.append("replay: spfshm replay %s --repeat 10" % rep["artifacts"])
    if rep["exit_code"] in (1, 3):
        lines.append("re-run: %s" % rep["repro"])
    return "\n".join(lines)


def _kv(d):
    return " ".join("%s=%s" % kv for kv in d.items())


def write_json(rep, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rep, f, indent=2)
    import os
    os.replace(tmp, path)
