"""Epoch RCU: rcutorture's pipe check with real processes, IRQs-off readers, stalls,
dead readers, call_rcu, and the busted grace period that must be caught.

The pipe protocol (kernel/rcu/rcutorture.c): the writer publishes a fresh element,
sets the old one's pipe count to 1, then bumps it once per grace period; at PIPE_LEN
it is freed (poisoned) and reused.  A reader samples the pipe count of the element it
found at the END of its read-side section: anything >= 2 means a grace period ended
while the reader could still see the element.
"""
import numpy as np
import pytest

from spfshm import native
from spfshm.rcu import CallRcu
from spfshm.run.workers import Workers, run_workers

NELEM = 16
PIPE_LEN = 4
POISON = 0xDEAD


def _torture(make_smp, nreaders, busted, irq_readers, gps=300):
    ncpus = nreaders + 1
    arena, smp = make_smp(ncpus, [("cur", np.uint64, 8), ("pipe", np.uint64, NELEM),
                                  ("val", np.uint64, NELEM), ("hist", np.uint64, (ncpus, 8)),
                                  ("done", np.uint64, 8)])
    arena["val"][:] = POISON
    arena["val"][0] = 0
    arena["cur"][0] = 0

    def writer():
        pipe, val, cur = arena["pipe"], arena["val"], arena["cur"]
        free = list(range(1, NELEM))
        retired = []
        while arena["done"][1] < nreaders:            # every reader is inside its loop
            native.sleep_ns(100_000)
        for g in range(gps):
            native.sleep_ns(30_000)
            new = free.pop(0)
            pipe[new] = 0
            val[new] = 0
            old = int(cur[0])
            native.store_release(arena.ptr("cur"), new)     # publish, then retire old
            pipe[old] = 1
            retired.append(old)
            native.synchronize_rcu(10, busted=busted)
            for e in list(retired):
                pipe[e] += 1
                if pipe[e] >= PIPE_LEN:
                    val[e] = POISON
                    retired.remove(e)
                    free.append(e)
        arena["done"][0] = 1

    def reader(cpu):
        pipe, val, hist = arena["pipe"], arena["val"], arena["hist"]
        enter, leave = ((native.local_irq_disable, native.local_irq_enable) if irq_readers
                        else (native.rcu_read_lock, native.rcu_read_unlock))
        n = 0
        native.fetch_add(arena.ptr("done", index=1), 1)
        while arena["done"][0] == 0:
            enter()
            e = native.load_acquire(arena.ptr("cur"))
            poisoned = val[e] == POISON
            native.sleep_ns(20_000 if n % 8 else 200_000)    # short, sometimes longer
            pc = min(int(pipe[e]), 6) if not poisoned else 7
            leave()
            hist[cpu, pc] += 1
            n += 1

    run_workers(smp, ncpus, lambda cpu: writer() if cpu == 0 else reader(cpu), timeout=120)
    return arena["hist"].sum(axis=0)


@pytest.mark.parametrize("irq_readers", [False, True], ids=["rcu_read_lock", "irqs_off"])
@pytest.mark.parametrize("nreaders", [1, 3, 7])
def test_pipe_counts_stay_in_first_two_buckets(make_smp, nreaders, irq_readers):
    hist = _torture(make_smp, nreaders, False, irq_readers)
    assert hist.sum() > 0
    assert hist[2:].sum() == 0, "Reader Pipe: %s !!!" % hist.tolist()


@pytest.mark.parametrize("irq_readers", [False, True], ids=["rcu_read_lock", "irqs_off"])
def test_busted_grace_period_caught(make_smp, irq_readers):
    hist = _torture(make_smp, 3, True, irq_readers)
    assert hist[2:].sum() > 0, "busted RCU not caught: %s" % hist.tolist()


def test_stall_names_the_reader_and_dead_reader_is_skipped(make_smp):
    arena, smp = make_smp(2, [("flags", np.uint64, 8)])

    def body(cpu):
        if cpu == 1:
            native.rcu_read_lock()
            arena["flags"][0] = 1
            native.sleep_ns(60 * 1_000_000_000)     # dies in here

    with Workers(smp, 2, body) as w:
        while arena["flags"][0] == 0:
            native.sleep_ns(100_000)
        with pytest.raises(native.RCUStallError) as ei:
            native.synchronize_rcu(0.1)
        assert ei.value.cpu == 1
        w.kill()                                    # reaped: marked dead
        native.synchronize_rcu(5)                   # no longer waits for it


def test_call_rcu_defers_until_readers_leave(make_smp):
    arena, smp = make_smp(2, [("flags", np.uint64, 8)])

    def body(cpu):
        if cpu == 1:
            native.rcu_read_lock()
            arena["flags"][0] = 1
            while arena["flags"][1] == 0:
                native.sleep_ns(100_000)
            native.rcu_read_unlock()
            arena["flags"][2] = 1
            while arena["flags"][3] == 0:
                native.sleep_ns(100_000)

    freed = []
    cr = CallRcu(limit=8)
    with Workers(smp, 2, body) as w:
        while arena["flags"][0] == 0:
            native.sleep_ns(100_000)
        cr.call_rcu(freed.append, "a")
        native.sleep_ns(20_000_000)
        assert cr.rcu_process_callbacks() == 0 and freed == [] and cr.backlog() == 1
        arena["flags"][1] = 1
        while arena["flags"][2] == 0:
            native.sleep_ns(100_000)
        assert cr.rcu_process_callbacks() == 1 and freed == ["a"]
        for i in range(20):                         # bounded: forced drains, no growth
            cr.call_rcu(freed.append, i)
        assert cr.max_backlog <= 8 and cr.forced >= 2
        arena["flags"][3] = 1
        w.join(10)
    cr.rcu_barrier()
    assert freed == ["a"] + list(range(20))


@pytest.mark.parametrize("busted", [False, True], ids=["correct", "busted"])
def test_call_rcu_free_reaches_a_reader_only_when_busted(make_smp, busted):
    """A reader inside rcu_read_lock() reads an object, the writer retires it with
    call_rcu and runs the callbacks, the reader reads it again before leaving: it must
    still see the object, not the free's poison, unless call_rcu is busted."""
    arena, smp = make_smp(2, [("flags", np.uint64, 8), ("obj", np.uint64, 8)])
    arena["obj"][0] = 1

    def body(cpu):
        if cpu == 1:
            flags, obj = arena["flags"], arena["obj"]
            native.rcu_read_lock()
            flags[2] = obj[0]
            flags[0] = 1
            while flags[1] == 0:
                native.sleep_ns(100_000)
            flags[3] = obj[0]                       # the same section, after the frees
            native.rcu_read_unlock()

    def free(i):
        arena["obj"][i] = POISON

    cr = CallRcu(busted=busted)
    with Workers(smp, 2, body) as w:
        while arena["flags"][0] == 0:
            native.sleep_ns(100_000)
        cr.call_rcu(free, 0)
        cr.rcu_process_callbacks()
        arena["flags"][1] = 1
        assert w.join(10) == {0: 0, 1: 0}
    cr.rcu_barrier()
    assert arena["obj"][0] == POISON                # freed in the end either way
    seen = arena["flags"][2:4].tolist()
    assert seen == ([1, POISON] if busted else [1, 1]), seen
