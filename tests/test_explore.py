"""Litmus scenarios (run/scenario.py) and bounded exploration (run/explore.py):
malformed scenarios are usage errors naming FILE:LINE and the field; a clean scenario is
explored exhaustively; a busted one is found, and its token replays the failure."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from spfshm.cli import main
from spfshm.config import ConfigError
from spfshm.run import scenario
from spfshm.run.explore import Explorer, children
from spfshm.run.runner import run_stress
from spfshm.run.sched import read_token
from spfshm.config import Config

SCENARIOS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "stress", "scenarios")
GOOD = """\
# two CPUs, one op each
config fault-mode=classic reclaim=off collapse=off
map 0 512 rw
populate 0 2
cpu 0: gup 0 1
cpu 1:
    madvise 0 1   # DONTNEED
"""


def write(tmp_path, text, name="s.litmus"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("line,lineno,needle", [
    ("cpu 1: madvise 0 1 dontneed", None, None),                       # valid
    ("cpu 1: madvise 0 x", 7, "madvise: NPAGES 'x' is not an integer"),
    ("cpu 1: frob 3", 7, "frob: unknown operation"),
    ("cpu 1: store 4096", 7, "store: PAGE 4096 is outside the window"),
    ("cpu 1: mprotect 0 4 rwx", 7, "mprotect: PROT 'rwx'"),
    ("cpu x: load 1", 7, "cpu: CPU 'x'"),
    ("cpu 1: gup 0 17", 7, "gup: NPAGES 17"),
    ("cpu 1: reclaim", 2, "config: a reclaim op (the seed scanner) needs reclaim=seed"),
    ("populate 0 600", 7, "populate: pages 0..599 are not all in a read-write map"),
    ("thp 8", 7, "thp: page 8 is not the first of a 2 MiB block"),
    ("thp 512", 7, "thp: page 512 is not the first of a 2 MiB block"),
    ("bogus 1", 7, "bogus: unknown operation"),
    ("expect frobs >= 1", 7, "expect: no statistic 'frobs'"),
    ("expect madvise > 1", 7, "expect: OP must be one of >= <= ==, got '>'"),
    ("expect madvise >= x", 7, "expect: N 'x' is not an integer"),
    ("expect madvise 1", 7, "expect: expected expect STAT OP N"),
])
def test_parse_errors_name_line_and_field(tmp_path, line, lineno, needle):
    path = write(tmp_path, GOOD.replace("    madvise 0 1   # DONTNEED", line))
    if needle is None:
        opts, s = scenario.load(path)
        assert s["cpus"][1] == [["madvise", 0, 1]] and s["populate"] == [[0, 2]]
        return
    with pytest.raises(ConfigError) as e:
        scenario.load(path)
    assert str(e.value).startswith("%s:%d: " % (path, lineno)) and needle in str(e.value)


@pytest.mark.parametrize("config,needle", [
    ("config walk=sideways", "s.litmus:2: walk: --walk must be one of"),
    ("config table-free=ipi reclaim=ptreclaim", "s.litmus:2: config: --reclaim ptreclaim"),
    ("config duration=3", "s.litmus:2: duration: not a scenario option"),
    ("config bug=no_such_bug", "s.litmus:2: bug: --bug: unknown"),
    ("config seed=x", "s.litmus:2: seed: 'x' is not an integer"),
])
def test_cli_bad_scenario_exits_2_with_one_line(tmp_path, capsys, config, needle):
    path = write(tmp_path, GOOD.replace("config fault-mode=classic reclaim=off collapse=off",
                                        config))
    assert main(["explore", path, "--preemptions", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_cli_missing_file_and_bad_override_exit_2(tmp_path, capsys):
    assert main(["explore", str(tmp_path / "none.litmus"), "--preemptions", "1"]) == 2
    assert "none.litmus" in capsys.readouterr().err
    path = write(tmp_path, GOOD)
    assert main(["explore", path, "--preemptions", "1", "--config", "walk=up"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--config: walk:" in err[0], err


def test_config_carries_the_scenario(tmp_path):
    """Config.resolved takes the CPUs and ops from the scenario; the runner runs exactly
    the script, from the scenario's layout."""
    cfg = scenario.config_of(write(tmp_path, GOOD), sched="list",
                             artifacts=str(tmp_path / "a")).resolved()
    assert cfg.cpus == 2 and cfg.ops == 1 and "workload=scenario" in cfg.describe()
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="scenario: it has 2 CPUs"):
        dataclasses.replace(cfg, cpus=3).validate()
    rep = run_stress(cfg)
    assert rep["exit_code"] == 0, rep["violations"]
    assert rep["ops"]["gup"] == 1 and rep["ops"]["madvise"] == 1 and rep["ops_total"] == 2


def test_children_count_preemptions():
    # (mask, cur, next): step 0 is the start (free), at step 1 CPU 0 could go on (a
    # preemption to CPU 1), at step 2 CPU 0 blocked (CPU 1 ran: CPU 2 is a free choice)
    ch = [(3, -1, 0), (3, 0, 0), (6, 0, 1), (2, 1, 1)]
    assert children((), ch, 0, 1) == [((1,), 0), ((1 << 16 | 1,), 1), ((2 << 16 | 2,), 0)]
    assert children((), ch, 1, 1) == [((1,), 1), ((2 << 16 | 2,), 1)]
    assert children((2 << 16 | 1,), ch, 0, 1) == []


@pytest.mark.parametrize("bound,clean", [(1, True), (2, False)])
def test_an_expect_line_is_a_final_condition(tmp_path, bound, clean):
    """``expect madvise == N`` after the one DONTNEED: true for 1; for 2 the violation
    expect_failed@scenario names the line, the value and the bound."""
    path = write(tmp_path, GOOD + "expect madvise == %d\n" % bound)
    assert scenario.load(path)[1]["expect"] == [["madvise", "==", bound, 8]]
    rep = run_stress(scenario.config_of(path, sched="list",
                                        artifacts=str(tmp_path / "a")).resolved())
    if clean:
        assert rep["exit_code"] == 0, rep["violations"] or rep["errors"]
        return
    assert rep["exit_code"] == 1
    (v,) = rep["violations"]
    assert v["signature"] == "expect_failed@scenario" and v["detail"].startswith(
        "the scenario's 'expect' at line 8 does not hold at the end: the statistic is 1, "
        "the bound 2"), v


def test_clean_scenario_is_explored_exhaustively(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "spfshm", "explore", write(tmp_path, GOOD),
                        "--preemptions", "1", "--quiet", "--json", str(out),
                        "--artifacts", str(tmp_path / "a")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["exhaustive"] and res["failure"] is None and res["diverged"] == 0
    assert res["schedules"] > 1 and res["per_preemptions"][1] > 0
    assert "no violation (exhaustive up to 1 preemption)" in r.stdout


def test_max_schedules_says_not_exhaustive(tmp_path):
    cfg = scenario.config_of(write(tmp_path, GOOD), artifacts=str(tmp_path / "a")).resolved()
    ex = Explorer(cfg, 1, max_schedules=2).explore()
    assert ex.runs == 2 and not ex.exhaustive
    assert "not exhaustive: stopped at --max-schedules 2" in ex.verdict()


def test_a_seeded_sample_of_the_next_level_runs_after_the_bound(tmp_path):
    """--sample S: once every schedule with at most K preemptions has run, S of those
    with K + 1, drawn from all of them by the seed (the same seed, the same ones)."""
    cfg = scenario.config_of(write(tmp_path, GOOD), artifacts=str(tmp_path / "a")).resolved()
    drawn = {}
    for seed in (0, 0, 1):
        lists = []

        def run(c):
            lists.append(c.sched_list)
            return run_stress(c)

        ex = Explorer(cfg, 0, sample=3, sample_seed=seed, run=run).explore()
        assert ex.per_level[1] == 3 and ex.runs == ex.per_level[0] + 3 < ex.sampled_of + 2
        assert "and 3 sampled of the %d with 1" % ex.sampled_of in ex.verdict()
        drawn.setdefault(seed, []).append(lists[ex.per_level[0]:])
    assert drawn[0][0] == drawn[0][1] != drawn[1][0]


def test_busted_scenario_is_found_and_its_token_replays(tmp_path):
    """gup_fast without its PTE re-check against MADV_DONTNEED: one preemption (between
    gup_fast's read of the PTE and its pin) is enough.  The token replays it."""
    path = os.path.join(SCENARIOS, "gup-vs-madvise.litmus")
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "spfshm", "explore", path, "--preemptions",
                        "1", "--config", "bug=gup_fast_no_recheck", "--quiet", "--json",
                        str(out), "--artifacts", str(tmp_path / "a")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    f = json.loads(out.read_text())["failure"]
    assert f["signature"] == "gup_unmapped@gup" and f["preemptions"] == 1
    assert "VIOLATION gup_unmapped@gup in schedule" in r.stdout
    assert "spfshm replay --token " + f["token"] in r.stdout
    cfg, _, sig = read_token(f["token"])
    assert sig == "gup_unmapped@gup"
    assert json.loads(cfg["scenario"])["cpus"][0] == [["gup", 0, 1]]
    rr = subprocess.run([sys.executable, "-m", "spfshm", "stress", "--sched",
                         "replay:" + f["token"], "--quiet", "--artifacts",
                         str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert rr.returncode == 1 and "VIOLATION gup_unmapped@gup" in rr.stdout, rr.stdout


def test_a_thp_line_leaves_a_huge_pmd_that_only_one_zap_takes(tmp_path):
    """dontneed-vs-dontneed-thp: the block is collapsed before the CPUs start, both
    DONTNEEDs zap it, and exactly one finds the huge pmd (the other its re-check)."""
    cfg = scenario.config_of(os.path.join(SCENARIOS, "dontneed-vs-dontneed-thp.litmus"),
                             sched="list", artifacts=str(tmp_path / "a")).resolved()
    rep = run_stress(cfg)
    assert rep["exit_code"] == 0 and rep["thp"]["zapped"] == 1, rep["thp"]


def test_the_other_mm_gives_a_record_back_poisoned(tmp_path, monkeypatch):
    """unmap-vs-mmap-refcnt-pcp-off: at the scenario's seed CPU 0's free of its VMA
    record goes to the other mm, whose unmap gives it back to the global list (pcp=off)
    when CPU 0 stops; CPU 1's mmap may take it next.  Clean up to K=1.  An unmap that
    gives the record back before it poisons it (the mutant of other_mm_unmap) poisons
    CPU 1's new VMA, found with one preemption."""
    from spfshm.mm import vma_cache
    cfg = scenario.config_of(os.path.join(SCENARIOS, "unmap-vs-mmap-refcnt-pcp-off.litmus"),
                             sched="list", artifacts=str(tmp_path / "a")).resolved()
    rep = run_stress(cfg)
    assert rep["exit_code"] == 0 and rep["faults"]["other_mm_reuse"] == 1, rep["faults"]
    assert Explorer(cfg, 1).explore().failure is None

    def free_first(mm, every=False):
        for _, vid in mm.lent:
            vma_cache.detach_refcnt(mm, vid)
            mm.vmas.free(mm.cpu, vid)                  # BUSTED: given back, then poisoned
            vma_cache._poison(mm.vma[vid])
        mm.lent = []

    from spfshm.run import runner
    monkeypatch.setattr(runner, "other_mm_unmap", free_first)
    ex = Explorer(cfg, 1).explore()
    assert ex.failure and ex.failure["signature"] == "vma_uaf@sweep", ex.verdict()
    assert ex.failure["preemptions"] == 1


def test_shipped_scenarios_parse():
    names = sorted(f for f in os.listdir(SCENARIOS) if f.endswith(".litmus"))
    assert len(names) >= 6
    for n in names:
        cfg = scenario.config_of(os.path.join(SCENARIOS, n), sched="list").resolved()
        assert cfg.cpus == 2


# Found with one preemption only because of a rule of the scheduler (each test fails
# without it): scenario, --config, the expected first violation.
ONE_PREEMPTION = {
    # munmap's work inside its write section (SPLIT_WORK_NS) is a scheduling point under
    # --sched, not a sleep: were it a wait that only the clock ends, the speculative
    # fault (the only other runnable CPU) would always run through its window meanwhile,
    # and SPF without its final mmap_seq check would pass every schedule (66, exhaustive).
    "work_is_a_point_not_a_wait": ("spf-vs-munmap", "bug=spf_skip_final_seq_check",
                                   "pt_lost_ptes@free_pgtables"),
    # Once CPU 0 acked mprotect's flush IPI, both go on: which runs first costs no
    # preemption.  The per-VMA fault that read its VMA before the lock checks is
    # preempted once, after that read; mprotect then blocks on its IPI, CPU 0 takes it,
    # and mprotect must run on to its unlock before CPU 0's checks: with the choice after
    # the ack a preemption, this needed K=2.
    "after_an_ipi_the_choice_is_free": ("pervma-vs-mprotect", "bug=pervma_seq_no_acquire",
                                        "vma_unlocked_change@fault"),
}


@pytest.mark.parametrize("rule", sorted(ONE_PREEMPTION))
def test_found_with_one_preemption(tmp_path, rule):
    name, config, signature = ONE_PREEMPTION[rule]
    cfg = scenario.config_of(os.path.join(SCENARIOS, name + ".litmus"), [config],
                             sched="list", artifacts=str(tmp_path / "a")).resolved()
    ex = Explorer(cfg, 1).explore()
    assert ex.failure and ex.failure["signature"] == signature, ex.verdict()
    assert ex.failure["preemptions"] == 1


def test_the_fail_nth_sweep_fails_each_allocation_in_turn(tmp_path, monkeypatch):
    """pte-alloc-race: both CPUs' first faults allocate the tables they find missing.
    The sweep fails each allocation that may fail in turn and stops at the first run
    with nothing left to fail: clean on the correct code.  A table allocation that
    reports failure after taking a table (a leak on the out-of-memory exit, which the
    random 0.3% never draws in this scenario) passes every schedule up to K=1 and is
    caught by the sweep, with fail-nth in its token."""
    from spfshm.mm import pagetable
    from spfshm.run.inject import Sweep
    cfg = scenario.config_of(os.path.join(SCENARIOS, "pte-alloc-race.litmus"), sched="list",
                             artifacts=str(tmp_path / "a")).resolved()
    clean = Sweep(cfg).run()
    assert clean.failure is None and clean.exhausted and clean.runs >= 4, clean.verdict()
    real = pagetable.alloc_table

    def leaky(mm, level, may_fail=False):
        t = real(mm, level)
        return -1 if may_fail and mm.fault_alloc_fails() else t   # BUSTED: t leaks

    monkeypatch.setattr(pagetable, "alloc_table", leaky)
    assert Explorer(cfg, 1).explore().failure is None
    s = Sweep(cfg).run()
    assert s.failure and s.failure["signature"].endswith("@sweep"), s.verdict()
    assert read_token(s.failure["token"])[0]["fail_nth"] == s.failure["fail_nth"]


def test_the_sweep_fails_the_split_mprotect_needs(tmp_path, monkeypatch):
    """mprotect-thp-nomem: mprotect of part of a huge pmd splits it first, and that
    split's table allocation is one the sweep fails (mprotect then returns -ENOMEM with
    nothing changed): clean.  A do_mprotect that goes on when the split failed (the
    mutant of its re-check) passes every schedule up to K=1 and is caught by the sweep:
    the VMAs split under a huge pmd that still maps the read-only part."""
    from spfshm.mm import syscalls
    from spfshm.run.inject import Sweep
    cfg = scenario.config_of(os.path.join(SCENARIOS, "mprotect-thp-nomem.litmus"),
                             sched="list", artifacts=str(tmp_path / "a")).resolved()
    clean = Sweep(cfg).run()
    assert clean.failure is None and clean.exhausted and clean.runs >= 2, clean.verdict()
    real = syscalls.split_huge_range

    def ignored(mm, start, end):
        real(mm, start, end)
        return True                                    # BUSTED: the failure ignored

    monkeypatch.setattr(syscalls, "split_huge_range", ignored)
    assert Explorer(cfg, 1).explore().failure is None
    s = Sweep(cfg).run()
    assert s.failure and s.failure["signature"] == "stale_pte@sweep", s.verdict()


def test_a_sweep_refuses_an_injector_that_fails_another_attempt(tmp_path):
    """The sweep's contract with mm_types' injector: with fail-nth N each CPU fails its
    N-th attempt and no other.  A run whose counts say otherwise is an error, not a
    verdict (a broken injector would otherwise make the sweep run to its bound)."""
    from spfshm.run.inject import InjectionError, Sweep
    cfg = scenario.config_of(os.path.join(SCENARIOS, "pte-alloc-race.litmus"), sched="list",
                             artifacts=str(tmp_path / "a")).resolved()

    def fake(per_cpu):
        return lambda c: {"sched": {"choices": [], "steps": 0, "token": ""},
                          "interrupted": 0, "exit_code": 0,
                          "fail_nth": {"injected": sum(i for _, i, _ in per_cpu),
                                       "per_cpu": per_cpu}}
    for per_cpu in ([[1, 1, 1], [3, 2, 1]], [[0, 1, 1], [0, 0, 0]], [[2, 0, 0], [0, 0, 0]],
                    [[3, 1, 2], [0, 0, 0]]):
        with pytest.raises(InjectionError, match="exactly its 1-th attempt must fail"):
            Sweep(cfg, run=fake(per_cpu)).run()
    s = Sweep(cfg, run=fake([[0, 0, 0], [0, 0, 0]])).run()
    assert s.exhausted and s.runs == 1 and s.failure is None


@pytest.mark.parametrize("busted", ["every", "next"])
def test_a_broken_injector_is_caught_by_the_sweep(tmp_path, monkeypatch, busted):
    """The same check on real runs (the injector's own mutants): without its re-check it
    fails every attempt (a sweep that never ends: each run injects something); counting
    after the check it fails the (N+1)-th.  Both are refused at the first run whose
    counts show it; the correct injector sweeps pte-alloc-race to the end (above)."""
    from spfshm.mm import mm_types
    from spfshm.run.inject import InjectionError, Sweep
    cfg = scenario.config_of(os.path.join(SCENARIOS, "pte-alloc-race.litmus"), sched="list",
                             artifacts=str(tmp_path / "a")).resolved()
    attempts, at = mm_types.STAT["fail_nth_attempts"], mm_types.STAT["fail_nth_at"]

    def broken(self, n):
        def fails():
            if busted == "every":          # BUSTED: no `if attempts != n: return False`
                self.count("fail_nth_attempts")
            elif self.local[attempts] != n:   # BUSTED: checked before counting
                self.count("fail_nth_attempts")
                return False
            else:
                self.count("fail_nth_attempts")
            self.count("fail_nth_injected")
            self.local[at] = self.local[attempts]
            return True
        return fails
    monkeypatch.setattr(mm_types.MM, "_fail_nth", broken)
    with pytest.raises(InjectionError, match="must fail"):
        Sweep(cfg).run()
