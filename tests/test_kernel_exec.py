import ctypes

import pytest

from spfshm.kernel_exec import PAGE_SIZE, default_window_base, run_kernel_ops

P = PAGE_SIZE
BASE = default_window_base()


def run(ops, npages=4):
    return run_kernel_ops(ops, BASE, npages, timeout_s=20)


def mmap(off, n, prot="rw", flags="fixed"):
    return {"op": "mmap", "addr": off, "len": n, "prot": prot, "flags": flags}


def test_store_load_round_trip():
    steps = run([mmap(P, 2 * P), {"op": "store", "addr": P + 8, "value": 2**64 - 3},
                 {"op": "load", "addr": P + 8}, {"op": "store", "addr": P, "value": 7}])
    assert steps[0]["ret"] == P and steps[0]["errno"] is None
    assert steps[0]["pages"] == ["-", "rw", "rw", "-"]
    assert steps[0]["resident"] == [False] * 4
    assert steps[0]["values"] == [None, 0, 0, None]
    assert steps[1]["value"] is None and steps[1]["resident"] == [False, True, False, False]
    assert steps[2]["value"] == 2**64 - 3
    assert steps[3]["values"] == [None, 7, 0, None]


def test_store_to_read_only_page_segfaults():
    steps = run([mmap(0, P), {"op": "store", "addr": 0, "value": 5},
                 {"op": "mprotect", "addr": 0, "len": P, "prot": "r"},
                 {"op": "store", "addr": 0, "value": 9}, {"op": "load", "addr": 0}])
    assert steps[2]["pages"][0] == "r"
    assert steps[3]["value"] == "SEGV" and steps[3]["values"][0] == 5
    assert steps[4]["value"] == 5


def test_store_straddling_into_read_only_page_writes_nothing():
    steps = run([mmap(0, P), mmap(P, P, prot="r"),
                 {"op": "store", "addr": P - 4, "value": 2**64 - 1},
                 {"op": "load", "addr": P - 8}])
    assert steps[2]["value"] == "SEGV"
    assert steps[3]["value"] == 0


def test_load_of_unmapped_page_segfaults():
    steps = run([{"op": "load", "addr": 2 * P}])
    assert steps[0]["value"] == "SEGV"
    assert steps[0]["pages"] == ["-"] * 4 and steps[0]["values"] == [None] * 4


def test_load_of_untouched_page_maps_the_zero_page():
    steps = run([mmap(0, P), {"op": "load", "addr": 0}])
    assert steps[1]["value"] == 0 and steps[1]["resident"][0] is True


def test_mprotect_none_keeps_page_resident():
    steps = run([mmap(0, 2 * P), {"op": "store", "addr": 0, "value": 1},
                 {"op": "mprotect", "addr": 0, "len": P, "prot": "none"},
                 {"op": "load", "addr": 0}])
    assert steps[2]["ret"] == 0 and steps[2]["errno"] is None
    assert steps[2]["pages"][:2] == ["none", "rw"]
    assert steps[2]["resident"][:2] == [True, False]
    assert steps[2]["values"][:2] == [None, 0]
    assert steps[3]["value"] == "SEGV"


def test_madvise_dontneed_zaps():
    steps = run([mmap(0, P), {"op": "store", "addr": 0, "value": 3},
                 {"op": "madvise", "addr": 0, "len": P, "advice": "dontneed"},
                 {"op": "load", "addr": 0}])
    assert steps[1]["resident"][0] is True and steps[1]["values"][0] == 3
    assert steps[2]["ret"] == 0 and steps[2]["resident"][0] is False
    assert steps[2]["values"][0] == 0 and steps[3]["value"] == 0


def test_unaligned_munmap_is_einval():
    steps = run([mmap(0, P), {"op": "munmap", "addr": 1, "len": P - 1}])
    assert steps[1]["ret"] == -1 and steps[1]["errno"] == "EINVAL"
    assert steps[1]["pages"][0] == "rw"


def test_noreplace_on_occupied_range_is_eexist():
    steps = run([mmap(P, P), mmap(0, 2 * P, flags="noreplace"), mmap(2 * P, P, flags="noreplace")])
    assert steps[1]["ret"] == -1 and steps[1]["errno"] == "EEXIST"
    assert steps[1]["pages"] == ["-", "rw", "-", "-"]
    assert steps[2]["ret"] == 2 * P and steps[2]["pages"] == ["-", "rw", "rw", "-"]


def test_munmap_of_middle_page_splits():
    steps = run([mmap(0, 3 * P), {"op": "munmap", "addr": P, "len": P}])
    assert steps[1]["ret"] == 0 and steps[1]["pages"] == ["rw", "-", "rw", "-"]


def test_zero_length_mmap_is_einval():
    steps = run([mmap(0, 0)])
    assert steps[0]["ret"] == -1 and steps[0]["errno"] == "EINVAL"
    assert steps[0]["pages"] == ["-"] * 4


def test_op_outside_window_is_rejected():
    with pytest.raises(ValueError, match="op 1"):
        run([mmap(0, P), mmap(3 * P, 2 * P)])
    with pytest.raises(ValueError, match="op 0"):
        run([{"op": "load", "addr": 4 * P - 4}])
    with pytest.raises(ValueError, match="window_base"):
        run_kernel_ops([], BASE + 1, 4)


def test_occupied_window_is_an_error():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = BASE + 2 * P
    assert libc.mmap(addr, P, 0, 0x22 | 0x100000, -1, 0) == addr  # PRIVATE|ANON|FIXED_NOREPLACE
    try:
        with pytest.raises(RuntimeError, match="EEXIST"):
            run([])
    finally:
        libc.munmap(addr, P)
