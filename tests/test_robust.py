"""Every run ends with a true verdict and a clean machine: hangs, killed workers,
SIGINT/SIGTERM, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from spfshm import debug
from spfshm.config import Config
from spfshm.run import runner
from spfshm.run.report import build_report, summary
from spfshm.run.runner import RunState, Stress, run_stress
from spfshm.run.workers import WorkerError, run_workers

from conftest import arena_mappings


def start(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "spfshm", "stress", "--artifacts",
                             str(tmp_path / "art"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def workers_of(p, n, timeout=20):
    """The pids of the run's n CPUs (forked: the parent's command line; the resource
    tracker is a child too, with its own)."""
    parent = psutil.Process(p.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = [k for k in parent.children() if k.cmdline() == parent.cmdline()]
        except psutil.NoSuchProcess:
            kids = []
        if len(kids) >= n:
            return [k.pid for k in kids]
        time.sleep(0.05)
    raise AssertionError("workers never started")


def assert_no_orphans(pids):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [q for q in pids if psutil.pid_exists(q)
                 and psutil.Process(q).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, "orphan workers: %s" % alive


def assert_segment_unlinked(pid):
    """A running CPU maps the arena, whose name no longer resolves."""
    maps = arena_mappings(pid)
    assert maps and all(m.endswith(" (deleted)") for m in maps), maps
    assert not any(os.path.exists(m[:-len(" (deleted)")]) for m in maps)


def test_hang_ends_with_exit_3_dump_and_artifact(tmp_path):
    p = start(["--cpus", "3", "--duration", "120", "--bug", "mmap_unlock_leak",
               "--stall-timeout", "2", "--json", str(tmp_path / "r.json")], tmp_path)
    pids = workers_of(p, 3)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, out + err
    assert "hang: CPU" in out and "holds: mmap_lock (write)" in out
    assert "waits for: mmap_lock" in out and "IRQs on" in out
    assert "the model hung" in out and "the process was stopped" not in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["exit_code"] == 3 and rep["hang_dump"]
    art = rep["artifacts"]
    for f in ("config.json", "report.json", "dump.txt", "timeline.txt", "trace.json",
              "repro.txt"):
        assert os.path.getsize(os.path.join(art, f)) > 0
    assert_no_orphans(pids)


def test_ptl_spin_deadlock_is_named_not_hung(tmp_path):
    p = start(["--cpus", "2", "--duration", "120", "--bug", "spf_ptl_spin", "--quiet",
               "--delay", "0.6:3000", "--delay-points", "zap_under_ptl"],
              tmp_path)
    pids = workers_of(p, 2)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 1, out + err
    assert "VIOLATION deadlock@" in out
    assert_no_orphans(pids)


def test_kill_worker_reports_and_ends_clean(tmp_path):
    p = start(["--cpus", "3", "--duration", "8", "--kill-worker", "0.2", "--seed", "3",
               "--json", str(tmp_path / "r.json"), "--quiet"], tmp_path)
    pids = workers_of(p, 3)
    out, err = p.communicate(timeout=120)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["kills"], out
    k = rep["kills"][0]
    assert {"cpu", "in_op", "holds", "irqs_off", "rcu_reader", "run_continued"} <= set(k)
    if k["run_continued"]:
        assert "the run continued" in out
    else:
        assert p.returncode == 3 and "cannot continue" in out
    assert p.returncode in (0, 3)
    assert_no_orphans(pids)


def test_killed_idle_cpu_lets_the_run_continue(tmp_path):
    p = start(["--cpus", "3", "--duration", "6", "--kill-worker", "0.3", "--kill-at", "idle",
               "--seed", "2", "--json", str(tmp_path / "r.json"), "--quiet"], tmp_path)
    pids = workers_of(p, 3)
    out, err = p.communicate(timeout=120)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["kills"] and rep["kills"][0]["in_op"] is None, rep["kills"]
    assert rep["kills"][0]["run_continued"] and "the run continued" in out
    assert p.returncode == 0 and rep["violations"] == [], out
    assert rep["invariant_checks"]["sweeps"] > 0
    assert_no_orphans(pids)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_quickly_with_partial_report(tmp_path, sig, code):
    p = start(["--cpus", "3", "--duration", "300", "--json", str(tmp_path / "r.json")],
              tmp_path)
    pids = workers_of(p, 3)
    time.sleep(2)
    assert_segment_unlinked(pids[0])
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)           # the hang bound: a 300 s run stopped
    assert p.returncode == code, out + err
    assert "INTERRUPTED by %s" % sig.name in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["interrupted"] == sig.name and rep["ops_total"] > 0
    assert_no_orphans(pids)


def test_second_sigint_forces_exit(tmp_path):
    p = start(["--cpus", "3", "--duration", "300", "--bug", "mmap_unlock_leak",
               "--stall-timeout", "100"], tmp_path)
    pids = workers_of(p, 3)
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=10)
    assert p.returncode == 130
    assert_no_orphans(pids)


def test_stopped_worker_is_named_stopped_not_a_model_hang(tmp_path):
    p = start(["--cpus", "2", "--duration", "120", "--stall-timeout", "2", "--check-every",
               "0", "--json", str(tmp_path / "r.json"), "--quiet"], tmp_path)
    pids = workers_of(p, 2)
    time.sleep(1)
    os.kill(pids[0], signal.SIGSTOP)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, out + err
    rep = json.loads((tmp_path / "r.json").read_text())
    dump = [d for d in rep["hang_dump"] if "(pid %d," % pids[0] in d]
    assert len(dump) == 1 and "    process: stopped" in dump[0], rep["hang_dump"]
    cpu = int(dump[0].split()[1])
    assert any(e.startswith("hang: CPU %d " % cpu) and
               e.endswith("process stopped): the process was stopped") for e in rep["errors"]), \
        rep["errors"]
    assert_no_orphans(pids)


def test_a_cpu_stuck_on_a_stopped_one_names_it_not_the_model():
    """A CPU that waits on one whose process was stopped went stuck a moment before it
    (its heartbeat moved until the stop): the hang names the stopped CPU, not a model
    hang (test_stopped_worker_is_named_stopped_not_a_model_hang met that order)."""
    from spfshm.run.watchdog import os_stalled, stall_cause
    dumps = [{"process": "sleeping"}, {"process": "stopped"}, {"process": "running"}]
    assert os_stalled(dumps) == [1]
    assert stall_cause(dumps[0], dumps) == "CPU 1's process was stopped"
    assert stall_cause(dumps[1], dumps) == "the process was stopped"
    assert stall_cause(dumps[2], [dumps[0], dumps[2]]) == "the model hung"


def test_final_sweep_runs_after_a_violation_and_keeps_the_first(tmp_path):
    rep = run_stress(Config(cpus=2, duration=60, seed=1, bugs=("rss_no_dec",),
                            check_every=0.2, artifacts=str(tmp_path)).resolved())
    assert rep["exit_code"] == 1
    first = rep["violations"][0]
    assert first["signature"] == "rss@sweep" and not first["after_first"]
    after = rep["violations_after_first"]       # the RSS drift is still there at the end
    assert after and all(v["after_first"] and v["stamp"] > first["stamp"] for v in after)
    assert "rss@sweep" in {v["signature"] for v in after}
    assert rep["violation_count_after_first"] == len(after)
    assert "VIOLATION rss@sweep (CPU -1, va 0x0) [after the first violation]:" in summary(rep)


@pytest.mark.parametrize("sweep_raises", [False, True])
def test_final_sweep_runs_after_a_crash_and_cannot_crash_the_runner(monkeypatch, tmp_path,
                                                                     sweep_raises):
    """A CPU killed holding a lock ends the run; the final sweep runs anyway (the only
    sweep with --check-every 0), and a state that trips it is a note, not a traceback."""
    if sweep_raises:
        def boom(mm, **kw):
            raise IndexError("half-done state")
        monkeypatch.setattr(runner, "sweep", boom)
    rep = run_stress(Config(cpus=3, duration=30, seed=4, kill_worker=1.0, kill_at="lock",
                            check_every=0, artifacts=str(tmp_path)).resolved())
    assert rep["kills"] and not rep["kills"][0]["run_continued"], rep["kills"]
    assert rep["exit_code"] == 3 and any("cannot continue" in e for e in rep["errors"])
    assert all(v["after_first"] for v in rep["violations_after_first"])
    if sweep_raises:
        assert rep["invariant_checks"]["sweeps"] == 0
        assert "the final sweep stopped: IndexError: half-done state" in rep["notes"]
    else:
        assert rep["invariant_checks"]["sweeps"] == 1


def test_final_sweep_error_in_a_clean_run_is_an_internal_error(monkeypatch, tmp_path):
    def boom(mm, **kw):
        raise IndexError("model bug")
    monkeypatch.setattr(runner, "sweep", boom)
    rep = run_stress(Config(cpus=2, ops=300, seed=1, check_every=0,
                            artifacts=str(tmp_path)).resolved())
    assert rep["exit_code"] == 3
    assert rep["errors"] == ["the final sweep stopped: IndexError: model bug"]


def test_a_hang_while_the_parent_builds_the_layout_is_an_error(monkeypatch, tmp_path):
    """No watchdog runs before the CPUs start: a model loop in the parent's set-up (a
    broken re-check in a function do_mmap calls) ends at the stall timeout as an error
    that names where it was, and leaves no segment behind."""
    def spin(mm, addr, length, prot, flags):
        while True:
            pass
    monkeypatch.setattr(runner, "do_mmap", spin)
    before = set(os.listdir("/dev/shm"))
    t0 = time.monotonic()
    rep = run_stress(Config(cpus=2, ops=300, seed=1, stall_timeout=1.0,
                            artifacts=str(tmp_path)).resolved())
    assert time.monotonic() - t0 < 30
    assert rep["exit_code"] == 3 and rep["violations"] == []
    assert rep["errors"] == ["the initial layout did not finish within 1s (hang in spin)"]
    assert set(os.listdir("/dev/shm")) <= before


def test_kill_point_freezes_the_forked_worker_even_before_it_registers():
    """--kill-worker may pick a CPU whose slot has no pid yet (pid 0: kill(0, SIGSTOP)
    would freeze the whole process group, the runner included)."""
    cfg = Config(cpus=2, ops=1, kill_worker=0.5, kill_at="any").resolved()
    st = RunState(cfg)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert int(st.arena["percpu"][0]["pid"]) == 0
        assert Stress(cfg, None)._wait_for_kill_point(st, 0, victim.pid)
        assert psutil.Process(victim.pid).status() == psutil.STATUS_STOPPED
    finally:
        victim.kill()
        victim.wait(10)
        st.close()


def test_unknown_worker_end_is_a_crash(make_smp, tmp_path):
    """A worker reaped by someone else (here: the kernel, SIGCHLD ignored) has no known
    exit status; that is a crash, never a success."""
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        arena, smp = make_smp(2)
        with pytest.raises(WorkerError, match="exit status unknown"):
            run_workers(smp, 2, lambda cpu: None, timeout=60)
        rep = run_stress(Config(cpus=2, ops=200, seed=1, check_every=0,
                                artifacts=str(tmp_path)).resolved())
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert rep["exit_code"] == 3
    assert "CPU 0: exit status unknown (already reaped)" in rep["errors"], rep["errors"]


def test_exit_1_when_a_violation_comes_with_a_hang_or_crash():
    """Both are reported; a violation decides the exit status, the watchdog's own hang
    record alone does not (it is exit 3)."""
    cfg = Config(cpus=2, ops=1).resolved()
    st = RunState(cfg)
    try:
        stress = Stress(cfg, None)
        watchdog = debug.Reporter(st.arena, cfg.cpus, -1)
        watchdog.report("hang", "watchdog", 0, 1, 2000, 0)
        stress.errors.append("hang: CPU 1 made no progress for 2s")
        stress.hang = ["CPU 1 (pid 1, online): in mmap"]
        assert build_report(st, stress, 1.0)["exit_code"] == 3
        debug.Reporter(st.arena, 0, 0).report("rss", "sweep", 0, 5, 4, 0)
        rep = build_report(st, stress, 1.0)
        assert rep["exit_code"] == 1 and rep["violation_count"] == 2
        text = summary(rep)
        assert "ERROR: hang: CPU 1" in text and "VIOLATION rss@sweep" in text
        assert "FAILURE: violations (and hang/crash/internal errors) (exit 1)" in text
        stress.hang = None
        stress.errors = ["CPU 1: killed by SIGSEGV"]
        assert build_report(st, stress, 1.0)["exit_code"] == 1
    finally:
        st.close()


@pytest.mark.parametrize("args,needle", [
    (["--artifacts", "/proc/spfshm-no"], "--artifacts"),
    (["--kill-worker", "2"], "--kill-worker"),
    (["--kill-worker", "-1"], "--kill-worker"),
    (["--stall-timeout", "0"], "--stall-timeout"),
    (["--delay", "x"], "--delay"),
    (["--delay", "1.5"], "--delay"),
    (["--delay", "0.1", "--delay-points", "nope"], "--delay-points"),
    (["--fault-mode", "spf,bogus"], "--fault-mode"),
    (["--workload", "nope"], "--workload"),
    (["--reclaimer"], "--reclaimer"),
    (["--window-pages", "99999999"], "--window-pages"),
])
def test_bad_input_exit_2_before_anything_starts(args, needle, tmp_path):
    r = subprocess.run([sys.executable, "-m", "spfshm", "stress", *args],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert r.stdout == ""


def test_a_cpu_that_crashes_under_the_scheduler_is_the_error_not_a_hang(monkeypatch,
                                                                        tmp_path):
    """Under --sched a CPU that dies in its operation dies holding the turn: the others
    can never stop.  The run ends with the crash as its error, the others killed after
    the short grace (a note), not 30 s later as a second error, a hang."""
    real = runner.run_op

    def crashing(mm, cpu, op, args):
        if mm.cpu == 0:                   # a native access at index -1: no finally runs
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(mm, cpu, op, args)
    monkeypatch.setattr(runner, "run_op", crashing)
    rep = run_stress(Config(cpus=2, ops=20, seed=1, sched="random", check_every=0,
                            artifacts=str(tmp_path)).resolved())
    assert rep["exit_code"] != 0
    assert any("CPU 0: killed by SIGSEGV" in e for e in rep["errors"]), rep["errors"]
    assert not any("hang" in e for e in rep["errors"]), rep["errors"]
