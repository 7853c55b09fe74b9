"""Static analysis of one notebook cell: what it binds, deletes, reads and may mutate.

Pure functions over plain Python (the caller runs ``shell.transform_cell`` first). Conservative:
the caller confirms mutations by hashing and filters reads by known producers.

* ``assigned``: names the cell may bind at module level, conditional ones included; bodies of
  def/lambda/class/comprehensions are other scopes (walrus excepted). A ``global x`` assignment
  in a function body is ignored: calling the function may bind ``x``, the cell does not say so.
* ``deleted``: names ever ``del``-ed at module level (and ``except E as e`` names, which Python
  unbinds after the handler). A name may be in both sets; callers check the namespace.
* ``read``: loaded names not surely bound before in the cell (a binding inside an if/loop/try/
  with body, match case or short-circuit operand does not outlive that block). Free names of
  nested defs/lambdas count as loaded where the def is. Builtins and IPython's names
  (``get_ipython``, ``In``, ``_``, ``_i3``...) are skipped unless listed in ``shadowed``.
* ``mutation_candidates``: read names that are the base of an attribute/subscript store or del,
  the object of a method call, in a call argument (so ``print(len(df))`` counts), an augmented
  assignment target, a for/comprehension iterable, a with context, or aliased by a name that
  is one of those (``b = a; b.append(1)``).
* ``imports``: bound name -> ``import_module`` path of the bound object (``import a.b`` gives
  ``a: "a"``, ``import a.b as z`` gives ``z: "a.b"``), or ``"m:n"`` for ``from m import n``.
  Star imports are not reported; names later rebound in the cell are dropped.
* The code of ``%time`` / ``%%time`` / ``%%capture`` runs in the namespace and is analysed too
  (a cell-magic body that is not plain Python is skipped).
* ``code_hash``: blake2b-64 of the AST dump: blind to comments and layout, stable across
  processes (not across Python versions). Unparsable source raises SyntaxError.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b

__all__ = ["CellAnalysis", "analyze_cell", "normalized_code_hash"]

_BUILTINS = frozenset(dir(builtins)) | {"__builtins__"}
_IPYTHON_NAMES = frozenset({"get_ipython", "In", "Out", "exit", "quit", "_ih", "_oh", "_dh"})
_HISTORY = re.compile(r"_(?:i{1,3}|_|__)?\d*")
_INLINE_MAGICS = {"run_line_magic": {"time"}, "run_cell_magic": {"time", "capture"}}
_PASS_THROUGH = (ast.Starred, ast.NamedExpr, ast.Await, ast.List, ast.Tuple, ast.Set, ast.Dict,
                 ast.IfExp, ast.BoolOp)
_COMPS = (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)


@dataclass(frozen=True)
class CellAnalysis:
    assigned: frozenset[str]
    deleted: frozenset[str]
    read: frozenset[str]
    mutation_candidates: frozenset[str]
    code_hash: str
    imports: dict[str, str]


def _parse(src: str) -> ast.Module:
    try:
        return ast.parse(src)
    except SyntaxError as first:
        try:
            flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST
            return compile(src, "<cell>", "exec", flags=flags)
        except SyntaxError:
            raise first from None


def _hash_tree(tree: ast.AST) -> str:
    dump = ast.dump(tree, annotate_fields=False, include_attributes=False)
    return blake2b(dump.encode(), digest_size=8).hexdigest()


def normalized_code_hash(python_source: str) -> str:
    """Hash of the cell's AST: insensitive to comments, blank lines and formatting."""
    return _hash_tree(_parse(python_source))


def _root(e: ast.expr) -> str | None:
    while isinstance(e, (ast.Attribute, ast.Subscript)):
        e = e.value
    return e.id if isinstance(e, ast.Name) else None


def _refs(e: ast.AST | None) -> Iterator[str]:
    """Names whose objects the value of ``e`` may be or contain (no copy made)."""
    if isinstance(e, (ast.Name, ast.Attribute, ast.Subscript)):
        if (name := _root(e)) is not None:
            yield name
    elif isinstance(e, _PASS_THROUGH):
        for child in ast.iter_child_nodes(e):
            yield from _refs(child)


def _target_names(t: ast.AST) -> Iterator[str]:
    for node in ast.walk(t):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id


def _local_bindings(body: Iterable[ast.AST]) -> tuple[set[str], set[str]]:
    """(names local to a function scope, names it declares ``global``)."""
    bound: set[str] = set()
    globals_: set[str] = set()
    nonlocals: set[str] = set()
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Global):
            globals_.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            nonlocals.update(node.names)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            continue  # nested scope; its decorators/defaults only load (walrus there: ignored)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update(a.asname or a.name.split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
        elif isinstance(node, _COMPS):
            bound.update(n.target.id for n in ast.walk(node) if isinstance(n, ast.NamedExpr))
            continue
        elif isinstance(node, ast.Lambda):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return bound - globals_ - nonlocals, globals_


class _Scope:
    """A namespace; ``parent`` is the nearest enclosing scope its free names resolve in."""

    def __init__(self, parent: _Scope | None, module: _Module | None = None):
        self.parent = parent
        self.module: _Module = module or parent.module  # type: ignore[union-attr]
        self.aliases: dict[str, set[str]] = {}  # local name -> names whose objects it may share
        self.blocks: list[set[str]] = [set()]  # names surely bound, per open conditional block

    def resolve(self, name: str) -> _Scope | None:
        """Scope a free ``name`` is looked up in; None when it is surely bound here."""
        return None if self.bound(name) else self.parent

    def bound(self, name: str) -> bool:
        return any(name in b for b in self.blocks)

    def load(self, name: str) -> None:
        if (target := self.resolve(name)) is not None:
            target.load(name)

    def mutate(self, name: str | None, seen: set[str] | None = None) -> None:
        seen = set() if seen is None else seen
        if name is None or name in seen:
            return
        seen.add(name)
        for src in self.aliases.get(name, ()):
            self.mutate(src, seen)
        if (target := self.resolve(name)) is self:
            self.module.mutated.add(name)
        elif target is not None:
            target.mutate(name)

    def store(self, name: str, definite: bool = True, sources: Iterable[str] = ()) -> None:
        self.aliases.setdefault(name, set()).update(set(sources) - {name})
        if definite:
            self.blocks[-1].add(name)

    def delete(self, name: str) -> None:
        for block in self.blocks:
            block.discard(name)


class _Module(_Scope):
    def __init__(self, shadowed: Iterable[str]):
        super().__init__(None, self)
        self.shadowed = frozenset(shadowed)
        self.assigned: set[str] = set()
        self.deleted: set[str] = set()
        self.read: set[str] = set()
        self.mutated: set[str] = set()
        self.imports: dict[str, str] = {}

    def resolve(self, name: str) -> _Scope | None:
        return None if self.bound(name) else self

    def load(self, name: str) -> None:
        if self.bound(name):
            return
        if name in self.shadowed or not (name in _BUILTINS or name in _IPYTHON_NAMES
                                         or _HISTORY.fullmatch(name)):
            self.read.add(name)

    def store(self, name: str, definite: bool = True, sources: Iterable[str] = ()) -> None:
        super().store(name, definite, sources)
        self.assigned.add(name)
        self.imports.pop(name, None)

    def delete(self, name: str) -> None:
        super().delete(name)
        self.deleted.add(name)
        self.imports.pop(name, None)


class _Function(_Scope):
    """A def or lambda (locals known up front), or a comprehension."""

    def __init__(self, parent: _Scope, local: set[str], globals_: Iterable[str] = (),
                 comprehension: bool = False):
        super().__init__(parent)
        self.local, self.globals, self.comprehension = local, set(globals_), comprehension

    def resolve(self, name: str) -> _Scope | None:
        if name in self.local:
            return None
        return self.module if name in self.globals else self.parent

    def store(self, name: str, definite: bool = True, sources: Iterable[str] = ()) -> None:
        if self.comprehension and name not in self.local:  # walrus binds in the enclosing scope
            self.parent.store(name, False, sources)  # type: ignore[union-attr]
        elif name in self.local:  # a `global x` assignment is ignored (see module docstring)
            super().store(name, definite, sources)


class _Walker(ast.NodeVisitor):
    """Visits nodes in evaluation order, tracking the current scope and conditional blocks."""

    def __init__(self, module: _Module):
        self.scope: _Scope = module

    def outer(self) -> _Scope:  # free names of a nested scope skip class bodies
        scope = self.scope
        while not isinstance(scope, (_Module, _Function)):
            scope = scope.parent  # type: ignore[assignment]
        return scope

    def visit_all(self, nodes: Iterable[ast.AST | None]) -> None:
        for node in nodes:
            if node is not None:
                self.visit(node)

    def block(self, *nodes: ast.AST | list) -> None:
        """Code that may not run (to its end): its bindings do not outlive it."""
        self.scope.blocks.append(set())
        self.visit_all(n for part in nodes for n in (part if isinstance(part, list) else [part]))
        self.scope.blocks.pop()

    def in_scope(self, scope: _Scope, nodes: Iterable[ast.AST | None]) -> None:
        saved, self.scope = self.scope, scope
        self.visit_all(nodes)
        self.scope = saved

    def mutate_refs(self, value: ast.expr | None) -> None:
        for name in _refs(value):
            self.scope.mutate(name)

    # -- names and stores --------------------------------------------------------------------
    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.scope.load(node.id)
        elif isinstance(node.ctx, ast.Del):
            self.scope.delete(node.id)
        else:
            self.scope.store(node.id)

    def visit_Attribute(self, node: ast.Attribute | ast.Subscript) -> None:
        self.generic_visit(node)
        if not isinstance(node.ctx, ast.Load):
            self.scope.mutate(_root(node.value))

    visit_Subscript = visit_Attribute

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit_target(target, node.value)

    def visit_target(self, target: ast.AST, value: ast.expr | None) -> None:
        if isinstance(target, (ast.Tuple, ast.List, ast.Starred)):
            for elt in ([target.value] if isinstance(target, ast.Starred) else target.elts):
                self.visit_target(elt, value)
        elif isinstance(target, ast.Name):
            self.scope.store(target.id, True, _refs(value))
        else:
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit_all([node.value, node.annotation])
        if node.value is not None or not isinstance(node.target, ast.Name):
            self.visit_target(node.target, node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.scope.load(node.target.id)
            self.scope.mutate(node.target.id)
        self.visit_all([node.target, node.value])

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit_target(node.target, node.value)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        module = "." * getattr(node, "level", 0) + (getattr(node, "module", None) or "")
        for alias in node.names:
            if alias.name == "*":
                continue
            if isinstance(node, ast.ImportFrom):
                name, path = alias.asname or alias.name, f"{module}:{alias.name}"
            else:
                path = alias.name if alias.asname else alias.name.split(".")[0]
                name = alias.asname or path
            self.scope.store(name)
            if self.scope is self.scope.module:
                self.scope.module.imports[name] = path

    visit_ImportFrom = visit_Import

    # -- calls (and IPython magics whose code runs in the namespace) ---------------------------
    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Attribute):
            self.scope.mutate(_root(func.value))
        for arg in (*node.args, *(k.value for k in node.keywords)):
            self.mutate_refs(arg)
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
                and isinstance(func.value.func, ast.Name) and func.value.func.id == "get_ipython"
                and len(node.args) >= 2
                and all(isinstance(a, ast.Constant) and isinstance(a.value, str)
                        for a in node.args)
                and node.args[0].value in _INLINE_MAGICS.get(func.attr, ())):
            try:
                self.visit_all(_parse(node.args[-1].value).body)
            except SyntaxError:
                pass

    # -- control flow --------------------------------------------------------------------------
    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.mutate_refs(node.iter)
        self.block(node.target, node.body)
        self.block(node.orelse)

    visit_AsyncFor = visit_For

    def visit_If(self, node: ast.If | ast.IfExp | ast.While) -> None:
        self.visit(node.test)
        self.block(node.body)
        self.block(node.orelse)

    visit_IfExp = visit_While = visit_If

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        self.visit(node.values[0])
        for value in node.values[1:]:
            self.block(value)

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            self.mutate_refs(item.context_expr)
            if item.optional_vars is not None:
                self.visit_target(item.optional_vars, item.context_expr)
        self.block(node.body)  # a context manager may suppress an exception

    visit_AsyncWith = visit_With

    def visit_Try(self, node: ast.Try) -> None:
        self.block(node.body, node.orelse)
        for handler in node.handlers:
            self.block(handler)
        self.visit_all(node.finalbody)

    visit_TryStar = visit_Try

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self.visit_all([node.type])
        if node.name:
            self.scope.store(node.name)
        self.visit_all(node.body)
        if node.name:
            self.scope.delete(node.name)  # Python unbinds it when the handler ends

    def visit_Match(self, node: ast.Match) -> None:
        self.visit(node.subject)
        for case in node.cases:
            self.block(case)

    def visit_MatchAs(self, node: ast.MatchAs | ast.MatchStar | ast.MatchMapping) -> None:
        self.generic_visit(node)
        if name := node.rest if isinstance(node, ast.MatchMapping) else node.name:
            self.scope.store(name)

    visit_MatchStar = visit_MatchMapping = visit_MatchAs

    # -- nested scopes -------------------------------------------------------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        args = node.args
        self.visit_all([*getattr(node, "decorator_list", ()), *args.defaults, *args.kw_defaults])
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        params = [p for p in params if p is not None]
        self.visit_all([p.annotation for p in params] + [getattr(node, "returns", None)])
        body = node.body if isinstance(node.body, list) else [node.body]
        local, globals_ = _local_bindings(body)
        self.in_scope(_Function(self.outer(), local | {p.arg for p in params}, globals_), body)
        if not isinstance(node, ast.Lambda):
            self.scope.store(node.name)

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.visit_all([*node.decorator_list, *node.bases, *node.keywords])
        self.in_scope(_Scope(self.outer(), self.scope.module), node.body)  # runs in order
        self.scope.store(node.name)

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> None:
        gens = node.generators
        self.visit(gens[0].iter)  # evaluated in the enclosing scope
        self.mutate_refs(gens[0].iter)
        local = {n for g in gens for n in _target_names(g.target)}
        saved, self.scope = self.scope, _Function(self.outer(), local, comprehension=True)
        for i, gen in enumerate(gens):
            if i:
                self.visit(gen.iter)
                self.mutate_refs(gen.iter)
            self.visit_all([gen.target, *gen.ifs])
        self.visit_all([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt])
        self.scope = saved

    visit_SetComp = visit_GeneratorExp = visit_DictComp = visit_ListComp


def analyze_cell(python_source: str, *, shadowed: Iterable[str] = ()) -> CellAnalysis:
    """Analyse one transformed cell. ``shadowed``: builtin (or IPython history) names the
    user namespace rebinds, so that loading them counts as a read."""
    tree = _parse(python_source)
    module = _Module(shadowed)
    _Walker(module).visit_all(tree.body)
    return CellAnalysis(
        assigned=frozenset(module.assigned), deleted=frozenset(module.deleted),
        read=frozenset(module.read),
        mutation_candidates=frozenset(module.mutated & module.read),
        code_hash=_hash_tree(tree), imports=dict(module.imports))
