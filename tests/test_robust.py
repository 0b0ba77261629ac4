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

from conftest import shm_leftovers


def start(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "spfshm", "stress", "--artifacts",
                             str(tmp_path / "art"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def workers_of(p, n, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process(p.pid).children()
        if len(kids) >= n:
            return [k.pid for k in kids]
        time.sleep(0.05)
    raise AssertionError("workers never started")


def assert_no_leftovers(pids):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [q for q in pids if psutil.pid_exists(q)
                 and psutil.Process(q).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, "orphan workers: %s" % alive
    assert shm_leftovers() == []


def test_hang_ends_with_exit_3_dump_and_artifact(tmp_path):
    p = start(["--cpus", "3", "--duration", "120", "--bug", "mmap_unlock_leak",
               "--stall-timeout", "2", "--json", str(tmp_path / "r.json")], tmp_path)
    pids = workers_of(p, 3)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 3, out + err
    assert "hang: CPU" in out and "holds: mmap_lock (write)" in out
    assert "waits for: mmap_lock" in out and "IRQs on" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["exit_code"] == 3 and rep["hang_dump"]
    art = rep["artifacts"]
    for f in ("config.json", "report.json", "dump.txt", "timeline.txt", "repro.txt"):
        assert os.path.getsize(os.path.join(art, f)) > 0
    assert_no_leftovers(pids)


def test_ptl_spin_deadlock_is_named_not_hung(tmp_path):
    p = start(["--cpus", "2", "--duration", "120", "--bug", "spf_ptl_spin", "--quiet"],
              tmp_path)
    pids = workers_of(p, 2)
    out, err = p.communicate(timeout=180)
    assert p.returncode == 1, out + err
    assert "VIOLATION deadlock@" in out
    assert_no_leftovers(pids)


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
    assert_no_leftovers(pids)


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
    assert_no_leftovers(pids)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_quickly_with_partial_report(tmp_path, sig, code):
    p = start(["--cpus", "3", "--duration", "300", "--json", str(tmp_path / "r.json")],
              tmp_path)
    pids = workers_of(p, 3)
    time.sleep(2)
    t0 = time.monotonic()
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 5
    assert p.returncode == code, out + err
    assert "INTERRUPTED by %s" % sig.name in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["interrupted"] == sig.name and rep["ops_total"] > 0
    assert_no_leftovers(pids)


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
    assert_no_leftovers(pids)


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
