"""``spfshm diff-kernel``: the same single-threaded op sequence on the model and on the
real kernel, compared after every step, page by page.

Per step: each call's result or errno, the loaded value (or SIGSEGV), and for every page
of the window its protection (/proc/self/maps), residency (mincore) and first word.
Pages, not VMA boundaries, are compared: the kernel merges VMAs, the model does not.

Script format (``--script FILE.json``): a JSON list of ops; ``addr`` is a byte offset
into the window, ``len`` a byte length; loads and stores use page offsets (the model's
frames carry one word, the first):
  {"op": "mmap", "addr": 0, "len": 8192, "prot": "rw", "flags": "fixed"|"noreplace"}
  {"op": "munmap", "addr": 4096, "len": 4096}
  {"op": "mprotect", "addr": 0, "len": 4096, "prot": "none"|"r"|"rw"}
  {"op": "madvise", "addr": 0, "len": 4096, "advice": "dontneed"}
  {"op": "load", "addr": 0}
  {"op": "store", "addr": 0, "value": 42}

A divergence is shrunk (``shrink_divergence``) to a script that diverges the same way
(``divergence_kind``): ddmin over the ops, simpler arguments, one-op removal.
``--bug NAME`` runs the model with a busted variant that a single CPU can show (one
whose needs the model's fixed configuration meets): a planted divergence.
"""
import errno as errno_mod
import json
import random

from . import native
from .arena import Arena, Layout
from .bugs import BY_NAME, Bugs
from .config import Config
from .kernel_exec import OP_KEYS, default_window_base, run_kernel_ops
from .mm import mm_types
from .mm.cpu import OK, SEGV, Cpu
from .mm.mm_types import MM, PAGE, PROT_BY_NAME, PROT_NAMES, Geometry, mm_init
from .mm.pagetable import P, PROTNONE, entry_pfn, index, pte_table_of
from .mm.syscalls import do_madvise_dontneed, do_mmap, do_mprotect, do_munmap
from .mm.vma import current_tree, tree_entries
from .shrink import Shrinker
from .smp import Smp, smp_regions


class ScriptError(ValueError):
    pass


def load_script(path):
    """Read and validate a script (ScriptError names the problem)."""
    try:
        with open(path) as f:
            ops = json.load(f)
    except OSError as e:
        raise ScriptError("cannot read %s: %s" % (path, e.strerror))
    except ValueError as e:
        raise ScriptError("%s is not valid JSON: %s" % (path, e))
    if not isinstance(ops, list) or not all(isinstance(o, dict) for o in ops):
        raise ScriptError("%s: expected a JSON list of op objects" % path)
    for i, o in enumerate(ops):
        if o.get("op") not in OP_KEYS:
            raise ScriptError("%s: op %d: unknown op %r" % (path, i, o.get("op")))
        if o["op"] in ("load", "store") and isinstance(o.get("addr"), int) and o["addr"] % PAGE:
            raise ScriptError("%s: op %d: loads and stores must be page-aligned" % (path, i))
    return ops


def random_ops(seed, nops, npages):
    """A seeded op sequence inside a window of npages, with some invalid arguments."""
    r = random.Random("diff-kernel:%d" % seed)
    size = npages * PAGE
    ops = [{"op": "mmap", "addr": 0, "len": size // 2, "prot": "rw", "flags": "fixed"}]
    stored = []

    def rng():
        a = r.randrange(npages)
        n = r.randint(1, min(16, npages - a))
        addr, length = a * PAGE, n * PAGE
        x = r.random()
        if x < 0.04:
            addr += r.choice([8, 123, 2048])         # unaligned: EINVAL
            length = min(length, size - addr)
        elif x < 0.07:
            length = 0
        elif x < 0.12:
            length -= r.randrange(1, PAGE)           # rounded up by the kernel
        return addr, length

    for _ in range(nops - 1):
        kind = r.choices(["mmap", "munmap", "mprotect", "madvise", "load", "store"],
                         [14, 8, 12, 8, 29, 29])[0]
        if kind in ("load", "store"):
            addr = r.choice(stored) if stored and r.random() < 0.5 else r.randrange(npages) * PAGE
            op = {"op": kind, "addr": addr}
            if kind == "store":
                op["value"] = r.getrandbits(64)
                stored.append(addr)
        else:
            addr, length = rng()
            op = {"op": kind, "addr": addr, "len": length}
            if kind in ("mmap", "mprotect"):
                op["prot"] = r.choice(["rw", "rw", "r", "none"])
            if kind == "mmap":
                op["flags"] = r.choice(["fixed", "noreplace"])
            if kind == "madvise":
                op["advice"] = "dontneed"
        ops.append(op)
    return ops


def model_config(npages, madvise_lock="mmap"):
    # The real kernel here runs one classical fault path; reclaim and collapse would
    # make steps the kernel does not take.  MADV_DONTNEED may take the VMA's read lock
    # instead of mmap_lock (v6.17's madvise_lock): the kernel here does (6.18), and the
    # results must not depend on it.
    return Config(cpus=1, window_pages=max(64, npages), fault_mode="classic",
                  table_free="ipi", reclaim="off", collapse="off", perturb="off",
                  madvise_lock=madvise_lock)


def check_bugs(names):
    """ValueError unless every variant is known and its needs are met by the model's
    fixed configuration (a checker's clock aside: no checker sweeps here); one that
    needs a watchdog, another fault path or table freeing cannot be planted here."""
    cfg = model_config(64)
    for name in names:
        if name not in BY_NAME:
            raise ValueError("--bug: unknown bug %r (see 'spfshm bugs')" % name)
        for key, value in BY_NAME[name].config.items():
            if key != "check_every" and getattr(cfg, key) != value:
                raise ValueError("--bug %s needs --%s %s; diff-kernel's model runs %s=%s"
                                 % (name, key.replace("_", "-"), value, key,
                                    getattr(cfg, key)))


class Model:
    """The model in this process, as a single CPU, over the same window."""

    def __init__(self, npages, base, bugs=(), madvise_lock="mmap"):
        cfg = model_config(npages, madvise_lock)
        self.g = Geometry(1, npages, cfg.tlb_entries, window_base=base)
        self.arena = Arena(Layout(smp_regions(1) + mm_types.regions(self.g)))
        self.smp = Smp(self.arena, 1)
        self.smp.init()
        self.smp.become_cpu(0)
        self.mm = MM(self.arena, self.g, cfg, Bugs(bugs), 0)
        # the kernel compared with does not run out of memory here: an injected
        # allocation failure would be a divergence of the model's own making
        self.mm.fault_alloc_fails = lambda: False
        self.mm.slab_alloc_fails = lambda: False
        self.mm.split_alloc_fails = lambda: False
        mm_init(self.mm)
        self.cpu = Cpu(self.mm)
        self.base = base
        self.npages = npages

    def close(self):
        self.mm.rcu.rcu_barrier()
        native.cpu_unregister()
        self.arena.close()

    def execute(self, op):
        mm, b = self.mm, self.base
        k = op["op"]
        step = {"ret": 0, "errno": None, "value": None}
        if k in ("load", "store"):
            res, v = self.cpu.access(b + op["addr"], 1 if k == "store" else 0,
                                     op.get("value", 0))
            step["value"] = "SEGV" if res == SEGV else (v if k == "load" else None)
            if res not in (OK, SEGV):
                raise RuntimeError("model access returned %r at op %r" % (res, op))
        else:
            if k == "mmap":
                r = do_mmap(mm, b + op["addr"], op["len"], PROT_BY_NAME[op["prot"]],
                            op["flags"])
                r = r - b if r >= 0 else r
            elif k == "munmap":
                r = do_munmap(mm, b + op["addr"], op["len"])
            elif k == "mprotect":
                r = do_mprotect(mm, b + op["addr"], op["len"], PROT_BY_NAME[op["prot"]])
            else:
                r = do_madvise_dontneed(mm, b + op["addr"], op["len"])
            if r < 0:
                step["ret"], step["errno"] = -1, errno_mod.errorcode[-r]
            else:
                step["ret"] = r
        mm.rcu.rcu_process_callbacks()
        step.update(self.snapshot())
        return step

    def snapshot(self):
        mm, b = self.mm, self.base
        starts, ends, ids = tree_entries(mm, current_tree(mm))
        pages, resident, values = [], [], []
        for p in range(self.npages):
            va = b + p * PAGE
            prot = "-"
            for s, e, vid in zip(starts, ends, ids):
                if s <= va < e:
                    prot = PROT_NAMES[int(mm.vma[vid]["prot"])]
                    break
            t = pte_table_of(mm, va)
            pte = int(mm.pt[t, index(va, 1)]) if t >= 0 else 0
            mapped = bool(pte & (P | PROTNONE))
            pages.append(prot)
            resident.append(mapped and prot != "-")
            if prot in ("r", "rw"):
                values.append(int(mm.frame_payload[entry_pfn(pte)]) if mapped else 0)
            else:
                values.append(None)
        return {"pages": pages, "resident": resident, "values": values}


def compare(ops, npages, base=None, bugs=(), madvise_lock="mmap"):
    """Run both; returns None when identical, else the first divergence as a dict."""
    base = base or default_window_base()
    ksteps = run_kernel_ops(ops, base, npages)
    model = Model(npages, base, bugs, madvise_lock)
    try:
        for i, (op, ks) in enumerate(zip(ops, ksteps)):
            ms = model.execute(op)
            for field in ("ret", "errno", "value", "pages", "resident", "values"):
                if ms[field] != ks.get(field):
                    detail = _first_page_diff(ms[field], ks.get(field)) \
                        if isinstance(ms[field], list) else ""
                    return {"step": i, "op": op, "field": field, "model": ms[field],
                            "kernel": ks.get(field), "detail": detail}
    finally:
        model.close()
    return None


def _first_page_diff(a, b):
    for p, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return "page %d: model %r, kernel %r" % (p, x, y)
    return "lengths differ"


def format_divergence(d):
    return ("DIVERGENCE at step %d, op %s: %s differs (%s)\n  model:  %r\n  kernel: %r"
            % (d["step"], json.dumps(d["op"]), d["field"], d["detail"] or "-",
               d["model"], d["kernel"]))


def divergence_kind(d):
    """What a shrink keeps: the diverging op's name, the field that differs and, for
    the first page (or the result) that differs, the model's and the kernel's values,
    any nonzero word standing for every other (stored values get simplified).  E.g.
    ("madvise", "resident", True, False): after a DONTNEED a page the kernel dropped is
    still resident in the model; ("store", "value", None, "SEGV")."""
    m, k = d["model"], d["kernel"]
    if isinstance(m, list) and isinstance(k, list) and len(m) == len(k):
        m, k = next((x, y) for x, y in zip(m, k) if x != y)
    elif isinstance(m, list) or isinstance(k, list):
        m, k = "length %d" % len(m or ()), "length %d" % len(k or ())
    return (d["op"]["op"], d["field"], _word_class(m), _word_class(k))


def _word_class(x):
    return "word" if isinstance(x, int) and not isinstance(x, bool) and x else x


def format_kind(kind):
    return "%s after %s: model %r, kernel %r" % (kind[1], kind[0], kind[2], kind[3])


def simpler_ops(op, npages):
    """Simpler versions of one op, each strictly simpler (so a shrink ends): one page
    long, half as long (the first or the second half), an aligned address, a stored
    value of 1, MAP_FIXED."""
    out = []
    if "len" in op:
        n, half = op["len"], op["len"] // 2 // PAGE * PAGE
        if n != PAGE and op["addr"] + PAGE <= npages * PAGE:
            out.append(dict(op, len=PAGE))
        if PAGE <= half < n:
            out += [dict(op, len=half), dict(op, addr=op["addr"] + half, len=n - half)]
    if op["addr"] % PAGE:
        out.append(dict(op, addr=op["addr"] - op["addr"] % PAGE))
    if op["op"] == "store" and op["value"] != 1:
        out.append(dict(op, value=1))
    if op["op"] == "mmap" and op["flags"] != "fixed":
        out.append(dict(op, flags="fixed"))
    return out


def moved_down(ops):
    """The whole script moved to the window's first page, if it is not there."""
    low = min(o["addr"] for o in ops) // PAGE * PAGE
    return [[dict(o, addr=o["addr"] - low) for o in ops]] if low else []


def shrink_divergence(ops, npages, d, bugs=(), progress=None, madvise_lock="mmap"):
    """A 1-minimal script that diverges with d's kind (d: compare's divergence of ops),
    and the Shrinker (runs, elapsed).  The ops after d's step are dropped first: they
    never ran."""
    kind = divergence_kind(d)

    def fails(candidate):
        got = compare(candidate, npages, bugs=bugs, madvise_lock=madvise_lock)
        return got is not None and divergence_kind(got) == kind

    sh = Shrinker(fails, key=lambda c: json.dumps(c, sort_keys=True), progress=progress,
                  unit="ops")
    return sh.shrink(ops[:d["step"] + 1], lambda op: simpler_ops(op, npages),
                     moved_down), sh


def format_script(ops):
    """A script as JSON, one op per line (what --script reads)."""
    return "[" + ",\n ".join(json.dumps(o) for o in ops) + "]\n"
