"""Signal IPIs: ordering against IRQs-off sections, many targets, dead targets, the
busted twin, and delivery to the registered thread only."""
import os
import signal
import threading

import numpy as np
import pytest

from spfshm import native
from spfshm.run.workers import Workers

S = 1_000_000_000
ROUNDS = 10


def _wait_flag(arr, i, value, timeout_s=10):
    deadline = native.now_ns() + int(timeout_s * S)
    while arr[i] != value:
        assert native.now_ns() < deadline, "flag %d never became %d" % (i, value)
        native.sleep_ns(100_000)


def _spin_until(arr, i):
    while arr[i] == 0:
        pass


def _irqs_off_target(arena, hold_ns, until_ipi=False):
    """A target: IRQs off, say so (flags[0]), with ``until_ipi`` wait until an IPI is
    pending, then hold for ``hold_ns`` or until released (flags[3]), stamp (flags[1]) and
    re-enable; run until told to stop (flags[2])."""
    def body(cpu):
        f = arena["flags"]
        native.local_irq_disable()
        f[0] = 1
        while until_ipi and arena["percpu"]["pending"][cpu] == 0:
            pass
        end = native.now_ns() + hold_ns
        while f[3] == 0 and native.now_ns() < end:
            native.sleep_ns(100_000)
        f[1] = native.now_ns()
        native.local_irq_enable()
        _spin_until(f, 2)
    return body


def test_ack_only_after_irqs_enabled(make_smp):
    """A CPU that has IRQs off when the IPI arrives (it waits for it to be pending) acks
    only after its re-enable, and ipi_sync returns only after the ack (the stamps are on
    the one CLOCK_MONOTONIC)."""
    arena, smp = make_smp(1, [("flags", np.uint64, 8)])
    with Workers(smp, 1, _irqs_off_target(arena, 50_000_000, until_ipi=True)) as w:
        _wait_flag(arena["flags"], 0, 1)
        native.ipi_sync(native.CpuMask(1, [0]), native.IPI_SYNC, timeout_s=10)
        t1 = native.now_ns()
        pc = arena["percpu"][0]
        enabled, acked = int(arena["flags"][1]), int(pc["ack_ns"])
        arena["flags"][2] = 1
        assert w.join(10) == {0: 0}
    assert enabled <= int(pc["irq_enable_ns"]) <= acked <= t1, \
        "ipi_sync returned while the target had IRQs off"


def test_busted_ipi_sync_caught(make_smp):
    """The busted sync returns while the target, which holds IRQs off until released,
    has not acked (a correct one would wait the whole hold)."""
    arena, smp = make_smp(1, [("flags", np.uint64, 8)])
    with Workers(smp, 1, _irqs_off_target(arena, 20 * S, until_ipi=True)) as w:
        _wait_flag(arena["flags"], 0, 1)
        native.ipi_sync(native.CpuMask(1, [0]), native.IPI_SYNC, busted=True)
        t1 = native.now_ns()
        acked_before_return = int(arena["percpu"][0]["ack_ns"]) != 0
        arena["flags"][3] = 1                       # release the target
        arena["flags"][2] = 1
        w.join(10)
    assert not acked_before_return and int(arena["percpu"][0]["ack_ns"]) > t1


@pytest.mark.parametrize("ntargets", [1, 2, 4, 8])
def test_tlb_flush_reaches_every_target(make_smp, ntargets):
    """Each target registers a flush region and fills it; after ipi_sync every region is
    zero and every target counted the IPI.  8 targets on 2 cores: oversubscribed."""
    arena, smp = make_smp(ntargets, [("tlb", np.uint64, (ntargets, 16)),
                                     ("flags", np.uint64, 8)])

    def body(cpu):
        native.set_flush_region(arena.ptr("tlb", index=cpu * 16), 16 * 8)
        arena["tlb"][cpu, :] = cpu + 1
        native.fetch_add(arena.ptr("flags", index=0), 1)
        while arena["flags"][1] == 0:
            native.sleep_ns(50_000)

    with Workers(smp, ntargets, body) as w:
        _wait_flag(arena["flags"], 0, ntargets)
        for rnd in range(3):
            native.ipi_sync(native.CpuMask(ntargets, range(ntargets)), native.IPI_FLUSH_TLB,
                            timeout_s=20)
            assert not arena["tlb"].any()
            arena["tlb"][:] = 7
        arena["flags"][1] = 1
        assert w.join(20) == {c: 0 for c in range(ntargets)}
    assert (arena["percpu"]["ipis_handled"] >= 3).all()
    assert (arena["percpu"]["flush_gen"] >= 3).all()


def test_a_deferred_handler_is_not_reentered(make_smp):
    """The target is inside an instruction whenever the flush IPI arrives, so the handler
    runs deferred at the instruction's end; there the generic perturbation always pauses
    before the flush (1..50 ms sleeps), longer than the sender's 2 ms re-send.  The
    re-sent signal must not run a second handler that acks the ticket while the first
    one holds the flush undone: when ipi_sync returns, the region is zero (without
    the guard, 8 of 10 rounds were acked early)."""
    arena, smp = make_smp(1, [("tlb", np.uint64, 16), ("flags", np.uint64, 8),
                              ("hits", np.uint64, native.PERTURB_WORDS)])
    profile = {"per_million": 1_000_000, "spin_pm": 0, "yield_pm": 0, "spin_max": 1,
               "sleep_max_ns": 50_000_000, "read_factor": 1, "read_sleep_ns": 1}

    def body(cpu):
        native.set_flush_region(arena.ptr("tlb"), 16 * 8)
        native.perturb_arm(profile, 5, cpu, arena.ptr("hits"))
        arena["flags"][0] = 1
        while arena["flags"][1] == 0:
            native.lib.spf_insn_begin()
            end = native.now_ns() + 1_000_000
            while native.now_ns() < end:
                pass
            native.lib.spf_insn_end()

    with Workers(smp, 1, body) as w:
        _wait_flag(arena["flags"], 0, 1)
        early = 0
        for rnd in range(ROUNDS):
            native.sleep_ns(60_000_000)         # the last round's handler has ended
            arena["tlb"][:] = 7
            native.ipi_sync(native.CpuMask(1, [0]), native.IPI_FLUSH_TLB, timeout_s=20)
            early += bool(arena["tlb"].any())
        arena["flags"][1] = 1
        assert w.join(20) == {0: 0}
    assert early == 0, "%d of %d flushes acked before the handler flushed" % (early, ROUNDS)
    assert arena["hits"][native.PH_HANDLER] >= 1, "the handler never paused"


def test_ipi_timeout_names_the_cpu(make_smp):
    arena, smp = make_smp(2, [("flags", np.uint64, 8)])

    def body(cpu):
        if cpu == 1:
            _irqs_off_target(arena, 60 * S)(cpu)
        else:
            _spin_until(arena["flags"], 2)

    with Workers(smp, 2, body) as w:
        _wait_flag(arena["flags"], 0, 1)
        with pytest.raises(native.IPIError) as ei:
            native.ipi_sync(native.CpuMask(2, [0, 1]), timeout_s=0.1)
        assert ei.value.cpu == 1 and "never acked" in str(ei.value)
        arena["flags"][3] = 1
        arena["flags"][2] = 1
        w.join(10)


def test_dead_target_reported_not_hang(make_smp):
    """A target SIGKILLed with IRQs off (not yet reaped: a zombie) is reported dead."""
    arena, smp = make_smp(1, [("flags", np.uint64, 8)])
    with Workers(smp, 1, _irqs_off_target(arena, 60 * S)) as w:
        _wait_flag(arena["flags"], 0, 1)
        os.kill(w.pids[0], signal.SIGKILL)
        with pytest.raises(native.IPIError) as ei:      # (not found dead: "never acked")
            native.ipi_sync(native.CpuMask(1, [0]), timeout_s=30)
        assert ei.value.cpu == 0 and "dead" in str(ei.value)


def test_sender_with_irqs_off_refused(make_smp):
    arena, smp = make_smp(1)
    native.local_irq_disable()
    try:
        with pytest.raises(native.IPIError, match="IRQs disabled"):
            native.ipi_sync(native.CpuMask(1, [0]), timeout_s=0.1)
    finally:
        native.local_irq_enable()


def test_only_the_registered_thread_takes_the_ipi(make_smp):
    """A second thread in the worker (like numpy's OpenBLAS thread) has the signal
    unblocked; while the main thread has IRQs off, nobody may ack."""
    arena, smp = make_smp(1, [("flags", np.uint64, 8)])

    def body(cpu):
        stop = threading.Event()
        t = threading.Thread(target=stop.wait, daemon=True)
        t.start()                                 # inherits the unblocked mask
        _irqs_off_target(arena, 60 * S)(cpu)
        stop.set()

    with Workers(smp, 1, body) as w:
        _wait_flag(arena["flags"], 0, 1)
        with pytest.raises(native.IPIError, match="never acked"):
            native.ipi_sync(native.CpuMask(1, [0]), timeout_s=0.1)
        arena["flags"][3] = 1
        native.ipi_sync(native.CpuMask(1, [0]), timeout_s=10)   # after re-enable: acks
        arena["flags"][2] = 1
        assert w.join(10) == {0: 0}


def test_ipi_events_in_rings(make_smp):
    arena, smp = make_smp(2, [("flags", np.uint64, 8)])

    def body(cpu):
        if cpu == 0:
            _spin_until(arena["flags"], 1)
            native.ipi_sync(native.CpuMask(2, [1]), timeout_s=10)
            arena["flags"][2] = 1
        else:
            arena["flags"][1] = 1
            _spin_until(arena["flags"], 2)

    with Workers(smp, 2, body) as w:
        assert w.join(20) == {0: 0, 1: 0}
    tl = smp.timeline()
    kinds = [(int(e["cpu"]), int(e["type"])) for e in tl]
    assert kinds.index((0, native.EV_IPI_SEND)) < kinds.index((1, native.EV_IPI_HANDLE)) \
        < kinds.index((0, native.EV_IPI_DONE))
