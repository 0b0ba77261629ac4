"""Build the private extension ``spfshm._native`` from ``native/`` (cffi API mode).

The cdef is the public headers themselves (one per primitive), minus preprocessor lines
other than integer ``#define``s, so a declaration is written once.  Paths are relative to
the project root, where setuptools builds (it refuses absolute ``sources=``); the sdist
carries ``native/`` (MANIFEST.in).
"""
import glob
import os
import re

from cffi import FFI

NATIVE = "native"
HEADERS = [
    "spf_atomic.h", "spf_futex.h", "spf_spinlock.h", "spf_rwsem.h",
    "spf_seqcount.h", "spf_ring.h", "spf_cpu.h", "spf_rcu.h", "spf_proc.h", "spf_mmu.h",
    "spf_kfault.h", "spf_perturb.h", "spf_sched.h", "spf_vmref.h",
]


def _root():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(here)


def _cdef_of(text):
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            if re.match(r"#define\s+\w+\s+\d+\s*(/\*.*\*/)?\s*$", line):
                keep.append(re.sub(r"/\*.*\*/", "", line))
            continue
        keep.append(line)
    return "\n".join(keep)


ffibuilder = FFI()
_root_dir = _root()
ffibuilder.cdef("\n".join(
    _cdef_of(open(os.path.join(_root_dir, NATIVE, h)).read()) for h in HEADERS))
ffibuilder.set_source(
    "spfshm._native",
    "#include <stdint.h>\n" + "".join('#include "%s"\n' % h for h in HEADERS),
    sources=sorted(os.path.relpath(p, _root_dir)
                   for p in glob.glob(os.path.join(_root_dir, NATIVE, "*.c"))),
    include_dirs=[NATIVE],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    os.chdir(_root_dir)
    ffibuilder.compile(verbose=True)
