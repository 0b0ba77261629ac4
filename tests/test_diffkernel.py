"""The model against the real kernel, and proof that the comparison can fail."""
import json
import subprocess
import sys

import pytest

from spfshm import diffkernel as dk


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("lock", ["mmap", "vma"])
def test_model_agrees_with_kernel(seed, lock):
    assert dk.compare(dk.random_ops(seed, 150, 64), 64, madvise_lock=lock) is None


def test_a_vma_locked_dontneed_past_its_vma_diverges(monkeypatch):
    """The VMA-lock path's range check deleted (a DONTNEED that goes past its VMA is
    zapped under that VMA's lock alone, and returns 0 over a hole): the kernel's ENOMEM
    shows it; the re-run line names --madvise-lock vma."""
    from spfshm.mm import syscalls
    real = syscalls.lock_vma_under_rcu

    def whole(mm, start):          # the VMA found, as if the range ended inside it
        v = real(mm, start)
        if v is not None:
            v.end = syscalls.MAX_ADDR
        return v
    monkeypatch.setattr(syscalls, "lock_vma_under_rcu", whole)
    assert dk.compare(dk.random_ops(1, 150, 64), 64, madvise_lock="vma")["field"] == "ret"
    assert dk.compare(dk.random_ops(1, 150, 64), 64) is None


def test_script_round_trip(tmp_path):
    ops = [{"op": "mmap", "addr": 0, "len": 3 * 4096, "prot": "rw", "flags": "fixed"},
           {"op": "store", "addr": 4096, "value": 77},
           {"op": "munmap", "addr": 4096, "len": 1},          # rounded up: the middle page
           {"op": "load", "addr": 4096},
           {"op": "mprotect", "addr": 0, "len": 3 * 4096, "prot": "r"},   # hole: ENOMEM
           {"op": "store", "addr": 0, "value": 1},
           {"op": "madvise", "addr": 8192, "len": 4096, "advice": "dontneed"},
           {"op": "mmap", "addr": 0, "len": 4096, "prot": "rw", "flags": "noreplace"}]
    p = tmp_path / "s.json"
    p.write_text(json.dumps(ops))
    r = subprocess.run([sys.executable, "-m", "spfshm", "diff-kernel", "--script", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "agree" in r.stdout, r.stdout + r.stderr


def test_divergence_is_reported(monkeypatch):
    """A model whose mprotect does nothing must diverge, with the step named."""
    monkeypatch.setattr(dk, "do_mprotect", lambda mm, a, n, p: 0)
    ops = [{"op": "mmap", "addr": 0, "len": 4096, "prot": "rw", "flags": "fixed"},
           {"op": "mprotect", "addr": 0, "len": 4096, "prot": "r"}]
    d = dk.compare(ops, 16)
    assert d and d["step"] == 1 and d["field"] == "pages"
    assert "page 0" in dk.format_divergence(d)


@pytest.mark.parametrize("content,needle", [
    ("not json", "not valid JSON"), ('{"op": "load"}', "JSON list"),
    ('[{"op": "frob"}]', "unknown op"), ('[{"op": "load", "addr": 5}]', "page-aligned"),
    ('[{"op": "munmap", "addr": 0, "len": 99999999}]', "outside the window"),
])
def test_bad_script_exit_2(tmp_path, content, needle):
    p = tmp_path / "s.json"
    p.write_text(content)
    r = subprocess.run([sys.executable, "-m", "spfshm", "diff-kernel", "--script", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- shrinking

def test_ddmin_finds_the_failure_inducing_items():
    """The three items that make a hundred fail, found in far fewer runs than subsets."""
    from spfshm.shrink import Shrinker
    calls = []

    def fails(items):
        calls.append(list(items))
        return {17, 42, 73} <= set(items)

    sh = Shrinker(fails)
    assert sh.ddmin(list(range(100))) == [17, 42, 73]
    assert sh.runs == len(calls) < 100
    assert sh.shrink(list(range(100))) == [17, 42, 73]    # remembered: no new runs
    assert sh.runs == len(calls)


def test_shrink_is_one_minimal_and_simplifies_items():
    from spfshm.shrink import Shrinker

    def fails(items):                     # non-monotone: more items may pass again
        return len(items) % 2 == 0 and max(items) >= 10

    lines = []
    sh = Shrinker(fails, progress=lines.append, every=0)
    out = sh.shrink([37, 5, 64, 2, 9, 11, 3, 8], lambda x: [x // 2] if x else [])
    assert len(out) == 2 and min(out) == 0 and 10 <= max(out) < 20
    assert lines and "runs" in lines[-1] and "items left" in lines[-1]
    with pytest.raises(ValueError):
        Shrinker(fails).shrink([1, 2, 3])


def test_divergence_kind():
    d = {"op": {"op": "madvise"}, "field": "resident", "model": [False, True, True],
         "kernel": [False, False, True]}
    assert dk.divergence_kind(d) == ("madvise", "resident", True, False)
    d = {"op": {"op": "load"}, "field": "value", "model": 7, "kernel": 9}
    assert dk.divergence_kind(d) == ("load", "value", "word", "word")
    assert dk.divergence_kind(dict(d, model=0)) == ("load", "value", 0, "word")


def test_shrink_keeps_the_kind(monkeypatch):
    """Shrinking keeps the divergence's kind: a script that diverges otherwise (here any
    madvise, on its errno) is not taken, although it would be shorter."""
    def fake_compare(ops, npages, base=None, bugs=(), madvise_lock="mmap"):
        mprotects = [i for i, o in enumerate(ops) if o["op"] == "mprotect"]
        madvises = [i for i, o in enumerate(ops) if o["op"] == "madvise"]
        if len(mprotects) >= 3:
            i, field, m, k = mprotects[2], "pages", ["r"], ["rw"]
        elif madvises:
            i, field, m, k = madvises[0], "errno", None, "ENOMEM"
        else:
            return None
        return {"step": i, "op": ops[i], "field": field, "model": m, "kernel": k,
                "detail": ""}

    monkeypatch.setattr(dk, "compare", fake_compare)
    ops = dk.random_ops(0, 200, 64)
    d = fake_compare(ops, 64)
    small, sh = dk.shrink_divergence(ops, 64, d)
    assert [o["op"] for o in small] == ["mprotect"] * 3
    assert all(o["len"] == 4096 for o in small)


def test_shrunk_script_is_small_minimal_deterministic():
    """A planted divergence (zap_skip_last_pte: DONTNEED and munmap miss the last PTE)
    in 300 ops shrinks to a 1-minimal script of at most 5 ops with the same kind, the
    same way twice; without the bug the script agrees."""
    bug = ("zap_skip_last_pte",)
    ops = dk.random_ops(1, 300, 64)
    d = dk.compare(ops, 64, bugs=bug)
    assert d
    small, sh = dk.shrink_divergence(ops, 64, d, bugs=bug)
    assert len(small) <= 5 and sh.runs > 1
    assert dk.divergence_kind(dk.compare(small, 64, bugs=bug)) == dk.divergence_kind(d)
    for i in range(len(small)):
        got = dk.compare(small[:i] + small[i + 1:], 64, bugs=bug)
        assert got is None or dk.divergence_kind(got) != dk.divergence_kind(d)
    assert dk.shrink_divergence(ops, 64, d, bugs=bug)[0] == small
    assert dk.compare(small, 64) is None


def test_cli_shrinks_and_the_script_round_trips(tmp_path):
    """spfshm diff-kernel --bug: the first divergence, then the shrunk script, printed
    and written (by default under ./spfshm-artifacts); --script re-runs it."""
    cmd = [sys.executable, "-m", "spfshm", "diff-kernel"]
    r = subprocess.run(cmd + ["--seed", "2", "--ops", "300", "--bug", "mprotect_no_flush"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout.splitlines()
    shrunk = next(line for line in out if line.startswith("shrunk: "))
    before, after = (int(w) for w in shrunk.split()[1:4:2])
    assert before == 300 and after <= 5 and "diff runs" in shrunk
    path = tmp_path / "spfshm-artifacts" / "diff-kernel-seed2-shrunk.json"
    printed = "\n".join(out[out.index(shrunk) + 1:out.index(shrunk) + 1 + after]) + "\n"
    assert path.read_text() == printed
    small = json.loads(printed)
    assert len(small) == after
    assert out[-1].endswith("--script %s --pages 64 --bug mprotect_no_flush"
                            % path.relative_to(tmp_path))
    first = dk.compare(dk.random_ops(2, 300, 64), 64, bugs=("mprotect_no_flush",))
    r = subprocess.run(cmd + ["--script", str(path), "--bug", "mprotect_no_flush",
                              "--no-shrink"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "DIVERGENCE at step %d" % (after - 1) in r.stdout, r.stdout
    again = dk.compare(dk.load_script(str(path)), 64, bugs=("mprotect_no_flush",))
    assert dk.divergence_kind(again) == dk.divergence_kind(first)


@pytest.mark.parametrize("args,needle", [
    (["--bug", "nope"], "unknown bug"),
    (["--bug", "spf_skip_vma_check"], "needs --fault-mode spf"),
    (["--bug", "mmap_unlock_leak"], "needs --stall-timeout"),
    (["--no-shrink", "--shrunk-out", "x.json"], "not allowed with"),
    (["--shrunk-out", "/nonexistent-dir/x.json"], "does not exist"),
])
def test_bad_shrink_args_exit_2(args, needle):
    r = subprocess.run([sys.executable, "-m", "spfshm", "diff-kernel", "--seed", "0"] + args,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""
