"""``spfshm bench detect``: time to first detection of every busted variant, over seeds,
with the default settings (each variant's ``needs`` applied: features only, never where
to delay).  ``--perturbation`` says what explores the windows: ``generic`` (the default
run's: a profile chosen by the seed at every primitive), ``named`` (every named delay
point at one fixed rate, none singled out), ``both``, or ``off``, to measure what each
buys.

A seed counts as caught only when its first violation has one of the signatures the
catalogue expects; any other first violation is ``wrong`` (the checkers caught something,
not this bug).  Each seed also runs its control (``bugs.control``: the same settings and
seed without the bug, CONTROL_OPS operations per CPU), which must be clean;
``--no-control`` skips it."""
import dataclasses
import json
import statistics
import tempfile

from .. import bugs
from ..bugs import BY_NAME, CATALOGUE
from ..config import Config
from ..run.replay import signature_of
from .runs import run

CONTROL_OPS = 3000      # per CPU: more than most variants need to be caught
PERTURBATION = ("generic", "named", "both", "off")
NAMED = dict(delay=0.05, delay_max_us=1000.0, delay_points=())   # every point alike


def perturbed(cfg, perturbation):
    """cfg with the exploration of ``perturbation`` (one of PERTURBATION)."""
    generic = perturbation in ("generic", "both")
    named = NAMED if perturbation in ("named", "both") else dict(delay=0.0, delay_points=())
    return dataclasses.replace(cfg, perturb=cfg.perturb if generic else "off", **named)


def run_control(cfg):
    """The control run of a busted run's configuration: None when clean, else what it
    found (the first signature, or the errors)."""
    rep = run(dataclasses.replace(bugs.control(cfg), ops=CONTROL_OPS))
    if rep["exit_code"] == 0 and not rep["violations"] and not rep["errors"]:
        return None
    return signature_of(rep) or "; ".join(rep["errors"]) or "exit %d" % rep["exit_code"]


def measure(bug, seeds, cpus, max_s, perturbation="generic", control=True):
    b = BY_NAME[bug]
    times, sigs, controls, caught, wrong = [], [], [], 0, 0
    with tempfile.TemporaryDirectory() as art:
        for seed in range(seeds):
            cfg = Config(cpus=cpus, duration=max_s, seed=seed, bugs=(bug,), artifacts=art)
            cfg = perturbed(cfg.resolved(), perturbation)
            rep = run(cfg)
            sig = signature_of(rep)
            ok = sig in b.expect
            caught += ok
            wrong += sig is not None and not ok
            sigs.append(sig)
            times.append(rep["elapsed_s"] if ok else float("inf"))
            if control:
                controls.append(run_control(cfg))
    finite = [t for t in times if t != float("inf")]
    return {"bug": bug, "seeds": seeds, "caught": caught, "wrong": wrong,
            "median_s": round(statistics.median(times), 2) if caught * 2 > seeds else None,
            "worst_s": round(max(times), 2) if caught == seeds else None,
            "times_s": [round(t, 2) if t != float("inf") else None for t in times],
            "best_s": round(min(finite), 2) if finite else None,
            "signatures": sigs, "expect": list(b.expect),
            "control": {"runs": len(controls), "clean": controls.count(None),
                        "found": controls} if control else None}


def _seed_text(r, i):
    if r["times_s"][i] is not None:
        return "%s" % r["times_s"][i]
    return "wrong:%s" % r["signatures"][i] if r["signatures"][i] else "miss"


def main(args):
    names = args.bugs.split(",") if args.bugs else [b.name for b in CATALOGUE]
    out = []
    print("%-28s %7s %9s %9s %8s  %s" % ("bug", "caught", "median_s", "worst_s", "control",
                                         "per seed"))
    try:
        for name in names:
            r = measure(name, args.seeds, args.cpus, args.max_duration, args.perturbation,
                        not args.no_control)
            out.append(r)
            c = r["control"]
            print("%-28s %3d/%-3d %9s %9s %8s  %s" % (
                name, r["caught"], r["seeds"],
                r["median_s"] if r["median_s"] is not None else "-",
                r["worst_s"] if r["worst_s"] is not None else "-",
                "%d/%d" % (c["clean"], c["runs"]) if c else "-",
                " ".join(_seed_text(r, i) for i in range(r["seeds"]))), flush=True)
            for seed, found in enumerate(c["found"] if c else ()):
                if found:
                    print("    control of seed %d not clean: %s" % (seed, found), flush=True)
    finally:                          # an interrupted bench keeps the variants it finished
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"bench": "detect", "cpus": args.cpus,
                           "perturbation": args.perturbation,
                           "max_duration_s": args.max_duration, "control_ops": CONTROL_OPS
                           if not args.no_control else None, "results": out,
                           "complete": len(out) == len(names)}, f, indent=2)
    return 0 if all(r["caught"] == r["seeds"] and (not r["control"] or r["control"]["clean"]
                                                   == r["control"]["runs"])
                    for r in out) else 1
