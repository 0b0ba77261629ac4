"""``spfshm bench scaling``: will-it-scale-style curves of the model's fault paths, and the
real kernel's page-fault rate on the same machine.

For every configuration (fault CPUs x fault mode x writer off/on x table-free policy) the
stress runner runs the ``faults`` workload (no writer) or ``faults+writer`` (one extra
CPU, CPU 0, maps and unmaps its own region, ``--writer-rate`` pairs per second, 0 = flat
out), ``--repeat`` times with seeds seed..seed+K-1; each metric is reported as the median
with min and max over the repeats.  ``cpus`` always counts *fault* CPUs: with the writer
the run has cpus + 1 workers (so on an N-core machine the writer shares a core with a
fault CPU at cpus = N).  Runs use ``--check-every 0`` (one invariant sweep, at the end:
a mid-run stop-the-world sweep would be measured as lost throughput) and pinned workers.

The kernel's rate comes from ``native.kernel_fault_rate`` (C, page_fault1 style: mmap
128 MiB, touch every page, munmap) in 1 and 2 processes.
"""
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time

from .. import native
from ..config import Config
from ..run.runner import run_stress

WRITER_LABEL = {False: "off", True: "on"}
MAX_NOISY_RETRIES = 5        # --max-noise: runs discarded per repeat before keeping one
NOISY_PAUSE_S = 10.0

# metric -> (unit, description); the order of the table and the CSV
METRICS = {
    "faults_per_s": ("1/s", "faults handled per second, all fault CPUs"),
    "faults_per_s_per_cpu": ("1/s", "faults per second per fault CPU (mean)"),
    "faults_per_cpu_s": ("1/s", "faults per second of the fault CPUs' own CPU time "
                                "(what a preempting neighbour cannot lower)"),
    "spf_abort_rate": ("", "speculative faults aborted / attempted"),
    "pervma_fallback_rate": ("", "per-VMA attempts that fell back to mmap_lock"),
    "classic_share": ("", "faults handled under mmap_lock / all faults"),
    "mmap_lock_wait_ms_per_s": ("ms/s", "time spent waiting for mmap_lock, all CPUs"),
    "ipi_per_s": ("1/s", "TLB-shootdown IPIs sent per second"),
    "ipi_p50_us": ("us", "shootdown latency p50"),
    "ipi_p99_us": ("us", "shootdown latency p99"),
    "grace_periods_per_s": ("1/s", "RCU grace periods started per second"),
    "rcu_cb_latency_mean_us": ("us", "call_rcu -> invocation, mean"),
    "writer_pairs_per_s": ("1/s", "the writer's mmap+munmap pairs per second"),
    "foreign_load": ("cores", "CPU used by other processes during the run (noise)"),
}


def default_cpus():
    """1, 2, 4, ... up to the usable cores (and the core count itself)."""
    cores = len(os.sched_getaffinity(0))
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return out + [cores]


def metrics_of(rep, cpus, writer):
    """The figures of one run (``cpus`` fault CPUs; CPU 0 is the writer if ``writer``)."""
    # Rates over each CPU's own loop time (start-up and the final sweep excluded: a
    # short run would otherwise count them as lost throughput).
    first = 1 if writer else 0
    run_s = rep["cpu_run_s"]
    per = [f / t if t else 0.0 for f, t in zip(rep["faults_per_cpu"][first:], run_s[first:])]
    el = statistics.mean(run_s) if run_s and min(run_s) > 0 else (rep["elapsed_s"] or 1e-9)
    f = rep["faults"]
    handled = f["classic"] + f["spf_ok"] + f["pervma_ok"]
    spf_tries = f["spf_ok"] + sum(f["spf_abort"].values())
    busy = sum(rep["cpu_busy_s"][first:])
    m = {
        "faults_per_s": sum(per),
        "faults_per_s_per_cpu": sum(per) / cpus,
        "faults_per_cpu_s": sum(rep["faults_per_cpu"][first:]) / busy if busy else 0.0,
        "spf_abort_rate": f["spf_abort_rate"],
        "pervma_fallback_rate": f["pervma_fallback_rate"],
        "classic_share": f["classic"] / handled if handled else 0.0,
        "mmap_lock_wait_ms_per_s": rep["mmap_lock_wait_ms"] / el,
        "ipi_per_s": rep["ipi"]["sent"] / el,
        "ipi_p50_us": rep["ipi"]["p50_us"],
        "ipi_p99_us": rep["ipi"]["p99_us"],
        "grace_periods_per_s": rep["rcu"]["grace_periods"] / el,
        "rcu_cb_latency_mean_us": rep["rcu"].get("cb_latency_mean_us", 0.0),
        "writer_pairs_per_s": rep["ops"]["munmap"] / el if writer else 0.0,
        "foreign_load": rep.get("foreign_load") or 0.0,
    }
    for reason, n in f["spf_abort"].items():
        m["spf_abort_rate_" + reason] = n / spf_tries if spf_tries else 0.0
    return m, per


def summarize(values):
    vals = sorted(values)
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1],
            "n": len(vals)}


def configurations(args):
    for wl in args.workload:
        for tf in args.table_free:
            for writer in args.writer:
                for mode in args.fault_modes:
                    for cpus in args.cpus:
                        yield {"mode": mode, "writer": writer, "table_free": tf, "cpus": cpus,
                               "workload": wl, "group": "%s/%s" % (wl, tf)}


def config_for(c, args, seed, artifacts):
    """The stress configuration of one run (validated: ConfigError names the problem):
    the fault path alone, as will-it-scale measures it (no reclaim, no collapse, no
    perturbation)."""
    writer = c["writer"] == "on"
    return Config(cpus=c["cpus"] + (1 if writer else 0), duration=args.duration, seed=seed,
                  fault_mode=c["mode"], table_free=c["table_free"], check_every=0,
                  reclaim="off", collapse="off", perturb="off",
                  workload=c["workload"] + ("+writer" if writer else ""),
                  writer_rate=args.writer_rate if writer else 0.0,
                  artifacts=artifacts, pin=True).resolved()


def _busy_s():
    """(CPU seconds the whole machine was busy, CPU seconds of our reaped children)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        busy = 0.0
    t = os.times()
    return busy, t.children_user + t.children_system


def run_one(c, args, seed, artifacts):
    """One run; its report gets ``foreign_load``: cores kept busy by other processes
    meanwhile (the machine is shared: a busy neighbour shows up here, not as a result)."""
    cfg = config_for(c, args, seed, artifacts)
    b0, c0, t0 = _busy_s() + (time.monotonic(),)
    rep = run_stress(cfg)
    b1, c1, t1 = _busy_s() + (time.monotonic(),)
    rep["foreign_load"] = round(max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0), 2) \
        if b1 > b0 else None
    return cfg, rep


def kernel_rates(args, log):
    """The kernel's page_fault1 rate in 1 and 2 processes: median of the repeats."""
    out = {}
    secs = min(args.duration, 2.0)
    for nprocs in (1, 2):
        runs = []
        noise = []
        for k in range(args.repeat):
            for attempt in range(MAX_NOISY_RETRIES + 1):
                b0, c0, t0 = _busy_s() + (time.monotonic(),)
                r = native.kernel_fault_rate(nprocs, secs)
                b1, c1, t1 = _busy_s() + (time.monotonic(),)
                load = round(max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0), 2)
                if args.max_noise is None or load <= args.max_noise or \
                        attempt == MAX_NOISY_RETRIES:
                    break
                log("kernel page_fault1: other processes used %.2f cores: discarded" % load)
                time.sleep(NOISY_PAUSE_S)
            runs.append(r["faults_per_s"])
            noise.append(load)
            log("kernel page_fault1, %d process%s, run %d/%d: %.0f faults/s (noise %.2f cores)"
                % (nprocs, "es" if nprocs > 1 else "", k + 1, args.repeat, r["faults_per_s"],
                   load))
        s = summarize(runs)
        s["per_proc_per_s"] = s["median"] / nprocs
        s["raw"] = runs
        s["foreign_load"] = noise
        out[str(nprocs)] = s
    return out


def run(args, log=lambda s: None):
    """Every configuration, repeated; returns the JSON document.  The repeats go round
    robin (every configuration once, then again): a burst of noise from a neighbour
    then hits one repeat of many configurations, not every repeat of one."""
    confs = list(configurations(args))
    raws = [[] for _ in confs]
    total = len(confs) * args.repeat
    done, t0 = 0, time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spfshm-scaling-") as art:
        for k in range(args.repeat):
            for c, raw in zip(confs, raws):
                writer = c["writer"] == "on"
                discarded = []
                while True:
                    cfg, rep = run_one(c, args, args.seed + k, art)
                    m, per = metrics_of(rep, c["cpus"], writer)
                    noisy = args.max_noise is not None and m["foreign_load"] > args.max_noise
                    if not noisy or len(discarded) >= MAX_NOISY_RETRIES:
                        break
                    discarded.append(m["foreign_load"])
                    log("%-7s cpus=%-3d writer=%-3s %s repeat %d/%d: other processes used "
                        "%.2f cores (> --max-noise %g): discarded, again in %gs"
                        % (c["mode"], c["cpus"], c["writer"], c["group"], k + 1, args.repeat,
                           m["foreign_load"], args.max_noise, NOISY_PAUSE_S))
                    time.sleep(NOISY_PAUSE_S)
                raw.append({"seed": cfg.seed, "repro": rep["repro"],
                            "exit_code": rep["exit_code"], "metrics": m,
                            "noisy": noisy, "discarded_noise": discarded,
                            "faults_per_s_per_cpu": per, "report": _trim(rep)})
                done += 1
                eta = (time.monotonic() - t0) / done * (total - done)
                log("[%d/%d] %-7s cpus=%-3d writer=%-3s %s repeat %d/%d: "
                    "%.0f faults/s (noise %.2f cores)%s  eta %.0fs"
                    % (done, total, c["mode"], c["cpus"], c["writer"], c["group"], k + 1,
                       args.repeat, m["faults_per_s"], m["foreign_load"],
                       "" if rep["exit_code"] == 0 else "  EXIT %d: re-run: %s"
                       % (rep["exit_code"], rep["repro"]), eta))
    results = []
    for c, raw in zip(confs, raws):
        writer = c["writer"] == "on"
        keys = sorted(set().union(*(r["metrics"] for r in raw)),
                      key=lambda k: (k not in METRICS, list(METRICS).index(k)
                                     if k in METRICS else 0, k))
        summary = {k: summarize([r["metrics"].get(k, 0.0) for r in raw]) for k in keys}
        results.append(dict(c, writer_rate=args.writer_rate if writer else None,
                            workers=c["cpus"] + (1 if writer else 0),
                            summary=summary, repeats=raw,
                            failed=[r["repro"] for r in raw if r["exit_code"] != 0]))
    doc = {"bench": "scaling",
           "params": {"cpus": args.cpus, "fault_modes": args.fault_modes,
                      "workload": args.workload,
                      "writer": args.writer, "writer_rate": args.writer_rate,
                      "table_free": args.table_free, "duration_s": args.duration,
                      "repeat": args.repeat, "seed": args.seed,
                      "max_noise": args.max_noise},
           "machine": machine(),
           "metrics": {k: {"unit": u, "what": w} for k, (u, w) in METRICS.items()},
           "results": results}
    doc["kernel"] = kernel_rates(args, log) if args.kernel else None
    doc["goals"] = goals(doc)
    return doc


def _trim(rep):
    """A run's report without what only matters after a failure."""
    return {k: v for k, v in rep.items() if k not in ("hang_dump", "delay_hits")}


def machine():
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"usable_cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_at_start": load}


def _find(doc, mode, writer, cpus, group):
    for r in doc["results"]:
        if r["mode"] == mode and r["writer"] == writer and r["cpus"] == cpus and \
                r["group"] == group:
            return r
    return None


def _med(r, metric="faults_per_s"):
    return r["summary"][metric]["median"] if r else None


def goals(doc):
    """Where the issue's goals stand (figures, not assertions)."""
    res = doc["results"]
    tfs = list(dict.fromkeys(r["group"] for r in res))
    cpus = sorted({r["cpus"] for r in res})
    out = {"scaling_1_to_2": [], "writer_speedup_vs_classic": [], "abort_rate_no_writer": [],
           "model_vs_kernel": []}
    for tf in tfs:
        for mode in sorted({r["mode"] for r in res}):
            for w in ("off", "on"):
                a, b = _find(doc, mode, w, 1, tf), _find(doc, mode, w, 2, tf)
                if a and b and _med(a):
                    out["scaling_1_to_2"].append({"mode": mode, "writer": w, "group": tf,
                                                  "ratio": _med(b) / _med(a)})
            if mode != "classic":
                for n in cpus:
                    r, c = _find(doc, mode, "on", n, tf), _find(doc, "classic", "on", n, tf)
                    if r and c and _med(c):
                        x = _med(r) / _med(c)
                        out["writer_speedup_vs_classic"].append(
                            {"mode": mode, "cpus": n, "group": tf, "speedup": x,
                             "goal_2x_met": x >= 2.0})
                for n in cpus:
                    r = _find(doc, mode, "off", n, tf)
                    if r:
                        key = "spf_abort_rate" if mode == "spf" else "pervma_fallback_rate"
                        rate = _med(r, key)
                        out["abort_rate_no_writer"].append(
                            {"mode": mode, "cpus": n, "group": tf, "metric": key,
                             "rate": rate, "goal_5pct_met": rate < 0.05})
    k = doc.get("kernel")
    if k:
        kern = k["1"]["median"]
        for r in res:
            if r["cpus"] == 1 and r["writer"] == "off":
                x = _med(r) / kern if kern else 0.0
                out["model_vs_kernel"].append({"mode": r["mode"], "group": r["group"],
                                               "model_faults_per_s": _med(r),
                                               "kernel_faults_per_s": kern, "fraction": x,
                                               "goal_tenth_met": x >= 0.1})
    return out


# -- output -------------------------------------------------------------------------------

def _fmt_rate(s):
    return "%.0f (%.0f-%.0f)" % (s["median"], s["min"], s["max"])


def format_table(doc):
    lines = ["%-7s %-6s %-10s %4s  %-24s %9s %6s  %-7s %-9s %8s  %-13s %6s %6s"
             % ("mode", "writer", "wl/tf", "cpus", "faults/s median (min-max)", "per CPU",
                "x 1CPU", "abort%", "fallback%", "lockw ms/s", "ipi p50/p99us", "gp/s",
                "noise")]
    for r in doc["results"]:
        s = r["summary"]
        one = _find(doc, r["mode"], r["writer"], 1, r["group"])
        x = _med(r) / _med(one) if one and _med(one) else None
        wr = r["writer"] if r["writer"] == "off" else \
            ("on@%g" % r["writer_rate"] if r["writer_rate"] else "on")
        lines.append("%-7s %-6s %-10s %4d  %-24s %9.0f %6s  %-7s %-9s %8.1f  %-13s %6.0f %6.2f%s"
                     % (r["mode"], wr, r["group"], r["cpus"], _fmt_rate(s["faults_per_s"]),
                        s["faults_per_s_per_cpu"]["median"],
                        "%.2f" % x if x is not None else "-",
                        "%.1f" % (100 * s["spf_abort_rate"]["median"]) if r["mode"] == "spf"
                        else "-",
                        "%.1f" % (100 * s["pervma_fallback_rate"]["median"])
                        if r["mode"] == "pervma" else "-",
                        s["mmap_lock_wait_ms_per_s"]["median"],
                        "%.0f/%.0f" % (s["ipi_p50_us"]["median"], s["ipi_p99_us"]["median"]),
                        s["grace_periods_per_s"]["median"], s["foreign_load"]["max"],
                        "  FAILED %d run(s)" % len(r["failed"]) if r["failed"] else ""))
    return "\n".join(lines)


def format_goals(doc):
    g = doc["goals"]
    lines = []
    for e in g["scaling_1_to_2"]:
        lines.append("scaling 1->2 CPUs, %s, writer %s, %s: %.2fx (ideal 2x)"
                     % (e["mode"], e["writer"], e["group"], e["ratio"]))
    for e in g["writer_speedup_vs_classic"]:
        lines.append("goal: %s >= 2x classic with a writer (%d CPUs, %s): %.2fx  %s"
                     % (e["mode"], e["cpus"], e["group"], e["speedup"],
                        "MET" if e["goal_2x_met"] else "NOT MET"))
    for e in g["abort_rate_no_writer"]:
        lines.append("goal: %s %s < 5%% without writer (%d CPUs, %s): %.2f%%  %s"
                     % (e["mode"], e["metric"].replace("_", " "), e["cpus"], e["group"],
                        100 * e["rate"], "MET" if e["goal_5pct_met"] else "NOT MET"))
    k = doc.get("kernel")
    if k:
        lines.append("kernel page_fault1: 1 process %.0f faults/s, 2 processes %.0f faults/s "
                     "(%.2fx)" % (k["1"]["median"], k["2"]["median"],
                                  k["2"]["median"] / k["1"]["median"] if k["1"]["median"]
                                  else 0))
    for e in g["model_vs_kernel"]:
        lines.append("goal: model 1-CPU rate >= 1/10 of the kernel's (%s, %s): %.0f / %.0f = "
                     "1/%.0f  %s" % (e["mode"], e["group"], e["model_faults_per_s"],
                                     e["kernel_faults_per_s"],
                                     1 / e["fraction"] if e["fraction"] else float("inf"),
                                     "MET" if e["goal_tenth_met"] else "NOT MET"))
    return "\n".join(lines)


def write_csv(doc, path):
    """One row per configuration per metric: median, min, max over the repeats."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workload", "mode", "writer", "writer_rate", "table_free", "cpus", "workers",
                    "metric", "unit", "median", "min", "max", "repeats"])
        for r in doc["results"]:
            for k, s in r["summary"].items():
                unit = METRICS.get(k, ("",))[0]
                w.writerow([r["workload"], r["mode"], r["writer"],
                            "" if r["writer_rate"] is None else r["writer_rate"],
                            r["table_free"], r["cpus"], r["workers"], k, unit,
                            _num(s["median"]), _num(s["min"]), _num(s["max"]), s["n"]])
        k = doc.get("kernel")
        if k:
            for n, s in k.items():
                w.writerow(["page_fault1", "kernel", "off", "", "", n, n, "faults_per_s", "1/s",
                            _num(s["median"]), _num(s["min"]), _num(s["max"]), len(s["raw"])])


def _num(x):
    return round(x, 4) if isinstance(x, float) else x


class PlotUnavailable(RuntimeError):
    pass


def check_plot_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'spfshm[plot]' "
                              "(or pip install matplotlib)")


def write_plot(doc, path):
    """faults/s vs fault CPUs: one colour and marker per mode, solid (filled markers)
    without the writer, dashed (hollow) with it, min-max bars, and the linear ideal from the best 1-CPU rate (one panel per
    table-free policy)."""
    check_plot_available()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = doc["results"]
    tfs = list(dict.fromkeys(r["group"] for r in res))
    colours = {"classic": "tab:blue", "spf": "tab:orange", "pervma": "tab:green"}
    markers = {"classic": "o", "spf": "^", "pervma": "s"}     # lines that coincide stay told apart
    fig, axes = plt.subplots(1, len(tfs), figsize=(6.5 * len(tfs), 4.8), squeeze=False)
    cpus = sorted({r["cpus"] for r in res})
    for ax, tf in zip(axes[0], tfs):
        best1 = max((_med(r) for r in res if r["cpus"] == 1 and r["writer"] == "off"
                     and r["group"] == tf), default=None)
        for mode in [m for m in doc["params"]["fault_modes"]]:
            for w in ("off", "on"):
                pts = sorted((r["cpus"], r["summary"]["faults_per_s"]) for r in res
                             if r["mode"] == mode and r["writer"] == w and r["group"] == tf)
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ys = [p[1]["median"] for p in pts]
                err = [[p[1]["median"] - p[1]["min"] for p in pts],
                       [p[1]["max"] - p[1]["median"] for p in pts]]
                label = "%s, %s" % (mode, "no writer" if w == "off" else "writer" + (
                    " %g/s" % doc["params"]["writer_rate"] if doc["params"]["writer_rate"]
                    else " flat out"))
                ax.errorbar(xs, ys, yerr=err, color=colours.get(mode), capsize=3,
                            linestyle="-" if w == "off" else "--",
                            marker=markers.get(mode, "o"), markersize=7,
                            markerfacecolor=colours.get(mode) if w == "off" else "white",
                            label=label)
        if best1:
            ax.plot(cpus, [best1 * n for n in cpus], color="grey", linestyle=":",
                    label="linear ideal (best 1-CPU x N)")
        if len(cpus) > 2 and cpus[-1] / cpus[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(cpus)
        ax.set_xticklabels([str(c) for c in cpus])
        ax.set_xlabel("fault CPUs (worker processes; the writer is one more)")
        ax.set_ylabel("faults handled per second (median of %d)" % doc["params"]["repeat"])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        wl, tfree = tf.split("/")
        ax.set_title("spfshm scaling: workload %s, table-free %s" % (wl, tfree))
        ax.legend(fontsize=8)
    m = doc["machine"]
    k = doc.get("kernel")
    fig.suptitle("%d usable cores, %gs runs%s" % (
        m["usable_cores"], doc["params"]["duration_s"],
        "; kernel page_fault1: %.0fk faults/s/process" % (k["1"]["median"] / 1e3) if k else ""),
        fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args):
    if args.plot:
        check_plot_available()        # before any run: a clear error, not after minutes
    log = (lambda s: None) if args.quiet else (
        lambda s: (sys.stderr.write("scaling: %s\n" % s), sys.stderr.flush()))
    doc = run(args, log)
    print(format_table(doc))
    print(format_goals(doc))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, args.json)
    if args.csv:
        write_csv(doc, args.csv)
    if args.plot:
        write_plot(doc, args.plot)
        print("plot: %s" % args.plot)
    return 0 if not any(r["failed"] for r in doc["results"]) else 1
