"""Seed campaigns: every seed runs one correct configuration (they rotate with the seed)
for a short, fixed number of operations and must stay clean.

A campaign is a pytest parametrization (one test per seed), so it spreads over cores or
hosts with pytest-xdist (``-n``) and over CI matrix jobs with ``--shard I/N``; each test
drops its result as JSON in a directory, and ``spfshm fuzz`` merges them, deduplicates
failures by signature and adds new ones to the corpus.  Environment: SPFSHM_SEEDS
("A:B", default ``ROTATION``), SPFSHM_SHARD ("I/N"), SPFSHM_RESULTS (directory),
SPFSHM_OPS (per CPU), SPFSHM_SCHED (a --sched spec: every seed under the controlled
scheduler, its schedule seeded by the seed too).
"""
import dataclasses
import json
import os
import tempfile

from ..config import Config, ConfigError
from .runner import run_stress

# The correct configurations a campaign rotates through (each the kernel's own pairing);
# the generic perturbation's profile rotates with the seed too (--perturb auto).
CONFIGS = [
    dict(),                                         # the default run: today's kernel
    # a low vm.max_map_count: mmap and the splits of munmap and mprotect meet it
    dict(fault_mode="classic", table_free="ipi", max_map_count=16),
    dict(fault_mode="spf", table_free="ipi"),
    # no per-CPU caches in the allocators: a freed object is the next one any CPU takes
    dict(fault_mode="pervma", table_free="rcu", max_map_count=8, pcp="off"),
    dict(fault_mode="spf,pervma,classic", table_free="rcu", reclaim="ptreclaim",
         workload="faults"),
    # the seed scanner write-locks the VMAs over a table: per-VMA faults must meet it
    dict(fault_mode="pervma,spf", table_free="ipi", reclaim="seed"),
    dict(fault_mode="pervma,spf", table_free="rcu", tlb_flush="no-ipi", delay=0.01),
    dict(fault_mode="spf", table_free="rcu", walk="irq", delay=0.02),
    dict(fault_mode="classic,pervma", table_free="ipi", workload="faults+writer"),
    dict(fault_mode="spf,pervma,classic", table_free="ipi", collapse="write-lock",
         workload="faults"),
    dict(fault_mode="spf,classic", table_free="rcu", tlb_flush="no-ipi", collapse="write-lock",
         reclaim="ptreclaim", workload="faults"),
    # tlb_remove_table's IPI fallback, from munmap and the seed scanner
    dict(fault_mode="spf,pervma,classic", table_free="rcu", reclaim="seed"),
    dict(fault_mode="pervma,spf,classic", table_free="rcu-always", madvise_lock="vma",
         workload="faults", pcp="off"),
    # The controlled scheduler (run/sched.py): one CPU at a time, a switch at 20% of the
    # points, so a window between two primitives is opened without being pointed at.
    dict(sched="random:200000"),
    dict(fault_mode="spf,pervma,classic", table_free="ipi", sched="random:200000",
         workload="faults"),
    # v6.17: the vm_refcnt per-VMA lock, VMA records reused at once (by another mm too),
    # DONTNEED and PT_RECLAIM under the VMA read lock; no per-CPU caches, so a record this
    # CPU frees is the next one any CPU allocates
    dict(vma_lock="refcnt", table_free="rcu", madvise_lock="vma", pcp="off"),
]

# The fixed campaign (stress/test_campaign.py): every configuration of the rotation once.
ROTATION = "0:%d" % len(CONFIGS)


def _pair(spec, sep, option, form):
    """Two integers x < y written ``x<sep>y`` (ConfigError naming the option)."""
    try:
        x, y = (int(v) for v in spec.split(sep))
    except ValueError:
        raise ConfigError("%s must be %s (integers), got %r" % (option, form, spec))
    if not 0 <= x < y:
        raise ConfigError("%s %s needs 0 <= %s < %s, got %r"
                          % (option, form, form[0], form[-1], spec))
    return x, y


def parse_seeds(spec):
    return _pair(spec, ":", "--seeds", "A:B")


def parse_shard(spec):
    return _pair(spec, "/", "--shard", "I/N")


def seeds_of(seeds=ROTATION, shard="0/1"):
    (a, b), (i, n) = parse_seeds(seeds), parse_shard(shard)
    return [s for s in range(a, b) if (s - a) % n == i]


def config_for(seed, ops=1500, cpus=2, sched=""):
    base = dict(CONFIGS[seed % len(CONFIGS)])
    if sched:                                  # fuzz --sched: every seed under it
        base["sched"] = sched
    modes = len(base.get("fault_mode", Config.fault_mode).split(","))
    return Config(cpus=max(cpus, modes, 3 if base.get("workload") == "faults+writer" else 0),
                  ops=ops, seed=seed, check_every=0.5, **base)


def run_one(seed, ops=1500, results=None, sched=""):
    cfg = config_for(seed, ops, sched=sched)
    with tempfile.TemporaryDirectory() as art:
        rep = run_stress(dataclasses.replace(cfg, artifacts=art).resolved())
    out = {"seed": seed, "config": cfg.to_dict(), "exit_code": rep["exit_code"],
           "signature": rep["violations"][0]["signature"] if rep["violations"] else None,
           "violations": rep["violations"][:5], "errors": rep["errors"],
           "elapsed_s": rep["elapsed_s"], "repro": rep["repro"]}
    if results:
        with open(os.path.join(results, "seed-%d.json" % seed), "w") as f:
            json.dump(out, f)
    return out


def merge(results_dir):
    """Every result in a directory, merged: totals and failures by signature."""
    runs = []
    for name in sorted(os.listdir(results_dir)):
        if name.endswith(".json"):
            with open(os.path.join(results_dir, name)) as f:
                runs.append(json.load(f))
    failures = {}
    for r in runs:
        if r["exit_code"] != 0:
            failures.setdefault(r["signature"] or "exit %d" % r["exit_code"], []).append(r)
    return {"runs": len(runs), "clean": sum(r["exit_code"] == 0 for r in runs),
            "failures": {sig: {"seeds": [r["seed"] for r in rs], "repro": rs[0]["repro"],
                               "config": rs[0]["config"]} for sig, rs in failures.items()},
            "seeds": sorted(r["seed"] for r in runs)}


def merge_json(paths):
    """Shard results (``spfshm fuzz --json``) merged into one document."""
    out = {"runs": 0, "clean": 0, "failures": {}, "seeds": []}
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        out["runs"] += d["runs"]
        out["clean"] += d["clean"]
        out["seeds"] = sorted(out["seeds"] + d["seeds"])
        for sig, f in d["failures"].items():
            cur = out["failures"].setdefault(sig, dict(f, seeds=[]))
            cur["seeds"] = sorted(cur["seeds"] + f["seeds"])
    return out


def add_to_corpus(corpus, merged):
    """New failure signatures become corpus entries (JSON, never pickle)."""
    os.makedirs(corpus, exist_ok=True)
    known = set()
    for name in os.listdir(corpus):
        if name.endswith(".json"):
            with open(os.path.join(corpus, name)) as f:
                known.add(json.load(f).get("signature"))
    added = []
    for sig, f in merged["failures"].items():
        if sig in known:
            continue
        path = os.path.join(corpus, "fuzz-%s-seed%d.json" % (
            sig.replace("@", "-at-").replace(" ", "_"), f["seeds"][0]))
        with open(path, "w") as fh:
            json.dump({"config": f["config"], "expect": "clean", "signature": sig,
                       "note": "failed in a fuzz campaign: %s" % f["repro"]}, fh, indent=2)
        added.append(path)
    return added
