"""Arena layout and clean-up; event rings readable after their writer died."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import shared_memory

import numpy as np
import psutil
import pytest

from spfshm import native
from spfshm.arena import Arena, ArenaError, Layout
from spfshm.run.workers import Workers
from spfshm.smp import EVENT_DTYPE, PERCPU_DTYPE

from conftest import arena_mappings


def test_layout_aligned_and_typed():
    lay = Layout([("a", np.uint8, 3), ("b", np.uint64, (2, 5)), ("c", PERCPU_DTYPE, 4)])
    offs = [lay.regions[n][0] for n in "abc"]
    assert all(o % 64 == 0 for o in offs) and offs == sorted(offs)
    assert lay.size % 64 == 0 and lay.size >= offs[2] + 4 * 128
    with pytest.raises(ArenaError):
        Layout([("a", np.uint8, 1), ("a", np.uint8, 1)])


def test_struct_dtypes_match_the_compiler():
    assert PERCPU_DTYPE.itemsize == native.ffi.sizeof("struct spf_percpu") == 128
    assert EVENT_DTYPE.itemsize == native.ffi.sizeof("struct spf_event")
    assert PERCPU_DTYPE.fields["rcu_snap"][1] == native.ffi.offsetof("struct spf_percpu",
                                                                      "rcu_snap")


def test_segment_is_private_and_never_left_behind():
    a = Arena(Layout([("x", np.uint64, 8)]), linger=True)
    path = "/dev/shm/" + a.name
    assert os.stat(path).st_mode & 0o777 == 0o600
    a["x"][3] = 5
    b = Arena(a.layout, name=a.name)               # attach by name: another address
    assert b["x"][3] == 5 and b.ptr("x") != a.ptr("x")
    b.close()
    assert os.path.exists(path)                    # only the creator unlinks
    a.close()
    assert not os.path.exists(path)
    c = Arena(Layout([("x", np.uint64, 8)]))       # default: unlinked at once
    assert not os.path.exists("/dev/shm/" + c.name)
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=c.name)   # the name no longer resolves
    assert "/dev/shm/%s (deleted)" % c.name in arena_mappings(os.getpid())
    c.close()


def test_too_big_refused_with_message():
    with pytest.raises(ArenaError, match="does not fit"):
        Arena(Layout([("x", np.uint8, psutil.virtual_memory().total * 4)]))


def test_ring_readable_after_worker_killed(make_smp):
    arena, smp = make_smp(2, [("flags", np.uint64, 8)], ring_capacity=64)

    def body(cpu):
        for i in range(100 + cpu):                  # wraps the 64-entry ring
            native.trace(100 + cpu, i, cpu, 0)
        arena["flags"][cpu] = 1
        native.sleep_ns(60 * 1_000_000_000)

    with Workers(smp, 2, body) as w:
        while arena["flags"][:2].sum() < 2:
            native.sleep_ns(100_000)
        w.kill()
    for cpu in range(2):
        ev = smp.events(cpu)
        assert len(ev) == 64
        assert ev["a0"].tolist() == list(range(100 + cpu - 64, 100 + cpu))
        assert (ev["cpu"] == cpu).all() and (ev["type"] == 100 + cpu).all()
    tl = smp.timeline()
    assert len(tl) == 128 and (np.diff(tl["stamp"].astype(np.int64)) >= 0).all()


_PARENT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from spfshm.arena import Arena, Layout
    from spfshm.smp import Smp, smp_regions
    from spfshm.run.workers import Workers
    from spfshm import native
    arena = Arena(Layout(list(smp_regions(3)) + [("x", np.uint64, 8)]), linger=True)
    smp = Smp(arena, 3); smp.init()
    def spin(cpu):
        native.rcu_read_lock()
        while True:
            native.fetch_add(arena.ptr("x"), 1)
    w = Workers(smp, 3, spin).start()
    print(arena.name, *w.pids.values(), flush=True)
    time.sleep(600)
""")


def test_kill9_parent_leaves_no_orphans_or_segments():
    """Workers die with their parent (PR_SET_PDEATHSIG); the segment does not outlive it
    (the resource tracker unlinks a lingering one; the default unlinks at once)."""
    p = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    name, *pids = p.stdout.readline().split()
    assert len(pids) == 3 and os.path.exists("/dev/shm/" + name)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [q for q in pids if psutil.pid_exists(int(q))
                 and psutil.Process(int(q)).status() != psutil.STATUS_ZOMBIE]
        if not alive and not os.path.exists("/dev/shm/" + name):
            break
        time.sleep(0.05)
    assert not alive, "orphan workers still running: %s" % alive
    assert not os.path.exists("/dev/shm/" + name)


_CREATOR = textwrap.dedent("""
    import numpy as np
    from spfshm.arena import Arena, Layout
    Arena(Layout([("x", np.uint64, 8)]))
""")


def test_kill9_between_create_and_unlink_leaves_no_segment():
    """The one window where the name exists: the creator killed inside it (held open by
    the test hook) leaves nothing behind; the resource tracker unlinks the segment."""
    env = dict(os.environ, SPFSHM_TEST_PAUSE_BEFORE_UNLINK="60")
    p = subprocess.Popen([sys.executable, "-c", _CREATOR], env=env)
    try:
        deadline = time.monotonic() + 30
        maps = []
        while not maps and time.monotonic() < deadline and p.poll() is None:
            maps = arena_mappings(p.pid)
            time.sleep(0.02)
        assert len(maps) == 1 and not maps[0].endswith("(deleted)"), maps
        assert os.path.exists(maps[0])             # inside the window: still linked
    finally:
        p.kill()
        p.wait(10)
    deadline = time.monotonic() + 10
    while os.path.exists(maps[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(maps[0]), "%s left behind" % maps[0]
