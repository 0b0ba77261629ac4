"""Running mutants: the campaign spec, private copies, one mutant's campaign under a time
limit, and the merged report.

A run (``spfshm mutate``, ``main``):
  1. snapshot the installed package (with its built native core) and, for ``c_order``,
     native/, into a temporary directory; generate the mutants from the snapshot, so
     other people's edits of the work tree during the run change nothing
  2. write a manifest; mutants in the reviewed equivalence list are not run; with
     scenarios in the campaign, each is explored once under a profiler and a Python
     mutant's campaign keeps those that call its function (coverage.py: the others
     cannot kill it)
  3. pytest -n JOBS on mutant_tests.py: per mutant, a private copy of the snapshot, the
     edit applied there (``c_order``: the native core rebuilt there), then
     ``python -m spfshm.mutate.child`` with cwd and PYTHONPATH the copy, which reports
     where ``import spfshm`` resolved (it must be the copy); the result is written as
     soon as the mutant ends
  4. the parent prints a line per result while pytest runs, then the table, the summary
     and the survivors with their diffs; Ctrl-C keeps and reports what has finished.

Outcomes: killed (a seed reported a violation, an error or a hang, or the run crashed,
or its diff-kernel replay diverged from the real kernel, or a schedule of a litmus
scenario explored after the seeds failed:
the first signature and the campaign time to it are recorded), survived (every seed
clean), timeout (the time limit hit first), error (the harness could not run the
mutant: a failed build, ``import spfshm`` not resolving to the copy), equivalent (in
the reviewed list, not run).
"""
import glob
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from .. import native
from . import coverage
from .operators import OPERATORS, generate, short_name

DEFAULT_CAMPAIGN = {"seeds": (0, 20), "ops": 1500, "cpus": 2, "perturb": "auto", "delay": None,
                    "stall": None, "diffkernel": "on", "scenarios": 1, "deeper": 1500}
CAMPAIGN_KEYS = {
    "seeds": "A:B, the seeds run in order (each one configuration of the fuzz rotation)",
    "ops": "operations per CPU per seed",
    "cpus": "worker CPUs per seed (the writer configuration takes at least 3)",
    "perturb": "the generic perturbation: auto (a profile chosen by each seed, as the "
               "default run), a profile (chaos, kcsan, sleepy, mixed), or off",
    "delay": "P, the named delay points' probability for every configuration (0: none)",
    "stall": "SEC, a CPU without progress this long ends the seed as a hang",
    "diffkernel": "on (each clean seed also replays its seeded op sequence on one CPU "
                  "against the real kernel, spfshm diff-kernel --seed: results, errnos "
                  "and pages must agree) or off",
    "scenarios": "K (once every seed is clean, each litmus scenario of stress/scenarios/ "
                 "is explored exhaustively up to K preemptions, as spfshm explore does) "
                 "or off",
    "deeper": "N (once every scenario is clean up to K, each again up to K+1 preemptions, "
              "at most N schedules each, in the same order, until the time limit; 0: no)",
}
BUILD_TIMEOUT_S = 600
STOP_GRACE_S = 15
OUTCOMES = ("killed", "survived", "timeout", "error", "equivalent")
EQUIVALENT_LIST = os.path.join("stress", "mutants", "equivalent.json")
SCENARIOS = os.path.join("stress", "scenarios")


class MutateError(ValueError):
    """Bad input to ``spfshm mutate``: one line naming the argument (exit 2)."""


def root():
    """The directory holding the spfshm package (and, in a source tree, native/)."""
    import spfshm
    return os.path.dirname(os.path.dirname(os.path.realpath(spfshm.__file__)))


# -- input --------------------------------------------------------------------------------
def parse_campaign(spec):
    """``key=value,...`` over DEFAULT_CAMPAIGN; MutateError names what is wrong."""
    from .. import native
    from ..config import ConfigError
    from ..run.campaign import parse_seeds
    out = dict(DEFAULT_CAMPAIGN)
    for item in (x.strip() for x in spec.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise MutateError("--campaign: expected KEY=VALUE, got %r" % item)
        if key not in CAMPAIGN_KEYS:
            raise MutateError("--campaign: unknown key %r (known: %s)"
                              % (key, ", ".join(CAMPAIGN_KEYS)))
        try:
            if key == "seeds":
                out[key] = parse_seeds(value)
            elif key == "deeper":
                out[key] = int(value)
                if out[key] < 0:
                    raise ValueError
            elif key in ("ops", "cpus"):
                out[key] = int(value)
                if out[key] < (2 if key == "cpus" else 1) or \
                        key == "cpus" and out[key] > native.MAX_CPUS - 1:
                    raise ValueError
            elif key == "scenarios":
                out[key] = None if value == "off" else int(value)
                if out[key] is not None and out[key] < 0:
                    raise ValueError
            elif key == "diffkernel":
                if value not in ("on", "off"):
                    raise ValueError
                out[key] = value
            elif key == "perturb":
                from ..config import PERTURB
                if value not in PERTURB:
                    raise ValueError
                out[key] = value
            else:
                out[key] = float(value)
                if not (0 <= out[key] <= 1 if key == "delay" else out[key] > 0):
                    raise ValueError
        except (ValueError, ConfigError):
            raise MutateError("--campaign: bad %s %r (%s)" % (key, value, CAMPAIGN_KEYS[key]))
    return out


def format_campaign(c):
    s = "seeds=%d:%d,ops=%d,cpus=%d,perturb=%s,diffkernel=%s,scenarios=%s,deeper=%d" % (
        c["seeds"] + (c["ops"], c["cpus"], c["perturb"], c["diffkernel"],
                      "off" if c["scenarios"] is None else c["scenarios"], c["deeper"]))
    s += "".join(",%s=%g" % (k, c[k]) for k in ("delay", "stall") if c[k] is not None)
    return s


def scenario_files(base):
    """The litmus scenarios a campaign explores (none outside a source tree)."""
    return sorted(glob.glob(os.path.join(base, SCENARIOS, "*.litmus")))


def parse_operators(spec):
    ops = [x.strip() for x in spec.split(",") if x.strip()]
    bad = [x for x in ops if x not in OPERATORS]
    if not ops or bad:
        raise MutateError("--operators: unknown operator %r (known: %s)"
                          % (bad[0] if bad else spec, ",".join(OPERATORS)))
    return ops


def resolve_paths(base, paths):
    """Root-relative paths of files or directories inside spfshm/ (its own mutate/ aside)
    or native/; a path is taken relative to the working directory, else to the root."""
    out = []
    for p in paths:
        cands = [p] if os.path.isabs(p) else [os.path.abspath(p), os.path.join(base, p)]
        real = next((os.path.realpath(c) for c in cands if os.path.exists(c)), None)
        rel = os.path.relpath(real, base) if real else None
        ok = rel is not None and (
            (rel == "spfshm" or rel.startswith("spfshm" + os.sep))
            and not (rel + os.sep).startswith(os.path.join("spfshm", "mutate") + os.sep)
            and (os.path.isdir(real) or rel.endswith(".py"))
            or (rel == "native" or rel.startswith("native" + os.sep))
            and (os.path.isdir(real) or rel.endswith((".c", ".h"))))
        if not ok:
            raise MutateError("path %r is not a .py file or directory of spfshm/ (outside "
                              "spfshm/mutate/), nor a .c/.h file or directory of native/ "
                              "(under %s)" % (p, base))
        out.append(rel)
    return out


def select(mutants, sample, seed, ids=None):
    """All mutants, those named in ``ids``, or a seeded sample of ``sample`` of them (in
    their order); an id no operator generates is a MutateError."""
    if ids:
        known = {m.id for m in mutants}
        missing = [i for i in ids if i not in known]
        if missing:
            raise MutateError("--ids: no mutant %s in these paths and operators (see "
                              "--list)" % missing[0])
        return [m for m in mutants if m.id in set(ids)]
    if sample is None or sample >= len(mutants):
        return list(mutants)
    keep = set(random.Random(seed).sample(range(len(mutants)), sample))
    return [m for i, m in enumerate(mutants) if i in keep]


def load_equivalent(base):
    """The reviewed equivalence list: {mutant id: entry}, empty when there is none."""
    path = os.path.join(base, EQUIVALENT_LIST)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {e["id"]: e for e in json.load(f)["mutants"]}


# -- one mutant (in a pytest worker) --------------------------------------------------------
def snapshot(base, dest, native_too):
    """The installed package (built native core included) and, when asked, native/."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.o", "_native.c")
    shutil.copytree(os.path.join(base, "spfshm"), os.path.join(dest, "spfshm"), ignore=ignore)
    if native_too:
        shutil.copytree(os.path.join(base, "native"), os.path.join(dest, "native"),
                        ignore=ignore)


def _build(work):
    """Rebuild the copy's native core from its native/ (cffi, as _ffi_build.py does)."""
    pkg = os.path.join(work, "spfshm")
    for name in os.listdir(pkg):
        if name.startswith("_native") and name.endswith(".so"):
            os.remove(os.path.join(pkg, name))
    r = subprocess.run([sys.executable, os.path.join("spfshm", "_ffi_build.py")], cwd=work,
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError("native build failed: %s" % (r.stderr or r.stdout)[-500:])


CC_FLAGS = ["-O2", "-std=gnu11", "-fPIC", "-fwrapv", "-DNDEBUG"]     # as _ffi_build.py


def _disassemble(native_dir, name, scratch, headers=None):
    """A native C file compiled as the build does, disassembled with its relocations."""
    obj = os.path.join(scratch, "%s.%d.o" % (name, threading.get_ident()))
    subprocess.run(["cc", *CC_FLAGS, "-I", headers or native_dir, "-c",
                    os.path.join(native_dir, name), "-o", obj], check=True, capture_output=True, timeout=BUILD_TIMEOUT_S)
    dis = subprocess.run(["objdump", "-d", "-r", obj], check=True, capture_output=True,
                         text=True).stdout
    return dis.split("\n", 2)[2]


def same_object_code(base, mutants):
    """{id: whether the C mutant compiles to the very machine code of the original} (a
    header mutant: every .c of native/), compiled from copies of ``base``/native/: what a
    memory-order mutant must change to change anything on this machine."""
    from concurrent.futures import ThreadPoolExecutor
    src = os.path.join(base, "native")
    cfiles = sorted(f for f in os.listdir(src) if f.endswith(".c"))

    def files(m):
        name = os.path.basename(m.file)
        return [name] if name.endswith(".c") else cfiles

    with tempfile.TemporaryDirectory() as d, ThreadPoolExecutor(os.cpu_count()) as pool:
        names = sorted({f for m in mutants for f in files(m)})
        orig = dict(zip(names, pool.map(lambda f: _disassemble(src, f, d), names)))

        def check(i_m):
            i, m = i_m
            here = os.path.join(d, "m%d" % i)          # the mutated file, beside copies of
            if m.file.endswith(".c"):                  # the headers when it is one
                os.mkdir(here)
            else:
                shutil.copytree(src, here)
            with open(os.path.join(src, os.path.basename(m.file))) as f:
                text = f.read()
            with open(os.path.join(here, os.path.basename(m.file)), "w") as f:
                f.write(m.apply(text))
            return m.id, all(_disassemble(here, f, d, src) == orig[f] for f in files(m))
        return dict(pool.map(check, enumerate(mutants)))


def _inside(path, d):
    return os.path.realpath(path).startswith(os.path.realpath(d) + os.sep)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _child_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPFSHM_")}
    env.update(PYTHONDONTWRITEBYTECODE="1")
    return env


def _select_scenarios(snap, campaign, todo, jobs, out):
    """Give each mutant of ``todo`` the scenarios that call its function
    (``scenario_files``, coverage.py), from one profiled exploration of each scenario."""
    files = campaign["scenario_files"]
    if not files or not any(m["file"].endswith(".py") for m in todo):
        return
    t0 = time.monotonic()
    out.write("mutate: profiling the %d scenarios (which functions each one calls)\n"
              % len(files))
    out.flush()
    jobs = (os.cpu_count() or 2) if jobs == "auto" else int(jobs)
    try:
        cov = coverage.profile_scenarios(snap, files, campaign["scenarios"], jobs,
                                         _child_env())
    except (coverage.ProfileError, subprocess.TimeoutExpired) as e:
        out.write("mutate: %s; every mutant explores every scenario\n" % e)
        return
    lines_of = coverage.lines_cache(snap)
    for m in todo:
        m["scenario_files"] = coverage.scenarios_for(m, cov, lines_of)
    n = [len(m["scenario_files"]) for m in todo]
    out.write("mutate: profiled in %.1f s; a mutant explores the scenarios that call its "
              "function: %d of %d on median\n" % (time.monotonic() - t0,
                                                  statistics.median(n), len(files)))


def run_mutant(run, m):
    """Copy, mutate, run the campaign; the result dict, also written to the results
    directory at once."""
    res = dict(id=m["id"], file=m["file"], line=m["line"], function=m["function"],
               operator=m["operator"], description=m["description"], diff=m["diff"],
               outcome="error", signature=None, seed=None, seeds_run=0,
               time_to_kill_s=None, build_s=0.0, detail="")
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="mutant-", dir=run["tmp"])
    proc = None
    try:
        native_too = m["file"].startswith("native" + os.sep)
        snapshot(run["snapshot"], work, native_too)
        path = os.path.join(work, m["file"])
        with open(path) as f:
            text = f.read()
        from .operators import Mutant
        mutant = Mutant.from_dict({k: m[k] for k in ("id", "file", "function", "operator",
                                                     "line", "description", "hunks")})
        with open(path, "w") as f:
            f.write(mutant.apply(text))
        if native_too:
            res["same_machine_code"] = same_object_code(run["snapshot"], [mutant])[m["id"]]
            tb = time.monotonic()
            _build(work)
            res["build_s"] = round(time.monotonic() - tb, 2)
        env = dict(_child_env(), PYTHONPATH=work)
        every = run["campaign"].get("scenario_files", [])
        campaign = dict(run["campaign"], scenario_files=m.get("scenario_files", every))
        res["scenarios"] = [len(campaign["scenario_files"]), len(every)]
        with open(os.path.join(work, "stderr.txt"), "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "spfshm.mutate.child", json.dumps(campaign)],
                cwd=work, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True)
            events = []
            reader = threading.Thread(target=lambda: events.extend(
                json.loads(x) for x in proc.stdout if x.startswith("{")), daemon=True)
            reader.start()
            try:
                proc.wait(timeout=run["time_limit"])
                reader.join()
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
        _classify(res, events, timed_out, proc.returncode, work,
                  open(os.path.join(work, "stderr.txt")).read())
    except Exception as e:
        res["detail"] = "%s: %s" % (type(e).__name__, e)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    res["elapsed_s"] = round(time.monotonic() - t0, 2)
    tmp = os.path.join(run["results"], ".%s.tmp" % m["index"])
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.rename(tmp, os.path.join(run["results"], "%05d.json" % m["index"]))
    return res


def _classify(res, events, timed_out, code, work, stderr):
    start = next((e for e in events if e["event"] == "start"), None)
    seeds = [e for e in events if e["event"] == "seed"]
    res["seeds_run"] = len(seeds)
    if start is None:
        res["detail"] = "the copy did not start%s: %s" % (
            " within the time limit" if timed_out else "", stderr.strip()[-300:])
        return
    res["imported"] = start["spfshm"]
    if not (_inside(start["spfshm"], work) and _inside(start["native"], work)):
        res["detail"] = "import spfshm resolved to %s (native %s), not the copy" % (
            start["spfshm"], start["native"])
        return
    bad = next((e for e in seeds if e["exit_code"] != 0), None)
    if bad is not None:
        res.update(outcome="killed", signature=bad["signature"], seed=bad["seed"],
                   time_to_kill_s=round(bad["t"], 2), detail=bad["repro"])
    elif timed_out:
        res.update(outcome="timeout", detail="%d seed(s) clean when the time limit hit"
                   % len(seeds))
    elif any(e["event"] == "done" for e in events):
        n = sum(isinstance(e["seed"], int) for e in seeds)
        explored, total = res.get("scenarios", (len(seeds) - n,) * 2)
        detail = "%d seed(s)" % n
        if total:
            detail += " and %d scenario(s)" % explored
        if explored < total:
            detail += " (of %d: the others never call %s)" % (total, res["function"])
        res.update(outcome="survived", detail=detail + " clean")
    else:                                    # the campaign process itself died
        last = (stderr.strip().splitlines() or ["exit %s" % code])[-1]
        res.update(outcome="killed", signature="crash: %s" % last[:200],
                   seed=res["seeds_run"], time_to_kill_s=None, detail=stderr[-500:])


# -- the report -------------------------------------------------------------------------------
def merge(mutants, results_dir, equivalent):
    """Every mutant's result (or equivalence, or nothing yet), with the totals."""
    done = {}
    for name in os.listdir(results_dir):
        if name.endswith(".json"):
            with open(os.path.join(results_dir, name)) as f:
                r = json.load(f)
            done[r["id"]] = r
    rows = []
    for m in mutants:
        row = {k: m[k] for k in ("id", "file", "line", "function", "operator", "description",
                                 "diff")}
        if m["id"] in equivalent:
            rows.append(dict(row, outcome="equivalent", signature=None,
                             detail=equivalent[m["id"]]["argument"]))
        elif m["id"] in done:
            rows.append(done[m["id"]])
        else:
            rows.append(dict(row, outcome="not run", signature=None, detail=""))
    counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES + ("not run",)}
    ran = [r for r in rows if r["outcome"] in OUTCOMES[:4]]
    kills = [r["time_to_kill_s"] for r in ran if r["outcome"] == "killed"
             and r["time_to_kill_s"] is not None]
    by_op = {}
    for r in rows:
        d = by_op.setdefault(r["operator"], dict.fromkeys(counts, 0))
        d[r["outcome"]] += 1
    return {"mutants": rows, "counts": counts, "by_operator": by_op,
            "kill_rate": round(counts["killed"] / len(ran), 4) if ran else None,
            "median_time_to_kill_s": round(statistics.median(kills), 2) if kills else None,
            "survivors": [r["id"] for r in rows if r["outcome"] in ("survived", "timeout")]}


def format_row(r):
    what = r["signature"] or r.get("detail", "")
    if r["outcome"] == "killed" and r.get("time_to_kill_s") is not None:
        what = "%s (%s, %.1f s)" % (what, "seed %d" % r["seed"] if isinstance(r["seed"], int)
                                    else r["seed"], r["time_to_kill_s"])
    return "%-10s %-52s %-28s %-12s %s" % (
        r["outcome"], r["id"], "%s:%d" % (short_name(r["file"]), r["line"]), r["operator"],
        what[:100])


def format_report(rep):
    lines = ["%-10s %-52s %-28s %-12s %s" % ("outcome", "mutant", "where", "operator",
                                             "signature / why")]
    lines += [format_row(r) for r in rep["mutants"]]
    c = rep["counts"]
    lines.append("mutate: %d mutants: %s" % (len(rep["mutants"]), ", ".join(
        "%d %s" % (n, o) for o, n in c.items() if n)))
    lines.append("mutate: kill rate %s over %d non-equivalent mutants run; median time to "
                 "kill %s s" % ("n/a" if rep["kill_rate"] is None else
                                "%.1f%%" % (100 * rep["kill_rate"]),
                                sum(c[o] for o in OUTCOMES[:4]),
                                rep["median_time_to_kill_s"]))
    for op, d in sorted(rep["by_operator"].items()):
        lines.append("  %-12s %s" % (op, ", ".join("%d %s" % (n, o) for o, n in d.items()
                                                    if n)))
    left = [r for r in rep["mutants"] if r["outcome"] in ("survived", "timeout")]
    if left:
        lines.append("survivors (not killed: survived or timed out):")
        for r in left:
            lines.append("  %s %s:%d %s (%s): %s" % (r["id"], r["file"], r["line"],
                                                   r["operator"], r["outcome"],
                                                   r["description"]))
            lines += ["    " + x for x in r["diff"].rstrip("\n").split("\n")]
    return "\n".join(lines)


# -- the run ------------------------------------------------------------------------------------
def plan(paths, operators, sample, seed, base=None, ids=None):
    """The mutants (as Mutant objects) a run over ``paths`` would have, from ``base``."""
    return select(generate(base or root(), paths, operators), sample, seed, ids)


def main(paths, operators, campaign, time_limit, jobs, sample, seed, json_path,
         out=sys.stdout, ids=None):
    """Run the mutants; returns the exit status (0: every non-equivalent one killed)."""
    from . import mutant_tests
    base = root()
    equivalent = load_equivalent(base)
    tmp = tempfile.mkdtemp(prefix="spfshm-mutate-")
    proc = None
    interrupted = False
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)   # SIGTERM: as Ctrl-C
    try:
        snap = os.path.join(tmp, "snapshot")
        snapshot(base, snap, any(p.startswith("native") for p in paths))
        mutants = []
        for i, m in enumerate(plan(paths, operators, sample, seed, snap, ids)):
            with open(os.path.join(snap, m.file)) as f:
                mutants.append(dict(m.to_dict(), index=i, diff=m.diff(f.read())))
        todo = [m for m in mutants if m["id"] not in equivalent]
        campaign = dict(campaign, scenario_files=scenario_files(base)
                        if campaign["scenarios"] is not None else [])
        _select_scenarios(snap, campaign, todo, jobs, out)
        results = os.path.join(tmp, "results")
        os.makedirs(results)
        run = {"snapshot": snap, "tmp": tmp, "results": results, "campaign": campaign,
               "time_limit": time_limit, "mutants": todo}
        manifest = os.path.join(tmp, "manifest.json")
        with open(manifest, "w") as f:
            json.dump(run, f)
        with open(os.path.join(tmp, "pytest.ini"), "w") as f:
            f.write("[pytest]\n")
        out.write("mutate: %d mutants (%d equivalent, not run), campaign %s, time limit "
                  "%g s, %s jobs\n" % (len(mutants), len(mutants) - len(todo),
                                       format_campaign(campaign), time_limit, jobs))
        out.flush()
        seen = set()

        def progress():
            for name in sorted(os.listdir(results)):
                if name.endswith(".json") and name not in seen:
                    seen.add(name)
                    with open(os.path.join(results, name)) as f:
                        r = json.load(f)
                    out.write("mutate: [%d/%d] %s\n" % (len(seen), len(todo), format_row(r)))
                    out.flush()
        if todo:
            with open(os.path.join(tmp, "pytest.log"), "w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                     os.path.join(tmp, "pytest.ini"), "--rootdir", tmp, "-n", str(jobs),
                     mutant_tests.__file__],
                    env=dict(os.environ, SPFSHM_MUTATE_MANIFEST=manifest), stdout=log,
                    stderr=subprocess.STDOUT, preexec_fn=native.die_with_parent)
                try:
                    while proc.poll() is None:
                        progress()
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    interrupted = True
                    out.write("mutate: interrupted; stopping the running mutants\n")
                    out.flush()
                    proc.send_signal(signal.SIGINT)     # a SIGTERM reached only us
                    try:
                        proc.wait(timeout=STOP_GRACE_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                progress()
            if proc.returncode not in (0, 1) and not interrupted:
                with open(os.path.join(tmp, "pytest.log")) as f:
                    out.write("mutate: pytest exited %d:\n%s\n" % (proc.returncode,
                                                                    f.read()[-3000:]))
        rep = merge(mutants, results, equivalent)
        rep.update(campaign=format_campaign(campaign), time_limit_s=time_limit,
                   paths=paths, operators=list(operators), sample=sample, seed=seed,
                   interrupted=interrupted)
        out.write(format_report(rep) + "\n")
        if interrupted:
            out.write("mutate: interrupted: %d mutant(s) not run\n" % rep["counts"]["not run"])
        if json_path:
            with open(json_path, "w") as f:
                json.dump(rep, f, indent=2)
        out.flush()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if interrupted:
        return 130
    c = rep["counts"]
    return 0 if c["killed"] == len(mutants) - c["equivalent"] else 1
