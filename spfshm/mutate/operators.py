"""The mutation operators: where each applies, the edit it makes, and a stable mutant id.

Python: located with ``ast`` inside functions, applied to whole source lines (the diff
reads like a patch and comments survive).  C (``c_order``): a scan of the ``__atomic_*``
calls of native/.

| operator | edit |
|---|---|
| recheck | delete an ``if`` (no ``else``) whose body bails out (ends in return, continue, break or raise after simple statements, e.g. an unlock); not one whose test mentions ``bugs.on(`` (a busted-variant switch, measured by ``spfshm bench detect``) nor one whose test or body reports (oracle code; REPORTING_CHECKS such as ``check_table``) |
| sync | delete a call of a flush, IPI sync or grace-period wait (SYNC_CALLS); or make a deferred free immediate (DEFERRED_FREES: ``call_rcu(fn, a)`` -> ``fn(a)``, ``tlb.remove_table(t)`` -> ``free_table_now(mm, t)``, ...) |
| lock | delete an acquire and every matching release after it in the same function (LOCK_PAIRS, same lock expression); ``vma_start_write``, whose release is mmap_write_unlock's, alone |
| unlock_early | move a release (of a lock or a section) above the statement before it |
| trylock | a trylock call becomes ``True``: the caller goes on as if it got the lock it never took |
| section | delete an IRQs-off, RCU read-side, walk or hardware-instruction section: its enter and every matching exit after it (SECTION_PAIRS) |
| swap | exchange two adjacent simple statements of one block, at least one a call, neither a control statement |
| c_order | the memory orders of one ``__atomic_*`` call in native/ become ``__ATOMIC_RELAXED`` |

Omitted by construction, since they cannot change what the protocol does (only timing,
per-CPU statistics or what an oracle sees): functions that are oracles (ORACLE_FUNCTIONS,
names containing ``assert``, the pipe-age and perturbation modules); moves across
instrumentation (``mm.count``, ``mm.delay``, ``mm.walk_point`` (perturbation's and the
scheduler's hook: moving it moves a pause, not a step), ``native.trace``, ``mm.pipe.*``,
``mm.report``, the oracles' own calls: ``assert_*``, ``lockdep_assert_*``); swapping two statements that only compute locals from pure calls
(PURE_CALLS); moving a release above another release (lock release order cannot break
mutual exclusion); swaps where one statement reads or writes a name the other writes
(that is a different program, not a reordering).  What the generator does produce and
cannot change behaviour goes to the reviewed list, stress/mutants/equivalent.json.

A mutant's id is ``file:function:operator:hash``, the hash over the edited original text
(not line numbers, which move when unrelated code changes), with ``-2``, ``-3`` ... for
a second identical edit in one function.
"""
import ast
import dataclasses
import difflib
import hashlib
import os
import re

OPERATORS = ("recheck", "sync", "lock", "unlock_early", "trylock", "section", "swap",
             "c_order")
PY_OPERATORS = OPERATORS[:-1]

# Read off the mm code: what flushes, syncs or waits for a grace period.
SYNC_CALLS = {"flush_tlb_all", "flush_tlb_mm_range", "flush_tlb_range", "flush_tlb_remote",
              "flush_tlbonly", "flush", "finish", "ipi_sync", "synchronize_rcu", "rcu_barrier",
              "spf_tlb_remote_wait"}
# Deferred frees and their immediate form: (function, module, leading args).  call_rcu
# is special: its first argument is the function.
DEFERRED_FREES = {"pte_free_defer": ("free_table_now", "spfshm.mm.pagetable", ""),
                  "remove_table": ("free_table_now", "spfshm.mm.pagetable", "mm, "),
                  "remove_page": ("put_page", "spfshm.mm.frames", "mm, ")}
LOCK_PAIRS = {"spin_lock": "spin_unlock", "mmap_read_lock": "mmap_read_unlock",
              "mmap_write_lock": "mmap_write_unlock", "spf_down_read": "spf_up_read",
              "spf_down_write": "spf_up_write"}
IMPLICIT_RELEASE = {"vma_start_write"}          # released by mmap_write_unlock
SECTION_PAIRS = {"rcu_read_lock": "rcu_read_unlock", "local_irq_disable": "local_irq_enable",
                 "lockless_walk_begin": "lockless_walk_end",
                 "speculative_page_walk_begin": "speculative_page_walk_end",
                 "spf_insn_begin": "spf_insn_end"}
RELEASES = set(LOCK_PAIRS.values()) | set(SECTION_PAIRS.values()) | {"vma_end_read"}
INSTRUMENTS = {"count", "delay", "walk_point", "trace", "report", "sleep_ns", "work_ns"}
ORACLE_FUNCTIONS = {"check_value", "read_tagged", "tlb_snapshot"}
# Checks that report their own failure (a violation) and return False: an ``if`` on one
# bails out only in a run that already failed, so deleting it is no protocol mistake.
REPORTING_CHECKS = {"check_table"}
ORACLE_FILES = {"pipe.py", "perturb.py"}
SETUP_FUNCTIONS = {"__init__", "init", "mm_init", "init_tree"}    # run before CPUs share it
PURE_CALLS = {"int", "len", "min", "max", "bool", "range", "list", "tuple", "sorted", "zip",
              "enumerate", "abs", "any", "all", "entry_pfn", "entry_gen", "index",
              "leaf_frame", "pmd_maps_table", "mk_entry", "mk_huge_pmd", "ptl", "entry_ptr",
              "vm_lock_seq_ptr", "vma_lock", "pt_gen_ptr", "flatnonzero", "MmuGather",
              "on", "_pte_ranges", "now_ns"}
NO_OP_BARRIERS = {"smp_wmb", "smp_rmb"}
SIMPLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign)
BAIL = (ast.Return, ast.Continue, ast.Break, ast.Raise)


class StaleSource(Exception):
    """The file no longer holds the text a mutant edits."""


@dataclasses.dataclass
class Mutant:
    id: str
    file: str            # relative to the root (the directory holding spfshm/ and native/)
    function: str
    operator: str
    line: int            # first edited line, for reading only
    description: str
    hunks: list          # [first line, last line, old lines, new lines], 1-based, inclusive

    def apply(self, text):
        lines = text.split("\n")
        for first, last, old, new in sorted(self.hunks, reverse=True):
            if lines[first - 1:last] != old:
                raise StaleSource("%s: lines %d-%d changed since %s was generated"
                                  % (self.file, first, last, self.id))
            lines[first - 1:last] = new
        return "\n".join(lines)

    def diff(self, text):
        return "".join(difflib.unified_diff(
            text.splitlines(True), self.apply(text).splitlines(True),
            "a/" + self.file, "b/" + self.file))

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


def short_name(path):
    """A file's name in mutant ids: package-relative for Python, root-relative for C."""
    return path[len("spfshm/"):] if path.startswith("spfshm/") else path


def _ident(path, function, operator, edited, seen):
    h = hashlib.sha1(("%s\n%s" % (operator, "\n".join(x.strip() for x in edited)))
                     .encode()).hexdigest()[:8]
    base = "%s:%s:%s:%s" % (short_name(path), function, operator, h)
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else "%s-%d" % (base, seen[base])


# -- Python ---------------------------------------------------------------------------------
def _names(func):
    """The names a call's function goes by: ``a.b.c`` -> (c,), ``(x if c else y)`` ->
    (x, y); () when it is something else."""
    if isinstance(func, ast.Name):
        return (func.id,)
    if isinstance(func, ast.Attribute):
        return (func.attr,)
    if isinstance(func, ast.IfExp):
        a, b = _names(func.body), _names(func.orelse)
        return a + b if a and b else ()
    return ()


def _call(stmt):
    return stmt.value if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) \
        else None


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id] + parts[::-1]) if isinstance(node, ast.Name) else None


def _is_instrument(stmt):
    c = _call(stmt)
    if c is None and isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call):
        c = stmt.value
    if c is None:
        return False
    path = _dotted(c.func) or ""
    names = set(_names(c.func))
    return bool(names & (INSTRUMENTS | ORACLE_FUNCTIONS)) or ".pipe." in path \
        or any("assert" in n for n in names)


def _binds_reads(node):
    binds, reads = set(), set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            (reads if isinstance(n.ctx, ast.Load) else binds).add(n.id)
        elif isinstance(n, ast.Attribute) and _dotted(n):
            (reads if isinstance(n.ctx, ast.Load) else binds).add(_dotted(n))
    return binds, reads


def _dependent(a, b):
    ba, ra = _binds_reads(a)
    bb, rb = _binds_reads(b)
    return bool(ba & (rb | bb) or bb & ra)


def _pure_local(stmt):
    """An assignment to plain names from pure calls only."""
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        targets = [stmt.target]
    else:
        return False
    if not all(isinstance(n, ast.Name) for t in targets for n in ast.walk(t)
               if isinstance(n, (ast.Name, ast.Attribute, ast.Subscript))):
        return False
    return all(set(_names(c.func)) <= PURE_CALLS for c in ast.walk(stmt.value)
               if isinstance(c, ast.Call))


def _local_only(stmt):
    """A pure local computation that reads no array (no subscript): moving it past an
    independent statement cannot change anything."""
    return _pure_local(stmt) and not any(isinstance(n, ast.Subscript) for n in ast.walk(stmt))


def _bug_only(test):
    """Whether an ``if`` test holds only with a busted variant on (``bugs.on(X)``, or an
    ``and`` with it): its body never runs in a correct configuration."""
    def on(n):
        return isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) \
            and n.func.attr == "on" and (_dotted(n.func) or "").endswith("bugs.on")
    return on(test) or isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) \
        and any(on(v) for v in test.values)


def _docstring(stmt):
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


def _swappable(stmt):
    """A simple statement worth moving: not a docstring, not a local computation, not a
    barrier that is no instruction on x86-64 (smp_wmb, smp_rmb)."""
    c = _call(stmt)
    return isinstance(stmt, SIMPLE) and not _local_only(stmt) and not _docstring(stmt) \
        and not (c is not None and set(_names(c.func)) & NO_OP_BARRIERS)


def _has_call(stmt):
    return any(isinstance(n, ast.Call) for n in ast.walk(stmt))


def _own_exprs(stmt):
    """The expressions a statement evaluates itself (a compound statement's header)."""
    if isinstance(stmt, (ast.If, ast.While)):
        return [stmt.test]
    if isinstance(stmt, ast.For):
        return [stmt.iter]
    if isinstance(stmt, ast.With):
        return [i.context_expr for i in stmt.items]
    if isinstance(stmt, (ast.Try, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return []
    return [stmt]


def _src(lines, node):
    return lines[node.lineno - 1:node.end_lineno]


def _one_line(node, lines):
    return " ".join(x.strip() for x in _src(lines, node))


class _PyFile:
    """One parsed file: its functions' statement blocks, and edits of whole lines."""

    def __init__(self, path, text):
        self.path, self.text = path, text
        self.lines = text.split("\n")
        self.tree = ast.parse(text)
        self.globals = set()
        for n in self.tree.body:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                self.globals |= {(a.asname or a.name).split(".")[0] for a in n.names}
            elif isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                self.globals.add(n.name)
        self.block_of = {}          # stmt -> (block list)

    def functions(self):
        """(qualified name, node) of every function, methods as Class.method."""
        out = []

        def visit(body, prefix):
            for n in body:
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append((prefix + n.name, n))
                    visit(n.body, prefix + n.name + ".")
                elif isinstance(n, ast.ClassDef):
                    visit(n.body, prefix + n.name + ".")
        visit(self.tree.body, "")
        return out

    def blocks(self, fn):
        """Every statement list of fn's body, not entering nested functions or classes."""
        out = []

        def visit(block):
            out.append(block)
            for s in block:
                self.block_of[s] = block
                if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                for field in ("body", "orelse", "finalbody"):
                    if field == "body" and isinstance(s, ast.If) and _bug_only(s.test):
                        continue
                    sub = getattr(s, field, None)
                    if sub and isinstance(sub[0], ast.stmt):
                        visit(sub)
                for h in getattr(s, "handlers", ()):
                    visit(h.body)
        visit(fn.body)
        return out

    def alone(self, stmt):
        """Whether stmt has its lines to itself (whole-line edits need that)."""
        first = self.lines[stmt.lineno - 1]
        if first[:stmt.col_offset].strip():
            return False
        block = self.block_of.get(stmt, [])
        return not any(o is not stmt and o.lineno <= stmt.end_lineno and o.end_lineno
                       >= stmt.lineno for o in block)

    def indent(self, stmt):
        return self.lines[stmt.lineno - 1][:stmt.col_offset]

    def delete(self, stmts):
        """Hunks deleting statements; a block left empty keeps one ``pass``."""
        hunks = []
        gone = set(map(id, stmts))
        for s in sorted(stmts, key=lambda s: s.lineno):
            block = self.block_of[s]
            emptied = all(id(o) in gone for o in block)
            new = [self.indent(s) + "pass"] if emptied and s is block[0] else []
            hunks.append([s.lineno, s.end_lineno, _src(self.lines, s), new])
        return hunks

    def exchange(self, a, b):
        """One hunk: statement b (later) moved above statement a, the lines between them
        (comments, blank lines) staying where they are."""
        between = self.lines[a.end_lineno:b.lineno - 1]
        return [[a.lineno, b.end_lineno, self.lines[a.lineno - 1:b.end_lineno],
                 _src(self.lines, b) + between + _src(self.lines, a)]]

    def replace_segment(self, node, text):
        """One hunk: the (single-line) expression node replaced by text."""
        line = self.lines[node.lineno - 1]
        return [[node.lineno, node.lineno, [line],
                 [line[:node.col_offset] + text + line[node.end_col_offset:]]]]

    def replace_stmt(self, stmt, text):
        return [[stmt.lineno, stmt.end_lineno, _src(self.lines, stmt),
                 [self.indent(stmt) + text]]]

    def seg(self, node):
        return ast.get_source_segment(self.text, node)


def _skipped(path, qualname):
    """Oracles and set-up code: no mutants there (see the module docstring)."""
    name = qualname.rsplit(".", 1)[-1]
    return os.path.basename(path) in ORACLE_FILES or "assert" in name \
        or name in ORACLE_FUNCTIONS or name in SETUP_FUNCTIONS


def _pairs(f, stmts, table):
    """(enter, [its exits]) for every enter statement of ``table`` in stmts: the exits with
    the same names and arguments after it, up to the next such enter."""
    def key(stmt, names):
        c = _call(stmt)
        return (names, tuple(f.seg(a) for a in c.args[:1])) if c is not None else None

    enters, exits = [], []
    for s in stmts:
        c = _call(s)
        if c is None:
            continue
        names = _names(c.func)
        if names and all(n in table for n in names):
            enters.append((s, key(s, tuple(table[n] for n in names))))
        elif names and all(n in table.values() for n in names):
            exits.append((s, key(s, names)))
    out = []
    for i, (s, k) in enumerate(enters):
        stop = min([e.lineno for e, k2 in enters[i + 1:] if k2 == k], default=1 << 30)
        mine = [e for e, k2 in exits if k2 == k and s.lineno < e.lineno < stop]
        if mine:
            out.append((s, mine))
    return out


def function_lines(text):
    """{qualified name (as mutants name their function): the first line of its code
    object (co_firstlineno: the first decorator's line, else the def's)}."""
    return {q: min([d.lineno for d in fn.decorator_list] + [fn.lineno])
            for q, fn in _PyFile("", text).functions()}


def _py_mutants(path, text, operators):
    f = _PyFile(path, text)
    out = []
    for qual, fn in f.functions():
        if _skipped(path, qual):
            continue
        blocks = f.blocks(fn)
        stmts = sorted((s for b in blocks for s in b if f.alone(s)), key=lambda s: s.lineno)

        def add(op, hunks, desc, first=None):
            out.append((qual, op, hunks, desc, first or min(h[0] for h in hunks)))

        if "recheck" in operators:
            for s in stmts:
                if not isinstance(s, ast.If) or s.orelse or "bugs.on(" in f.seg(s.test) \
                        or f.lines[s.lineno - 1].lstrip().startswith("elif") \
                        or not isinstance(s.body[-1], BAIL) \
                        or not all(isinstance(b, SIMPLE) for b in s.body[:-1]) \
                        or any(isinstance(n, ast.Call)
                               and set(_names(n.func)) & ({"report"} | REPORTING_CHECKS)
                               for n in ast.walk(s)):
                    continue
                add("recheck", f.delete([s]), "delete the re-check `%s`"
                    % f.lines[s.lineno - 1].strip())
        if "sync" in operators:
            aliases = {t.id: _names(s.value.func if isinstance(s.value, ast.Call) else s.value)
                       for s in ast.walk(fn) if isinstance(s, ast.Assign)
                       for t in s.targets if isinstance(t, ast.Name)}
            for s in stmts:
                c = _call(s)
                if c is None:
                    continue
                names = set(_names(c.func))
                if isinstance(c.func, ast.Name):
                    names |= set(aliases.get(c.func.id, ()))
                if names & SYNC_CALLS:
                    add("sync", f.delete([s]), "delete `%s`" % _one_line(s, f.lines))
                elif "call_rcu" in names and c.args:
                    new = "%s(%s)" % (f.seg(c.args[0]), ", ".join(f.seg(a) for a in c.args[1:]))
                    add("sync", f.replace_stmt(s, new), "free without the grace period: `%s`"
                        % new)
                elif names & set(DEFERRED_FREES):
                    now, module, lead = DEFERRED_FREES[(names & set(DEFERRED_FREES)).pop()]
                    if lead and "mm" not in _binds_reads(fn)[0] | {a.arg for a in fn.args.args}:
                        continue
                    # a gather's method takes the object, then what the flush needs of it
                    args = c.args[:1] if lead else c.args
                    new = "%s(%s%s)" % (now, lead, ", ".join(f.seg(a) for a in args))
                    if now not in f.globals:
                        new = "from %s import %s; %s" % (module, now, new)
                    add("sync", f.replace_stmt(s, new), "free at once: `%s` -> `%s`"
                        % (_one_line(s, f.lines), new.split("; ")[-1]))
        if "lock" in operators:
            for acq, rels in _pairs(f, stmts, LOCK_PAIRS):
                add("lock", f.delete([acq] + rels), "delete `%s` and its %d release(s)"
                    % (_one_line(acq, f.lines), len(rels)), acq.lineno)
            for s in stmts:
                c = _call(s)
                if c is not None and set(_names(c.func)) & IMPLICIT_RELEASE:
                    add("lock", f.delete([s]), "delete `%s` (released by mmap_write_unlock)"
                        % _one_line(s, f.lines))
        if "section" in operators:
            for enter, exits in _pairs(f, stmts, SECTION_PAIRS):
                add("section", f.delete([enter] + exits), "delete the section `%s` ... `%s`"
                    % (_one_line(enter, f.lines), _one_line(exits[0], f.lines)), enter.lineno)
        if "trylock" in operators:
            for s in stmts:
                for n in (n for e in _own_exprs(s) for n in ast.walk(e)):
                    if isinstance(n, ast.Call) and n.lineno == n.end_lineno \
                            and any("trylock" in x for x in _names(n.func)):
                        add("trylock", f.replace_segment(n, "True"),
                            "`%s` always succeeds, taking nothing" % f.seg(n))
        if "unlock_early" in operators or "swap" in operators:
            for block in blocks:
                for a, b in zip(block, block[1:]):
                    if not (f.alone(a) and f.alone(b)) or _is_instrument(a) \
                            or _is_instrument(b) or _dependent(a, b):
                        continue
                    cb = _call(b)
                    if cb is not None and set(_names(cb.func)) & RELEASES:
                        ca = _call(a)
                        an = set(_names(ca.func)) if ca is not None else set()
                        if "unlock_early" in operators and not an & RELEASES \
                                and not an & (set(LOCK_PAIRS) | set(SECTION_PAIRS)) \
                                and not isinstance(a, BAIL + (ast.Pass,)) \
                                and not _local_only(a) and not _docstring(a):
                            add("unlock_early", f.exchange(a, b), "move `%s` above `%s`"
                                % (_one_line(b, f.lines), f.lines[a.lineno - 1].strip()),
                                a.lineno)
                    elif "swap" in operators and _swappable(a) and _swappable(b) \
                            and (_has_call(a) or _has_call(b)):
                        add("swap", f.exchange(a, b), "swap `%s` and `%s`"
                            % (_one_line(a, f.lines), _one_line(b, f.lines)), a.lineno)
    return out


# -- C ----------------------------------------------------------------------------------------
_ATOMIC_CALL = re.compile(r"__atomic_\w+\s*\(")
_ORDER = re.compile(r"__ATOMIC_(ACQUIRE|RELEASE|SEQ_CST|ACQ_REL|CONSUME)\b")
_C_FUNC = re.compile(r"^[A-Za-z_][\w \t\*]*?\b(\w+)\s*\(")
_C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def _c_mutants(path, text):
    out = []
    code = _C_COMMENT.sub(lambda c: re.sub(r"[^\n]", " ", c.group()), text)
    lines = text.split("\n")
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln) + 1)

    def line_of(pos):
        lo, hi = 0, len(lines) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    for m in _ATOMIC_CALL.finditer(code):
        depth, i, orders = 0, m.end() - 1, []
        while i < len(code):
            ch = code[i]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    break
            elif depth == 1:
                o = _ORDER.match(code, i)
                if o:
                    orders.append(o)
                    i = o.end() - 1
            i += 1
        if not orders:
            continue
        first, last = line_of(m.start()), line_of(i)
        new, cut = "", starts[first - 1]
        for o in orders:
            new += text[cut:o.start()] + "__ATOMIC_RELAXED"
            cut = o.end()
        new += text[cut:starts[last] - 1]
        old = lines[first - 1:last]
        function = "?"
        for k in range(first - 1, -1, -1):
            fm = _C_FUNC.match(lines[k])
            if fm and not lines[k].startswith(("#", "struct", "typedef", "return")):
                function = fm.group(1)
                break
        call = text[m.start():i + 1]
        out.append((function, "c_order", [[first, last, old, new.split("\n")]],
                    "`%s` with __ATOMIC_RELAXED" % " ".join(call.split()), first, call))
    return out


# -- the generator ---------------------------------------------------------------------------
def source_files(root, paths):
    """The .py (under spfshm/) and .c/.h (under native/) files of root-relative paths."""
    out = []
    for p in paths:
        full = os.path.join(root, p)
        if os.path.isfile(full):
            out.append(p)
            continue
        for d, subdirs, files in os.walk(full):
            subdirs[:] = sorted(s for s in subdirs if s != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".c", ".h")) and name != "_native.c":
                    out.append(os.path.relpath(os.path.join(d, name), root))
    return sorted(set(out))


def generate(root, paths, operators=OPERATORS):
    """Every mutant of the files under ``paths`` (relative to root) for ``operators``,
    in file and line order."""
    out = []
    for path in source_files(root, paths):
        with open(os.path.join(root, path)) as fh:
            text = fh.read()
        seen = {}
        if path.endswith(".py"):
            found = [(q, op, h, d, ln, None) for q, op, h, d, ln in
                     _py_mutants(path, text, set(operators) & set(PY_OPERATORS))]
        elif "c_order" in operators:
            found = _c_mutants(path, text)
        else:
            found = []
        for qual, op, hunks, desc, line, extra in sorted(found, key=lambda x: (x[4], x[1])):
            edited = [x for h in hunks for x in h[2]] + ([extra] if extra else [])
            m = Mutant(_ident(path, qual, op, edited, seen), path, qual, op, line, desc, hunks)
            if path.endswith(".py"):
                ast.parse(m.apply(text))            # every mutant is valid Python
            out.append(m)
    return out
