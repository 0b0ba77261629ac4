"""The shared arena: one shared-memory segment laid out from a single description.

A layout is a list of regions ``(name, dtype, shape)``; each region starts on a 64-byte
boundary.  Offsets, never pointers, are stored in the arena: a process that attaches by
name maps it at another address.  Workers are forked and inherit the parent's mapping.

Clean-up contract: the segment is created with a random name and mode 0600 and is
unlinked as soon as it is mapped (``linger=False``, the default), so nothing can leak in
/dev/shm whatever happens next (Ctrl-C, an exception, kill -9 of any process).  Between
creation and unlink the segment is registered with multiprocessing's resource tracker (a
process of its own, which ``SharedMemory`` starts): if the creator dies in that window,
the tracker sees its pipe close and unlinks the segment.  With ``linger=True`` the name
stays until ``close()`` (or the tracker's clean-up) so an unrelated process can attach;
``close()`` also runs from an atexit hook.

Test hook: ``SPFSHM_TEST_PAUSE_BEFORE_UNLINK=SECONDS`` holds the window between creation
and unlink open that long, so a test can kill the creator inside it.  Not for other use.
"""
import atexit
import math
import os
import secrets
import time
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from . import native

ALIGN = 64
# Refuse segments larger than this fraction of available memory (a clear error, not OOM).
MAX_FRACTION_OF_RAM = 0.5


class ArenaError(ValueError):
    pass


class Layout:
    """Region name -> (offset, dtype, shape), computed once from the description."""

    def __init__(self, regions):
        self.regions = {}
        off = 0
        for name, dtype, shape in regions:
            if name in self.regions:
                raise ArenaError("duplicate arena region %r" % name)
            dtype = np.dtype(dtype)
            shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
            off = (off + ALIGN - 1) // ALIGN * ALIGN
            nbytes = dtype.itemsize * int(math.prod(shape))
            self.regions[name] = (off, dtype, shape, nbytes)
            off += nbytes
        self.size = max(ALIGN, (off + ALIGN - 1) // ALIGN * ALIGN)

    def describe(self):
        """Lines naming each region, its offset and size (printed by runs)."""
        return ["%-14s @%-9d %10d B  %s %s" % (n, o, b, d, s)
                for n, (o, d, s, b) in self.regions.items()]


class Arena:
    """A mapped segment with typed numpy views and native pointers per region."""

    def __init__(self, layout, linger=False, name=None):
        self.layout = layout
        if name is None:
            check_fits(layout.size)
            name = "spfshm_" + secrets.token_hex(8)
            self.shm = shared_memory.SharedMemory(name=name, create=True, size=layout.size)
            self.owner = True
        else:
            self.shm = shared_memory.SharedMemory(name=name, create=False)
            # Only the creator may unlink; keep Python's tracker from doing it at exit.
            resource_tracker.unregister(self.shm._name, "shared_memory")
            self.owner = False
        self.name = name
        self.linked = True
        if self.owner and not linger:
            time.sleep(float(os.environ.get("SPFSHM_TEST_PAUSE_BEFORE_UNLINK", 0)))
            self.unlink()
        self._base = native.ffi.from_buffer("char[]", self.shm.buf)
        self.views = {}
        for rname, (off, dtype, shape, nbytes) in layout.regions.items():
            self.views[rname] = np.ndarray(shape, dtype=dtype, buffer=self.shm.buf, offset=off)
        atexit.register(self.close)

    def __getitem__(self, name):
        return self.views[name]

    def ptr(self, name, ctype="uint64_t", index=0):
        """A native ``ctype *`` to element ``index`` of region ``name``."""
        off, dtype, shape, nbytes = self.layout.regions[name]
        return native.ffi.cast(ctype + " *", self._base + off) + index

    def offset(self, name):
        return self.layout.regions[name][0]

    def unlink(self):
        if self.owner and self.linked:
            self.linked = False
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass

    def close(self):
        """Drop every view (SharedMemory.close refuses while any is alive), then unmap."""
        self.unlink()
        if self.shm is None:
            return
        self.views = {}
        self._base = None
        try:
            self.shm.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes with the process
        self.shm = None


def check_fits(size):
    """ArenaError unless a segment of ``size`` bytes fits in available memory."""
    import psutil
    avail = psutil.virtual_memory().available
    if size > avail * MAX_FRACTION_OF_RAM:
        raise ArenaError("arena of %.1f MiB does not fit: %.1f MiB available (limit %d%%)"
                         % (size / 2**20, avail / 2**20, MAX_FRACTION_OF_RAM * 100))
