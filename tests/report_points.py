"""Where the code can report a violation: every ``report(kind, site, ...)`` call in
spfshm/, found with ``ast``, with its kind and site resolved to literals.

A report call is a call of ``report`` or ``rep`` (``mm.report``, ``self.report``, or a
local alias such as sweep's ``rep = mm.report``).  Its kind and site are string
literals, or a parameter of the enclosing function (``check_table(..., site, ...)``):
then every call of that function in spfshm/ is looked up and the argument it passes is
resolved the same way, up the call chain.  What cannot be resolved so (a site computed
at run time, a function called only as a callback) is returned as unresolved: such a
call needs a literal or a caller that passes one.
"""
import ast
import os
from collections import namedtuple

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spfshm")
REPORT_NAMES = ("report", "rep")

# One resolved report: kind@site, and the call that reports it ("mm/cpu.py:54 in _fill").
Point = namedtuple("Point", "kind site where")


class _Func:
    def __init__(self, node, path, is_method):
        self.node, self.path = node, path
        self.params = [a.arg for a in node.args.posonlyargs + node.args.args]
        self.offset = 1 if is_method else 0        # self is not passed at the call
        defaults = node.args.defaults
        self.defaults = dict(zip(self.params[len(self.params) - len(defaults):], defaults))
        self.aliases = {t.id for n in ast.walk(node) if isinstance(n, ast.Assign)
                        and isinstance(n.value, ast.Attribute) and n.value.attr == "report"
                        for t in n.targets if isinstance(t, ast.Name)}


def _callee(call):
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
        else None


def _arg(call, func, name):
    """The expression ``call`` passes for ``func``'s parameter ``name`` (or its default),
    or None."""
    for k in call.keywords:
        if k.arg == name:
            return k.value
    i = func.params.index(name) - func.offset
    if 0 <= i < len(call.args) and not any(isinstance(a, ast.Starred) for a in call.args[:i + 1]):
        return call.args[i]
    return func.defaults.get(name)


class _Index:
    """Every function of spfshm/ and every call in it, with its enclosing function."""

    def __init__(self, root=ROOT):
        self.funcs = {}                 # name -> [_Func]
        self.calls = []                 # (call, enclosing _Func or None)
        for dirpath, _, files in sorted(os.walk(root)):
            for fn in sorted(files):
                if fn.endswith(".py"):
                    path = os.path.join(dirpath, fn)
                    with open(path) as f:
                        self._scan(ast.parse(f.read(), path), os.path.relpath(path, root))

    def _scan(self, tree, path):
        def visit(node, enclosing, in_class):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    fn = _Func(child, path, in_class)
                    self.funcs.setdefault(child.name, []).append(fn)
                    visit(child, fn, False)
                elif isinstance(child, ast.ClassDef):
                    visit(child, enclosing, True)
                else:
                    if isinstance(child, ast.Call):
                        self.calls.append((child, enclosing, path))
                    visit(child, enclosing, False)
        visit(tree, None, False)

    def values(self, expr, func, seen=()):
        """The literal strings ``expr`` (in ``func``) can be, or None if unknown."""
        if expr is None:
            return None
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.IfExp):
            a, b = self.values(expr.body, func, seen), self.values(expr.orelse, func, seen)
            return None if a is None or b is None else a | b
        if not (isinstance(expr, ast.Name) and func is not None and expr.id in func.params):
            return None
        name = func.node.name
        if (name, expr.id) in seen or len(self.funcs.get(name, ())) != 1:
            return None                 # recursion, or an ambiguous name
        out = set()
        callers = [(c, enc) for c, enc, _ in self.calls if _callee(c) == name]
        for call, enc in callers:
            arg = _arg(call, func, expr.id)
            vals = None if arg is None else self.values(arg, enc, seen + ((name, expr.id),))
            if vals is None:
                return None
            out |= vals
        return out or None


def scan(root=ROOT):
    """(points, unresolved): a Point per report call and kind@site it can report, sorted
    by file and line; the report calls whose kind or site is not resolved, as "where"."""
    idx = _Index(root)
    points, unresolved = [], []
    for call, func, path in idx.calls:
        name = _callee(call)
        if name not in REPORT_NAMES and not (func and name in func.aliases):
            continue
        where = "%s:%d in %s" % (path, call.lineno, func.node.name if func else "<module>")
        kw = {k.arg: k.value for k in call.keywords}
        kinds, sites = (idx.values(call.args[i] if len(call.args) > i else kw.get(arg), func)
                        for i, arg in enumerate(("kind", "site")))
        if kinds is None or sites is None:
            unresolved.append(where)
            continue
        points += [Point(k, s, where) for k in sorted(kinds) for s in sorted(sites)]
    key = lambda p: (p.where.split(":")[0], int(p.where.split(":")[1].split()[0]), p.site)
    return sorted(points, key=key), unresolved
