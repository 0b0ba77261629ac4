"""Atomics, spinlock, rwsem and seqcount under real parallel processes, with busted twins.

Each test runs the same workload against the correct primitive (must end exact) and
against its busted twin (must be caught).  Processes outnumber the 2 cores on purpose.
"""
import numpy as np
import pytest

from spfshm import native
from spfshm.run.workers import run_workers

NPROC = [2, 4, 8]


def _counter_run(make_smp, nproc, body, iters):
    arena, smp = make_smp(nproc, [("lock", np.uint32, 16), ("ctr", np.uint64, 16),
                                  ("rw", native.struct_dtype("struct spf_rwsem"), 1)])
    run_workers(smp, nproc, lambda cpu: body(arena, cpu, iters), timeout=120)
    return arena


def _fetch_add_body(busted):
    def body(arena, cpu, iters):
        p = arena.ptr("ctr")
        fa = native.lib.spf_fetch_add_busted if busted else native.fetch_add
        for _ in range(iters):
            fa(p, 1)
    return body


@pytest.mark.parametrize("nproc", NPROC)
def test_fetch_add_exact(make_smp, nproc):
    arena = _counter_run(make_smp, nproc, _fetch_add_body(False), 20000)
    assert arena["ctr"][0] == nproc * 20000


def test_busted_fetch_add_loses_updates(make_smp):
    for attempt in range(5):
        arena = _counter_run(make_smp, 4, _fetch_add_body(True), 20000)
        if arena["ctr"][0] < 4 * 20000:
            return
    pytest.fail("busted fetch_add never lost an update")


def test_batched_atomics(make_smp):
    """fetch_add_range and max_field_each, from several processes at once: every add
    counted, each old value returned; the field raised to the largest value asked, its
    low bits kept."""
    arena, smp = make_smp(4, [("ctr", np.uint64, 16)])
    arena["ctr"][:] = 7

    def body(cpu):
        p = arena.ptr("ctr")
        old = np.empty(16, dtype=np.uint64)
        for k in range(500):
            native.fetch_add_range(p, old, 1)
            assert (old & np.uint64(0xFFFF) >= 7).all()
        native.max_field_each(p, np.array([1, 3], dtype=np.uint64),
                              np.array([cpu + 1, 9 - cpu], dtype=np.uint64), 32)
    run_workers(smp, 4, body, timeout=120)
    low = arena["ctr"] & np.uint64(0xFFFFFFFF)
    assert (low == 7 + 4 * 500).all()
    assert arena["ctr"][1] >> np.uint64(32) == 4 and arena["ctr"][3] >> np.uint64(32) == 9
    assert (arena["ctr"][[0, 2]] >> np.uint64(32) == 0).all()


def _spin_body(busted):
    def body(arena, cpu, iters):
        lock = native.SpinLock(arena.ptr("lock", "uint32_t"), busted=busted)
        ctr = arena["ctr"]
        for _ in range(iters):
            lock.lock(cpu)
            v = int(ctr[0])      # a plain, non-atomic read-modify-write: the lock must
            ctr[0] = v + 1       # make it exact
            lock.unlock()
    return body


@pytest.mark.parametrize("nproc", NPROC)
def test_spinlock_mutual_exclusion(make_smp, nproc):
    arena = _counter_run(make_smp, nproc, _spin_body(False), 5000)
    assert arena["ctr"][0] == nproc * 5000
    assert arena["lock"][0] == 0


def test_busted_spinlock_caught(make_smp):
    for attempt in range(5):
        arena = _counter_run(make_smp, 4, _spin_body(True), 5000)
        if arena["ctr"][0] < 4 * 5000:
            return
    pytest.fail("busted spinlock never lost an update")


def test_spinlock_trylock_owner_timeout(make_smp):
    arena, smp = make_smp(1, [("lock", np.uint32, 16)])
    lock = native.SpinLock(arena.ptr("lock", "uint32_t"))
    assert lock.owner() == -1 and not lock.is_locked()
    assert lock.trylock(3)
    assert lock.owner() == 3 and lock.is_locked()
    assert not lock.trylock(1)
    assert not lock.lock_timeout(1, 0.05)          # held by CPU 3: gives up, no hang
    lock.unlock()
    assert lock.lock_timeout(1, 0.05) and lock.owner() == 1
    lock.unlock()


def _rwsem_body(busted):
    """Writers bump a and b (one at a time, non-atomically) and flag themselves active;
    readers check that no writer is active and a == b.  Violations are counted in ctr[2]."""
    def body(arena, cpu, iters):
        sem = native.RWSem(arena.ptr("rw", "struct spf_rwsem"), busted=busted)
        ctr = arena["ctr"]
        for i in range(iters):
            if (i + cpu) % 4 == 0:
                sem.down_write(cpu)
                ctr[3] = 1                       # writer active
                ctr[0] += 1
                native.sleep_ns(2000)
                ctr[1] += 1
                ctr[3] = 0
                sem.up_write()
            else:
                sem.down_read()
                if ctr[3] != 0 or ctr[0] != ctr[1]:
                    native.fetch_add(arena.ptr("ctr", index=2), 1)
                sem.up_read()
    return body


@pytest.mark.parametrize("nproc", NPROC)
def test_rwsem_writers_exclude_readers(make_smp, nproc):
    arena = _counter_run(make_smp, nproc, _rwsem_body(False), 2000)
    assert arena["ctr"][2] == 0, "readers saw a writer mid-update"
    writes = sum(1 for c in range(nproc) for i in range(2000) if (i + c) % 4 == 0)
    assert arena["ctr"][0] == arena["ctr"][1] == writes
    sem = native.RWSem(arena.ptr("rw", "struct spf_rwsem"))
    assert not sem.is_locked()


def test_busted_rwsem_caught(make_smp):
    for attempt in range(5):
        arena = _counter_run(make_smp, 4, _rwsem_body(True), 2000)
        if arena["ctr"][2] > 0:
            return
    pytest.fail("busted rwsem writer never overlapped a reader")


def test_rwsem_semantics(make_smp):
    arena, smp = make_smp(1, [("rw", native.struct_dtype("struct spf_rwsem"), 1)])
    sem = native.RWSem(arena.ptr("rw", "struct spf_rwsem"))
    sem.init()
    assert sem.down_read_trylock() and sem.down_read_trylock()
    assert sem.readers() == 2 and sem.is_locked() and not sem.is_write_locked()
    assert not sem.down_write_trylock(0)
    sem.up_read()
    sem.up_read()
    assert sem.down_write(5) == 0                 # uncontended: no wait reported
    sem.assert_write_locked()
    assert sem.owner() == 5
    assert not sem.down_read_trylock()
    sem.downgrade_write()                        # write -> read without a gap
    assert sem.readers() == 1 and not sem.is_write_locked() and sem.owner() == -1
    assert sem.down_read_trylock()               # other readers may now join
    sem.up_read()
    sem.up_read()
    assert not sem.is_locked()
    with pytest.raises(AssertionError):
        sem.assert_locked()


def test_rwsem_writer_preference(make_smp):
    """Once a writer waits, down_read_trylock fails and new readers queue behind it."""
    arena, smp = make_smp(2, [("rw", native.struct_dtype("struct spf_rwsem"), 1),
                              ("ctr", np.uint64, 8)])
    sem = native.RWSem(arena.ptr("rw", "struct spf_rwsem"))
    sem.init()
    sem.down_read()                                  # the parent holds it for read

    def writer(cpu):
        if cpu == 0:
            w = native.RWSem(arena.ptr("rw", "struct spf_rwsem"))
            waited = w.down_write(cpu)
            arena["ctr"][1] = waited
            arena["ctr"][0] = 1
            w.up_write()

    from spfshm.run.workers import Workers
    with Workers(smp, 1, writer) as w:
        deadline = native.now_ns() + 5_000_000_000
        while native.lib.spf_rwsem_waiting_writers(sem.p) == 0:
            assert native.now_ns() < deadline, "writer never queued"
        assert not sem.down_read_trylock()           # writer preference
        native.sleep_ns(20_000_000)
        assert arena["ctr"][0] == 0                  # still excluded by our read lock
        sem.up_read()
        status = w.join(10)
    assert status == {0: 0}
    assert arena["ctr"][0] == 1 and arena["ctr"][1] >= 15_000_000   # it reports its wait


def _seq_body(arena, busted, iters):
    """CPU 0 writes (a, b = a + 1000) under the seqcount; the others read snapshots and
    count accepted torn ones in ctr[4] (ck_sequence's validator)."""
    def body(cpu):
        seq = native.SeqCount(arena.ptr("seq"), busted=busted)
        d = arena["ctr"]
        if cpu == 0:
            for i in range(1, iters):
                seq.write_begin()
                d[0] = i
                native.sleep_ns(1000)
                d[1] = i + 1000
                seq.write_end()
            d[5] = 1
        else:
            while d[5] == 0:
                s = seq.read_begin()
                a = int(d[0])
                b = int(d[1])
                if not seq.read_retry(s) and b != a + 1000 and a != 0:
                    native.fetch_add(arena.ptr("ctr", index=4), 1)
    return body


def _seq_run(make_smp, nproc, busted, iters):
    arena, smp = make_smp(nproc, [("seq", np.uint64, 8), ("ctr", np.uint64, 8)])
    arena["ctr"][1] = 1000
    run_workers(smp, nproc, _seq_body(arena, busted, iters), timeout=120)
    return arena


@pytest.mark.parametrize("nproc", NPROC)
def test_seqcount_no_torn_snapshot(make_smp, nproc):
    arena = _seq_run(make_smp, nproc, False, 3000)
    assert arena["ctr"][4] == 0
    assert arena["seq"][0] == 2 * (3000 - 1)


def test_busted_seqcount_caught(make_smp):
    for attempt in range(5):
        arena = _seq_run(make_smp, 3, True, 3000)
        if arena["ctr"][4] > 0:
            return
    pytest.fail("busted seqcount never let a torn snapshot through")


def test_seqcount_try_begin_fails_at_once_on_odd(make_smp):
    arena, smp = make_smp(1, [("seq", np.uint64, 8)])
    seq = native.SeqCount(arena.ptr("seq"))
    s = seq.try_begin()
    assert s == 0
    seq.write_begin()
    assert seq.try_begin() is None               # odd: give up, never spin
    assert seq.read_retry(s)
    seq.write_end()
    assert seq.try_begin() == 2 and seq.read_retry(s)


def test_atomic_verbs(make_smp):
    arena, smp = make_smp(1, [("w", np.uint64, 8), ("h", np.uint32, 16)])
    p, h = arena.ptr("w"), arena.ptr("h", "uint32_t")
    native.store_release(p, 0b1010)
    assert native.fetch_or(p, 0b0101) == 0b1010 and native.load_acquire(p) == 0b1111
    assert native.fetch_and(p, 0b0110) == 0b1111 and native.load_relaxed(p) == 0b0110
    assert native.xchg(p, 7) == 0b0110 and native.cmpxchg(p, 7, 9) == 7
    assert native.cmpxchg(p, 7, 11) == 9 and native.load_relaxed(p) == 9   # failed: seen 9
    native.store32_release(h, 3)
    assert native.fetch_add32(h, 2) == 3 and native.cmpxchg32(h, 5, 1) == 5
    assert native.load32_acquire(h) == 1
    native.smp_mb(), native.smp_rmb(), native.smp_wmb()
