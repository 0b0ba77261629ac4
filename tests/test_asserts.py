"""mmap_lock asserts (include/linux/mmap_lock.h as of v6.12): each place that asserts the
lock reports ``mmap_not_locked`` when called without it, and nothing with it.  Driven
directly, as one CPU."""
import pytest

from spfshm import debug, native
from spfshm.diffkernel import Model
from spfshm.mm.mm_types import PAGE, PROT_BY_NAME, STAT
from spfshm.mm.mmap_lock import (mmap_read_lock, mmap_read_unlock, mmap_write_lock,
                                 mmap_write_unlock, vma_end_write_all)
from spfshm.mm.vma_lock import vma_assert_write_locked, vma_start_write
from spfshm.mm.syscalls import MAP_FIXED, do_mmap
from spfshm.mm.vma import anon_vma_prepare, find_vma, publish_tree, tree_prealloc, vmas_snapshot

BASE = 0x3F0000000000


@pytest.fixture
def model():
    m = Model(64, BASE)
    assert do_mmap(m.mm, BASE, 8 * PAGE, PROT_BY_NAME["rw"], MAP_FIXED) == BASE
    yield m
    m.close()


def fired(m):
    return [(v["signature"], v["detail"]) for v in debug.collect(m.arena)
            if v["kind"] == "mmap_not_locked"]


def vid_of(m):
    mmap_read_lock(m.mm)
    try:
        return find_vma(m.mm, BASE).id
    finally:
        mmap_read_unlock(m.mm)


def start_write(m, vid):
    vma_start_write(m.mm, vid)


def assert_write_locked(m, vid):
    vma_assert_write_locked(m.mm, vid, "split_vma")


def end_write_all(m, vid):
    vma_end_write_all(m.mm)


def publish(m, vid):
    publish_tree(m.mm, tree_prealloc(m.mm), vmas_snapshot(m.mm))


# (a path that needs mmap_lock for write, the site its assert reports)
WRITE_PATHS = [(start_write, "vma_start_write"), (assert_write_locked, "split_vma"),
               (end_write_all, "vma_end_write_all"), (publish, "publish_tree")]


@pytest.mark.parametrize("path,site", WRITE_PATHS, ids=[s for _, s in WRITE_PATHS])
def test_write_lock_asserts(model, path, site):
    m = model
    vid = vid_of(m)
    path(m, vid)                                        # no lock at all
    assert fired(m) and fired(m)[-1][0] == "mmap_not_locked@" + site
    assert "need 2" in fired(m)[-1][1] and "read: 0, for write: 0" in fired(m)[-1][1]
    n = len(fired(m))
    mmap_read_lock(m.mm)                                # read is not enough
    try:
        path(m, vid)
    finally:
        mmap_read_unlock(m.mm)
    assert len(fired(m)) == n + 1 and "read: 1, for write: 0" in fired(m)[-1][1]
    mmap_write_lock(m.mm)                               # write: silent
    try:
        path(m, vid)
    finally:
        mmap_write_unlock(m.mm)
    assert len(fired(m)) == n + 1


def test_anon_vma_prepare_asserts_the_lock(model):
    """__anon_vma_prepare under mmap_lock (v6.10's assertion): a per-VMA fault on a VMA
    without an anon_vma must fall back first (lock_vma_under_rcu), so preparing one
    under the VMA lock alone is reported; under mmap_lock read it is silent."""
    m = model
    mmap_read_lock(m.mm)
    v = find_vma(m.mm, BASE)
    mmap_read_unlock(m.mm)
    anon_vma_prepare(m.mm, v)
    assert [s for s, _ in fired(m)] == ["mmap_not_locked@anon_vma_prepare"]
    mmap_read_lock(m.mm)
    try:
        anon_vma_prepare(m.mm, v)
    finally:
        mmap_read_unlock(m.mm)
    assert len(fired(m)) == 1


@pytest.mark.parametrize("site", ["find_vma", "vmas_snapshot"])
def test_find_vma_asserts_the_lock(model, site):
    """The VMA tree's readers under mmap_lock: silent under the read or write lock."""
    m = model
    read = {"find_vma": lambda: find_vma(m.mm, BASE), "vmas_snapshot":
            lambda: vmas_snapshot(m.mm)}[site]
    read()
    assert [s for s, _ in fired(m)] == ["mmap_not_locked@" + site]
    assert "need 1" in fired(m)[0][1]
    for lock, unlock in ((mmap_read_lock, mmap_read_unlock),
                         (mmap_write_lock, mmap_write_unlock)):
        lock(m.mm)
        try:
            read()
        finally:
            unlock(m.mm)
    assert len(fired(m)) == 1


def test_syscalls_and_faults_hold_what_they_assert(model):
    """The paths that take the lock themselves stay silent: mmap, a split by mprotect,
    munmap, DONTNEED, and the classic fault (find_vma under mmap_read_lock)."""
    m = model
    for op in ({"op": "store", "addr": 0}, {"op": "load", "addr": 3 * PAGE},
               {"op": "mprotect", "addr": 2 * PAGE, "len": 2 * PAGE, "prot": "r"},
               {"op": "madvise", "addr": 0, "len": PAGE},
               {"op": "munmap", "addr": 4 * PAGE, "len": PAGE},
               {"op": "mmap", "addr": 16 * PAGE, "len": PAGE, "prot": "rw",
                "flags": MAP_FIXED}):
        m.execute(op)
    assert m.mm.local[STAT["fault_classic"]] >= 2
    assert debug.collect(m.arena) == []


def test_another_cpus_hold_does_not_count(model):
    """The assert is lockdep's "held by this task", not rwsem_is_locked: mmap_lock held
    for write by someone else (row 1 here) still fires it."""
    m = model
    mm = m.mm
    vid = vid_of(m)
    native.lib.spf_down_write(mm.mmap_lock, 1)
    mm.waiting_all[1, 4] = 1
    try:
        vma_start_write(mm, vid)
    finally:
        mm.waiting_all[1, 4] = 0
        native.lib.spf_up_write(mm.mmap_lock)
    assert [s for s, _ in fired(m)] == ["mmap_not_locked@vma_start_write"]
