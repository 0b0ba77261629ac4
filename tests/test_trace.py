"""The Chrome trace of a run (run/trace.py) and the text timeline's names (run/events.py):
every failure artifact has a trace.json that loads, with one named lane per CPU, B/E
nested and balanced per lane, lock holds named by lock under --sched, IPI arrows that
pair, and the violation as an instant."""
import collections
import json
import os

import pytest

from spfshm import native
from spfshm.config import Config
from spfshm.mm.mm_types import TABLE_META, VMA_DTYPE
from spfshm.run import trace
from spfshm.run.events import lock_namer
from spfshm.run.runner import RunState, run_stress


def artifact(rep, name):
    with open(os.path.join(rep["artifacts"], name)) as f:
        return f.read()


def lanes(doc):
    """tid -> its B/E/X/i events, in file order."""
    out = collections.defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] in "BEXi" and e.get("s") != "g":
            out[e["tid"]].append(e)
    return out


def check_lanes(doc, cfg):
    """One named lane per CPU; on each, B/E nest (an E closes the slice its name says) and
    balance in time order, and no two slice starts or ends share a time (so no tie is left
    to the viewer's sort)."""
    ev = doc["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in ev
             if e["ph"] == "M" and e["name"] == "thread_name"}
    modes = cfg.fault_modes()
    assert names == {c: "CPU %d (%s)" % (c, modes[c % len(modes)]) for c in range(cfg.cpus)}
    for tid, es in lanes(doc).items():
        assert tid in names
        es = sorted(es, key=lambda e: e["ts"])         # as the viewer reads them
        ts = [e["ts"] for e in es if e["ph"] in "BEX"]
        assert len(set(ts)) == len(ts), tid
        stack = []
        for e in es:
            if e["ph"] == "B":
                stack.append(e["name"])
            elif e["ph"] == "E":
                assert stack and stack[-1] == e["name"], (tid, e, stack)
                stack.pop()
        assert stack == [], (tid, stack)


def check_flows(doc):
    """Each IPI arrow starts inside its sender's "IPI -> CPU n" and ends (bound to the
    enclosing slice) inside an "IPI handled" on CPU n.  Returns the number of arrows."""
    ev = doc["traceEvents"]
    marks = [e for e in ev if e["ph"] == "X"]

    def inside(e, name):
        return any(m["tid"] == e["tid"] and m["name"] == name
                   and m["ts"] < e["ts"] < m["ts"] + m["dur"] for m in marks)
    starts = {e["id"]: e for e in ev if e["ph"] == "s"}
    ends = {e["id"]: e for e in ev if e["ph"] == "f"}
    assert len(starts) == len([e for e in ev if e["ph"] == "s"])
    assert set(starts) == set(ends)
    for i, s in starts.items():
        f = ends[i]
        assert f["bp"] == "e" and (s["name"], s["cat"]) == (f["name"], f["cat"])
        assert inside(s, "IPI -> CPU %d" % f["tid"]) and inside(f, "IPI handled"), (s, f)
        assert s["ts"] < f["ts"]
    return len(starts)


@pytest.fixture(scope="module")
def sched_run(tmp_path_factory):
    """A --sched run that fails: free_frame_before_flush is caught within 900 steps, after
    IPIs were sent and handled."""
    cfg = Config(cpus=3, ops=40, seed=8, sched="pct:3", bugs=("free_frame_before_flush",),
                 artifacts=str(tmp_path_factory.mktemp("art"))).resolved()
    rep = run_stress(cfg)
    assert rep["exit_code"] == 1 and rep["violations"], rep["errors"]
    return cfg, rep, json.loads(artifact(rep, "trace.json"))


def test_sched_trace_lanes_slices_and_arrows(sched_run):
    cfg, rep, doc = sched_run
    assert doc["displayTimeUnit"] == "ns"
    assert doc["otherData"]["seed"] == 8 and "sched=pct:3" in doc["otherData"]["config"]
    assert doc["otherData"]["sched"]["digest"] == rep["sched"]["digest"]
    check_lanes(doc, cfg)
    begun = collections.Counter(e["name"] for e in doc["traceEvents"] if e["ph"] == "B")
    assert begun["mmap_lock"] and begun["IRQs off"] and begun["RCU read"], begun
    assert any(n.startswith("ptl #") for n in begun), begun
    assert not [n for n in begun if n.startswith("lock ")], begun    # every lock named
    assert check_flows(doc) >= 1


def test_sched_trace_marks_the_violation(sched_run):
    cfg, rep, doc = sched_run
    v = rep["violations"][0]
    assert v["cpu"] >= 0
    hits = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["name"] == v["signature"]
            and e["tid"] == v["cpu"]]
    assert hits and hits[0]["args"]["detail"] == v["detail"]


def test_sched_text_timeline_names_the_new_events(sched_run):
    cfg, rep, doc = sched_run
    text = artifact(rep, "timeline.txt")
    assert text.split()[0] == "step"
    assert " taken" in text and ("IRQs off" in text or "RCU read" in text)
    assert "event " not in text                    # no record left unnamed


def test_parallel_run_artifact_has_the_trace(tmp_path):
    """A parallel run records no sections: its trace has lanes, IPI arrows, tables and the
    sweeper's violation (a global instant)."""
    cfg = Config(cpus=2, ops=200, seed=3, bugs=("rss_no_dec",),
                 artifacts=str(tmp_path)).resolved()
    rep = run_stress(cfg)
    assert rep["exit_code"] == 1
    doc = json.loads(artifact(rep, "trace.json"))
    check_lanes(doc, cfg)
    ev = doc["traceEvents"]
    assert not [e for e in ev if e["ph"] in "BE"]
    assert "sched" not in doc["otherData"] and doc["otherData"]["clock"] == "CLOCK_MONOTONIC"
    assert any(e["ph"] == "i" and e["name"].startswith("table #") for e in ev)
    check_flows(doc)
    assert [e for e in ev if e["ph"] == "i" and e["name"] == "rss@sweep" and e["s"] == "g"]


def test_lock_names_follow_the_arena_layout():
    st = RunState(Config(cpus=2, ops=1, sched="pct:3").resolved())
    try:
        name, a = lock_namer(st.arena), st.arena
        rel = lambda region, off=0: (a.offset(region) + off - a.offset("sched")) % 2**64
        assert name(rel("mmap_lock")) == "mmap_lock"
        assert name(rel("page_table_lock")) == "page_table_lock"
        assert name(rel("pt_meta", 5 * TABLE_META.itemsize + TABLE_META.fields["ptl"][1])) \
            == "ptl #5"
        assert name(rel("vma", 7 * VMA_DTYPE.itemsize)) == "VMA #7 lock"
        assert name(rel("frames_hdr")) == "frames pool lock"
        assert name(rel("pt_meta", 4)) == "lock pt_meta+0x4"
    finally:
        st.close()


class FakeSmp:
    def __init__(self, recs):
        self.recs = recs

    def events(self, cpu):
        return [r for r in self.recs if r["cpu"] == cpu]


def test_sections_that_do_not_nest_are_cut_and_reopened():
    """Ring records made up: A taken, B taken, A released (B is cut and reopened), RCU
    released without its take (opened at the lane's start), IRQs still off at the end."""
    st = RunState(Config(cpus=1, ops=1, sched="pct:3").resolved())
    try:
        rel = lambda region: (st.arena.offset(region) - st.arena.offset("sched")) % 2**64
        lk = native.lib.SPF_EV_LOCK
        recs = [(1000, lk, rel("mmap_lock"), 1, 1), (2000, lk, rel("page_table_lock"), 1, 0),
                (3000, lk, rel("mmap_lock"), 0, 1), (4000, native.lib.SPF_EV_RCU, 0, 0, 0),
                (5000, native.lib.SPF_EV_IRQ, 1, 0, 0)]
        st.smp = FakeSmp([dict(stamp=s, type=t, a0=a0, a1=a1, a2=a2, cpu=0)
                          for s, t, a0, a1, a2 in recs])
        doc = trace.chrome_trace(st)
    finally:
        st.close()
    check_lanes(doc, st.cfg)
    be = [(e["ph"], e["name"], e.get("args", {})) for e in
          sorted(doc["traceEvents"], key=lambda e: e.get("ts", -1)) if e["ph"] in "BE"]
    assert [x[:2] for x in be] == [
        ("B", "RCU read"), ("B", "mmap_lock"), ("B", "page_table_lock"),
        ("E", "page_table_lock"), ("E", "mmap_lock"), ("B", "page_table_lock"),
        ("E", "page_table_lock"), ("E", "RCU read"), ("B", "page_table_lock"),
        ("B", "IRQs off"), ("E", "IRQs off"), ("E", "page_table_lock")]
    assert be[0][2] == {"before_ring": True}
    assert be[1][2] == {"kind": "read"} and be[5][2] == {"kind": "spin", "reopened": True}
