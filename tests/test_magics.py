"""The magics in-process, on real IPython ``InteractiveShell``s and real DuckDB journals.

A "kernel restart" is simulated by closing the notebook session (its lease is released and its
engine closed), clearing the IPython singleton and creating a new shell on the same journal:
the same cells then restore instead of running. Every cell that must not run twice appends to
a counter file, so "did not run" is an exact count, not a guess. The Python @workflow resumed by
``%contd_resume`` is started (and killed) in a child process: tests/magics_workflows.py.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("IPython")
import magics_workflows as mw  # noqa: E402
from conftest import run_child  # noqa: E402
from IPython.core.error import UsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from IPython.utils.capture import capture_output  # noqa: E402
from traitlets.config import Config  # noqa: E402

from contd_nb import (  # noqa: E402
    ExecutionContext,
    ExecutionEngine,
    NoActiveWorkflow,
    StepTimeout,
    TooManyAttempts,
)
from contd_nb.notebook.magics import ContdMagics  # noqa: E402
from contd_nb.notebook.session import NotebookSession  # noqa: E402

LINE_MAGICS = {"contd_run", "contd_resume", "contd_status", "contd_release", "contd_inspect"}
CELL_MAGICS = {"contd_step"}
RESTORED = "\u21ba contd_nb: step '{}' restored from the journal"


# -- helpers -----------------------------------------------------------------------------------
@dataclass
class Cell:
    """What one ``run_cell`` did and showed."""

    result: object
    out: str
    err: str
    displays: list[str]  # text/plain of every display_data published (restored outputs)

    @property
    def error(self) -> BaseException | None:
        return self.result.error_before_exec or self.result.error_in_exec

    def ok(self) -> Cell:
        assert self.error is None, f"cell failed: {self.error!r}\n{self.out}\n{self.err}"
        return self


def close_current_session() -> None:
    """What a kernel's death does to this process's notebook session: lease released,
    engine and journal file closed."""
    session = NotebookSession.current
    if session is not None:
        session.close()
        session.engine.close()
        session.engine.store.close()
    assert NotebookSession.current is None


class Notebook:
    """Fresh IPython shells ("kernels") running one notebook run on one journal."""

    def __init__(self, journal: Path, name: str = "nb") -> None:
        self.journal = journal
        self.name = name
        self.shell: InteractiveShell | None = None

    def restart(self, start: bool = True, load: bool = True) -> InteractiveShell:
        close_current_session()
        InteractiveShell.clear_instance()
        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        self.shell = InteractiveShell.instance(config=config)
        if load:
            self.run("%load_ext contd_nb").ok()
        if start:
            cell = self.run(f"%contd_run {self.name} --journal {self.journal}").ok()
            assert cell.out.startswith(f"contd_nb: notebook run '{self.name}' on ")
        return self.shell

    def run(self, code: str) -> Cell:
        with capture_output() as cap:
            result = self.shell.run_cell(code, store_history=False)
        displays = [o.data.get("text/plain", "") for o in cap.outputs]
        return Cell(result, cap.stdout, cap.stderr, displays)

    @property
    def ns(self) -> dict:
        return self.shell.user_ns

    @property
    def session(self) -> NotebookSession:
        assert NotebookSession.current is not None
        return NotebookSession.current

    def events(self, kind: str | None = None, step: str | None = None) -> list[dict]:
        """The run's journal events as dicts (info decoded; payload decoded as JSON for cell
        completions)."""
        out = []
        for r in self.session.engine.store.read_events(self.name):
            if (kind and r.kind != kind) or (step and r.step_name != step):
                continue
            info = json.loads(r.info) if r.info else {}
            payload = json.loads(r.payload) if r.payload and info.get("cell") else None
            out.append({"kind": r.kind, "seq": r.seq, "step": r.step_name, "attempt": r.attempt,
                        "info": info, "manifest": payload})
        return out

    def completion(self, step: str) -> dict:
        done = self.events("step_completed", step)
        assert done, f"no step_completed for {step}"
        return done[-1]


class Counter:
    """A file a cell appends to each time it really runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def code(self) -> str:
        return f"open(r'{self.path}', 'a').write('1')"

    @property
    def count(self) -> int:
        return len(self.path.read_text()) if self.path.exists() else 0


@pytest.fixture
def nb(tmp_path, monkeypatch):
    # nothing may fall back to a journal in the repository or ~/.ipython
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONTD_JOURNAL", str(tmp_path / "default.duckdb"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    previous = ExecutionEngine.set_instance(None)
    book = Notebook(tmp_path / "journal.duckdb")
    yield book
    close_current_session()
    InteractiveShell.clear_instance()
    default = ExecutionEngine.set_instance(previous)
    if default is not None and default is not previous:
        default.close()
        default.store.close()


@pytest.fixture
def counter(tmp_path) -> Counter:
    return Counter(tmp_path / "counter.txt")


# -- the extension, help and arguments -------------------------------------------------------
def _contd_magics(shell) -> tuple[set[str], set[str], int]:
    table = shell.magics_manager.magics
    line = {n for n, fn in table["line"].items() if isinstance(getattr(fn, "__self__", None),
                                                               ContdMagics)}
    cell = {n for n, fn in table["cell"].items() if isinstance(getattr(fn, "__self__", None),
                                                               ContdMagics)}
    instances = sum(isinstance(m, ContdMagics) for m in shell.magics_manager.registry.values())
    return line, cell, instances


def test_load_unload_reload_ext(nb):
    shell = nb.restart(start=False, load=False)
    assert _contd_magics(shell) == (set(), set(), 0)
    nb.run("%load_ext contd_nb").ok()
    assert _contd_magics(shell) == (LINE_MAGICS, CELL_MAGICS, 1)

    nb.run("%unload_ext contd_nb").ok()
    assert _contd_magics(shell) == (set(), set(), 0)
    assert not {"contd_run", "contd_status"} & set(shell.magics_manager.magics["line"])
    assert "contd_step" not in shell.magics_manager.magics["cell"]
    gone = nb.run("%contd_status")
    assert isinstance(gone.error, UsageError)
    assert "Line magic function `%contd_status` not found" in str(gone.error)

    nb.run("%load_ext contd_nb").ok()
    for _ in range(2):
        nb.run("%reload_ext contd_nb").ok()
        line, cell, instances = _contd_magics(shell)
        assert (line, cell, instances) == (LINE_MAGICS, CELL_MAGICS, 1)
        # every registered magic is bound to that one instance
        owners = {shell.magics_manager.magics["line"][n].__self__ for n in line}
        owners |= {shell.magics_manager.magics["cell"][n].__self__ for n in cell}
        assert len(owners) == 1
    status = nb.run("%contd_status").ok()
    assert status.out == ("contd_nb: no notebook run in this kernel "
                          "(start one with %contd_run NAME)\n")


def test_help_shows_the_arguments(nb):
    shell = nb.restart(start=False)
    doc = shell.find_line_magic("contd_run").__doc__
    assert "%contd_run [--journal JOURNAL] [--ttl TTL] name" in doc
    assert "the notebook workflow to begin or continue" in doc
    assert "--ttl TTL" in doc and "lease time to live" in doc
    step_doc = shell.find_cell_magic("contd_step").__doc__
    for option in ("--retry RETRY", "--timeout TIMEOUT", "--backoff BACKOFF", "--force",
                   "--always-run", "--no-save NO_SAVE"):
        assert option in step_doc
    helped = nb.run("%contd_run?").ok()
    assert "%contd_run [--journal JOURNAL] [--ttl TTL] name" in helped.out
    assert "journal file path or postgresql:// URL" in helped.out


@pytest.mark.parametrize(("code", "message"), [
    ("%contd_run", "the following arguments are required: name"),
    ("%contd_run nb --ttl soon", "--ttl 'soon' is not a duration"),
    ("%contd_run 'has space'", "is not valid"),
    ("%%contd_step --retry x\nx = 1", "argument --retry: invalid int value: 'x'"),
    ("%%contd_step --retry -1\nx = 1", "--retry must be 0 or more"),
    ("%%contd_step --timeout soon\nx = 1",
     "--timeout 'soon' is not a duration: use e.g. 30s, 500ms, 2m or 1h"),
    ("%%contd_step --backoff 0s\nx = 1", "--backoff '0s' is not a duration"),
    ("%%contd_step --nope\nx = 1", "unrecognized arguments: --nope"),
])
def test_bad_arguments_raise_usage_error(nb, counter, code, message):
    nb.restart(start=False)
    if code.startswith("%%"):  # with a run active, so only the arguments are wrong
        nb.run(f"%contd_run nb --journal {nb.journal}").ok()
    cell = nb.run(code.replace("x = 1", f"{counter.code}\nx = 1"))
    if "has space" in code:  # an invalid id is the package's own error, not a usage error
        assert type(cell.error).__name__ == "InvalidWorkflowId"
    else:
        assert isinstance(cell.error, UsageError), repr(cell.error)
    assert message in str(cell.error)
    assert counter.count == 0 and "x" not in nb.ns


def test_usage_error_raised_by_the_magic_functions(nb):
    shell = nb.restart(start=False)
    with pytest.raises(UsageError, match="required: name"):
        shell.run_line_magic("contd_run", "")
    nb.run(f"%contd_run nb --journal {nb.journal}").ok()
    with pytest.raises(UsageError, match="invalid int value: 'x'"):
        shell.run_cell_magic("contd_step", "--retry x", "y = 1")
    with pytest.raises(UsageError, match="'soon' is not a duration"):
        shell.run_cell_magic("contd_step", "--timeout soon", "y = 1")
    assert "y" not in shell.user_ns


def test_step_cell_before_contd_run_fails(nb, counter):
    nb.restart(start=False)
    cell = nb.run(f"%%contd_step\n{counter.code}\nx = 1")
    assert isinstance(cell.error, NoActiveWorkflow)
    assert "run `%contd_run NAME` first" in str(cell.error)
    assert "before %contd_run" in str(cell.error)
    assert counter.count == 0 and "x" not in nb.ns


# -- IPython syntax inside a step --------------------------------------------------------------
IPY_CELL = """\
%%contd_step ipy
{count}
import asyncio
x = await asyncio.sleep(0, result=5)
!echo hi
out = !echo hi
%time y = 1
x + 1
"""


def test_ipython_syntax_runs_in_a_step_and_restores(nb, counter):
    nb.restart()
    code = IPY_CELL.format(count=counter.code)
    first = nb.run(code).ok()
    assert counter.count == 1
    assert nb.ns["x"] == 5 and nb.ns["y"] == 1
    assert list(nb.ns["out"]) == ["hi"]
    assert first.out.startswith("hi\r\nCPU times: ")
    assert "Wall time: " in first.out
    assert first.out.endswith(": 6\n")  # "Out[n]: 6", the last expression's display
    assert "contd_nb: running step" not in first.out  # a first run says nothing
    manifest = nb.completion("ipy")["manifest"]
    assert set(manifest["values"]) == {"asyncio", "out", "x", "y"}
    assert manifest["values"]["asyncio"] == {"module": "asyncio"}
    kinds = [o["output_type"] for o in manifest["outputs"]]
    assert kinds == ["stream", "execute_result"]
    assert manifest["outputs"][0]["text"].startswith("hi\r\nCPU times: ")
    assert manifest["outputs"][1]["data"] == {"text/plain": "6"}

    nb.restart()
    again = nb.run(code).ok()
    assert counter.count == 1  # not run again
    assert again.displays[0].startswith(RESTORED.format("ipy"))
    assert again.displays[0].endswith("; not run again")
    assert again.displays[1:] == ["6"]
    assert again.out.startswith("hi\r\nCPU times: ")  # the recorded stream, shown again
    assert nb.ns["x"] == 5 and nb.ns["y"] == 1 and list(nb.ns["out"]) == ["hi"]
    assert nb.ns["asyncio"] is sys.modules["asyncio"]


# -- names recorded and restored -------------------------------------------------------------
NAMES_CELL = """\
%%contd_step names
{count}
import json
import os.path as osp
import contextlib
from collections import OrderedDict as OD
a = 1
a += 1
b, (c, d) = 2, (3, 4)
first, *rest = [5, 6, 7]
for i in range(3):
    pass
with contextlib.nullcontext(7) as w:
    pass
def double(v):
    return 2 * v
class Point:
    def __init__(self, x):
        self.x = x
p = Point(3)
tmp = [1, 2]
"""
DEL_CELL = "%%contd_step drop\n{count}\ndel tmp\nb += 10\n"
NAMES = {"json", "osp", "contextlib", "OD", "a", "b", "c", "d", "first", "rest", "i", "w",
         "double", "Point", "p", "tmp"}


def test_assigned_names_are_recorded_and_restored_in_a_new_shell(nb, counter):
    nb.restart()
    cells = [NAMES_CELL.format(count=counter.code), DEL_CELL.format(count=counter.code)]
    for code in cells:
        nb.run(code).ok()
    assert counter.count == 2
    done = nb.completion("names")
    assert set(done["manifest"]["values"]) == NAMES
    assert done["manifest"]["values"]["osp"] == {"module": "posixpath"}
    assert done["manifest"]["values"]["json"] == {"module": "json"}
    dropped = nb.completion("drop")
    assert dropped["info"]["deleted"] == ["tmp"]
    assert set(dropped["manifest"]["values"]) == {"b"}
    assert dropped["info"]["reads"] == {"b": ["names", done_seq(nb, "names")]}

    nb.restart()
    for code in cells:
        cell = nb.run(code).ok()
        assert cell.displays and cell.displays[0].startswith("\u21ba contd_nb: step ")
    assert counter.count == 2  # neither cell ran again
    ns = nb.ns
    assert (ns["a"], ns["b"], ns["c"], ns["d"]) == (2, 12, 3, 4)
    assert (ns["first"], ns["rest"], ns["i"], ns["w"]) == (5, [6, 7], 2, 7)
    assert ns["json"] is sys.modules["json"] and ns["osp"] is sys.modules["posixpath"]
    assert ns["contextlib"] is sys.modules["contextlib"]
    assert ns["OD"] is sys.modules["collections"].OrderedDict
    assert ns["double"](21) == 42
    assert isinstance(ns["p"], ns["Point"]) and ns["p"].x == 3
    assert ns["Point"](4).x == 4
    assert "tmp" not in ns  # deleted by the later cell: gone after the restore too


def done_seq(nb: Notebook, step: str) -> int:
    return nb.completion(step)["seq"]


def test_functions_restored_in_a_new_shell_work_without_their_cell(nb, counter):
    nb.restart()
    nb.run(f"%%contd_step defs\n{counter.code}\nscale = 3\n"
           "def triple(v):\n    return scale * v\n").ok()
    nb.restart()
    cell = nb.run("print(triple(5))")  # a new kernel: nothing restored yet
    assert type(cell.error) is NameError and "triple" not in nb.ns
    nb.run(f"%contd_resume {nb.name}").ok()
    assert nb.run("print(triple(5))").ok().out == "15\n"
    assert counter.count == 1


# -- a large DataFrame -------------------------------------------------------------------------
def test_a_million_row_dataframe_round_trips_exactly(nb, counter):
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    nb.restart()
    code = f"""%%contd_step frame
{counter.code}
import numpy as np
import pandas as pd
n = 1_000_000
rng = np.random.default_rng(7)
frame = pd.DataFrame({{
    "ints": rng.integers(-2**62, 2**62, n, dtype="int64"),
    "floats": rng.standard_normal(n),
    "text": pd.array([f"s{{k % 977}}" for k in range(n)], dtype="string"),
    "cat": pd.Categorical.from_codes(rng.integers(0, 3, n), ["lo", "mid", "hi"]),
    "when": pd.date_range("2020-01-01", periods=n, freq="s", tz="UTC",
                          unit="ns"),
}}, index=pd.Index(np.arange(n, dtype="int64") * 2, name="row"))
frame.columns.name = "field"
"""
    nb.run(code).ok()
    original = nb.ns["frame"]
    assert list(original.dtypes.astype(str)) == ["int64", "float64", "string", "category",
                                                 "datetime64[ns, UTC]"]
    nb.restart()
    again = nb.run(code).ok()
    assert again.displays[0].startswith(RESTORED.format("frame"))
    assert counter.count == 1
    restored = nb.ns["frame"]
    assert restored is not original
    pd.testing.assert_frame_equal(restored, original, check_dtype=True, check_exact=True,
                                  check_index_type=True, check_column_type=True,
                                  check_categorical=True, check_names=True)
    assert restored.index.name == "row" and restored.columns.name == "field"
    assert list(restored.columns) == ["ints", "floats", "text", "cat", "when"]
    assert list(restored["cat"].cat.categories) == ["lo", "mid", "hi"]
    assert str(restored["when"].dt.tz) == "UTC"
    assert np.array_equal(restored.index.to_numpy(), original.index.to_numpy())


def test_a_range_index_comes_back_as_a_range_index(nb, counter):
    """A RangeIndex costs no memory; materialised on restore, 1M rows cost 8 MB more."""
    pd = pytest.importorskip("pandas")
    nb.restart()
    code = (f"%%contd_step ranged\n{counter.code}\nimport pandas as pd\n"
            "ranged = pd.DataFrame({'a': [1, 2, 3]}, index=pd.RangeIndex(0, 6, 2, name='r'))\n")
    nb.run(code).ok()
    nb.restart()
    nb.run(code).ok()
    assert counter.count == 1
    restored = nb.ns["ranged"]
    assert restored.index.name == "r" and list(restored.index) == [0, 2, 4]
    assert type(restored.index) is pd.RangeIndex, type(restored.index)
    pd.testing.assert_frame_equal(restored, pd.DataFrame(
        {"a": [1, 2, 3]}, index=pd.RangeIndex(0, 6, 2, name="r")), check_index_type=True)


# -- content addressing ------------------------------------------------------------------------
def _blob_rows(journal: Path) -> list[tuple[str, int]]:
    import duckdb

    conn = duckdb.connect(str(journal), read_only=True)
    try:
        return conn.execute("SELECT hash, size FROM blobs ORDER BY hash").fetchall()
    finally:
        conn.close()


def test_an_unchanged_value_is_stored_once(nb):
    nb.restart()
    nb.run("%%contd_step one\nbig = list(range(20000))\nsmall = 'a'\n").ok()
    nb.run("%%contd_step two\nbig = list(range(20000))\nother = 'b'\n").ok()
    one, two = nb.completion("one"), nb.completion("two")
    assert one["manifest"]["values"]["big"] == two["manifest"]["values"]["big"]
    # a new kernel (its own set of known blobs) storing the same value again
    nb.restart()
    nb.run("%%contd_step three\nbig = list(range(20000))\n").ok()
    three = nb.completion("three")
    assert three["manifest"]["values"]["big"] == one["manifest"]["values"]["big"]
    close_current_session()
    rows = _blob_rows(nb.journal)
    hashes = [h for h, _ in rows]
    assert len(hashes) == len(set(hashes)) == 3  # big, 'a', 'b': big stored once
    assert one["manifest"]["values"]["big"]["blob"] in hashes


# -- in-place mutation -------------------------------------------------------------------------
def test_in_place_mutations_are_persisted_with_the_later_cell(nb, counter):
    pytest.importorskip("pandas")
    nb.restart()
    cells = [
        f"%%contd_step make\n{counter.code}\nimport pandas as pd\nitems = [1, 2, 3]\n"
        "df = pd.DataFrame({'a': [1, 2]})\nkeep = {'k': 1}\n",
        f"%%contd_step mutate\n{counter.code}\nitems.append(4)\ndf['z'] = 1\n"
        "print(len(keep))\n",
    ]
    for code in cells:
        nb.run(code).ok()
    done = nb.completion("mutate")
    assert sorted(done["info"]["mutated"]) == ["df", "items"]  # keep was read, not changed
    assert set(done["manifest"]["values"]) == {"df", "items"}

    nb.restart()
    for code in cells:
        nb.run(code).ok()
    assert counter.count == 2
    assert nb.ns["items"] == [1, 2, 3, 4]
    assert list(nb.ns["df"].columns) == ["a", "z"] and list(nb.ns["df"]["z"]) == [1, 1]
    assert nb.ns["keep"] == {"k": 1}

    nb.restart()  # %contd_resume alone gives the mutated values as well
    nb.run(f"%contd_resume {nb.name}").ok()
    assert nb.ns["items"] == [1, 2, 3, 4] and list(nb.ns["df"].columns) == ["a", "z"]


# -- values that cannot be persisted -----------------------------------------------------------
def test_unpersistable_values_are_named_and_listed_to_recompute(nb, counter):
    nb.restart()
    code = (f"%%contd_step handles\n{counter.code}\nimport threading\nlock = threading.Lock()\n"
            "gen = (k for k in range(3))\nfine = 1\n")
    cell = nb.run(code).ok()
    assert isinstance(nb.ns["lock"], type(threading.Lock()))
    assert "contd_nb: `lock` (_thread.lock) was not persisted: " in cell.err
    assert "contd_nb: `gen` (generator) was not persisted: " in cell.err
    assert "a resume will list it to recompute" in cell.err
    done = nb.completion("handles")
    assert done["info"]["unpersistable"] == {"gen": "generator", "lock": "_thread.lock"}
    assert set(done["manifest"]["values"]) == {"threading", "fine"}

    nb.restart()
    resumed = nb.run(f"%contd_resume {nb.name}").ok()
    assert resumed.out.splitlines() == [
        f"contd_nb: resumed notebook run '{nb.name}'",
        "  steps restored     1",
        "  variables          2",
        resumed.out.splitlines()[3],
        resumed.out.splitlines()[4],
        "  to recompute       gen (generator), lock (_thread.lock)",
        "  next pending step  none",
    ]
    assert resumed.out.splitlines()[3].startswith("  bytes              ")
    assert resumed.out.splitlines()[4].startswith("  time               ")
    assert nb.ns["fine"] == 1 and "lock" not in nb.ns and "gen" not in nb.ns
    # the cell runs again when reached: its values could not come back
    again = nb.run(code).ok()
    assert counter.count == 2
    assert "contd_nb: running step 'handles': `gen`, `lock` could not be persisted" in again.out


# -- cell options ------------------------------------------------------------------------------
def test_force_runs_a_completed_cell_again(nb, counter):
    nb.restart()
    code = f"%%contd_step s\n{counter.code}\nv = 1\n"
    nb.run(code).ok()
    restored = nb.run(code).ok()
    assert restored.displays[0].startswith(RESTORED.format("s")) and counter.count == 1
    forced = nb.run(code.replace("%%contd_step s", "%%contd_step s --force")).ok()
    assert forced.out == "contd_nb: running step 's': --force\n"
    assert counter.count == 2 and forced.displays == []
    assert len(nb.events("step_completed", "s")) == 2


def test_always_run_runs_every_time(nb, counter):
    nb.restart()
    code = f"%%contd_step setup --always-run\n{counter.code}\nconn = 'db'\n"
    first = nb.run(code).ok()
    assert first.out == "contd_nb: running step 'setup': --always-run\n"
    nb.run(code).ok()
    nb.restart()
    third = nb.run(code).ok()
    assert third.out == "contd_nb: running step 'setup': --always-run\n"
    assert third.displays == [] and counter.count == 3


def test_no_save_does_not_persist_the_named_variables(nb, counter):
    nb.restart()
    code = f"%%contd_step part --no-save a,c\n{counter.code}\na = 1\nb = 2\nc = 3\n"
    nb.run(code).ok()
    done = nb.completion("part")
    assert set(done["manifest"]["values"]) == {"b"}
    assert done["info"]["no_save"] == ["a", "c"]
    nb.restart()
    nb.run(code).ok()
    assert counter.count == 1 and nb.ns["b"] == 2
    assert "a" not in nb.ns and "c" not in nb.ns


def test_timeout_interrupts_the_cell(nb, counter):
    nb.restart()
    cell = nb.run(f"%%contd_step slow --timeout 200ms\n{counter.code}\nimport time\n"
                  "time.sleep(5)\ndone = True\n")
    assert isinstance(cell.error, StepTimeout)
    assert "Step 'slow' timed out after 0.2s" in str(cell.error)
    assert cell.error.timeout_seconds == pytest.approx(0.2)
    assert counter.count == 1 and "done" not in nb.ns
    failed = nb.events("step_failed", "slow")
    assert len(failed) == 1 and failed[0]["info"]["timeout"] is True
    assert failed[0]["info"]["error_type"] == "StepTimeout"
    assert nb.events("step_completed", "slow") == []


FLAKY = """\
%%contd_step flaky --retry 2 --backoff 10ms
runs = int(open(r'{path}').read() or 0) + 1 if __import__('os').path.exists(r'{path}') else 1
open(r'{path}', 'w').write(str(runs))
if runs < 3:
    raise ConnectionError(f"try {{runs}}")
result = runs
"""


def test_retry_with_backoff_completes_on_the_third_attempt(nb, tmp_path):
    nb.restart()
    path = tmp_path / "flaky.txt"
    cell = nb.run(FLAKY.format(path=path)).ok()
    assert path.read_text() == "3" and nb.ns["result"] == 3
    lines = cell.err.splitlines()
    assert lines == [
        "contd_nb: step 'flaky' attempt 1 failed (ConnectionError: try 1); retrying in 0.01s",
        "contd_nb: step 'flaky' attempt 2 failed (ConnectionError: try 2); retrying in 0.02s",
    ]
    failed = nb.events("step_failed", "flaky")
    assert [(f["attempt"], f["info"]["message"]) for f in failed] == [(1, "try 1"), (2, "try 2")]
    assert all(f["info"]["will_retry"] for f in failed)
    done = nb.events("step_completed", "flaky")
    assert len(done) == 1 and done[0]["attempt"] == 3
    assert done[0]["manifest"]["values"].keys() == {"runs", "result"}


def test_retry_exhausted_raises_too_many_attempts(nb, counter):
    nb.restart()
    cell = nb.run(f"%%contd_step doomed --retry 1 --backoff 10ms\n{counter.code}\n"
                  "raise ValueError('always')\n")
    assert isinstance(cell.error, TooManyAttempts)
    assert cell.error.attempts == 2 and cell.error.step_name == "doomed"
    assert type(cell.error.last_error) is ValueError
    assert str(cell.error.last_error) == "always"
    assert counter.count == 2
    assert len(nb.events("step_failed", "doomed")) == 2
    assert nb.events("step_completed", "doomed") == []


def test_without_retry_the_original_exception_is_raised(nb, counter):
    nb.restart()
    cell = nb.run(f"%%contd_step bad\n{counter.code}\nraise KeyError('missing')\n")
    assert type(cell.result.error_in_exec) is KeyError
    assert cell.result.error_in_exec.args == ("missing",)
    assert counter.count == 1
    # shown once, by the outer cell, as for a plain cell
    assert cell.out.count("Traceback (most recent call last)") == 1
    failed = nb.events("step_failed", "bad")
    assert len(failed) == 1 and failed[0]["info"]["error_type"] == "KeyError"
    assert failed[0]["info"]["will_retry"] is False


def test_changed_code_runs_again_comments_and_whitespace_do_not(nb, counter):
    nb.restart()
    nb.run(f"%%contd_step calc\n{counter.code}\nx = 1\n").ok()
    same = nb.run(f"%%contd_step calc\n# a comment\n{counter.code}\n\nx  =  1   # one\n\n").ok()
    assert same.displays[0].startswith(RESTORED.format("calc")) and counter.count == 1
    changed = nb.run(f"%%contd_step calc\n{counter.code}\nx = 2\n").ok()
    assert changed.out == "contd_nb: running step 'calc': code changed\n"
    assert counter.count == 2 and nb.ns["x"] == 2
    # unnamed cells are named from their normalized code: comments do not change the name
    nb.run(f"%%contd_step\n{counter.code}\nz = 1\n").ok()
    unnamed = nb.run(f"%%contd_step\n# note\n{counter.code}\nz = 1  # same\n").ok()
    assert counter.count == 3
    assert unnamed.displays[0].startswith("\u21ba contd_nb: step 'cell-")
    names = [e["step"] for e in nb.events("step_completed")]
    assert names[:2] == ["calc", "calc"] and names[2].startswith("cell-")
    assert len(names[2]) == len("cell-") + 10


def test_downstream_cell_reruns_when_upstream_ran_again(nb, counter):
    nb.restart()
    up = f"%%contd_step up\n{counter.code}\nbase = 10\n"
    down = f"%%contd_step down\n{counter.code}\ntotal = base + 1\n"
    nb.run(up).ok()
    nb.run(down).ok()
    nb.run(up.replace("%%contd_step up", "%%contd_step up --force")).ok()
    again = nb.run(down).ok()
    assert again.out == ("contd_nb: running step 'down': upstream `base` changed "
                         "(step 'up' ran again)\n")
    assert counter.count == 4 and nb.ns["total"] == 11


# -- @step functions and the execution context in cells ---------------------------------------
def test_step_functions_in_a_cell_are_durable_steps_of_the_run(nb, tmp_path):
    nb.restart()
    side = tmp_path / "side.txt"
    code = (f"%%contd_step calls\nfrom magics_workflows import counted_double\n"
            f"r1 = counted_double(r'{side}', 21)\nr2 = counted_double(r'{side}', 5)\n"
            "from contd_nb import ExecutionContext\nctx = ExecutionContext.current()\n")
    nb.run(code).ok()
    assert (nb.ns["r1"], nb.ns["r2"]) == (42, 10)
    assert mw.read_side(side) == ["double 21", "double 5"]
    ctx = nb.ns["ctx"]
    assert isinstance(ctx, ExecutionContext)
    assert ctx.workflow_id == nb.name and ctx.step_name == "calls"
    fn_steps = [e["step"] for e in nb.events("step_completed") if not e["info"].get("cell")]
    assert fn_steps == ["calls/counted_double#1", "calls/counted_double#2"]

    forced = nb.run(code.replace("%%contd_step calls", "%%contd_step calls --force")).ok()
    assert forced.out == "contd_nb: running step 'calls': --force\n"
    assert mw.read_side(side) == ["double 21", "double 5"]  # replayed, not called
    assert (nb.ns["r1"], nb.ns["r2"]) == (42, 10)

    nb.restart()  # a new kernel replays them from the journal as well
    nb.run(code.replace("%%contd_step calls", "%%contd_step calls --force")).ok()
    assert mw.read_side(side) == ["double 21", "double 5"]
    assert (nb.ns["r1"], nb.ns["r2"]) == (42, 10)
    assert nb.ns["ctx"].workflow_id == nb.name and nb.ns["ctx"].step_name == "calls"


# -- status, release, resume -------------------------------------------------------------------
def test_status_lists_the_steps(nb):
    nb.restart()
    nb.run("%%contd_step alpha\nu = 1\n").ok()
    nb.run("%%contd_step beta\nw1, w2 = 2, 3\n").ok()
    nb.run("%%contd_step broken\nraise RuntimeError('x')\n")
    lines = nb.run("%contd_status").ok().out.splitlines()
    assert lines[0] == f"contd_nb: notebook run '{nb.name}' on {nb.journal}"
    owner = nb.session.engine.executor_id
    assert lines[1].startswith(f"  lease: owner {owner}, token ")
    assert lines[2].startswith("  step alpha ") and lines[2].endswith("attempt 1  vars: u")
    assert lines[3].startswith("  step beta ") and lines[3].endswith("attempt 1  vars: w1, w2")
    assert lines[4] == "  pending: broken"
    assert len(lines) == 5


def test_release_gives_up_the_lease(nb):
    nb.restart()
    store = nb.session.engine.store
    assert store.get_lease(nb.name).owner_id == nb.session.engine.executor_id
    out = nb.run(f"%contd_release {nb.name}").ok().out
    assert out == f"contd_nb: released '{nb.name}'; this kernel no longer runs it\n"
    assert NotebookSession.current is None
    assert store.get_lease(nb.name).owner_id is None
    cell = nb.run("%%contd_step late\nq = 1\n")
    assert isinstance(cell.error, NoActiveWorkflow)
    store.close()


def test_contd_run_continues_and_reports_completed_steps(nb):
    nb.restart()
    nb.run("%%contd_step one\nk = 1\n").ok()
    nb.run("%%contd_step two\nraise RuntimeError('stop')\n")
    close_current_session()
    shell = nb.restart(start=False)
    cell = nb.run(f"%contd_run {nb.name} --journal {nb.journal}").ok()
    assert cell.out == (f"contd_nb: notebook run '{nb.name}' on {nb.journal}: 1 completed "
                        "step(s); step 'two' did not complete\n")
    assert shell.user_ns.get("k") is None  # nothing loaded until a cell or %contd_resume


def test_contd_resume_of_an_interrupted_python_workflow(nb, tmp_path):
    journal = tmp_path / "py.duckdb"
    side = tmp_path / "side.txt"
    child = run_child(f"""
        from contd_nb import Client
        import magics_workflows as mw
        Client().run(mw.pipeline, r'{side}', 4, workflow_id='py-pipe')
        """, journal, **{mw.CRASH_ENV: "1"})
    assert child.returncode == 17, child.stderr
    assert mw.read_side(side) == ["step 0", "step 1"]

    engine = ExecutionEngine(str(journal))
    ExecutionEngine.set_instance(engine)  # the fixture closes it
    nb.restart(start=False)
    cell = nb.run("%contd_resume py-pipe").ok()
    assert cell.out.startswith("contd_nb: workflow py-pipe resumed and completed in ")
    assert nb.ns["_contd_result"] == [0, 10, 20, 30]
    assert mw.read_side(side) == ["step 0", "step 1", "step 2", "step 3"]
    assert engine.store.get_workflow("py-pipe").status == "completed"
    assert engine.store.get_lease("py-pipe").owner_id is None
    cell = nb.run("%contd_run py-pipe")
    assert type(cell.error).__name__ == "ConfigurationError"
    assert "use %contd_resume py-pipe to resume it" in str(cell.error)


def test_contd_resume_of_another_run_reads_the_same_journal(nb):
    """``%contd_resume OTHER`` while this kernel runs NAME on --journal J: OTHER is looked up
    in J, so it must be resumed from J too, not from the default journal."""
    nb.restart()
    nb.run("%%contd_step s\nfrom_nb = 'first run'\n").ok()
    nb.run(f"%contd_run other --journal {nb.journal}").ok()
    nb.run("%%contd_step s2\nfrom_other = 'second run'\n").ok()
    nb.restart()  # a new kernel on run "nb", journal J
    cell = nb.run("%contd_resume other").ok()
    assert cell.out.splitlines()[:3] == ["contd_nb: resumed notebook run 'other'",
                                         "  steps restored     1", "  variables          1"]
    assert nb.ns.get("from_other") == "second run"
    assert nb.session.engine.store.describe() == str(nb.journal)


def test_a_closed_session_is_not_kept_alive(nb):
    """After its lease is released, nothing should keep a session (its shell, namespace and
    engine: a kernel's whole memory) alive."""
    import gc
    import weakref

    nb.restart()
    nb.run("%%contd_step big\npayload = bytearray(10_000_000)\n").ok()
    ref = weakref.ref(nb.session)
    nb.run(f"%contd_release {nb.name}").ok()
    gc.collect()
    holders = [getattr(r, "__qualname__", type(r).__name__) for r in gc.get_referrers(ref())
               ] if ref() is not None else []
    assert holders == []
