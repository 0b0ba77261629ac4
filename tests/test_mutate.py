"""spfshm mutate: the operators' edits, stable ids, private copies that run the mutated
code, a known-bad mutant killed, bad input, an interrupted run, the equivalence list."""
import json
import os
import signal
import subprocess
import sys
import io
import textwrap

import pytest

from spfshm import cli
from spfshm.mutate import coverage, harness
from spfshm.mutate.operators import OPERATORS, PY_OPERATORS, Mutant, generate

ROOT = harness.root()

# operator: (source, its mutants: each a list of hunks [first line, last line, new lines])
SNIPPETS = {
    "recheck": ('''
        def f(mm, seq):
            if native.seq_read_retry(mm.mmap_seq, seq):
                return "seq_changed"
            if mm.bugs.on("x") and seq:
                return "switch"
            if seq > 3:
                mm.report("k", "s")
                return None
            return 0
        ''', [[[3, 4, []]]]),
    "sync": ('''
        from .pagetable import free_table_now


        def f(mm, tlb, t):
            flush_tlb_all(mm)
            mm.rcu.call_rcu(free_table_now, mm, t)
            tlb.remove_page(t)
        ''', [[[6, 6, []]], [[7, 7, ["    free_table_now(mm, t)"]]],
              [[8, 8, ["    from spfshm.mm.frames import put_page; put_page(mm, t)"]]]]),
    "lock": ('''
        def f(mm, lock):
            native.spin_lock(lock, mm.cpu)
            if mm.x:
                native.spin_unlock(lock)
                return 1
            mm.y = 2
            native.spin_unlock(lock)
            return 0
        ''', [[[3, 3, []], [5, 5, []], [8, 8, []]]]),
    "unlock_early": ('''
        def f(mm, lock):
            native.spin_lock(lock, mm.cpu)
            native.store_release(mm.p, 1)    # publish
            native.spin_unlock(lock)
        ''', [[[4, 5, ["    native.spin_unlock(lock)",
                       "    native.store_release(mm.p, 1)    # publish"]]]]),
    "trylock": ('''
        def f(mm, ptl):
            if not native.spin_trylock(ptl, mm.cpu):
                return "busy"
            native.spin_unlock(ptl)
        ''', [[[3, 3, ["    if not True:"]]]]),
    "section": ('''
        def f(mm, va):
            native.local_irq_disable()
            try:
                return walk(mm, va)
            finally:
                native.local_irq_enable()
        ''', [[[3, 3, []], [7, 7, ["        pass"]]]]),
    "swap": ('''
        def f(mm, t, e):
            native.store_relaxed(mm.entry_ptr(t, 0), 0)   # clear

            flush_tlb_all(mm)
            t2 = entry_pfn(e)
            mm.count("x")
            put_page(mm, t)
        ''', [[[3, 5, ["    flush_tlb_all(mm)", "",
                       "    native.store_relaxed(mm.entry_ptr(t, 0), 0)   # clear"]]]]),
}


def _root_with(tmp_path, rel, text):
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize("op", sorted(SNIPPETS))
def test_each_operator_makes_exactly_the_expected_edit(tmp_path, op):
    src, want = SNIPPETS[op]
    text = textwrap.dedent(src)
    root = _root_with(tmp_path, "spfshm/mm/snippet.py", text)
    ms = generate(root, ["spfshm/mm/snippet.py"], [op])
    assert [[h[:2] + [h[3]] for h in m.hunks] for m in ms] == want, [m.hunks for m in ms]
    for m in ms:
        assert m.operator == op and m.function == "f" and m.id.startswith("mm/snippet.py:f:")
        compile(m.apply(text), "mutant", "exec")


def test_c_order_weakens_each_call_but_not_comments_or_relaxed_ones(tmp_path):
    text = textwrap.dedent('''\
        /* __atomic_load_n(p, __ATOMIC_ACQUIRE) in a comment */
        uint64_t f(uint64_t *p)
        {
        \t__atomic_store_n(p, __atomic_load_n(p, __ATOMIC_ACQUIRE), __ATOMIC_RELEASE);
        \treturn __atomic_load_n(p, __ATOMIC_RELAXED);
        }
        ''')
    root = _root_with(tmp_path, "native/x.c", text)
    ms = generate(root, ["native"], ["c_order"])
    assert [m.hunks[0][3] for m in ms] == [
        ["\t__atomic_store_n(p, __atomic_load_n(p, __ATOMIC_ACQUIRE), __ATOMIC_RELAXED);"],
        ["\t__atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED), __ATOMIC_RELEASE);"]]
    assert {m.function for m in ms} == {"f"} and len({m.id for m in ms}) == 2


def test_ids_do_not_move_with_unrelated_lines(tmp_path):
    text = open(os.path.join(ROOT, "spfshm/mm/pagetable.py")).read()
    moved = text.replace("\n\n\ndef mk_entry", "\n\n\ndef unrelated(mm):\n    return mm\n\n\n"
                         "\n\n\ndef mk_entry", 1)
    assert moved != text
    before = generate(_root_with(tmp_path / "a", "spfshm/mm/pagetable.py", text),
                      ["spfshm/mm"])
    after = generate(_root_with(tmp_path / "b", "spfshm/mm/pagetable.py", moved),
                     ["spfshm/mm"])
    assert [m.id for m in before] == [m.id for m in after]
    assert all(b.line == a.line + 7 for a, b in zip(before, after) if a.line > 45)


def test_the_generator_covers_every_operator():
    mm = generate(ROOT, ["spfshm/mm"])
    assert len(mm) >= 60 and {m.operator for m in mm} == set(PY_OPERATORS)
    assert {m.operator for m in generate(ROOT, ["native"])} == {"c_order"}
    assert len({m.id for m in mm}) == len(mm)
    assert set(OPERATORS) == set(PY_OPERATORS) | {"c_order"}


def _run_dict(tmp_path, campaign, time_limit=60):
    snap = str(tmp_path / "snapshot")
    harness.snapshot(ROOT, snap, False)
    results = tmp_path / "results"
    results.mkdir()
    return {"snapshot": snap, "tmp": str(tmp_path), "results": str(results),
            "campaign": dict(harness.DEFAULT_CAMPAIGN, **campaign), "time_limit": time_limit}


def _as_run(m, index, snap):
    text = open(os.path.join(snap, m.file)).read()
    return dict(m.to_dict(), index=index, diff=m.diff(text))


def test_a_known_bad_mutant_is_killed_in_its_copy_and_the_control_is_clean(tmp_path):
    """MmuGather.flush_tlbonly without its flush frees frames that TLBs still map, or
    tables that paging-structure caches still hold (whichever free comes first); the
    same seed on an unmutated copy is clean, so the kill came from the mutated code, and
    the work tree still holds the original text (it still yields the mutant)."""
    run = _run_dict(tmp_path, {"seeds": (0, 1)})
    (bad,) = [m for m in generate(run["snapshot"], ["spfshm/mm/tlb.py"], ["sync"])
              if m.function == "MmuGather.flush_tlbonly"]
    control = Mutant("control", bad.file, bad.function, "none", bad.line, "no edit", [])
    r = harness.run_mutant(run, _as_run(bad, 0, run["snapshot"]))
    c = harness.run_mutant(run, _as_run(control, 1, run["snapshot"]))
    assert r["outcome"] == "killed" and r["seed"] == 0, r
    assert r["signature"].split("@")[0] == "frame_uaf" \
        or r["signature"] == "pt_uaf@free_pgtables", r
    assert r["time_to_kill_s"] > 0
    assert c["outcome"] == "survived", c
    for x in (r, c):
        assert x["imported"].startswith(str(tmp_path)) and x["imported"].endswith(
            os.path.join("spfshm", "__init__.py"))
    assert sorted(os.listdir(run["results"])) == ["00000.json", "00001.json"]
    assert bad.id in {m.id for m in generate(ROOT, ["spfshm/mm/tlb.py"], ["sync"])}
    assert not [d for d in os.listdir(tmp_path) if d.startswith("mutant-")]


def test_the_real_kernel_judges_what_no_invariant_does(tmp_path):
    """_range_args without its alignment check breaks no invariant (the stress seed is
    clean) but madvise's errno differs from the kernel's: the seed's diff-kernel replay
    kills it, and with diffkernel=off it survives that seed."""
    (bad,) = [m for m in generate(ROOT, ["spfshm/mm/syscalls.py"], ["recheck"])
              if m.function == "_range_args" and "PAGE - 1" in m.description]
    on = _run_dict(tmp_path / "on", {"seeds": (0, 1)})
    off = _run_dict(tmp_path / "off", {"seeds": (0, 1), "diffkernel": "off"})
    r = harness.run_mutant(on, _as_run(bad, 0, on["snapshot"]))
    s = harness.run_mutant(off, _as_run(bad, 0, off["snapshot"]))
    assert r["outcome"] == "killed" and r["signature"].startswith("diverge@"), r
    assert r["detail"].startswith("spfshm diff-kernel --seed 0 "), r
    assert s["outcome"] == "survived", s


def test_a_scenario_kills_at_one_preemption_what_a_seed_needs_luck_for(tmp_path):
    """zap_huge_pmd comparing the pmd before it takes the pmd lock is caught by a stress
    seed only when its timing happens to open the window; dontneed-vs-dontneed-thp.litmus
    at one preemption finds both DONTNEEDs zapping the one huge pmd every time.  The
    scenario is named where the seed would be."""
    (bad,) = [m for m in generate(ROOT, ["spfshm/mm/huge_memory.py"], ["swap"])
              if m.function == "zap_huge_pmd" and "spin_lock" in m.description]
    thp = os.path.join(ROOT, "stress", "scenarios", "dontneed-vs-dontneed-thp.litmus")
    run = _run_dict(tmp_path, {"seeds": (0, 0), "diffkernel": "off", "scenarios": 1,
                               "scenario_files": [thp]})
    r = harness.run_mutant(run, _as_run(bad, 0, run["snapshot"]))
    assert r["outcome"] == "killed" and r["seed"] == os.path.basename(thp), r
    assert "preemption(s); token spfshm1-" in r["detail"], r
    assert thp in harness.scenario_files(ROOT)


def test_the_deeper_pass_kills_what_needs_two_preemptions(tmp_path):
    """flush_tlb_remote without its last wait (4): a store that read its translation
    between (2) and (3) lands in the freed frame, which takes both CPUs preempted once.
    store-vs-dontneed-no-ipi.litmus is clean at one preemption (and its fail-nth sweep),
    so without the deeper pass the mutant survives; with it the scenario's second level
    kills it, with the token that replays the failing schedule."""
    wait4 = next(i + 1 for i, line in enumerate(open(os.path.join(ROOT, "spfshm", "mm",
                                                                  "tlb.py")))
                 if line.rstrip().endswith("# (4)") and "wait(" in line)
    (bad,) = [m for m in generate(ROOT, ["spfshm/mm/tlb.py"], ["sync"])
              if m.function == "flush_tlb_remote" and m.line == wait4]
    path = os.path.join(ROOT, "stress", "scenarios", "store-vs-dontneed-no-ipi.litmus")
    runs = {d: _run_dict(tmp_path / str(d), {"seeds": (0, 0), "diffkernel": "off",
                                             "scenarios": 1, "deeper": d,
                                             "scenario_files": [path]}, time_limit=300)
            for d in (0, 1500)}
    s = harness.run_mutant(runs[0], _as_run(bad, 0, runs[0]["snapshot"]))
    r = harness.run_mutant(runs[1500], _as_run(bad, 0, runs[1500]["snapshot"]))
    assert s["outcome"] == "survived", s
    assert r["outcome"] == "killed" and r["seed"] == os.path.basename(path), r
    assert r["detail"].startswith("spfshm replay --token spfshm1-"), r


def test_a_mutant_explores_only_the_scenarios_that_call_its_function(tmp_path):
    """Each scenario is explored once under the profiler; the zap_huge_pmd mutant keeps
    the THP scenario, which calls it (and still kills it there), not gup-vs-madvise,
    which never meets a huge pmd; a C mutant keeps every scenario."""
    (bad,) = [m for m in generate(ROOT, ["spfshm/mm/huge_memory.py"], ["swap"])
              if m.function == "zap_huge_pmd" and "spin_lock" in m.description]
    thp, gup = (os.path.join(ROOT, "stress", "scenarios", name) for name in
                ("dontneed-vs-dontneed-thp.litmus", "gup-vs-madvise.litmus"))
    run = _run_dict(tmp_path, {"seeds": (0, 0), "diffkernel": "off", "scenarios": 1,
                               "scenario_files": [thp, gup]})
    cov = coverage.profile_scenarios(run["snapshot"], [thp, gup], 1, 2, dict(os.environ))
    assert ("spfshm/mm/memory.py", _first_line("zap_pte_range")) in cov[gup]
    m = _as_run(bad, 0, run["snapshot"])
    lines_of = coverage.lines_cache(run["snapshot"])
    assert coverage.scenarios_for(m, cov, lines_of) == [thp]
    assert sorted(coverage.scenarios_for(dict(m, file="native/spf_cpu.c"), cov, lines_of)) \
        == [thp, gup]
    out = io.StringIO()
    harness._select_scenarios(run["snapshot"], run["campaign"], [m], 2, out)
    assert m["scenario_files"] == [thp] and "1 of 2 on median" in out.getvalue()
    r = harness.run_mutant(run, m)
    assert r["outcome"] == "killed" and r["seed"] == os.path.basename(thp), r
    assert r["scenarios"] == [1, 2], r


def _first_line(function):
    from spfshm.mutate.operators import function_lines
    with open(os.path.join(ROOT, "spfshm", "mm", "memory.py")) as f:
        return function_lines(f.read())[function]


def test_a_copy_that_imports_the_work_tree_is_an_error_not_a_kill(tmp_path):
    r = {"id": "x", "outcome": "error", "detail": ""}
    harness._classify(r, [{"event": "start", "spfshm": os.path.join(ROOT, "spfshm/x.py"),
                           "native": os.path.join(ROOT, "spfshm/_native.so")},
                          {"event": "seed", "seed": 0, "exit_code": 1, "signature": "a@b",
                           "t": 1.0, "repro": "r"}], False, 0, str(tmp_path), "")
    assert r["outcome"] == "error" and "not the copy" in r["detail"]


@pytest.mark.parametrize("argv, words", [
    (["--operators", "recheck,nope"], "unknown operator 'nope'"),
    (["/etc"], "is not a .py file or directory of spfshm/"),
    (["spfshm/mutate"], "is not a .py file or directory of spfshm/"),
    (["--campaign", "seeds=0:4,color=red"], "unknown key 'color'"),
    (["--campaign", "seeds=4:0"], "bad seeds '4:0'"),
    (["--campaign", "perturb=on"], "bad perturb 'on'"),
    (["--campaign", "diffkernel=yes"], "bad diffkernel 'yes'"),
    (["--campaign", "scenarios=-1"], "bad scenarios '-1'"),
    (["--campaign", "ops"], "expected KEY=VALUE"),
    (["--jobs", "0"], "--jobs must be a positive integer or auto"),
    (["--time-limit", "0"], "--time-limit"),
    (["--ids", "mm/spf.py:nope:recheck:0"], "--ids: no mutant mm/spf.py:nope:recheck:0"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, words):
    try:
        code = cli.main(["mutate"] + argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1, err


def test_list_prints_the_mutants_and_runs_nothing(capsys):
    assert cli.main(["mutate", "spfshm/mm/spf.py", "--operators", "trylock", "--list"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("mm/spf.py:__pte_map_lock:trylock:") and " trylock " in line


def default_sigint():
    """A user's shell: Ctrl-C is not ignored (an ignored SIGINT is inherited through
    exec, and the process running the tests may ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_run_keeps_and_reports_its_results(tmp_path):
    out = tmp_path / "m.json"
    p = subprocess.Popen([sys.executable, "-m", "spfshm", "mutate", "spfshm/mm/tlb.py",
                          "--operators", "sync", "--campaign", "seeds=0:1,scenarios=off",
                          "--jobs", "1",
                          "--json", str(out)], stdout=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=default_sigint)
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("mutate: [1/"):
            os.killpg(p.pid, signal.SIGINT)
            break
    rest = p.stdout.read()
    assert p.wait(timeout=60) == 130, "".join(lines) + rest
    rep = json.loads(out.read_text())
    done = [m for m in rep["mutants"] if m["outcome"] in ("killed", "survived")]
    assert rep["interrupted"] and len(done) >= 1 and rep["counts"]["not run"] >= 1
    assert done[0]["id"] in lines[-1] and "interrupted" in rest


def test_the_equivalence_list_is_current():
    """Every reviewed entry names a mutant the generator still produces, with its
    argument; a c_order entry argued from the machine code still compiles to the
    original's."""
    eq = harness.load_equivalent(ROOT)
    files = sorted({e["file"] for e in eq.values()})
    made = {m.id: m for m in generate(ROOT, files)}
    stale = [i for i in eq if i not in made]
    assert not stale, "no longer generated (update stress/mutants/equivalent.json): %s" % stale
    assert all(len(e["argument"]) > 80 for e in eq.values())
    claims = [made[i] for i, e in eq.items() if e["argument"].startswith("x86-64 only")]
    assert claims
    same = harness.same_object_code(ROOT, claims)
    assert all(same.values()), [i for i, ok in same.items() if not ok]


def test_with_the_caches_off_a_free_that_gives_back_first_is_caught(tmp_path):
    """free_frame poisoning the frame after it went back to the pool: while the frame
    sits in the freeing CPU's own cache nobody else can take it, so the window is
    closed; with pcp=off (zone_pcp_disable) free-vs-alloc-pcp-off.litmus hands it to
    the other CPU's fault at one preemption, and check_poison_mem finds no poison."""
    (bad,) = [m for m in generate(ROOT, ["spfshm/mm/frames.py"], ["swap"])
              if m.function == "free_frame" and "mm.frames.free" in m.description]
    off = os.path.join(ROOT, "stress", "scenarios", "free-vs-alloc-pcp-off.litmus")
    on = tmp_path / "free-vs-alloc-pcp-on.litmus"
    with open(off) as f:
        on.write_text(f.read().replace("pcp=off", "pcp=on"))
    for path, outcome in ((str(on), "survived"), (off, "killed")):
        run = _run_dict(tmp_path / outcome, {"seeds": (0, 0), "diffkernel": "off",
                                             "scenarios": 1, "deeper": 0,
                                             "scenario_files": [path]})
        r = harness.run_mutant(run, _as_run(bad, 0, run["snapshot"]))
        assert r["outcome"] == outcome, r
    assert r["signature"] == "poison_overwritten@alloc", r


def test_kill_9_of_mutate_leaves_no_process_behind(tmp_path):
    """Every link of the chain (pytest, its xdist workers, each mutant's child and its
    CPUs) dies with the one above it (PR_SET_PDEATHSIG), so kill -9 of mutate while
    mutants run leaves nothing."""
    import time
    import psutil
    ident = "mm/tlb.py:flush_tlb_remote:sync:ec813658"       # survives: runs for minutes
    proc = subprocess.Popen([sys.executable, "-m", "spfshm", "mutate", "spfshm/mm/",
                             "--ids", ident, "--jobs", "1", "--campaign",
                             "scenarios=off,seeds=0:400,diffkernel=off"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    below = []
    while time.monotonic() < deadline:
        below = me.children(recursive=True)
        if any("spfshm.mutate.child" in " ".join(p.cmdline()) for p in below
               if p.is_running()):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("no mutant child started within 60 s")
    time.sleep(2)                                  # its CPUs start too
    below = me.children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(below, timeout=5)     # SIGKILL cascades at once
    assert not alive, [p.pid for p in alive]
