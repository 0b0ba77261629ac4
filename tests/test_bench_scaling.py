"""spfshm bench scaling: argument checks, a tiny run's CSV/JSON, the kernel helper, the
plot, the writer's pacing.  Nothing here asserts on speed: the machine is shared."""
import csv
import json
import sys

import pytest

from spfshm import cli, native
from spfshm.bench import scaling
from spfshm.mm.mm_types import Geometry
from spfshm.run.workload import Workload


def run_cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,needle", [
    (["--cpus", "0"], "--cpus"),
    (["--cpus", "1,x"], "--cpus"),
    (["--cpus", "1,1"], "--cpus"),
    (["--fault-modes", "classic,fast"], "--fault-modes"),
    (["--table-free", "ipi,never"], "--table-free"),
    (["--writer", "maybe"], "--writer"),
    (["--workload", "mixed"], "--workload"),
    (["--writer-rate", "-1"], "--writer-rate"),
    (["--writer", "off", "--writer-rate", "10"], "--writer-rate"),
    (["--repeat", "0"], "--repeat"),
    (["--duration", "0"], "--duration"),
    (["--cpus", "1000"], "--cpus"),
    (["--json", "/nonexistent-dir/x.json"], "--json"),
    (["--csv", "/nonexistent-dir/x.csv"], "--csv"),
])
def test_usage_errors(argv, needle, capsys):
    code, out, err = run_cli(["bench", "scaling"] + argv, capsys)
    assert code == cli.EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "faults/s" not in err            # refused before any run


def test_plot_without_matplotlib(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # import fails
    code, out, err = run_cli(["bench", "scaling", "--quick", "--cpus", "1", "--plot",
                              str(tmp_path / "x.png")], capsys)
    assert code == cli.EXIT_USAGE
    assert "matplotlib" in err and "faults/s" not in err
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("scaling")
    js, cs = d / "s.json", d / "s.csv"
    code = cli.main(["bench", "scaling", "--cpus", "1,2", "--fault-modes", "classic,spf",
                     "--duration", "0.5", "--repeat", "1", "--no-kernel", "--quiet",
                     "--writer-rate", "200", "--json", str(js), "--csv", str(cs)])
    return code, json.loads(js.read_text()), list(csv.DictReader(cs.open()))


def test_tiny_run_json(tiny_run):
    code, doc, _ = tiny_run
    assert code == 0
    assert doc["bench"] == "scaling" and doc["kernel"] is None
    confs = {(r["mode"], r["writer"], r["cpus"]) for r in doc["results"]}
    assert confs == {(m, w, c) for m in ("classic", "spf") for w in ("off", "on")
                     for c in (1, 2)}
    for r in doc["results"]:
        assert r["workers"] == r["cpus"] + (r["writer"] == "on")
        assert r["failed"] == [] and len(r["repeats"]) == 1
        s = r["summary"]["faults_per_s"]
        assert s["min"] <= s["median"] <= s["max"] and s["n"] == 1
        rep = r["repeats"][0]
        assert rep["exit_code"] == 0 and rep["report"]["config"]["check_every"] == 0
        assert rep["metrics"]["faults_per_s"] > 0
        assert len(rep["faults_per_s_per_cpu"]) == r["cpus"]
        if r["writer"] == "on":
            assert rep["report"]["config"]["writer_rate"] == 200
            assert rep["report"]["ops"]["munmap"] > 0
    g = doc["goals"]
    assert {(e["mode"], e["writer"]) for e in g["scaling_1_to_2"]} == \
        {(m, w) for m in ("classic", "spf") for w in ("off", "on")}
    assert {e["cpus"] for e in g["writer_speedup_vs_classic"]} == {1, 2}


def test_tiny_run_csv(tiny_run):
    _, doc, rows = tiny_run
    assert rows and set(rows[0]) == {"workload", "mode", "writer", "writer_rate", "table_free", "cpus",
                                     "workers", "metric", "unit", "median", "min", "max",
                                     "repeats"}
    per_conf = {}
    for row in rows:
        per_conf.setdefault((row["mode"], row["writer"], int(row["cpus"])), set()).add(
            row["metric"])
        assert float(row["min"]) <= float(row["median"]) <= float(row["max"])
    assert len(per_conf) == len(doc["results"]) == 8
    for metrics in per_conf.values():
        assert set(scaling.METRICS) <= metrics


def test_plot_png(tiny_run, tmp_path):
    """The plot is a user-facing output (matplotlib comes with the test extra)."""
    _, doc, _ = tiny_run
    scaling.write_plot(doc, str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kernel_helper_positive_rate():
    for nprocs in (1, 2):
        r = native.kernel_fault_rate(nprocs, 0.2, region_mib=8)
        assert r["procs"] == nprocs and len(r["per_proc_per_s"]) == nprocs
        assert r["faults"] > 0 and r["faults_per_s"] > 0
    with pytest.raises(ValueError):
        native.kernel_fault_rate(0)


def test_writer_pacing_schedule():
    """Pair k is due at start + k/R; the munmap half is never held back; a writer that
    fell behind restarts the schedule instead of bursting."""
    g = Geometry(2, 4096, 64)
    w = Workload(g, 1, 0, "faults+writer", writer_rate=1000)       # period 1 ms
    assert w.wait_ns(0) == 0
    assert w.next()[0] == "mmap"
    assert w.wait_ns(10) == 0 and w.next()[0] == "munmap"           # second half: go
    assert w.wait_ns(400_000) == 600_000                            # pair 1 at 1 ms
    assert w.wait_ns(1_000_000) == 0
    w.next(), w.next()
    assert w.wait_ns(50_000_000) == 0                                # far behind: go once
    w.next(), w.next()
    assert w.wait_ns(50_000_001) > 0                                 # ... then paced again
    fast = Workload(g, 1, 0, "faults+writer", writer_rate=0)
    faulter = Workload(g, 1, 1, "faults+writer", writer_rate=1000)
    assert fast.period_ns == 0 and faulter.period_ns == 0


def test_pf1_slices():
    """pf1: each fault CPU stores to every page of its own slice in order, then zaps the
    whole slice; the slices of the fault CPUs are disjoint (the writer has none)."""
    g = Geometry(3, 4096, 64)
    seen = []
    for cpu in (1, 2):
        w = Workload(g, 1, cpu, "pf1+writer")
        n = w.slice_pages
        ops = [w.next() for _ in range(n + 1)]
        assert all(op == "store" for op, _ in ops[:n])
        addrs = [a[0] for _, a in ops[:n]]
        assert addrs == [w.slice + i * 4096 for i in range(n)]
        assert ops[n] == ("madvise", (w.slice, n * 4096))
        assert w.next() == ("store", (w.slice,))
        seen.append(set(addrs))
    assert not seen[0] & seen[1]
    assert Workload(g, 1, 0, "pf1+writer").next()[0] == "mmap"


def test_max_noise_discards_and_reruns(monkeypatch, tmp_path, capsys):
    """A run during which other processes kept the machine busier than --max-noise is
    discarded and run again (after a pause), up to a bound; the last one is kept."""
    monkeypatch.setattr(scaling, "NOISY_PAUSE_S", 0.0)
    monkeypatch.setattr(scaling, "MAX_NOISY_RETRIES", 2)
    real = scaling.run_one

    def noisy(*a):
        cfg, rep = real(*a)
        rep["foreign_load"] = 9.0
        return cfg, rep
    monkeypatch.setattr(scaling, "run_one", noisy)
    js = tmp_path / "n.json"
    code, out, err = run_cli(["bench", "scaling", "--cpus", "1", "--fault-modes", "classic",
                              "--writer", "off", "--duration", "0.3", "--repeat", "1",
                              "--no-kernel", "--max-noise", "0.5", "--json", str(js)], capsys)
    assert code == 0 and err.count("discarded") == 2
    rep = json.loads(js.read_text())["results"][0]["repeats"][0]
    assert rep["noisy"] and rep["discarded_noise"] == [9.0, 9.0]
