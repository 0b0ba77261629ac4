"""run/pool.py: scheduled runs on CPUs that stay alive, in one arena, give the runs a
fresh arena and fresh processes give."""
import dataclasses
import os
import signal
import time

from spfshm.run import scenario
from spfshm.run.explore import Explorer
from spfshm.run.pool import Pool
from spfshm.run.runner import run_stress
from test_explore import SCENARIOS


def _cfg(tmp_path, name, **change):
    cfg = scenario.config_of(os.path.join(SCENARIOS, name), sched="list",
                             artifacts=str(tmp_path / "a")).resolved()
    return dataclasses.replace(cfg, **change)


def _explore(cfg, run):
    seen = []

    def one(c):
        rep = run(c)
        seen.append((rep["sched"]["token"], rep["exit_code"]))
        return rep
    ex = Explorer(cfg, 1, run=one).explore()
    return seen, ex.failure


def test_a_pool_runs_the_schedules_fresh_runs_run(tmp_path):
    """Every schedule of spf-vs-munmap up to K=1, clean and with a busted fault (which
    fails at one of them): the same tokens (the digest of every CPU's events), exit codes
    and first failure through a pool as through a fresh arena and fresh forks each."""
    for bugs in ((), ("spf_skip_final_seq_check",)):
        cfg = _cfg(tmp_path, "spf-vs-munmap.litmus", bugs=bugs)
        fresh, f1 = _explore(cfg, run_stress)
        with Pool() as pool:
            pooled, f2 = _explore(cfg, pool.run)
            assert pool.runs == len(pooled)
        assert pooled == fresh and len(fresh) > 50
        assert (f1 is None) == (not bugs), f1
        assert (f1 and f1["token"]) == (f2 and f2["token"])


def test_a_run_after_a_failing_one_starts_from_a_new_arena(tmp_path, monkeypatch):
    """The failing schedule, then the clean scenario's first one, in one pool: clean.
    A pool that does not zero the arena between runs (BUSTED) carries the failure's
    violation records into the next run, which then fails."""
    cfg = _cfg(tmp_path, "spf-vs-munmap.litmus")
    bad = dataclasses.replace(cfg, bugs=("spf_skip_final_seq_check",))
    failing = Explorer(bad, 1).explore().failure
    assert failing
    failing_cfg = dataclasses.replace(bad, sched_list=tuple(failing["switch_list"]))

    def twice():
        with Pool() as pool:
            assert pool.run(failing_cfg)["exit_code"] != 0
            return pool.run(cfg)["exit_code"]
    assert twice() == 0
    monkeypatch.setattr(Pool, "_reset", staticmethod(lambda st: None))
    assert twice() != 0


def test_a_pool_replaces_a_worker_that_died(tmp_path):
    """A worker killed from outside between two runs (and dead before the next starts:
    one killed as the run starts is a crash of that run) is forked anew for the next;
    the run is the one a fresh run gives."""
    cfg = _cfg(tmp_path, "gup-vs-madvise.litmus")
    want = run_stress(cfg)["sched"]["token"]
    with Pool() as pool:
        assert pool.run(cfg)["sched"]["token"] == want
        pid = pool.procs[1][0]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while open("/proc/%d/stat" % pid).read().split()[2] != "Z":   # dead, not reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        rep = pool.run(cfg)
        assert rep["exit_code"] == 0 and rep["sched"]["token"] == want
        assert pool.procs[1][0] != pid
        pids = [p[0] for p in pool.procs.values()]
    for pid in pids:                        # close() leaves no process behind
        assert not os.path.exists("/proc/%d" % pid) or \
            open("/proc/%d/stat" % pid).read().split()[2] == "Z"


def test_a_pool_worker_starts_each_run_with_a_forked_workers_native_state(tmp_path,
                                                                         monkeypatch):
    """A CPU whose run ends with an unlock of a free lock after its last check (a
    mutant's, in the final rcu_barrier): a forked worker's count dies with it, so the
    next run is clean, and through a pool too.  A pool that keeps each worker's native
    state from run to run (BUSTED: no _fresh_cpu_state) reports that unlock as the next
    run's spin_bug."""
    from spfshm import native
    from spfshm.run import pool as pool_mod
    real = pool_mod.worker_main

    def late_unlock(st, cpu):
        real(st, cpu)
        native.spin_unlock(native.ffi.new("uint32_t[1]"))     # a free lock
    monkeypatch.setattr(pool_mod, "worker_main", late_unlock)
    cfg = _cfg(tmp_path, "gup-vs-madvise.litmus")

    def three():
        with Pool() as pool:
            return [pool.run(cfg)["exit_code"] for _ in range(3)]
    assert three() == [0, 0, 0]
    monkeypatch.setattr(pool_mod, "_fresh_cpu_state", lambda st: None)
    assert three()[1:] != [0, 0]


def test_a_pool_keeps_its_layout_when_a_search_goes_back_to_short_lists(tmp_path):
    """A search alternates long guided lists and empty ones (replay --deterministic):
    the pool's list capacity only grows, so it is rebuilt once, not at every change."""
    from spfshm.run.sched import CPU_BITS
    cfg = _cfg(tmp_path, "gup-vs-madvise.litmus")
    long_cfg = dataclasses.replace(cfg, sched_list=tuple(
        (k << CPU_BITS) | (k % 2) for k in range(1, 600)))
    with Pool() as pool:
        pool.run(cfg)
        pool.run(long_cfg)
        st, pids = pool.st, [p[0] for p in pool.procs.values()]
        for c in (cfg, long_cfg, cfg):
            assert pool.run(c)["exit_code"] == 0
            assert pool.st is st and [p[0] for p in pool.procs.values()] == pids


def test_bench_sched_counts_the_runs_a_fresh_run_would(tmp_path):
    """``bench sched`` runs its seeds' runs through one pool: the runs to catch are those
    of fresh runs (a variant caught after more than one run, so the pool is reused, and
    one caught by neither within the limit)."""
    from spfshm.bench.sched import runs_to_catch
    art = str(tmp_path / "a")
    got = []
    for bug, seed in (("mprotect_no_flush", 1), ("gup_fast_no_recheck", 0)):
        fresh = runs_to_catch(bug, seed, "pct:3", 3, 100, 3, art, run_stress)
        with Pool() as pool:
            pooled = runs_to_catch(bug, seed, "pct:3", 3, 100, 3, art, pool.run)
        assert pooled == fresh
        got.append(fresh)
    assert got == [2, None]


def test_the_from_parallel_pipeline_runs_its_schedules_on_a_pool(monkeypatch):
    """``bench sched --from-parallel``: the parallel run is fresh, the search, the ten
    replays and the shrink go through one pool (and still replay 10/10)."""
    from spfshm.bench.sched import pipeline
    pooled = []
    real = Pool.run
    monkeypatch.setattr(Pool, "run", lambda self, cfg, *a: pooled.append(cfg) or
                        real(self, cfg, *a))
    row, = pipeline(["free_frame_before_flush"], 3.0, 20, 20.0, 20.0)
    assert row["find"]["found"] and row["replay"]["hits"] == 10, row
    assert len(pooled) >= row["find"]["tries"] + 10 + row["shrink"]["runs"]
    assert all(c.sched for c in pooled)
