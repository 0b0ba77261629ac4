"""Replay, campaigns and the detection benchmark: the round trips users rely on."""
import json
import os
import re
import subprocess
import sys

from spfshm.run import campaign


def spfshm(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "spfshm", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def test_replay_round_trip(tmp_path):
    """A recorded failure replays, with its hit rate, also on another CPU count."""
    r = spfshm("stress", "--cpus", "2", "--duration", "60", "--bug", "rss_no_dec",
               "--check-every", "0.2", "--quiet", "--artifacts", str(tmp_path))
    assert r.returncode == 1
    (art,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    timeline = open(os.path.join(art, "timeline.txt")).read()
    assert "CPU 0" in timeline and "CPU 1" in timeline and "VIOLATION" in timeline
    assert "spfshm replay %s" % art in r.stdout
    out = tmp_path / "replay.json"
    r = spfshm("replay", art, "--repeat", "2", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(out.read_text())
    assert rep["signature"] == "rss@sweep" and rep["hits"] == 2 and rep["hit_rate"] == 1.0
    assert "hit 2/2" in r.stdout
    r = spfshm("replay", art, "--repeat", "1", "--cpus", "3")
    assert r.returncode == 0 and "on 3 CPUs" in r.stdout


def test_replay_bad_artifact_exit_2(tmp_path):
    r = spfshm("replay", str(tmp_path))
    assert r.returncode == 2 and "not a spfshm artifact" in r.stderr


def test_seed_selection_and_sharding():
    assert campaign.seeds_of("0:10", "0/1") == list(range(10))
    a, b = campaign.seeds_of("5:15", "0/2"), campaign.seeds_of("5:15", "1/2")
    assert sorted(a + b) == list(range(5, 15)) and not set(a) & set(b)


def test_the_fixed_campaign_covers_the_rotation():
    """The test command's campaign (stress/test_campaign.py, no SPFSHM_SEEDS) runs every
    configuration of the rotation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPFSHM_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                        "stress/test_campaign.py"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=120)
    seeds = [int(s) for s in re.findall(r"test_campaign_seed\[(\d+)\]", r.stdout)]
    n = len(campaign.CONFIGS)
    assert sorted({s % n for s in seeds}) == list(range(n)), r.stdout + r.stderr


def test_fuzz_shards_merge_and_feed_the_corpus(tmp_path, monkeypatch):
    for i in (0, 1):
        r = spfshm("fuzz", "--seeds", "0:4", "--shard", "%d/2" % i, "--jobs", "1", "--ops",
                   "400", "--json", str(tmp_path / ("s%d.json" % i)))
        assert r.returncode == 0, r.stdout + r.stderr
    r = spfshm("fuzz", "--merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"),
               "--json", str(tmp_path / "all.json"))
    merged = json.loads((tmp_path / "all.json").read_text())
    assert r.returncode == 0 and merged["seeds"] == [0, 1, 2, 3] and merged["clean"] == 4
    # A failure is deduplicated by signature and lands in the corpus once.
    fail = {"runs": 2, "clean": 0, "seeds": [7, 9], "failures": {
        "rss@sweep": {"seeds": [7, 9], "repro": "spfshm stress ...",
                      "config": campaign.config_for(7).to_dict()}}}
    corpus = tmp_path / "corpus"
    assert len(campaign.add_to_corpus(str(corpus), fail)) == 1
    assert campaign.add_to_corpus(str(corpus), fail) == []
    entry = json.loads(next(corpus.iterdir()).read_text())
    assert entry["signature"] == "rss@sweep" and entry["config"]["seed"] == 7


def test_fuzz_bad_arguments():
    for args, needle in ((["--seeds", "5"], "A:B"), (["--seeds", "9:3"], "A < B"),
                         (["--shard", "2/2"], "I/N"), (["--jobs", "x"], "--jobs")):
        r = spfshm("fuzz", *args)
        assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_bench_detect_one_bug(tmp_path):
    out = tmp_path / "d.json"
    r = spfshm("bench", "detect", "--bugs", "mprotect_no_flush", "--seeds", "2", "--json",
               str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())["results"][0]
    assert res["caught"] == 2 and res["signatures"] == ["stale_tlb@mprotect"] * 2
    assert res["control"] == {"runs": 2, "clean": 2, "found": [None, None]}
    r = spfshm("bench", "detect", "--bugs", "nope")
    assert r.returncode == 2 and "--bugs" in r.stderr


def test_an_interrupted_bench_detect_stops_and_keeps_what_it_finished(tmp_path):
    """Ctrl-C during a variant's runs ends the whole benchmark (not only the run it
    interrupted), and the JSON keeps the variants it finished, marked incomplete."""
    import signal
    import time
    out = tmp_path / "d.json"
    proc = subprocess.Popen([sys.executable, "-m", "spfshm", "bench", "detect", "--bugs",
                             "free_table_no_sync,dontneed_no_flush_pending", "--seeds", "40",
                             "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = ""
    while "free_table_no_sync" not in first:
        first = proc.stdout.readline()
        assert first or proc.poll() is None, proc.stderr.read()
    time.sleep(2)                                   # inside the second variant's runs
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("bench detect went on after SIGINT")
    assert proc.returncode == 130
    res = json.loads(out.read_text())
    assert res["complete"] is False
    assert [r["bug"] for r in res["results"]] == ["free_table_no_sync"]
