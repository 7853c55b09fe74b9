"""contd_nb notebooks in REAL Jupyter kernels, driven by nbclient.

Every notebook names its journal explicitly (``%contd_run NAME --journal <tmp>/journal.duckdb``).
Side effects are counted in files written by the kernels (one line per execution, flushed and
fsynced), so "ran" / "did not run" is read from disk, not from what contd_nb says about itself.

* a kernel SIGKILLed in the middle of "Run All", then a new kernel runs the same notebook top to
  bottom: completed cells are restored (variables and outputs), the rest run, the dead kernel's
  lease is taken over at once;
* the same crash, then ``%contd_resume`` in the new kernel;
* a second live kernel cannot take a run another kernel holds (WorkflowLocked names the owner);
* two kernels on one journal file, different runs, interleaved steps;
* editing a cell reruns it and the cells that read what it wrote, and only those.

Kernel setup as in test_capture.py: the venv's ``python3`` kernelspec (installed into a temporary
prefix if missing), PYTHONPATH pointing at the repository.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("IPython")
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import DeadKernelError  # noqa: E402
from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

from contd_nb import ExecutionEngine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESTORED = "restored from the journal"
CELL_TIMEOUT = 60


# -- helpers ------------------------------------------------------------------------------------
def _notebook(cells: list[str]):
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def _client(nb, workdir: Path, kernel: str, *, allow_errors: bool = False) -> NotebookClient:
    return NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=kernel, allow_errors=allow_errors,
                          resources={"metadata": {"path": str(workdir)}})


def _text(cell) -> str:
    """Everything a cell showed, as text: streams, text/plain and text/html, errors."""
    parts = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            parts.append(o["text"])
        elif o["output_type"] in ("display_data", "execute_result"):
            parts.extend(o["data"].get(k, "") for k in ("text/plain", "text/html"))
        elif o["output_type"] == "error":
            parts.append(f"{o['ename']}: {o['evalue']}")
    return "\n".join(parts)


def _html(cell) -> list[str]:
    return [o["data"]["text/html"] for o in cell.get("outputs", [])
            if o["output_type"] in ("display_data", "execute_result")
            and "text/html" in o["data"]]


def _counts(counter: Path) -> Counter:
    return Counter(counter.read_text().split()) if counter.exists() else Counter()


def _setup_cell(name: str, journal: Path, counter: Path, marker: Path | None = None) -> str:
    """Not a step: runs in every kernel. ``tick`` appends one line to the counter file."""
    return (
        "%load_ext contd_nb\n"
        f"%contd_run {name} --journal {journal}\n"
        "import os, signal\n"
        "from IPython.display import HTML, display\n"
        f"COUNTER = {str(counter)!r}\n"
        f"MARKER = {str(marker)!r}\n"
        "def tick(what):\n"
        "    with open(COUNTER, 'a') as f:\n"
        "        f.write(what + '\\n')\n"
        "        f.flush()\n"
        "        os.fsync(f.fileno())\n"
    )


def _step(name: str, body: str) -> str:
    return f"%%contd_step {name}\ntick({name!r})\n{body}"


# The crash notebook: step4 kills its kernel on the first run only (after its tick).
CRASH_STEPS = {
    1: "a = 7\nprint('step1: a =', a)",
    2: "b = a * 10\nprint('step2: b =', b)",
    3: "c = b + a\ndisplay(HTML(f'<b>step3: c = {c}</b>'))\nprint('step3 printed', c)",
    4: ("if not os.path.exists(MARKER):\n"
        "    open(MARKER, 'w').close()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "d = c * 2 + a\nprint('step4: d =', d)"),
    5: "e = d + b\nprint('step5: e =', e)",
    6: "f = [a, b, c, d, e]\nprint('step6: f =', f)",
}
A, B, C = 7, 70, 77
D = C * 2 + A
E = D + B


def _crash_cells(journal: Path, counter: Path, marker: Path, steps=range(1, 7)) -> list[str]:
    return ([_setup_cell("nb-crash", journal, counter, marker)]
            + [_step(f"step{n}", CRASH_STEPS[n]) for n in steps])


def _first_run_crashes(tmp_path: Path, kernel: str) -> tuple[Path, Path, Path]:
    """Run the six-step notebook: the kernel dies at step4. Returns (journal, counter, marker)."""
    journal, counter, marker = (tmp_path / "journal.duckdb", tmp_path / "counter.txt",
                                tmp_path / "killed.marker")
    nb = _notebook(_crash_cells(journal, counter, marker))
    with pytest.raises(DeadKernelError):
        _client(nb, tmp_path, kernel).execute()
    assert marker.exists()
    assert _counts(counter) == {"step1": 1, "step2": 1, "step3": 1, "step4": 1}
    assert "step1: a = 7" in _text(nb.cells[1])
    assert _html(nb.cells[3]) == ["<b>step3: c = 77</b>"]
    assert nb.cells[5].get("execution_count") is None  # nothing ran after the kill
    return journal, counter, marker


def _events(journal: Path, workflow_id: str):
    eng = ExecutionEngine(str(journal))
    try:
        return eng.store.read_events(workflow_id)
    finally:
        eng.close()
        eng.store.close()


# -- 1. crash, then "Run All" in a new kernel ---------------------------------------------------
def test_kernel_killed_mid_run_then_run_all_in_a_new_kernel(kernelspec, tmp_path):
    journal, counter, marker = _first_run_crashes(tmp_path, kernelspec)

    nb = _notebook(_crash_cells(journal, counter, marker))
    _client(nb, tmp_path, kernelspec).execute()  # no WorkflowLocked: a dead owner loses its lease

    setup, s1, s2, s3, s4, s5, s6 = nb.cells
    assert "3 completed step(s); step 'step4' did not complete" in _text(setup)
    assert "locked" not in _text(setup).lower()
    # cells 1-3 ran exactly once overall, 4-6 ran now (4 also before the kill)
    assert _counts(counter) == {"step1": 1, "step2": 1, "step3": 1, "step4": 2, "step5": 1,
                                "step6": 1}
    # cells 1-3: restored, with their original outputs after the header
    for cell, printed in ((s1, "step1: a = 7\n"), (s2, "step2: b = 70\n"),
                          (s3, "step3 printed 77\n")):
        text = _text(cell)
        assert f"step '{cell.source.split()[1]}' {RESTORED}" in text, text
        assert text.index(RESTORED) < text.index(printed), text
    header, *shown = _html(s3)  # the header is shown as HTML too, then the original display
    assert RESTORED in header and shown == ["<b>step3: c = 77</b>"]
    # cells 4-6 computed from the restored variables
    assert "contd_nb: running step 'step4': it did not complete last time" in _text(s4)
    assert f"step4: d = {D}\n" in _text(s4)
    assert f"step5: e = {E}\n" in _text(s5)
    assert f"step6: f = {[A, B, C, D, E]}\n" in _text(s6)
    for cell in (s4, s5, s6):
        assert RESTORED not in _text(cell)

    completed = [e.step_name for e in _events(journal, "nb-crash") if e.kind == "step_completed"]
    assert completed == ["step1", "step2", "step3", "step4", "step5", "step6"]


# -- 2. crash, then %contd_resume in a new kernel -----------------------------------------------
def test_kernel_killed_then_contd_resume_in_a_new_kernel(kernelspec, tmp_path):
    journal, counter, marker = _first_run_crashes(tmp_path, kernelspec)

    cells = _crash_cells(journal, counter, marker, steps=range(4, 7))
    cells.insert(1, "%contd_resume nb-crash\nprint('after resume:', a, b, c)")
    nb = _notebook(cells)
    _client(nb, tmp_path, kernelspec).execute()

    resume = _text(nb.cells[1])
    assert "contd_nb: resumed notebook run 'nb-crash'" in resume
    lines = [" ".join(line.split()) for line in resume.splitlines()]
    assert "steps restored 3" in lines, resume
    assert "variables 3" in lines, resume
    assert "to recompute none" in lines, resume
    assert "next pending step step4" in lines, resume
    assert f"after resume: {A} {B} {C}" in lines
    assert _counts(counter) == {"step1": 1, "step2": 1, "step3": 1, "step4": 2, "step5": 1,
                                "step6": 1}
    assert f"step4: d = {D}\n" in _text(nb.cells[2])
    assert f"step5: e = {E}\n" in _text(nb.cells[3])
    assert f"step6: f = {[A, B, C, D, E]}\n" in _text(nb.cells[4])


# -- 3. a live kernel holds the run: a second kernel is refused ---------------------------------
def test_second_live_kernel_gets_workflow_locked_naming_the_owner(kernelspec, tmp_path):
    journal, counter = tmp_path / "journal.duckdb", tmp_path / "counter.txt"
    setup = _setup_cell("nb-shared", journal, counter)
    nb_a = _notebook([setup, "import os\nprint('pid', os.getpid())",
                      _step("one", "x = 1\nprint('x', x)")])
    nb_b = _notebook([setup, _step("one", "x = 2\nprint('x', x)")])
    client_a = _client(nb_a, tmp_path, kernelspec)
    client_b = _client(nb_b, tmp_path, kernelspec, allow_errors=True)
    with client_a.setup_kernel():
        client_a.execute_cell(nb_a.cells[0], 0)
        client_a.execute_cell(nb_a.cells[1], 1)
        pid_a = int(_text(nb_a.cells[1]).split()[1])
        with client_b.setup_kernel():
            client_b.execute_cell(nb_b.cells[0], 0)
            (error,) = [o for o in nb_b.cells[0].outputs if o["output_type"] == "error"]
            assert error["ename"] == "WorkflowLocked", error
            assert "Workflow nb-shared is locked by another executor: owner " in error["evalue"]
            owner = error["evalue"].split("owner ", 1)[1].split()[0]
            host, pid, _ = owner.split(":")
            assert int(pid) == pid_a, (owner, pid_a)
            assert f"(host {host}, pid {pid_a})" in error["evalue"]
            # B's step is refused too (no run in B); A still runs its step
            client_b.execute_cell(nb_b.cells[1], 1)
            assert [o["ename"] for o in nb_b.cells[1].outputs
                    if o["output_type"] == "error"] == ["NoActiveWorkflow"]
        client_a.execute_cell(nb_a.cells[2], 2)
    assert "x 1\n" in _text(nb_a.cells[2])
    assert _counts(counter) == {"one": 1}


# -- 4. two kernels, two runs, one journal file, interleaved ------------------------------------
def test_two_kernels_interleave_steps_of_two_runs_on_one_journal(kernelspec, tmp_path):
    journal = tmp_path / "journal.duckdb"
    n = 5
    notebooks, clients = {}, {}
    for who in ("A", "B"):
        counter = tmp_path / f"counter-{who}.txt"
        cells = [_setup_cell(f"nb-{who}", journal, counter)]
        cells.append(_step("s1", f"total = sum(range(1000))\nprint('{who} s1', total)"))
        for i in range(2, n + 1):
            cells.append(_step(f"s{i}", f"total = total + sum(range({i} * 1000))\n"
                                        f"print('{who} s{i}', total)"))
        notebooks[who] = _notebook(cells)
        clients[who] = _client(notebooks[who], tmp_path, kernelspec)

    with clients["A"].setup_kernel(), clients["B"].setup_kernel():
        for index in range(n + 1):  # the setup cells, then A s1, B s1, A s2, B s2, ...
            for who in ("A", "B"):
                clients[who].execute_cell(notebooks[who].cells[index], index)

    expected = sum(sum(range(i * 1000)) for i in range(1, n + 1))
    for who in ("A", "B"):
        assert f"{who} s{n} {expected}\n" in _text(notebooks[who].cells[n])
        assert _counts(tmp_path / f"counter-{who}.txt") == {f"s{i}": 1 for i in range(1, n + 1)}
    eng = ExecutionEngine(str(journal))
    try:
        done = sorted((e.ended_at, who, e.step_name) for who in ("A", "B")
                      for e in eng.store.read_events(f"nb-{who}") if e.kind == "step_completed")
        assert [(who, step) for _, who, step in done] == [
            (who, f"s{i}") for i in range(1, n + 1) for who in ("A", "B")]  # they took turns
        for who in ("A", "B"):
            events = eng.store.read_events(f"nb-{who}")
            completed = [e.step_name for e in events if e.kind == "step_completed"]
            assert completed == [f"s{i}" for i in range(1, n + 1)]
            assert [json.loads(e.info)["cell"] for e in events
                    if e.kind == "step_completed"] == [True] * n
            assert eng.store.get_lease(f"nb-{who}") is None \
                or eng.store.get_lease(f"nb-{who}").owner_id is None  # released at exit
    finally:
        eng.close()
        eng.store.close()


# -- 5. editing a cell: it and what read from it run again --------------------------------------
def _edit_cells(journal: Path, counter: Path, b_code: str) -> list[str]:
    return [
        _setup_cell("nb-edit", journal, counter),
        _step("one", "a = 3\nc0 = 100\nprint('one', a, c0)"),
        _step("two", f"{b_code}\nprint('two', b)"),
        _step("three", "c = b * 2\nprint('three', c)"),
        _step("four", "d = c0 + 1\nprint('four', d)"),
    ]


def test_edited_cell_reruns_with_its_readers_only(kernelspec, tmp_path):
    journal, counter = tmp_path / "journal.duckdb", tmp_path / "counter.txt"
    first = _notebook(_edit_cells(journal, counter, "b = a + 1"))
    _client(first, tmp_path, kernelspec).execute()
    assert _counts(counter) == {"one": 1, "two": 1, "three": 1, "four": 1}
    assert "three 8\n" in _text(first.cells[3])

    second = _notebook(_edit_cells(journal, counter, "b = a + 1000"))
    _client(second, tmp_path, kernelspec).execute()
    _, one, two, three, four = second.cells
    assert _counts(counter) == {"one": 1, "two": 2, "three": 2, "four": 1}
    assert f"step 'one' {RESTORED}" in _text(one) and "one 3 100\n" in _text(one)
    assert "contd_nb: running step 'two': code changed" in _text(two)
    assert "two 1003\n" in _text(two)
    assert ("contd_nb: running step 'three': upstream `b` changed (step 'two' ran again)"
            in _text(three))
    assert "three 2006\n" in _text(three)
    assert f"step 'four' {RESTORED}" in _text(four) and "four 101\n" in _text(four)
    assert RESTORED not in _text(two) + _text(three)


def test_top_level_await_shell_commands_and_line_magics_in_a_kernel(kernelspec, tmp_path):
    """A step cell runs through IPython in a real kernel: top-level await (in the kernel's
    own event loop), !commands, line magics, a trailing ';'; and it is restored, not re-run,
    in a new kernel."""
    journal, counter = tmp_path / "journal.duckdb", tmp_path / "counter.txt"
    cells = [
        _setup_cell("nb-async", journal, counter),
        _step("fetch", "import asyncio\nx = await asyncio.sleep(0.01, result=5)\n"
                       "print('awaited', x)\nx * 2"),
        _step("shell", "listing = !echo from-the-shell\n%time y = x + 1\ny;"),
    ]
    first = _notebook(cells)
    _client(first, tmp_path, kernelspec).execute()
    assert "awaited 5" in _text(first.cells[1])
    assert [o["data"]["text/plain"] for o in first.cells[1].outputs
            if o["output_type"] == "execute_result"] == ["10"]
    assert "Wall time" in _text(first.cells[2])
    assert not [o for o in first.cells[2].outputs if o["output_type"] == "execute_result"]

    second = _notebook(cells + ["print(x, y, listing)"])
    _client(second, tmp_path, kernelspec).execute()
    assert _counts(counter) == Counter({"fetch": 1, "shell": 1})  # restored, not re-run
    assert RESTORED in _text(second.cells[1]) and "awaited 5" in _text(second.cells[1])
    assert _text(second.cells[3]).strip() == "5 6 ['from-the-shell']"


def test_notebook_run_on_postgresql_resumed_from_another_process(kernelspec, tmp_path,
                                                                 pg_journal):
    """A kernel runs notebook steps with --journal postgresql://...; it is killed; a new
    kernel (another process) resumes the run from the server: variables back, nothing
    completed runs again."""
    counter, marker = tmp_path / "counter.txt", tmp_path / "marker"
    setup = _setup_cell("nb-pg", pg_journal, counter, marker)
    cells = [setup, _step("step1", CRASH_STEPS[1]), _step("step2", CRASH_STEPS[2]),
             _step("step3", "if not os.path.exists(MARKER):\n"
                            "    open(MARKER, 'w').close()\n"
                            "    os.kill(os.getpid(), signal.SIGKILL)\n"
                            "c = a + b\nprint('step3: c =', c)")]
    first = _notebook(cells)
    with pytest.raises(DeadKernelError):
        _client(first, tmp_path, kernelspec).execute()
    assert _counts(counter) == Counter({"step1": 1, "step2": 1, "step3": 1})

    resume = _notebook([setup.replace("%contd_run nb-pg", "%contd_resume nb-pg"),
                        "print(a, b)", cells[3]])
    _client(resume, tmp_path, kernelspec).execute()
    table = _text(resume.cells[0])
    assert "steps restored     2" in table and "next pending step  step3" in table
    assert _text(resume.cells[1]).strip() == f"{A} {B}"
    assert "step3: c = 77" in _text(resume.cells[2])
    assert _counts(counter) == Counter({"step1": 1, "step2": 1, "step3": 2})
