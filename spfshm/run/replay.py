"""``spfshm replay ARTIFACT``: re-run a recorded failure K times and measure how often it
comes back (same first violation signature) and how fast.  ``--cpus`` may change the CPU
count, to see the hit rate against it (syzkaller users' first question about a flaky
reproducer)."""
import dataclasses
import json
import os
import statistics

from ..config import Config, ConfigError


def load(artifact):
    """(config, signature) of an artifact directory; ConfigError names the problem."""
    try:
        with open(os.path.join(artifact, "config.json")) as f:
            d = json.load(f)
        with open(os.path.join(artifact, "report.json")) as f:
            rep = json.load(f)
    except OSError as e:
        raise ConfigError("%s is not a spfshm artifact: %s" % (artifact, e.strerror or e))
    except ValueError as e:
        raise ConfigError("%s: malformed JSON: %s" % (artifact, e))
    d.pop("version", None)
    cfg = Config.from_dict(d)
    sig = rep["violations"][0]["signature"] if rep.get("violations") else \
        ("hang" if rep.get("hang_dump") else None)
    return cfg, sig


def signature_of(rep):
    if rep["violations"]:
        return rep["violations"][0]["signature"]
    return "hang" if rep.get("hang_dump") else None


def replay(artifact, repeat, cpus=None, run=None):
    from .runner import run_stress
    run = run or run_stress
    cfg, sig = load(artifact)
    cfg = dataclasses.replace(cfg, artifacts=os.path.join(artifact, "replays"))
    if cpus:
        cfg = dataclasses.replace(cfg, cpus=cpus)
    cfg = cfg.resolved()
    hits, times = 0, []
    runs = []
    for k in range(repeat):
        rep = run(cfg)
        got = signature_of(rep)
        hit = got == sig
        hits += hit
        if hit:
            times.append(rep["elapsed_s"])
        runs.append({"run": k, "signature": got, "hit": hit, "elapsed_s": rep["elapsed_s"]})
    return {"artifact": artifact, "signature": sig, "cpus": cfg.cpus, "repeat": repeat,
            "hits": hits, "hit_rate": hits / repeat if repeat else 0.0,
            "time_to_hit_median_s": round(statistics.median(times), 3) if times else None,
            "time_to_hit_max_s": round(max(times), 3) if times else None, "runs": runs}
