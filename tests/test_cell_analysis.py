"""Static analysis of notebook cells (contd_nb.notebook.cell_analysis)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from contd_nb.notebook.cell_analysis import CellAnalysis, analyze_cell, normalized_code_hash


def a(src: str) -> CellAnalysis:
    return analyze_cell(textwrap.dedent(src))


# -- assigned ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("src", "names"),
    [
        ("x = 1", {"x"}),
        ("x = y = 2", {"x", "y"}),
        ("a, b = 1, 2", {"a", "b"}),
        ("[a, (b, c)] = [1, (2, 3)]", {"a", "b", "c"}),
        ("first, *rest = range(5)", {"first", "rest"}),
        ("n: int = 3", {"n"}),
        ("x = 0\nx += 1", {"x"}),
        ("for i, j in pairs: pass", {"i", "j"}),
        ("with open('f') as fh, lock as (l1, l2): pass", {"fh", "l1", "l2"}),
        ("try:\n    pass\nexcept ValueError as err:\n    pass", {"err"}),
        ("import os", {"os"}),
        ("import os.path", {"os"}),
        ("import numpy as np", {"np"}),
        ("from math import pi, tau as t", {"pi", "t"}),
        ("def f(): pass", {"f"}),
        ("async def g(): pass", {"g"}),
        ("class C: pass", {"C"}),
        ("print(y := 5)", {"y"}),
        ("if (n := 10) > 5: pass", {"n"}),
        ("vals = [z := v for v in data]", {"vals", "z"}),
        ("if cond:\n    inside = 1\nelse:\n    other = 2", {"inside", "other"}),
        ("while cond:\n    w = 1", {"w"}),
        ("match p:\n    case [a1, *more]: pass\n    case {'k': v1, **kw}: pass\n"
         "    case Point(x=px) as whole: pass", {"a1", "more", "v1", "kw", "px", "whole"}),
    ],
)
def test_assigned_forms(src, names):
    assert a(src).assigned == names


def test_annotation_without_value_binds_nothing():
    assert a("x: int").assigned == frozenset()


def test_function_body_class_body_and_lambda_do_not_bind_module_names():
    r = a("""
        def f(p, *args, k=1, **kw):
            local = p
            global g
            g = 1
        class C:
            attr = 1
            def m(self): pass
        h = lambda q: q
        """)
    assert r.assigned == {"f", "C", "h"}


def test_comprehension_variables_do_not_leak():
    r = a("out = [i * 2 for i in range(3) if i]\ns = {k: v for k, v in d.items()}\n"
          "g = (w for w in ws)")
    assert r.assigned == {"out", "s", "g"}
    assert r.read == {"d", "ws"}


def test_attribute_and_subscript_targets_are_not_assignments():
    r = a("df['a'] = 1\nobj.attr = 2")
    assert r.assigned == frozenset()
    assert r.read == {"df", "obj"}


# -- deleted ----------------------------------------------------------------------------------
def test_del_name():
    r = a("x = 1\ndel x\ndel y, z")
    assert r.deleted == {"x", "y", "z"}
    assert r.assigned == {"x"}
    assert r.read == frozenset()


def test_del_subscript_is_a_mutation_not_a_deletion():
    r = a("del df['a']")
    assert r.deleted == frozenset()
    assert r.mutation_candidates == {"df"}


def test_except_name_is_unbound_after_handler():
    r = a("try:\n    f()\nexcept Exception as e:\n    print(e)")
    assert "e" in r.assigned and "e" in r.deleted
    assert "e" not in r.read


def test_load_after_del_reads_namespace():
    assert "x" in a("x = 1\ndel x\nprint(x)").read


# -- read -------------------------------------------------------------------------------------
def test_assign_then_read_is_not_a_read():
    assert a("x = 1\ny = x").read == frozenset()


def test_read_then_assign_is_a_read():
    assert a("y = x\nx = 1").read == {"x"}


def test_self_referencing_assignment_reads():
    assert a("x = x + 1").read == {"x"}
    assert a("x += 1").read == {"x"}


def test_builtins_and_ipython_names_are_not_reads():
    r = a("print(len(range(3)))\nget_ipython()\nIn, Out, _, __, _i3, _5")
    assert r.read == frozenset()


def test_shadowed_builtin_counts_when_declared():
    assert a("print(max)").read == frozenset()
    assert analyze_cell("print(max)", shadowed={"max"}).read == {"max"}


def test_conditional_binding_does_not_hide_a_later_read():
    assert a("if c:\n    x = 1\nprint(x)").read == {"c", "x"}
    assert a("for i in r:\n    x = i\nprint(x, i)").read == {"r", "x", "i"}
    assert a("try:\n    x = f()\nexcept E:\n    pass\nprint(x)").read == {"f", "E", "x"}


def test_finally_binding_is_definite():
    assert a("try:\n    pass\nfinally:\n    x = 1\nprint(x)").read == frozenset()


def test_with_target_is_definite():
    assert a("with open(p) as fh:\n    pass\nfh.read()").read == {"p"}


def test_nested_def_reads_globals_at_call_time():
    r = a("""
        def f(a, b=default):
            local = a + b
            return df.shape, local, helper(a)
        """)
    assert r.read == {"default", "df", "helper"}


def test_nested_def_after_global_assignment_is_not_a_read():
    assert a("df = load()\ndef f():\n    return df").read == {"load"}


def test_nested_def_before_assignment_is_conservatively_a_read():
    assert a("def f():\n    return df\ndf = 1").read == {"df"}


def test_closure_over_enclosing_function_is_not_a_module_read():
    r = a("""
        def outer():
            v = 1
            def inner():
                nonlocal v
                return v + w
            return inner
        """)
    assert r.read == {"w"}


def test_global_declaration_reads_module_name():
    assert a("def f():\n    global counter\n    counter = counter + 1").read == {"counter"}


def test_lambda_and_comprehension_free_names():
    r = a("key = lambda row: row[col]\nvals = [scale * v for v in items if v > lo]")
    assert r.read == {"col", "scale", "items", "lo"}


def test_comprehension_first_iter_is_enclosing_scope():
    assert a("[x for x in x]").read == {"x"}


def test_class_body():
    r = a("""
        class Model(Base, metaclass=Meta):
            rate = default_rate
            total = rate * 2
            def predict(self, X):
                return X @ weights + rate
        """)
    assert r.assigned == {"Model"}
    # `rate` inside the method is a global lookup: class names are invisible to methods
    assert r.read == {"Base", "Meta", "default_rate", "weights", "rate"}


def test_decorators_and_annotations_are_read():
    r = a("@register(registry)\ndef f(x: Kind) -> Result:\n    pass")
    assert r.read == {"register", "registry", "Kind", "Result"}


def test_walrus_binds_module_name_but_only_maybe_in_a_comprehension():
    assert a("print(y := 5)\nprint(y)").read == frozenset()
    assert a("[last := v for v in vs]\nprint(last)").read == {"vs", "last"}


def test_match_capture_is_maybe():
    assert a("match p:\n    case [q]: pass\nprint(q)").read == {"p", "q"}


# -- top-level await and IPython-transformed cells --------------------------------------------
def test_top_level_await():
    r = a("import asyncio\nx = await asyncio.sleep(0, result=5)")
    assert r.assigned == {"asyncio", "x"}
    assert r.read == frozenset()
    assert r.imports == {"asyncio": "asyncio"}


def test_async_for_and_with_at_top_level():
    r = a("async for item in stream():\n    got = item\nasync with sess as s:\n    pass")
    assert r.assigned == {"item", "got", "s"}
    assert r.read == {"stream", "sess"}


def test_syntax_error_propagates():
    with pytest.raises(SyntaxError):
        analyze_cell("x = = 1")
    with pytest.raises(SyntaxError):
        normalized_code_hash("def f(:")


@pytest.fixture(scope="module")
def shell():
    ipython = pytest.importorskip("IPython.core.interactiveshell")
    return ipython.InteractiveShell.instance()


def test_ipython_transformed_cell(shell):
    src = shell.transform_cell("!echo hi\n%time y = 1\nx = !ls\nprint(x, y)\n")
    assert "get_ipython()" in src
    r = analyze_cell(src)
    assert {"x", "y"} <= r.assigned
    assert r.read == frozenset()  # get_ipython is IPython's, y is bound by %time


def test_ipython_cell_magics(shell):
    r = analyze_cell(shell.transform_cell("%%time\nz = base + 1\n"))
    assert r.assigned == {"z"}
    assert r.read == {"base"}
    r = analyze_cell(shell.transform_cell("%%capture out\nw = 2\n"))
    assert r.assigned == {"w"}
    r = analyze_cell(shell.transform_cell("%%timeit\nv = 2\n"))  # timeit: own namespace
    assert r.assigned == frozenset()
    r = analyze_cell(shell.transform_cell("%%time\n!ls\nq = 1\n"))  # body not plain Python
    assert r.assigned == frozenset()


# -- mutation candidates ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("src", "name"),
    [
        ("df['a'] = 1", "df"),
        ("df.loc[df.x > 0, 'y'] = 0", "df"),
        ("obj.attr = 1", "obj"),
        ("obj.inner.deep = 1", "obj"),
        ("m[0][1] = 2", "m"),
        ("del df['a']", "df"),
        ("del obj.attr", "obj"),
        ("items.append(1)", "items"),
        ("df.drop(columns=['a'], inplace=True)", "df"),
        ("d.update(other)", "d"),
        ("df['a'].fillna(0, inplace=True)", "df"),
        ("mutate(items)", "items"),
        ("random.shuffle(items)", "items"),
        ("random.shuffle(items)", "random"),
        ("f(key=value)", "value"),
        ("f(*args)", "args"),
        ("f([lst, other])", "lst"),
        ("f(obj.part)", "obj"),
        ("lst += [1]", "lst"),
        ("df['a'] += 1", "df"),
        ("for row in rows: pass", "rows"),
        ("with conn: pass", "conn"),
        ("with pool.get() as c: pass", "pool"),
        ("[g.send(1) for _ in range(3)]", "g"),
        ("[x for x in gen]", "gen"),
        ("def f():\n    cache.clear()", "cache"),
        ("print(len(df))", "df"),
        ("b = a\nb.append(1)", "a"),
        ("b = a['k']\nb[0] = 1", "a"),
        ("first, second = pair\nfirst.x = 1", "pair"),
    ],
)
def test_mutation_candidates(src, name):
    r = a(src)
    assert name in r.mutation_candidates
    assert r.mutation_candidates <= r.read


@pytest.mark.parametrize(
    "src",
    [
        "items = []\nitems.append(1)",
        "x = 5",
        "y = x + 1",
        "import random\nrandom.seed(1)",
        "df = load()\ndf['a'] = 1",
        "print(n * 2)",
        "z = f(1)",
        "def f(lst):\n    lst.append(1)",
        "total = sum(v for v in [1, 2])",
    ],
)
def test_not_mutation_candidates(src):
    r = a(src)
    assert not ({"items", "x", "random", "df", "n", "lst", "z", "v", "total"}
                & r.mutation_candidates)


def test_only_assigned_name_is_never_a_candidate():
    r = a("result = compute(data)\nresult.sort()")
    assert r.mutation_candidates == {"data"}


# -- imports ----------------------------------------------------------------------------------
def test_imports_map():
    r = a("""
        import os
        import os.path
        import xml.etree.ElementTree as ET
        from collections import OrderedDict as OD, deque
        from . import sibling
        from ..pkg.mod import thing
        from star import *
        """)
    assert r.imports == {"os": "os", "ET": "xml.etree.ElementTree",
                         "OD": "collections:OrderedDict", "deque": "collections:deque",
                         "sibling": ".:sibling", "thing": "..pkg.mod:thing"}


def test_rebinding_an_import_drops_it():
    r = a("import json\njson = {}\nimport re\ndel re")
    assert r.imports == {}
    assert r.assigned == {"json", "re"}


def test_imports_inside_functions_are_not_module_imports():
    assert a("def f():\n    import os\n    return os").imports == {}


# -- code hash --------------------------------------------------------------------------------
def test_code_hash_ignores_comments_and_layout():
    h1 = normalized_code_hash("x = 1\ny = f(x, 2)\n")
    h2 = normalized_code_hash("# setup\n\nx=1   # one\n\n\ny = f( x ,\n      2 )\n")
    assert h1 == h2 == analyze_cell("x = 1\ny = f(x, 2)").code_hash
    assert len(h1) == 16 and int(h1, 16) >= 0


def test_code_hash_changes_with_literals_and_names():
    base = normalized_code_hash("x = 'a'")
    assert normalized_code_hash("x = 'b'") != base
    assert normalized_code_hash("y = 'a'") != base
    assert normalized_code_hash("x = \"a\"") == base  # same literal, other quotes


def test_code_hash_top_level_await():
    assert normalized_code_hash("x = await f()") == normalized_code_hash("x  =  await f()")


def test_code_hash_is_stable_across_processes():
    src = "import math\nvalue = {'k': [1, 2.5, None]}  # c\nprint(math.pi)\n"
    code = ("import sys; from contd_nb.notebook.cell_analysis import normalized_code_hash; "
            "print(normalized_code_hash(sys.stdin.read()))")
    outs = {
        subprocess.run([sys.executable, "-c", code], input=src, capture_output=True, text=True,
                       check=True, env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout.strip()
        for seed in ("1", "2")
    }
    assert outs == {normalized_code_hash(src)}


def test_analysis_is_frozen():
    r = a("x = 1")
    with pytest.raises(AttributeError):
        r.assigned = frozenset()  # type: ignore[misc]


# -- more edge cases --------------------------------------------------------------------------
def test_nested_comprehension_locals_and_candidates():
    r = a("cells = [c for row in grid for c in row]\nrow = 0")
    assert r.read == {"grid"}
    assert r.mutation_candidates == {"grid"}


def test_try_else_sees_bindings_of_try_body():
    assert a("try:\n    x = f()\nexcept E:\n    pass\nelse:\n    print(x)").read == {"f", "E"}


def test_if_branch_binding_not_visible_in_else():
    assert a("if c:\n    x = 1\nelse:\n    print(x)").read == {"c", "x"}


def test_loop_body_sees_its_target_and_earlier_body_bindings():
    r = a("for i in r:\n    sq = i * i\n    print(sq)")
    assert r.read == {"r"}


def test_class_body_comprehension_cannot_see_class_names():
    r = a("class A:\n    k = 2\n    ys = [x * k for x in xs]")
    assert r.read == {"xs", "k"}


def test_method_candidates_inside_lambda_and_class_method():
    r = a("f = lambda: log.append(1)\nclass C:\n    def m(self):\n        registry[self] = 1")
    assert r.mutation_candidates == {"log", "registry"}


def test_expression_only_cell():
    r = a("df.head()")
    assert (r.assigned, r.read, r.mutation_candidates) == (set(), {"df"}, {"df"})


def test_empty_cell():
    r = a("# only a comment\n")
    assert r.assigned == r.read == r.deleted == frozenset()
    assert r.code_hash == normalized_code_hash("")
