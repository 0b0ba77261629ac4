"""Litmus scenarios: a given layout and a few operations per CPU, for the controlled
scheduler (``spfshm explore``, run/explore.py).

A scenario file has one item a line; ``#`` starts a comment.  Pages count from the start
of the address window (page 0 is its first page; the window is 2 MiB-aligned, so pages
0..511 are the span of one PTE table):

    config fault-mode=spf,classic table-free=rcu walk=rcu reclaim=off collapse=off
    map 0 512 rw                      # initial mapping: PAGE NPAGES PROT (none, r, rw)
    populate 0 8                      # pages faulted in before the CPUs start
    thp 0                             # ... and the block collapsed to a huge pmd
    cpu 0: store 3; load 3            # CPU 0's ops, in order (';' between them) ...
    cpu 1:
        munmap 0 512                  # ... or one a line after "cpu N:"

``config`` takes the options of ``spfshm stress`` that decide what is modelled, as
NAME=VALUE (``bug`` may repeat or list several).  ``populate PAGE NPAGES`` write-faults
pages of a read-write mapping in, in order, before the CPUs start (MAP_POPULATE's
effect: PTEs and their table, no TLB entry anywhere); ``thp PAGE`` then collapses the
2 MiB block at PAGE (a multiple of 512, inside one read-write map line, populated) to a
huge pmd, as a khugepaged pass before the CPUs start would.  The CPUs are 0..the highest
``cpu`` line; a CPU without ops does nothing.  The operations and their arguments:

    load PAGE / store PAGE              an access (a fault if need be)
    mmap PAGE NPAGES PROT [fixed|noreplace|hint]
    munmap PAGE NPAGES / mprotect PAGE NPAGES PROT
    madvise PAGE NPAGES [dontneed]      MADV_DONTNEED
    gup PAGE NPAGES                     gup_fast, then hold the pins and release them
    collapse PAGE                       khugepaged's scan from PAGE's 2 MiB block
    reclaim                             the seed scanner (needs reclaim=seed)

A final condition, as a litmus test's (herd's ``forall``), must hold at the end of
every schedule: ``expect STAT OP N`` (OP one of >=, <=, ==; STAT a statistic of the
run summary, mm_types.STATS: ``expect pt_reclaimed >= 1``).  One that does not is the
violation expect_failed@scenario, after the final sweep of a clean stop.

A scenario travels in ``Config.scenario`` as compact JSON (``{"map": [[page, npages,
prot], ...], "populate": [[page, npages], ...], "thp": [page, ...], "expect": [[stat,
op, n, line], ...], "cpus": [[[op, arg, ...], ...], ...]}``; "thp" and "expect" may be
absent),
so a replay token carries it.
"""
import json
import operator
import re

from .. import native
from ..config import Config, ConfigError
from ..mm.gup import GUP_MAX
from ..mm.khugepaged import collapse_huge_page
from ..mm.fault import VM_FAULT_OK, do_user_addr_fault
from ..mm.mm_types import HPAGE_NR, PAGE, PROT_BY_NAME, STAT
from ..mm.syscalls import MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HINT, do_mmap

# op -> its argument fields; a field in brackets is optional
OPS = {
    "load": ("PAGE",), "store": ("PAGE",),
    "mmap": ("PAGE", "NPAGES", "PROT", "[FLAGS]"),
    "munmap": ("PAGE", "NPAGES"), "mprotect": ("PAGE", "NPAGES", "PROT"),
    "madvise": ("PAGE", "NPAGES", "[ADVICE]"), "gup": ("PAGE", "NPAGES"),
    "collapse": ("PAGE",), "reclaim": (),
}
MAP_FLAGS = (MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HINT)
# config NAME -> (Config field, type): what decides the model, as `spfshm stress` names it
OPTIONS = {
    "fault-mode": ("fault_mode", str), "table-free": ("table_free", str),
    "walk": ("walk", str), "tlb-flush": ("tlb_flush", str), "reclaim": ("reclaim", str),
    "collapse": ("collapse", str), "madvise-lock": ("madvise_lock", str),
    "vma-lock": ("vma_lock", str),
    "pcp": ("pcp", str), "fail-nth": ("fail_nth", int),
    "bug": ("bugs", tuple), "seed": ("seed", int), "window-pages": ("window_pages", int),
    "tlb-entries": ("tlb_entries", int), "ipi-timeout": ("ipi_timeout", float),
    "stall-timeout": ("stall_timeout", float),
}
CPU_LINE = re.compile(r"cpu\s+(\S+?)\s*:(.*)$")
EXPECT_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq}


class _Where:
    """Errors at one place: ConfigError("WHERE: what: why")."""

    def __init__(self, where, line=0):
        self.where, self.line = where, line

    def fail(self, field, msg):
        raise ConfigError("%s: %s: %s" % (self.where, field, msg))


def parse(text, path="<scenario>", overrides=()):
    """(options for Config, the normalized scenario as a dict) of a scenario's text;
    ConfigError naming FILE:LINE and the bad field.  ``overrides``: NAME=VALUE items
    applied over the config line (``spfshm explore --config``)."""
    opts, maps, populate, thp, expect, cpus = {}, [], [], [], [], {}
    cur, config_at = None, None
    lines = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append((_Where("%s:%d" % (path, no), no), line))
    for at, line in lines:                  # the config first: it decides the window
        if line.split()[0] == "config":
            if config_at:
                at.fail("config", "given twice (first at %s)" % config_at.where)
            config_at = at
            _config(at, line.split()[1:], opts)
    if overrides:
        over = {}
        _config(_Where("--config"), overrides, over)
        opts.update(over, bugs=opts.get("bugs", ()) + over.get("bugs", ()))
        if not opts["bugs"]:
            del opts["bugs"]
    window = opts.get("window_pages", Config.window_pages)
    for at, line in lines:
        word = line.split()[0]
        if word == "config":
            continue
        if word == "map":
            f = _fields(at, line, "map PAGE NPAGES PROT")
            page, n = _range(at, "map", f[0], f[1], window)
            maps.append([page, n, _prot(at, "map", f[2])])
            continue
        if word == "populate":
            f = _fields(at, line, "populate PAGE NPAGES")
            page, n = _range(at, "populate", f[0], f[1], window)
            if not all(any(m[0] <= p < m[0] + m[1] and m[2] == "rw" for m in maps)
                       for p in range(page, page + n)):
                at.fail("populate", "pages %d..%d are not all in a read-write map line "
                        "above" % (page, page + n - 1))
            populate.append([page, n])
            continue
        if word == "thp":
            page = _int(at, "thp", _fields(at, line, "thp PAGE")[0], "PAGE")
            if page % HPAGE_NR or not any(m[0] <= page and page + HPAGE_NR <= m[0] + m[1]
                                          and m[2] == "rw" for m in maps) \
                    or not any(q <= page < q + n for q, n in populate):
                at.fail("thp", "page %d is not the first of a 2 MiB block inside one "
                        "read-write map line above, with a page populated" % page)
            thp.append(page)
            continue
        if word == "expect":
            expect.append(_expect(at, _fields(at, line, "expect STAT OP N")))
            continue
        m = CPU_LINE.match(line)
        if m:
            cur = _cpu_id(at, m.group(1))
            cpus.setdefault(cur, [])
            rest = m.group(2)
        elif word == "cpu":
            at.fail("cpu", "expected 'cpu N: OP ARGS; ...', got %r" % line)
        elif cur is None:
            at.fail(word, "unknown item (expected config, map, populate, thp, expect or "
                    "cpu N:)")
        else:
            rest = line
        for item in (x.strip() for x in rest.split(";")):
            if item:
                cpus[cur].append(_op(at, item.split(), window))
    if not cpus:
        raise ConfigError("%s: no 'cpu N:' line (a scenario needs at least one CPU)" % path)
    scenario = {"map": maps, "populate": populate, "thp": thp,
                "cpus": [cpus.get(c, []) for c in range(max(cpus) + 1)]}
    if expect:
        scenario["expect"] = expect
    at = config_at or _Where("%s:1" % path)
    try:                            # the whole configuration, as a run would resolve it
        Config(scenario=dumps(scenario), **opts).resolved()
    except ConfigError as e:
        at.fail("config" if config_at or overrides else "scenario", str(e))
    return opts, scenario


def load(path, overrides=()):
    """parse() of a file; ConfigError when it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("%s: %s" % (path, e.strerror or e))
    return parse(text, path, overrides)


def config_of(path, overrides=(), **fields):
    """The Config a scenario file describes (with ``fields`` on top: sched, artifacts)."""
    opts, scenario = load(path, overrides)
    return Config(scenario=dumps(scenario), **opts, **fields)


def dumps(scenario):
    return json.dumps(scenario, separators=(",", ":"))


def _config(at, items, opts):
    for item in items:
        name, eq, value = item.partition("=")
        if name not in OPTIONS:
            at.fail(name, "not a scenario option (known: %s)" % ", ".join(OPTIONS))
        if not eq or not value:
            at.fail(name, "expected %s=VALUE" % name)
        field, kind = OPTIONS[name]
        if kind is tuple:
            opts[field] = opts.get(field, ()) + tuple(v for v in value.split(",") if v)
            continue
        if field in opts:
            at.fail(name, "given twice")
        try:
            opts[field] = kind(value)
        except ValueError:
            at.fail(name, "%r is not %s" % (value, "an integer" if kind is int
                                             else "a number"))
        try:                        # this option alone, so that the error names its line
            alone = Config(cpus=1, **{field: opts[field]})
            alone.refcnt_fault_mode()
            alone.validate()
        except ConfigError as e:
            at.fail(name, str(e))
    if "bugs" in opts:
        try:
            Config(cpus=1, bugs=opts["bugs"]).validate()
        except ConfigError as e:
            at.fail("bug", str(e))


def _fields(at, line, form):
    """The fields after an item's word, as many as ``form`` ("WORD A B ...") names."""
    word, f = form.split()[0], line.split()[1:]
    if len(f) != len(form.split()) - 1:
        at.fail(word, "expected %s, got %r" % (form, line))
    return f


def _int(at, field, value, what):
    try:
        return int(value)
    except ValueError:
        at.fail(field, "%s %r is not an integer" % (what, value))


def _range(at, field, page, npages, window):
    p, n = _int(at, field, page, "PAGE"), _int(at, field, npages, "NPAGES")
    if not 0 <= p < window:
        at.fail(field, "PAGE %d is outside the window (0..%d)" % (p, window - 1))
    if n < 1 or p + n > window:
        at.fail(field, "NPAGES %d: PAGE+NPAGES must be in %d..%d (the window)"
                % (n, p + 1, window))
    return p, n


def _prot(at, field, name):
    if name not in PROT_BY_NAME:
        at.fail(field, "PROT %r is not one of %s" % (name, ", ".join(PROT_BY_NAME)))
    return name


def _cpu_id(at, text):
    c = _int(at, "cpu", text, "CPU")
    if not 0 <= c < native.MAX_CPUS - 1:
        at.fail("cpu", "CPU %d is not in 0..%d" % (c, native.MAX_CPUS - 2))
    return c


def _op(at, f, window):
    """[op, args...] of one operation's fields, checked."""
    op, args = f[0], f[1:]
    if op not in OPS:
        at.fail(op, "unknown operation (known: %s)" % ", ".join(OPS))
    need = [a for a in OPS[op] if not a.startswith("[")]
    if not len(need) <= len(args) <= len(OPS[op]):
        at.fail(op, "expected %s, got %r" % (" ".join((op,) + OPS[op]), " ".join(f)))
    if op in ("load", "store", "collapse"):
        return [op, _range(at, op, args[0], "1", window)[0]]
    if op == "reclaim":
        return [op]
    page, n = _range(at, op, args[0], args[1], window)
    if op in ("munmap", "gup"):
        if op == "gup" and n > GUP_MAX:
            at.fail(op, "NPAGES %d: gup_fast pins at most %d pages" % (n, GUP_MAX))
        return [op, page, n]
    if op == "madvise":
        if len(args) == 3 and args[2] != "dontneed":
            at.fail(op, "ADVICE %r: only dontneed is modelled" % args[2])
        return [op, page, n]
    prot = _prot(at, op, args[2])
    if op == "mprotect":
        return [op, page, n, prot]
    flags = args[3] if len(args) == 4 else MAP_FIXED
    if flags not in MAP_FLAGS:
        at.fail(op, "FLAGS %r is not one of %s" % (flags, ", ".join(MAP_FLAGS)))
    return [op, page, n, prot, flags]


def check(scenario, opts):
    """What the scenario needs of the rest of the configuration (ConfigError)."""
    ops = {o[0] for cpu in scenario["cpus"] for o in cpu}
    if "reclaim" in ops and opts.get("reclaim") != "seed":
        raise ConfigError("a reclaim op (the seed scanner) needs reclaim=seed")
    if "collapse" in ops and opts.get("collapse") == "off":
        raise ConfigError("a collapse op needs collapse=write-lock, not off")


def validate(cfg):
    """Config.validate's part: the scenario parses and agrees with the configuration."""
    try:
        s = json.loads(cfg.scenario)
        cpus, maps, populate = s["cpus"], s["map"], s["populate"]
        ok = all(isinstance(x, list) for x in (cpus, maps, populate, s.get("thp", []))) \
            and all(isinstance(o, list) and o for c in cpus for o in c)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ConfigError("scenario: not a normalized scenario (run/scenario.py)")
    for c, ops in enumerate(cpus):
        for i, o in enumerate(ops):
            if o[0] not in OPS:
                raise ConfigError("scenario: CPU %d's op %d is %r, which no scenario has "
                                  "(ops: %s)" % (c, i + 1, o[0], ", ".join(OPS)))
    if cfg.cpus != len(cpus):
        raise ConfigError("scenario: it has %d CPUs, --cpus says %d" % (len(cpus), cfg.cpus))
    check(s, {"reclaim": cfg.reclaim, "collapse": cfg.collapse})


def _expect(at, f):
    stat, op, n = f
    if stat not in STAT:
        at.fail("expect", "no statistic %r (known: %s)" % (stat, ", ".join(sorted(STAT))))
    if op not in EXPECT_OPS:
        at.fail("expect", "OP must be one of %s, got %r" % (" ".join(EXPECT_OPS), op))
    return [stat, op, _int(at, "expect", n, "N"), at.line]


def check_expect(mm, text, totals):
    """The scenario's final conditions against the run's totals (the parent, after the
    final sweep of a clean stop): each that fails is reported."""
    for stat, op, n, line in json.loads(text).get("expect", []):
        if not EXPECT_OPS[op](totals[stat], n):
            mm.report("expect_failed", "scenario", 0, line, totals[stat], n)


def ncpus_and_ops(text):
    """(CPUs, most ops of one CPU) of a normalized scenario (Config.resolved)."""
    cpus = json.loads(text)["cpus"]
    return len(cpus), max(len(c) for c in cpus)


def setup(mm, text):
    """The scenario's map, populate and thp lines, in the parent before the CPUs start
    (runner.setup_initial)."""
    s, base = json.loads(text), mm.g.window_base
    for p, n, prot in s["map"]:
        do_mmap(mm, base + p * PAGE, n * PAGE, PROT_BY_NAME[prot], MAP_FIXED)
    for p, n in s["populate"]:
        for page in range(p, p + n):
            r = do_user_addr_fault(mm, base + page * PAGE, True)
            if r != VM_FAULT_OK:
                raise RuntimeError("populate: the fault at page %d returned %r" % (page, r))
    for page in s.get("thp", []):
        if not collapse_huge_page(mm, base + page * PAGE):
            raise RuntimeError("thp: the block at page %d did not collapse" % page)


class ScriptWorkload:
    """Workload's interface over one CPU's ops: each in turn, ``limit`` of them."""
    period_ns = 0

    def __init__(self, g, text, cpu):
        self.script = [_args(g, o) for o in json.loads(text)["cpus"][cpu]]
        self.limit = len(self.script)
        self.i = 0

    def wait_ns(self, now_ns):
        return 0

    def next(self):
        op = self.script[self.i]
        self.i += 1
        return op


def _args(g, o):
    """(op, args) as run_op takes them (the shapes Workload.next yields)."""
    op, a = o[0], o[1:]
    if op == "reclaim":
        return op, ()
    va = g.window_base + a[0] * PAGE
    if op in ("load", "store", "collapse"):
        return op, (va,)
    if op == "gup":
        return op, (va, a[1])
    if op in ("munmap", "madvise"):
        return op, (va, a[1] * PAGE)
    if op == "mprotect":
        return op, (va, a[1] * PAGE, PROT_BY_NAME[a[2]])
    return op, (va, a[1] * PAGE, PROT_BY_NAME[a[2]], a[3])
