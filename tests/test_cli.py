"""The command line: usage errors exit 2 with one line naming the argument."""
import json
import subprocess
import sys

import pytest


def spfshm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "spfshm", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args,needle", [
    (["frobnicate"], "frobnicate"),
    (["bench"], "BENCH"),
    (["bench", "primitives", "--json", "/nonexistent-dir/x.json"], "--json"),
    (["bench", "primitives", "--bogus"], "--bogus"),
])
def test_usage_errors_exit_2_with_one_line(args, needle):
    r = spfshm(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_bench_primitives_quick_writes_json(tmp_path):
    out = tmp_path / "p.json"
    r = spfshm("bench", "primitives", "--quick", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())["results"]
    for k in ["atomic_fetch_add_ns", "spin_lock_unlock_ns", "rwsem_read_lock_unlock_ns",
              "seq_read_ns", "irq_disable_enable_ns", "rcu_read_lock_unlock_ns"]:
        assert res[k] > 0 and k in r.stdout
    assert res["futex_wake_roundtrip_us"]["n"] > 0
    assert set(res["ipi_roundtrip_us"]) == {"1", "2", "4", "8"}
