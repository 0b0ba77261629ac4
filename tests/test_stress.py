"""The stress runner end to end: correct runs stay clean, every busted variant is caught
with the signature the catalogue promises (and its control run is clean), the report
carries what it says."""
import dataclasses
import json
import subprocess
import sys

import pytest

from spfshm import bugs
from spfshm.bench import detect
from spfshm.bugs import BY_NAME, CATALOGUE
from spfshm.config import Config
from spfshm.run.runner import run_stress


@pytest.mark.parametrize("table_free", ["ipi", "rcu"])
def test_correct_run_is_clean_and_exercises_everything(table_free):
    rep = run_stress(Config(cpus=3, ops=4000, seed=11, table_free=table_free,
                            check_every=0.3).resolved())
    assert rep["violations"] == [] and rep["errors"] == [] and rep["exit_code"] == 0
    assert all(n > 0 for k, n in rep["ops"].items() if k not in ("reclaim", "collapse")), \
        rep["ops"]
    assert rep["faults"]["classic"] > 0 and rep["tables"]["freed"] > 0
    assert rep["ipi"]["sent"] > 0 and rep["rcu"]["grace_periods"] > 0
    assert rep["invariant_checks"]["sweeps"] >= 2
    assert rep["invariant_checks"]["objects_checked"] > 1000


@pytest.mark.parametrize("mode,table_free,walk", [
    ("spf", "ipi", "auto"), ("spf", "rcu", "auto"), ("spf", "rcu", "irq"),
    ("pervma", "ipi", "auto"), ("pervma", "rcu", "auto"), ("spf,pervma,classic", "ipi", "auto"),
])
def test_fast_paths_clean_with_perturbation(mode, table_free, walk):
    rep = run_stress(Config(cpus=3, ops=3000, seed=21, fault_mode=mode, table_free=table_free,
                            walk=walk, delay=0.02, check_every=0.3).resolved())
    assert rep["violations"] == [] and rep["errors"] == [] and rep["exit_code"] == 0
    f = rep["faults"]
    if "spf" in mode:
        # aborts that are the race, not the address (no VMA, an access error: the
        # classical path decides those, as in the series), send back under half
        racy = sum(n for r, n in f["spf_abort"].items() if r not in ("unmapped", "access_error"))
        assert f["spf_ok"] > 0 and 0 < racy / (f["spf_ok"] + racy) < 0.5, f
        # speculative faults raced the writers and mmap_seq sent some of them back
        assert {"odd", "vma_copy", "pte_map_lock_seq1", "pte_map_lock_seq2"} \
            & set(f["spf_abort"]), f
    if "pervma" in mode:
        assert f["pervma_ok"] > 0 and f["pervma_fallback"] > 0
    assert sum(rep["delay_hits"].values()) > 0


def busted_config(bug, tmp_path):
    """The variant's needs, its window widened where the catalogue says it is: this
    shows that the checker fires (bench detect measures finding it without the hint)."""
    return bugs.with_window(Config(cpus=2, duration=60, seed=1, bugs=(bug,), check_every=0.2,
                                   artifacts=str(tmp_path)).resolved())


@pytest.mark.parametrize("bug", [b.name for b in CATALOGUE])
def test_busted_variant_is_caught(bug, tmp_path):
    """The FIRST violation must have one of the signatures the catalogue expects: what the
    bug causes first (later ones may be consequences, or another checker's luck)."""
    expect = BY_NAME[bug].expect
    rep = run_stress(busted_config(bug, tmp_path))
    assert rep["violations"], (rep["exit_code"], rep["errors"])
    assert rep["violations"][0]["signature"] in expect, \
        ([v["signature"] for v in rep["violations"]], expect)
    assert rep["exit_code"] == (3 if "hang@watchdog" in expect else 1), rep["errors"]
    assert rep["artifacts"].startswith(str(tmp_path))
    assert "--bug %s" % bug in rep["repro"]


@pytest.mark.parametrize("bug", [b.name for b in CATALOGUE])
def test_busted_variant_control_is_clean(bug, tmp_path):
    """The same configuration and seed without the bug (a pairing: with the kernel's
    pairing instead), for as many ops as most variants need to be caught, finds nothing."""
    cfg = dataclasses.replace(bugs.control(busted_config(bug, tmp_path)),
                              ops=detect.CONTROL_OPS)
    rep = run_stress(cfg)
    assert rep["violations"] == [] and rep["errors"] == [] and rep["exit_code"] == 0, \
        ([v["signature"] for v in rep["violations"]], rep["errors"], cfg.repro())


def test_cli_stress_json_and_exit_code(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "spfshm", "stress", "--cpus", "2", "--ops",
                        "1500", "--seed", "5", "--json", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(out.read_text())
    for key in ("config", "ops", "faults", "ipi", "rcu", "violations", "invariant_checks",
                "elapsed_s", "repro"):
        assert key in rep
    assert rep["config"]["seed"] == 5 and rep["config"]["version"]
    assert {"sent", "p50_us", "p99_us"} <= set(rep["ipi"])
    assert "SUCCESS" in r.stdout


def test_cli_stress_bug_prints_repro(tmp_path):
    r = subprocess.run([sys.executable, "-m", "spfshm", "stress", "--cpus", "2",
                        "--duration", "60", "--bug", "rss_no_dec", "--check-every", "0.2",
                        "--quiet", "--artifacts", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "VIOLATION rss@sweep" in r.stdout
    assert "re-run: spfshm stress --cpus 2 --seed 1" in r.stdout and "--bug rss_no_dec" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--cpus", "0"], "--cpus"), (["--cpus", "-3"], "--cpus"), (["--cpus", "9999"], "--cpus"),
    (["--duration", "-1"], "--duration"), (["--ops", "x"], "--ops"),
    (["--bug", "nope"], "--bug"), (["--table-free", "maybe"], "--table-free"),
    (["--check-every", "-1"], "--check-every"), (["--window-pages", "100"], "--window-pages"),
    (["--json", "/nonexistent-dir/r.json"], "--json"), (["--pcp", "half"], "--pcp"),
    (["--fail-nth", "0"], "--fail-nth"), (["--vma-lock", "seqlock"], "--vma-lock"),
    (["--vma-lock", "refcnt", "--fault-mode", "spf,classic"], "--vma-lock refcnt"),
])
def test_stress_usage_errors(args, needle):
    r = subprocess.run([sys.executable, "-m", "spfshm", "stress", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_bugs_lists_catalogue():
    r = subprocess.run([sys.executable, "-m", "spfshm", "bugs"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    for b in CATALOGUE:
        assert b.name in r.stdout and " | ".join(b.expect) in r.stdout
