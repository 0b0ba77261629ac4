"""The busted-variant catalogue against the model: every name the model asks about is an
entry (a misspelt one fails the start-up), every entry is asked about or is a pairing,
every expected signature is one the checkers can produce, and a control run differs
from its busted run only by the bug (tests/test_stress.py runs both; ``bench detect``
follows the same rule)."""
import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys

import pytest

from spfshm import bugs, debug
from spfshm.bugs import CATALOGUE, Bug, CatalogueError, asked_names, \
    check_catalogue
from spfshm.config import Config


def test_the_model_asks_exactly_the_catalogue():
    """Passes the start-up check, and only the model (spfshm/mm/) asks."""
    asked = asked_names()
    check_catalogue(CATALOGUE, asked)
    assert all(w.startswith("mm" + os.sep) for where in asked.values() for w in where), asked


def test_misspelt_name_in_the_model_fails_the_start_up(tmp_path):
    """A copy of the package with one query misspelt refuses to run, naming the line."""
    pkg = os.path.dirname(bugs.__file__)
    copy = tmp_path / "spfshm"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    src = (copy / "mm" / "memory.py").read_text()
    assert src.count('mm.bugs.on("rss_no_dec")') == 1
    (copy / "mm" / "memory.py").write_text(src.replace('mm.bugs.on("rss_no_dec")',
                                                       'mm.bugs.on("rss_no_dex")'))
    r = subprocess.run([sys.executable, "-m", "spfshm", "stress", "--cpus", "2", "--ops",
                        "100", "--quiet"], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "mm/memory.py:" in r.stderr and "'rss_no_dex'" in r.stderr \
        and "did you mean 'rss_no_dec'" in r.stderr, r.stderr
    assert "SUCCESS" not in r.stdout


def _planted(tmp_path, line):
    (tmp_path / "m.py").write_text("def f(mm, name):\n    return %s\n" % line)
    return asked_names(str(tmp_path))


def test_a_query_by_variable_is_refused(tmp_path):
    with pytest.raises(CatalogueError, match="m.py:2: .*string literal"):
        _planted(tmp_path, "mm.bugs.on(name)")
    assert _planted(tmp_path, 'mm.bugs.on("rss_no_dec")') == {"rss_no_dec": ["m.py:2"]}


def _entry(name, step, control=None):
    return Bug(name, step, "-", ("pt_uaf@zap",), "-", {}, control or {})


@pytest.mark.parametrize("extra,needle", [
    (_entry("ghost", "zap_pte_range"), "'ghost': nothing asks"),
    (_entry("free_table_no_sync", "pairing: a with b", {"walk": "rcu"}), "is a pairing"),
    (_entry("pairless", "pairing: a with b"), "'pairless': a pairing needs a control"),
    (Bug("rss_no_dec", "zap_pte_range", "-", ("rss@sweep",), "-",
         {"delay_points": ("install_pte",)}), "'rss_no_dec' needs 'delay_points'"),
])
def test_catalogue_entry_that_does_not_fit_the_model(extra, needle):
    """An entry nothing asks about, a pairing the code asks about, a pairing without its
    control, needs that say where to delay: each fails the check."""
    cat = [b for b in CATALOGUE if b.name != extra.name] + [extra]
    with pytest.raises(CatalogueError, match=needle):
        check_catalogue(cat, asked_names())


def test_expected_signatures_are_ones_the_checkers_report():
    for b in CATALOGUE:
        assert b.expect, b.name
        for sig in b.expect:
            kind, _, site = sig.partition("@")
            assert kind in debug.KINDS and site in debug.SITES, (b.name, sig)


# Every commit an origin cites, looked up in torvalds/linux (the id's subject line, and
# that the commit is about what the entry says): a new citation is added here only
# once it has been checked the same way.
CHECKED_COMMITS = {
    "2ba99c5e0881": "mm/khugepaged: fix GUP-fast interaction by sending IPI",
    "eb66ae030829": "mremap: properly flush TLB before releasing the page",
    "6ce64428d620": "mm/userfaultfd: fix memory corruption due to writeprotect",
    "f39edcf6349a": "mm: pgtable: fix incorrect reclaim of non-empty PTE pages",
    "718b13861d22": "x86: mm: free page table pages by RCU instead of semi RCU",
    "a37259732a7d": "x86/mm: Make MMU_GATHER_RCU_TABLE_FREE unconditional",
    "b1f02b95758d": "mm: fix memory ordering for mm_lock_seq and vm_lock_seq",
    "fb49c455323f": "fork: lock VMAs of the parent process when forking",
    "99baac21e458": "mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem",
    "3104138517fc": "mm: make vma cache SLAB_TYPESAFE_BY_RCU",
    "7a30df49f63a": "mm: mmu_gather: remove __tlb_reset_range() for force flush",
    "3ef938c35035": "x86/mm: Fix flush_tlb_range() when used for zapping normal PMDs",
    "12c9d70bd505": "mm: fix memory leak in copy_huge_pmd()",
}
_HEXISH = re.compile(r"\b(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{7,40}\b")


def test_origins_cite_checked_commits_by_id_and_exact_title():
    """A commit is cited as its 12-digit id followed by its exact subject in quotes, and
    only a commit in CHECKED_COMMITS; a CVE as CVE-YYYY-NNNN."""
    for b in CATALOGUE:
        for m in _HEXISH.finditer(b.origin):
            cid = m.group(0)
            assert cid in CHECKED_COMMITS, (b.name, cid, "not a checked 12-digit id")
            assert b.origin[m.end():].startswith(" '%s'" % CHECKED_COMMITS[cid]), \
                (b.name, cid, "not followed by its title")
        for cve in re.findall(r"CVE\S*", b.origin):
            assert re.fullmatch(r"CVE-\d{4}-\d{4,}[,:;)]?", cve), (b.name, cve)


@pytest.mark.parametrize("bug,changed", [
    ("rss_no_dec", {"bugs": ()}),
    ("walk_rcu_free_ipi", {"bugs": (), "table_free": "rcu-always"}),
    ("irq_walk_no_ipi_flush", {"bugs": (), "tlb_flush": "ipi"}),
    ("mmap_unlock_leak", {"bugs": (), "stall_timeout": Config.stall_timeout}),
    ("spf_ptl_spin", {"bugs": (), "ipi_timeout": Config.ipi_timeout}),
])
def test_control_changes_only_the_bug(bug, changed):
    cfg = Config(cpus=2, seed=7, bugs=(bug,)).resolved()
    ctl = bugs.control(cfg)
    before, after = dataclasses.asdict(cfg), dataclasses.asdict(ctl)
    assert {k: v for k, v in after.items() if before[k] != v} == changed


@pytest.mark.parametrize("bug", [b.name for b in bugs.CATALOGUE])
def test_every_control_is_a_pairing_the_kernel_has(bug):
    """A control run must be correct: an RCU-only walker needs every unlinked table to
    wait for a grace period (plain rcu with reclaim off falls back to an IPI, which is
    walk_rcu_table_free_fallback, not a control)."""
    ctl = bugs.control(Config(cpus=2, seed=7, bugs=(bug,)).resolved())
    assert ctl.walk_mode() != "rcu" or ctl.table_free_always_rcu(), (bug, ctl.describe())


def test_switching_on_an_unknown_name_is_a_usage_error():
    with pytest.raises(ValueError, match="unknown bug 'rss_no_dex'"):
        bugs.Bugs(["rss_no_dex"])
    assert bugs.Bugs(["rss_no_dec"]).on("rss_no_dec") and not bugs.Bugs().on("rss_no_dec")


def _fake_run_stress(busted_sig, control_sig, seen):
    """run_stress stand-in: the busted run's first signature, the control run's."""
    def run(cfg):
        seen.append(cfg)
        sig = busted_sig if cfg.bugs else control_sig
        return {"violations": [{"signature": sig}] if sig else [], "errors": [],
                "exit_code": 1 if sig else 0, "elapsed_s": 0.5}
    return run


@pytest.mark.parametrize("busted_sig,control_sig,result", [
    ("rss@sweep", None, (1, 0, 1, 0)),
    ("frame_leak@sweep", None, (0, 1, 1, 1)),          # caught by something else: wrong
    (None, None, (0, 0, 1, 1)),                          # missed
    ("rss@sweep", "rss@sweep", (1, 0, 0, 1)),            # fires without the bug too
])
def test_bench_detect_counts_the_expected_signature_and_runs_the_control(
        monkeypatch, capsys, busted_sig, control_sig, result):
    from spfshm.bench import detect
    seen = []
    monkeypatch.setattr(detect, "run", _fake_run_stress(busted_sig, control_sig, seen))
    args = argparse.Namespace(bugs="rss_no_dec", seeds=1, cpus=2, max_duration=5.0,
                              perturbation="generic", no_control=False, json=None)
    code = detect.main(args)
    r = detect.measure("rss_no_dec", 1, 2, 5.0)
    assert (r["caught"], r["wrong"], r["control"]["clean"], code) == result
    ctl = seen[1]
    assert ctl.bugs == () and ctl.ops == detect.CONTROL_OPS and ctl.seed == seen[0].seed
    if result[1]:
        assert "wrong:frame_leak@sweep" in capsys.readouterr().out
