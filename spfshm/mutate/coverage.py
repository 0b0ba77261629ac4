"""Which functions each litmus scenario runs, so that a mutant's campaign explores only
the scenarios that reach it (coverage-based test selection, as mutation tools select the
tests that cover a mutant).

Why skipping is exact: an exploration is deterministic (the scheduler decides every step
from the schedule list, and logical time replaces the clock: test_sched's determinism
tests).  A scenario none of whose schedules, on the original code, calls the function a
mutant edits runs the same schedules on the mutant, to the same verdict: it cannot kill
it.  Only Python mutants are selected; the native core is not profiled, so a C mutant's
campaign explores every scenario.

  1. ``python -m spfshm.mutate.coverage OUT BOUND SCENARIO`` runs in the run's snapshot
     (cwd and PYTHONPATH, as a mutant's child does).  A profile hook (sys.setprofile and
     threading.setprofile), set before spfshm is imported and inherited by the forked
     CPUs, appends ``file:first line`` of each code object to OUT the first time a
     process calls it (one short line per write, O_APPEND: whole); then the scenario is
     explored up to BOUND preemptions by the campaign's own function
     (child.explore_scenario).
  2. ``profile_scenarios`` runs (1) for every scenario, ``jobs`` at a time, and returns
     each scenario's set of (file, first line), files relative to the snapshot, the
     scenarios ordered by what their profiled exploration took, cheapest first.
  3. ``scenarios_for`` gives a mutant the scenarios whose set holds its function's first
     line (operators.function_lines: co_firstlineno, the first decorator's line).
"""
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .. import native

PROFILE_TIMEOUT_S = 900


class ProfileError(RuntimeError):
    """A scenario's profiled exploration failed to run (not a violation: an error)."""


def profile_scenarios(snap, files, bound, jobs, env):
    """{scenario path: {(file relative to snap, first line)}} for each of ``files``,
    explored up to ``bound`` in the snapshot ``snap``, ``jobs`` at a time; in the order
    of what each profiled exploration took, cheapest first (so a mutant's campaign, which
    explores its scenarios in this order, gets through as many as it can before its
    time limit)."""
    def one(i_path):
        i, path = i_path
        t0 = time.monotonic()
        out = os.path.join(snap, ".coverage-%d.txt" % i)
        r = subprocess.run([sys.executable, "-m", "spfshm.mutate.coverage", out, str(bound),
                            path], cwd=snap, env=dict(env, PYTHONPATH=snap),
                           capture_output=True, text=True, timeout=PROFILE_TIMEOUT_S,
                           preexec_fn=native.die_with_parent)
        if r.returncode != 0:
            raise ProfileError("profiling %s: exit %d: %s" % (
                os.path.basename(path), r.returncode, r.stderr.strip()[-300:]))
        covered = set()
        with open(out) as f:
            for line in f:
                name, _, first = line.rstrip("\n").rpartition(":")
                if name.startswith(snap + os.sep) and first.isdigit():
                    covered.add((os.path.relpath(name, snap), int(first)))
        os.unlink(out)
        return time.monotonic() - t0, path, covered
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return {path: covered for _, path, covered in sorted(pool.map(one, enumerate(files)),
                                                             key=lambda r: r[0])}


def scenarios_for(mutant, coverage, lines_of):
    """The scenarios (paths, in the profile's order) whose profile holds the mutant's
    function; every one for a C mutant or a function the file map does not know.
    ``lines_of(file)``: operators.function_lines of that file in the snapshot."""
    if not mutant["file"].endswith(".py"):
        return list(coverage)
    first = lines_of(mutant["file"]).get(mutant["function"])
    if first is None:
        return list(coverage)
    return [p for p, covered in coverage.items() if (mutant["file"], first) in covered]


def _hook(out):
    """The profile function of step (1)."""
    seen = set()
    state = {"pid": None, "fd": -1}

    def prof(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code in seen:
            return
        seen.add(code)
        pid = os.getpid()
        if state["pid"] != pid:                # a forked CPU: its own descriptor
            state["pid"] = pid
            state["fd"] = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(state["fd"], ("%s:%d\n" % (code.co_filename, code.co_firstlineno)).encode())
    return prof


def main(argv):
    out, bound, path = argv[0], int(argv[1]), argv[2]
    prof = _hook(out)
    threading.setprofile(prof)
    sys.setprofile(prof)
    from .child import explore_scenario          # imported under the hook, as spfshm is
    explore_scenario(path, bound)
    sys.setprofile(None)
    threading.setprofile(None)


def lines_cache(snap):
    """``lines_of`` for scenarios_for: function_lines of each snapshot file, read once."""
    from .operators import function_lines
    cache = {}

    def lines_of(rel):
        if rel not in cache:
            with open(os.path.join(snap, rel)) as f:
                cache[rel] = function_lines(f.read())
        return cache[rel]
    return lines_of


if __name__ == "__main__":
    main(sys.argv[1:])
