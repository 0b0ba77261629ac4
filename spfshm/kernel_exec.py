"""Run memory-management ops on the real Linux kernel, for comparison with the model.

``run_kernel_ops(ops, window_base, npages)`` forks a child process which, inside the
address window ``[window_base, window_base + npages * 4096)``, performs each op with the
raw libc call (``mmap``, ``munmap``, ``mprotect``, ``madvise``) and after every op takes a
per-page snapshot of the window:

* ``pages``: the protection of each page (``"-"`` unmapped, ``"none"``, ``"r"``, ``"rw"``),
  read from ``/proc/self/maps``;
* ``resident``: ``mincore`` of each page (called once per run of mapped pages, since
  ``mincore`` fails with ENOMEM on a hole);
* ``values``: the first u64 of each readable page.  Residency is taken first and only
  resident pages are read, so the snapshot never faults a page in; a readable page that
  is not resident is reported as 0 (an untouched or zapped private anonymous page reads
  as zero).

Loads and stores go through ``process_vm_readv``/``process_vm_writev`` on the child's
own pid: they check the VMA protection as a user access would (a PROT_READ page
refuses a write and a PROT_NONE page refuses both with EFAULT, which this module reports
as ``"SEGV"``) but never raise a signal.  Those calls can transfer part of the data: a
load that crosses a page boundary and reads fewer than 8 bytes is a SEGV, and a store
that crosses a page boundary is first checked against ``/proc/self/maps``, so it is
all-or-nothing as a CPU store is.

The child first claims the whole window with ``MAP_FIXED_NOREPLACE`` to prove that
nothing else lives there, then releases it.  It also disables transparent huge pages
for itself (``PR_SET_THP_DISABLE``), so that a fault populates exactly one page whatever
the system THP setting.  The window is far from anything the Python runtime maps, so
the interpreter allocates nothing in it.  The steps travel back to the parent as JSON
through a pipe; the parent enforces the timeout and reports a crashed child.
"""
import ctypes
import errno
import json
import os
import select
import signal
import time
import traceback

PAGE_SIZE = 4096

PROT_NONE, PROT_READ, PROT_WRITE = 0x0, 0x1, 0x2
# Linux values shared by x86-64 and arm64.
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED = 4
PR_SET_THP_DISABLE = 41

PROTS = {"none": PROT_NONE, "r": PROT_READ, "rw": PROT_READ | PROT_WRITE}
MAP_FLAGS = {"fixed": MAP_FIXED, "noreplace": MAP_FIXED_NOREPLACE}
ADVICE = {"dontneed": MADV_DONTNEED}

# The keys each op needs besides "op"; load and store access 8 bytes.
OP_KEYS = {
    "mmap": ("addr", "len", "prot", "flags"),
    "munmap": ("addr", "len"),
    "mprotect": ("addr", "len", "prot"),
    "madvise": ("addr", "len", "advice"),
    "load": ("addr",),
    "store": ("addr", "value"),
}
ACCESS_SIZE = 8

# The first three characters of a /proc/self/maps permission field -> a PROTS key.
_MAPS_PERMS = {"---": "none", "r--": "r", "rw-": "rw"}
_MAP_FAILED = ctypes.c_void_p(-1).value


def default_window_base():
    """A 4096-aligned address far below the mmap area and far above the heap."""
    return 0x3F0000000000


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _load_libc():
    libc = ctypes.CDLL(None, use_errno=True)
    addr, size, c_int = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    libc.mmap.restype = addr
    libc.mmap.argtypes = [addr, size, c_int, c_int, c_int, ctypes.c_long]
    libc.munmap.restype = c_int
    libc.munmap.argtypes = [addr, size]
    libc.mprotect.restype = c_int
    libc.mprotect.argtypes = [addr, size, c_int]
    libc.madvise.restype = c_int
    libc.madvise.argtypes = [addr, size, c_int]
    libc.mincore.restype = c_int
    libc.mincore.argtypes = [addr, size, ctypes.POINTER(ctypes.c_ubyte)]
    libc.prctl.restype = c_int
    libc.prctl.argtypes = [c_int] + [ctypes.c_ulong] * 4
    iov = ctypes.POINTER(_Iovec)
    for name in ("process_vm_readv", "process_vm_writev"):
        fn = getattr(libc, name)
        fn.restype = ctypes.c_ssize_t
        fn.argtypes = [c_int, iov, ctypes.c_ulong, iov, ctypes.c_ulong, ctypes.c_ulong]
    return libc


_libc = _load_libc()


# --------------------------------------------------------------------------- validation

def _validate(ops, window_base, npages):
    if not isinstance(window_base, int) or window_base <= 0 or window_base % PAGE_SIZE:
        raise ValueError("window_base must be a positive multiple of %d" % PAGE_SIZE)
    if not isinstance(npages, int) or npages <= 0:
        raise ValueError("npages must be a positive integer")
    size = npages * PAGE_SIZE
    for i, op in enumerate(ops):
        kind = op.get("op")
        if kind not in OP_KEYS:
            raise ValueError("op %d: unknown op %r" % (i, kind))
        missing = [k for k in OP_KEYS[kind] if k not in op]
        if missing:
            raise ValueError("op %d (%s): missing %s" % (i, kind, ", ".join(missing)))
        for key, table in (("prot", PROTS), ("flags", MAP_FLAGS), ("advice", ADVICE)):
            if key in OP_KEYS[kind] and op[key] not in table:
                raise ValueError("op %d (%s): bad %s %r" % (i, kind, key, op[key]))
        if kind == "store" and not (isinstance(op["value"], int) and 0 <= op["value"] < 2**64):
            raise ValueError("op %d (store): value must be a u64" % i)
        addr = op["addr"]
        length = op["len"] if "len" in OP_KEYS[kind] else ACCESS_SIZE
        if not (isinstance(addr, int) and isinstance(length, int)):
            raise ValueError("op %d (%s): addr and len must be integers" % (i, kind))
        if addr < 0 or length < 0 or addr + length > size:
            raise ValueError("op %d (%s): [%#x, %#x) is outside the window [0, %#x)"
                             % (i, kind, addr, addr + length, size))


# --------------------------------------------------------------------------- the child

def _errno_name():
    err = ctypes.get_errno()
    return errno.errorcode.get(err, str(err))


def _transfer(fn, addr, buf):
    """process_vm_readv/writev of ``buf`` at ``addr`` in this process; bytes moved or -1."""
    local = _Iovec(ctypes.addressof(buf), ctypes.sizeof(buf))
    remote = _Iovec(addr, ctypes.sizeof(buf))
    return fn(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)


def _read_u64(addr):
    """The u64 at ``addr``, or None if it is not (entirely) readable."""
    buf = ctypes.c_uint64()
    if _transfer(_libc.process_vm_readv, addr, buf) != ctypes.sizeof(buf):
        return None
    return buf.value


def _page_prots(base, npages):
    """The PROTS key of each page of the window, "-" where nothing is mapped."""
    end = base + npages * PAGE_SIZE
    pages = ["-"] * npages
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split(None, 2)[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            lo, hi = max(lo, base), min(hi, end)
            if lo < hi:
                first, stop = (lo - base) // PAGE_SIZE, (hi - base) // PAGE_SIZE
                pages[first:stop] = [_MAPS_PERMS[perms[:3]]] * (stop - first)
    return pages


def _mapped_runs(pages):
    """(first, stop) page ranges of consecutive mapped pages."""
    runs, first = [], None
    for i, prot in enumerate(pages + ["-"]):
        if prot != "-" and first is None:
            first = i
        elif prot == "-" and first is not None:
            runs.append((first, i))
            first = None
    return runs


def _snapshot(base, npages):
    pages = _page_prots(base, npages)
    resident = [False] * npages
    for first, stop in _mapped_runs(pages):
        vec = (ctypes.c_ubyte * (stop - first))()
        if _libc.mincore(base + first * PAGE_SIZE, (stop - first) * PAGE_SIZE, vec):
            raise OSError(ctypes.get_errno(), "mincore of mapped pages failed")
        resident[first:stop] = [bool(b & 1) for b in vec]
    values = []
    for i, (prot, res) in enumerate(zip(pages, resident)):
        if prot in ("none", "-"):
            values.append(None)
        elif not res:
            values.append(0)
        else:
            value = _read_u64(base + i * PAGE_SIZE)
            if value is None:
                raise RuntimeError("resident readable page %d could not be read" % i)
            values.append(value)
    return {"pages": pages, "resident": resident, "values": values}


def _store(base, npages, off, value):
    """Store ``value`` at ``base + off``; None on success, "SEGV" if not writable."""
    first, last = off // PAGE_SIZE, (off + ACCESS_SIZE - 1) // PAGE_SIZE
    if first != last and _page_prots(base, npages)[first:last + 1] != ["rw", "rw"]:
        return "SEGV"
    buf = ctypes.c_uint64(value)
    if _transfer(_libc.process_vm_writev, base + off, buf) != ctypes.sizeof(buf):
        return "SEGV"
    return None


def _execute(op, base, npages):
    """Perform one op; returns (ret, errno name or None, value)."""
    kind, addr = op["op"], base + op["addr"]
    if kind == "load":
        value = _read_u64(addr)
        return 0, None, "SEGV" if value is None else value
    if kind == "store":
        return 0, None, _store(base, npages, op["addr"], op["value"])
    if kind == "mmap":
        flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FLAGS[op["flags"]]
        got = _libc.mmap(addr, op["len"], PROTS[op["prot"]], flags, -1, 0)
        if got == _MAP_FAILED:
            return -1, _errno_name(), None
        return got - base, None, None
    if kind == "munmap":
        ret = _libc.munmap(addr, op["len"])
    elif kind == "mprotect":
        ret = _libc.mprotect(addr, op["len"], PROTS[op["prot"]])
    else:
        ret = _libc.madvise(addr, op["len"], ADVICE[op["advice"]])
    return ret, _errno_name() if ret else None, None


def _claim_window(base, npages):
    """Check that nothing is mapped in the window, leaving it empty."""
    size = npages * PAGE_SIZE
    got = _libc.mmap(base, size, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0)
    if got == _MAP_FAILED:
        raise RuntimeError("window %#x+%#x is not free: %s" % (base, size, _errno_name()))
    if _libc.munmap(got, size) or got != base:
        raise RuntimeError("window %#x+%#x could not be claimed (got %#x)" % (base, size, got))


def _run_ops(ops, base, npages):
    if _libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_THP_DISABLE) failed")
    _claim_window(base, npages)
    steps = []
    for op in ops:
        ret, err, value = _execute(op, base, npages)
        steps.append({"ret": ret, "errno": err, "value": value, **_snapshot(base, npages)})
    return steps


def _child_main(ops, base, npages, wfd):
    """Never returns: reports {"steps": ...} or {"error": traceback} on ``wfd``."""
    status = 1
    try:
        try:
            reply = {"steps": _run_ops(ops, base, npages)}
        except Exception:
            reply = {"error": traceback.format_exc()}
        data = memoryview(json.dumps(reply).encode())
        while data:
            data = data[os.write(wfd, data):]
        status = 0
    finally:
        os._exit(status)


# --------------------------------------------------------------------------- the parent

def _read_to_eof(fd, deadline):
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError("kernel_exec child did not finish in time")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def run_kernel_ops(ops, window_base, npages, timeout_s=60.0):
    """Run ``ops`` on the real kernel in a forked child; one snapshot dict per op.

    Each step is ``{"ret", "errno", "value", "pages", "resident", "values"}``: ``ret`` is
    the offset of the mapping for mmap, 0 or -1 for munmap/mprotect/madvise and 0 for
    load/store; ``errno`` the errno name on failure, else None; ``value`` the u64 loaded
    or "SEGV" for a load, None or "SEGV" for a store, None for the other ops.
    """
    _validate(ops, window_base, npages)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child_main(ops, window_base, npages, wfd)
    os.close(wfd)
    try:
        data = _read_to_eof(rfd, time.monotonic() + timeout_s)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(rfd)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        how = "signal %s" % signal.Signals(-code).name if code < 0 else "exit status %d" % code
        raise RuntimeError("kernel_exec child died with %s" % how)
    reply = json.loads(data)
    if "error" in reply:
        raise RuntimeError("kernel_exec child failed:\n" + reply["error"])
    return reply["steps"]
