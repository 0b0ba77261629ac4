"""The controlled scheduler (native/spf_sched.h, run/sched.py, sched/): one CPU between
points, the same schedule from the same token, tokens that replay every time, shrinking,
and its answers to bad input."""
import dataclasses
import re
import time

import pytest

from spfshm import cli
from spfshm.config import Config
from spfshm.run import sched, workload
from spfshm.run.replay import signature_of
from spfshm.run.runner import run_stress
from spfshm.sched.replay import replay_token
from spfshm.sched.shrink import shrink_token

BUG = "zap_skip_last_pte"


def cfg_of(tmp_path, **kw):
    base = dict(cpus=3, ops=40, seed=5, sched="pct:3", artifacts=str(tmp_path / "art"))
    base.update(kw)
    return Config(**base).resolved()


def failing(tmp_path, bug=BUG, **kw):
    """(cfg, report) of the first seed from 0 whose run under pct:3 catches ``bug``
    (which seed that is follows from the model's op mix and points, not from the test)."""
    for seed in range(30):
        cfg = cfg_of(tmp_path, seed=seed, bugs=(bug,), **kw)
        rep = run_stress(cfg)
        if rep["exit_code"] == 1 and signature_of(rep):
            return cfg, rep
    pytest.fail("no seed in 0..29 catches %s under pct:3 with %r" % (bug, kw))


def test_same_schedule_same_digest_and_another_schedule_another(tmp_path):
    cfg = cfg_of(tmp_path)
    a, b = run_stress(cfg), run_stress(cfg)
    assert a["exit_code"] == b["exit_code"] == 0
    assert a["sched"]["digest"] == b["sched"]["digest"]
    assert a["sched"]["log"] == b["sched"]["log"] and a["sched"]["steps"] == b["sched"]["steps"]
    c = run_stress(dataclasses.replace(cfg, sched_seed=1))
    assert c["sched"]["digest"] != a["sched"]["digest"]       # the digest sees schedules


def test_a_wall_clock_read_in_the_model_is_caught_as_nondeterminism(tmp_path, monkeypatch):
    """The busted twin: an op chosen from the wall clock's parity.  Replaying the token
    must then report digests that differ (the determinism check fails)."""
    cfg = cfg_of(tmp_path, cpus=2, ops=30)
    token = run_stress(cfg)["sched"]["token"]
    assert replay_token(token, 2, str(tmp_path / "r"))["same_digest"] == 2
    real_next = workload.Workload.next

    def leaky_next(self):
        op, args = real_next(self)
        if op in ("load", "store") and time.monotonic_ns() // 1000 & 1:
            op = "store" if op == "load" else "load"
        return op, args
    monkeypatch.setattr(workload.Workload, "next", leaky_next)
    r = replay_token(token, 3, str(tmp_path / "r"))
    assert r["same_digest"] < 3


def test_a_token_replays_its_failure_every_time(tmp_path):
    _, rep = failing(tmp_path, cpus=2, ops=30)
    sig = signature_of(rep)
    assert rep["repro"] == "spfshm replay --token %s" % rep["sched"]["token"]
    r = replay_token(rep["sched"]["token"], 10, str(tmp_path / "r"))
    assert (r["hits"], r["same_digest"], r["signature"]) == (10, 10, sig)


def test_shrink_keeps_the_signature_with_fewer_switches_and_ops(tmp_path):
    _, rep = failing(tmp_path, cpus=2, ops=30)
    r = shrink_token(rep["sched"]["token"], str(tmp_path / "s"))
    assert r["signature"] == signature_of(rep)
    assert r["after"]["switches"] <= r["before"]["switches"]
    assert r["after"]["preemptions"] <= r["before"]["preemptions"]
    assert r["after"]["preemptions"] < r["before"]["preemptions"] or not r["before"]["preemptions"]
    assert sum(r["after"]["ops_per_cpu"]) < sum(r["before"]["ops_per_cpu"])
    again = replay_token(r["token"], 2, str(tmp_path / "r"))
    assert again["hits"] == again["same_digest"] == 2


@pytest.mark.parametrize("bug", ["spf_ptl_spin", "mmap_unlock_leak"])
def test_a_run_stopped_inside_an_operation_shrinks(tmp_path, bug):
    """A deadlock or a hang stops a CPU inside an operation, which it has begun but not
    completed: the explicit schedule keeps that operation (each CPU's operations begun,
    not done), so it fails as the token's run did and shrinks."""
    for seed in range(100):                      # a hang is exit 3, a deadlock exit 1
        rep = run_stress(cfg_of(tmp_path, seed=seed, bugs=(bug,), ops=100))
        if signature_of(rep):
            break
    assert signature_of(rep), "no seed in 0..99 catches %s" % bug
    assert rep["sched"]["ops_begun"] != rep["sched"]["ops_per_cpu"]
    # The token replays as the run it came from, event for event, also through a pool
    # (the deadlock: the CPU that reports it goes offline while it holds the turn, not
    # when its process exits, which another CPU's IPI re-sends would see at any step).
    again = replay_token(rep["sched"]["token"], 3, str(tmp_path / "r"))
    assert again["hits"] == again["same_digest"] == 3, again["runs"]
    r = shrink_token(rep["sched"]["token"], str(tmp_path / "s"), budget_s=20)
    assert r["signature"] == signature_of(rep)
    assert r["before"]["ops_per_cpu"] == rep["sched"]["ops_begun"]


def test_pct_reports_its_bound(tmp_path):
    rep = run_stress(cfg_of(tmp_path, cpus=2, ops=10, sched="pct:2:1000"))
    assert rep["sched"]["pct_bound"] == pytest.approx(1 / (2 * 1000))


def test_a_deadlock_is_reported_at_once_naming_the_blocked_cpus(tmp_path):
    """mmap_unlock_leak: a fault returns holding mmap_lock read; the next writer blocks
    for ever.  Under the scheduler no CPU can run and none has a deadline: a hang at
    once, not after the stall timeout."""
    t0 = time.monotonic()
    rep = run_stress(cfg_of(tmp_path, cpus=2, ops=100, seed=1, bugs=("mmap_unlock_leak",),
                            stall_timeout=60))
    assert rep["exit_code"] == 3
    blocked = [re.search(r"^deadlock under the scheduler at step \d+: no CPU can run "
                         r"\(blocked: CPU ([\d,]+)\)", e) for e in rep["errors"]]
    assert any(blocked)
    assert {m.group(1) for m in blocked if m} <= {"0", "1", "0,1"}
    assert time.monotonic() - t0 < 45


@pytest.mark.parametrize("spec, words", [
    ("pct:0", "DEPTH in 1.."), ("pct:x", "not an integer"), ("rand", "--sched must be"),
    ("random:0", "PER_MILLION in 1..1000000"), ("list:3", "takes no argument"),
    ("guided:r0", "PER_MILLION in 1..1000000"), ("guided:rx:3", "PER_MILLION in"),
    ("guided:1:5:1:e3", "not equal"), ("guided:0:e5:1:e0", "EVENTS in 1..65535"),
])
def test_bad_sched_spec_is_exit_2_with_one_line(spec, words, capsys):
    assert cli.main(["stress", "--sched", spec, "--ops", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_bad_tokens_are_exit_2_naming_the_problem(tmp_path, capsys, monkeypatch):
    assert cli.main(["replay", "--token", "hello"]) == 2
    assert "not a spfshm token" in capsys.readouterr().err
    assert cli.main(["replay", "--token", sched.TOKEN_PREFIX + "@@@"]) == 2
    assert "does not parse" in capsys.readouterr().err
    token = sched.make_token(cfg_of(tmp_path, ops=5), "0" * 16, version="0.0.1+0123456789")
    assert cli.main(["replay", "--token", token]) == 2
    err = capsys.readouterr().err
    assert "made by model version 0.0.1+0123456789" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["shrink", "nonsense"]) == 2
    assert cli.main(["stress", "--sched", "replay:nonsense"]) == 2


def test_irqs_off_walkers_hold_off_the_ipi_under_the_scheduler(tmp_path):
    """IPIs are taken only with IRQs on: a table freed without the IPI sync
    (free_table_no_sync) reaches an IRQs-off walker, and the same schedules without the
    bug are clean (the sync's IPI waits for the walker to enable IRQs)."""
    from spfshm.bugs import BY_NAME
    expect = BY_NAME["free_table_no_sync"].expect
    caught = None
    for seed in range(12):
        cfg = cfg_of(tmp_path, cpus=3, ops=40, seed=seed, bugs=("free_table_no_sync",))
        rep = run_stress(cfg)
        if signature_of(rep) in expect:
            caught = cfg
            break
    assert caught is not None
    control = run_stress(dataclasses.replace(caught, bugs=()).resolved())
    assert control["exit_code"] == 0 and control["ipi"]["sent"] > 0


def test_a_parallel_artifact_becomes_a_token_that_replays(tmp_path):
    """replay --deterministic: the parallel run's configuration, seed and op counts,
    searched under the scheduler until the recorded signature comes back.  (Which
    violation a parallel run meets first depends on the machine's timing, and a rare
    one may need more schedules than this test gives: the next seed's run then.)"""
    from spfshm.sched.replay import find_schedule
    tried = []
    for seed in range(1, 6):
        rep = run_stress(Config(cpus=3, duration=8, seed=seed, bugs=("free_table_no_sync",),
                                artifacts=str(tmp_path / ("par%d" % seed))).resolved())
        if not rep.get("artifacts"):
            continue
        r = find_schedule(rep["artifacts"], 60, 300, str(tmp_path / ("det%d" % seed)),
                          progress=None)
        tried.append((signature_of(rep), r["found"], r["signature"]))
        if r["found"]:
            break
    assert tried and tried[-1][1], tried
    assert r["signature"] == signature_of(rep), tried
    again = replay_token(r["token"], 3, str(tmp_path / "r"))
    assert again["hits"] == again["same_digest"] == 3


def test_a_recorded_op_order_with_a_placed_preemption_replays_from_its_token(tmp_path):
    """GUIDED with a placed preemption (replay --deterministic's second kind of try): the
    op-start order is followed (another order is another run), the tail's preemption
    counts (another step is another run), and the token, whose list is the CPU of each
    op start but each CPU's last (an entry runs its operation through), replays with the
    same digest."""
    order = (0, 1, 2) * 7 + (1, 0, 1)
    cfg = cfg_of(tmp_path, sched="guided:1:3", sched_list=order, cpu_ops=(9, 10, 8), ops=10)
    a = run_stress(cfg)
    assert a["exit_code"] == 0 and a["sched"]["ops_per_cpu"] == [9, 10, 8]
    again = replay_token(a["sched"]["token"], 2, str(tmp_path / "r"))
    assert again["hits"] == again["same_digest"] == 2
    other_order = run_stress(dataclasses.replace(cfg, sched_list=(2, 1, 0) * 7 + (1, 0, 1)))
    other_step = run_stress(dataclasses.replace(cfg, sched="guided:1:40"))
    assert len({a["sched"]["digest"], other_order["sched"]["digest"],
                other_step["sched"]["digest"]}) == 3


THROUGH = """config fault-mode=classic
map 0 16 rw
cpu 0: madvise 0 16; load 8
cpu 1: store 1; store 2; load 9
expect frames_freed == %d
"""


def _guided_scenario(tmp_path, text, spec, order):
    from test_explore import write
    from spfshm.run.scenario import config_of
    return run_stress(config_of(write(tmp_path, text), sched=spec, sched_list=order,
                                artifacts=str(tmp_path / "art")).resolved())


@pytest.mark.parametrize("order,freed", [((0, 1), 0), ((1, 0), 1)])
def test_a_guided_entry_runs_its_operation_through(tmp_path, order, freed):
    """An entry of the recorded op-start order runs its operation to its end, where it
    began: CPU 0's DONTNEED listed first zaps before CPU 1's stores (nothing to free);
    listed after CPU 1's first store, it zaps that page (one frame freed).  When an
    entry stopped at its operation's start, the zap ran at CPU 0's next turn, after
    both stores, either way."""
    rep = _guided_scenario(tmp_path, THROUGH % freed, "guided:1:1000", order)
    assert rep["exit_code"] == 0 and not rep["violations"], rep["violations"]


HELD = """config fault-mode=classic
map 0 16 rw
populate 0 16
cpu 0: madvise 0 16
cpu 1: store 3; store 12
expect fault_classic == %d
"""


@pytest.mark.parametrize("events,faults", [(1, 16), (1000, 18)])
def test_a_held_operation_lets_the_others_run_inside_it(tmp_path, events, faults):
    """A held operation (entry 256 + CPU, ``guided:CPU:eN``): CPU 0's DONTNEED starts,
    is held after its N-th event while CPU 1 runs, then finishes.  Held at its first
    (mmap_lock taken), CPU 1's stores find their pages still mapped: the populate's
    16 faults only; held past its end (never), it zaps first and both stores fault.  The entry is met by
    the held CPU's events alone (it begins no operation after it)."""
    rep = _guided_scenario(tmp_path, HELD % faults, "guided:0:e%d" % events, (256,))
    assert rep["exit_code"] == 0 and not rep["violations"], rep["violations"]
    again = replay_token(rep["sched"]["token"], 2, str(tmp_path / "r"))
    assert again["same_digest"] == 2


@pytest.mark.parametrize("first", ["1", "e1"])
@pytest.mark.parametrize("events,faults", [(1, 16), (1000, 18)])
def test_a_second_placed_preemption_stops_the_partner_after_its_event(tmp_path, events,
                                                                       faults, first):
    """Two placed preemptions (``guided:CPU:[e]STEP:PARTNER:eN``, what replay
    --deterministic tries where one met another violation): CPU 1 drops at its first
    step (or after its first event: its store's first event is its fault's lock),
    CPU 0's DONTNEED runs and, after its N-th event, drops below CPU 1, which
    runs its stores.  After the first (mmap_lock taken) the pages are still mapped: the
    populate's 16 faults only; never (N past the operation's end), both stores fault
    after the zap."""
    rep = _guided_scenario(tmp_path, HELD % faults, "guided:1:%s:0:e%d" % (first, events),
                           ())
    assert rep["exit_code"] == 0 and not rep["violations"], rep["violations"]
    again = replay_token(rep["sched"]["token"], 2, str(tmp_path / "r"))
    assert again["same_digest"] == 2


def test_the_held_kind_spreads_its_events_over_the_operation():
    """E for a held operation: every value of 1..n once, the powers of two first, and
    after them no gap twice as wide as needed (a wide window anywhere is met early)."""
    from spfshm.sched.replay import spread
    for n in (1, 5, 256, 300):
        s = spread(n)
        assert sorted(s) == list(range(1, n + 1))
    s = spread(256)
    assert s[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    first = sorted(s[:9 + 32])
    assert max(b - a for a, b in zip(first, first[1:])) <= 2 * 256 // 32


SHOOTDOWN = """config fault-mode=classic
map 0 16 rw
populate 0 16
map 64 16 rw
cpu 0: munmap 0 16; load 64
cpu 1: load 64; load 65; load 66; load 67; load 68; load 69
cpu 2: load 70; load 71; load 72; load 73; load 74; load 75
"""


def test_a_guided_cpu_waiting_for_acks_lets_each_target_take_its_ipi(tmp_path):
    """CPU 0's entry (its munmap) waits for the flush IPI's acks of CPUs 1 and 2: each
    runs until it has taken its IPI, and CPU 0 goes on; none runs its operations ahead
    of the record meanwhile (letting the current CPU go on, CPU 1 ran all six loads
    before CPU 2 was given its turn to ack)."""
    rep = _guided_scenario(tmp_path, SHOOTDOWN, "guided:0:1000", (0,))
    assert rep["exit_code"] == 0 and not rep["violations"], rep["violations"]
    bits = sched.CPU_BITS
    switches = [(e >> bits, e & ((1 << bits) - 1)) for e in rep["sched"]["log"]]
    away = next(i for i, (_, c) in enumerate(switches) if c != 0)
    back = next(i for i in range(away, len(switches)) if switches[i][1] == 0)
    assert {c for _, c in switches[away:back]} == {1, 2}, switches[:back + 1]
    assert switches[back][0] - switches[away][0] < 60, switches[:back + 1]


def test_two_failing_runs_in_one_second_keep_two_artifacts(tmp_path):
    cfg, a = failing(tmp_path, cpus=2, ops=30)
    b = run_stress(cfg)
    assert a["artifacts"] and b["artifacts"] and a["artifacts"] != b["artifacts"]


def test_a_token_naming_an_op_its_scenario_lacks_is_exit_2(tmp_path, capsys):
    import json
    import os
    from spfshm.run.scenario import load
    _, sc = load(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "stress", "scenarios", "gup-vs-madvise.litmus"))
    sc["cpus"][0] = [["frobnicate", 0]]
    cfg = Config(cpus=2, ops=1, sched="list", scenario=json.dumps(sc),
                 artifacts=str(tmp_path))
    token = sched.make_token(cfg, "0" * 16)
    assert cli.main(["replay", "--token", token]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "frobnicate" in err


def test_shrink_out_of_time_keeps_the_smallest_failing_schedule_so_far(tmp_path):
    _, rep = failing(tmp_path, cpus=2, ops=30)
    r = shrink_token(rep["sched"]["token"], str(tmp_path / "s"), budget_s=1e-6)
    assert not r["complete"] and r["signature"] == signature_of(rep)
    assert replay_token(r["token"], 1, str(tmp_path / "r"))["hits"] == 1


def test_a_slow_machine_does_not_cut_a_scheduled_run_short(tmp_path, monkeypatch):
    """After a violation the parent gives parallel CPUs VIOLATION_GRACE_S, then kills
    them; under --sched the CPUs stop where the schedule says, however slow the machine:
    with no grace at all the token still replays to the same digest."""
    from spfshm.run import runner
    _, rep = failing(tmp_path, cpus=3, ops=40)
    monkeypatch.setattr(runner, "VIOLATION_GRACE_S", 0.0)
    r = replay_token(rep["sched"]["token"], 3, str(tmp_path / "r"))
    assert r["hits"] == r["same_digest"] == 3


def test_ctrl_c_ends_a_sched_benchmark_not_just_its_current_run(tmp_path):
    import signal
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-m", "spfshm", "bench", "sched", "--bugs",
                          "fault_no_ptl", "--seeds", "50", "--max-runs", "40", "--ops", "200"],
                         cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                     signal.SIG_DFL))
    time.sleep(4)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, out + err


ORDERED = """config fault-mode=classic
map 0 16 rw
populate 0 16
map 64 16 rw
cpu 0: munmap 0 16; load 64
cpu 1: load 1
expect segv == 1
"""


@pytest.mark.parametrize("seed", range(6))
def test_overlapping_operations_keep_the_recorded_order_of_starts(tmp_path, seed):
    """``guided:rPM`` (replay --deterministic's overlapping kind): operations overlap at
    random, but none does anything before every start listed ahead of it has begun.
    With CPU 1's load listed after CPU 0's second start, the munmap is over when the
    load runs: it faults on nothing (one SEGV) whoever the coin picks.  A policy that let
    CPU 1 run ahead would load the page before or during the munmap at some seeds."""
    from test_explore import write
    from spfshm.run.scenario import config_of
    rep = run_stress(config_of(write(tmp_path, ORDERED), sched="guided:r500000",
                               sched_list=(0, 0, 1), sched_seed=seed,
                               artifacts=str(tmp_path / "art")).resolved())
    assert rep["exit_code"] == 0 and not rep["violations"], (rep["violations"], rep["errors"])


def test_an_overlapping_order_replays_and_its_log_is_the_same_run(tmp_path):
    """The overlapping kind's token replays with its digest, and its switch log replayed
    as a LIST (what shrink starts from) is the same schedule (the same switches at the
    same steps, the same number of steps): the kind adds no point."""
    order = (0, 1, 2, 2, 1, 0) * 4
    cfg = cfg_of(tmp_path, sched="guided:r100000", sched_list=order, cpu_ops=(8, 8, 8),
                 ops=8, sched_seed=3)
    a = run_stress(cfg)
    assert a["exit_code"] == 0 and a["sched"]["preemptions"] > 0
    again = replay_token(a["sched"]["token"], 2, str(tmp_path / "r"))
    assert again["hits"] == again["same_digest"] == 2
    as_list = run_stress(dataclasses.replace(cfg, sched="list",
                                             sched_list=tuple(a["sched"]["log"])).resolved())
    assert as_list["sched"]["steps"] == a["sched"]["steps"]
    assert as_list["sched"]["log"] == a["sched"]["log"]


def test_an_overlapping_order_is_random_only_from_its_window_on(tmp_path):
    """``guided:rPM:FROM``: before the FROM-th start the operations run one by one (the
    coin is not used: with FROM past the list's end, two scheduler seeds give one
    schedule); from it on at random (two seeds, two schedules)."""
    order = (0, 1, 2) * 8
    logs = {}
    for first in (1000, 0):
        for seed in (1, 2):
            cfg = cfg_of(tmp_path, sched="guided:r300000:%d" % first, sched_list=order,
                         cpu_ops=(8, 8, 8), ops=8, sched_seed=seed)
            rep = run_stress(cfg)
            assert rep["exit_code"] == 0
            logs[first, seed] = rep["sched"]["log"]
    assert logs[1000, 1] == logs[1000, 2]
    assert logs[0, 1] != logs[0, 2]


def test_a_second_preemption_is_queued_only_for_a_related_violation(tmp_path):
    """replay --deterministic queues two-preemption tries where a placed one met the same
    race seen another way (the same kind or the same site), and only once per place."""
    from spfshm.sched.replay import related, second_preemptions
    assert related("pt_uaf@spf_walk", "pipe_age@spf_walk")
    assert related("pt_uaf@gup", "pt_uaf@free_pgtables")
    assert not related("pt_uaf@free_pgtables", "pipe_age@spf_walk")
    cand = cfg_of(tmp_path, sched="guided:2:24", sched_list=(0, 1, 2))
    seen = set()
    tries = second_preemptions(cand, seen)
    assert {c.sched for c in tries[:2]} == {"guided:2:24:0:e1", "guided:2:24:1:e1"}
    assert len(tries) == 2 * 32 and second_preemptions(cand, seen) == []
    held = dataclasses.replace(cand, sched="guided:2:e3", sched_list=(0, 258))
    assert second_preemptions(held, seen) == []
