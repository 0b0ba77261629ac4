"""The model against the real kernel, and proof that the comparison can fail."""
import json
import subprocess
import sys

import pytest

from spfshm import diffkernel as dk


@pytest.mark.parametrize("seed", range(8))
def test_model_agrees_with_kernel(seed):
    assert dk.compare(dk.random_ops(seed, 150, 64), 64) is None


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
