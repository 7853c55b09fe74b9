"""contd_nb.notebook.capture: record what a cell shows, show it again after a restart.

Two layers:
* in-process, on ``InteractiveShell.instance()`` (plain IPython: its DisplayPublisher and
  DisplayHook print to stdout, which the capture must not record twice);
* a REAL ipykernel driven by nbclient (ZMQDisplayPublisher, ZMQShellDisplayHook, the inline
  matplotlib backend's post_execute flush, ipywidgets). Kernel setup: the ``python3`` kernelspec
  of the venv (``<venv>/share/jupyter/kernels/python3``, argv ``python -m ipykernel_launcher``;
  jupyter_client runs it with the test's own interpreter). If no ``python3`` spec is found, the
  ``kernelspec`` fixture installs one into a temporary prefix and points JUPYTER_PATH at it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("IPython")
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from contd_nb.notebook.capture import (  # noqa: E402
    WIDGET_MIME,
    OutputCapture,
    placeholder_for_widgets,
    replay_outputs,
)

ROOT = Path(__file__).resolve().parent.parent
HEADER = "↺ restored from the journal: ran 2026-12-03 16:50 UTC"


@pytest.fixture
def shell():
    return InteractiveShell.instance()


def _patched(sh) -> set[str]:
    """Names our capture may have put on the instances (must be none outside a capture)."""
    names = {"publish", "clear_output"} & set(vars(sh.display_pub))
    names |= {"write_format_data", "write_output_prompt"} & set(vars(sh.displayhook))
    return names | ({"_showtraceback"} & set(vars(sh)))


def test_streams_are_recorded_merged_and_still_shown(shell, capsys):
    with OutputCapture(shell) as cap:
        shell.run_cell("print('a'); print('b')\nimport sys; print('e', file=sys.stderr)\nprint('c')")
    assert cap.outputs == [
        {"output_type": "stream", "name": "stdout", "text": "a\nb\n"},
        {"output_type": "stream", "name": "stderr", "text": "e\n"},
        {"output_type": "stream", "name": "stdout", "text": "c\n"},
    ]
    shown = capsys.readouterr()
    assert shown.out == "a\nb\nc\n" and shown.err == "e\n"  # still shown live


def test_display_and_last_expression(shell):
    code = "from IPython.display import HTML, display\ndisplay(HTML('<b>x</b>'))\n40 + 2"
    with OutputCapture(shell) as cap:
        shell.run_cell(code)
    kinds = [o["output_type"] for o in cap.outputs]
    assert kinds == ["display_data", "execute_result"]  # no "Out[n]:" / repr text as stream
    assert cap.outputs[0]["data"]["text/html"] == "<b>x</b>"
    assert cap.outputs[1]["data"] == {"text/plain": "42"}
    json.dumps(cap.outputs)


def test_exception_inside_the_body_restores_everything(shell):
    out, err = sys.stdout, sys.stderr
    with pytest.raises(RuntimeError), OutputCapture(shell) as cap:
        assert _patched(shell) and sys.stdout is not out
        shell.run_cell("print('before')\n1/0")
        raise RuntimeError("boom")
    assert sys.stdout is out and sys.stderr is err and not _patched(shell)
    assert cap.outputs[0] == {"output_type": "stream", "name": "stdout", "text": "before\n"}
    error = cap.outputs[1]
    assert error["output_type"] == "error" and error["ename"] == "ZeroDivisionError"
    assert all(o["output_type"] != "stream" or "Traceback" not in o["text"] for o in cap.outputs)


def test_nested_captures_both_record(shell):
    with OutputCapture(shell) as outer:
        print("outer only")
        with OutputCapture(shell) as inner:
            shell.run_cell("print('both')\nfrom IPython.display import display, HTML\n"
                           "display(HTML('<i>h</i>'))\n7")
        assert len(_patched(shell)) == 5  # the outer capture's wrappers are back in place
        print("outer again")
    assert [o["output_type"] for o in inner.outputs] == ["stream", "display_data", "execute_result"]
    assert outer.outputs[0]["text"] == "outer only\nboth\n"
    assert outer.outputs[1:3] == inner.outputs[1:]
    assert outer.outputs[3] == {"output_type": "stream", "name": "stdout", "text": "outer again\n"}
    assert not _patched(shell)


def test_clear_output_and_display_updates(shell):
    code = (
        "from IPython.display import display, clear_output, HTML\n"
        "print('gone'); display(HTML('gone'))\nclear_output()\n"
        "h = display(HTML('v1'), display_id=True)\nh.update(HTML('v2'))\n"
        "print('waits'); clear_output(wait=True)\nprint('kept')"
    )
    with OutputCapture(shell) as cap:
        shell.run_cell(code)
    assert cap.outputs == [{"output_type": "stream", "name": "stdout", "text": "kept\n"}]
    with OutputCapture(shell) as cap:
        shell.run_cell(code.replace("print('waits'); clear_output(wait=True)\nprint('kept')", ""))
    assert [o["data"]["text/html"] for o in cap.outputs] == ["v2"]


def test_bytes_and_odd_values_are_made_json_safe(shell):
    with OutputCapture(shell) as cap:
        shell.display_pub.publish(
            data={"image/png": b"\x89PNG\r\n", "text/plain": "img"},
            metadata={"image/png": {"width": 3.0, "tag": object()}},
        )
    (out,) = cap.outputs
    assert out["data"]["image/png"] == "iVBORw0K"
    json.dumps(out)


def test_tee_is_a_well_behaved_text_stream(shell, tmp_path, monkeypatch):
    real = open(tmp_path / "out.txt", "w+", encoding="utf-8")  # noqa: SIM115
    monkeypatch.setattr(sys, "stdout", real)
    with OutputCapture(shell) as cap:
        tee = sys.stdout
        assert tee is not real
        assert tee.fileno() == real.fileno() and tee.encoding == "utf-8"
        assert tee.isatty() is False and tee.writable() and not tee.closed
        assert tee.write("x") == 1
        tee.writelines(["y\n", "z\n"])
        tee.flush()
    real.seek(0)
    assert real.read() == "xy\nz\n"
    assert cap.outputs == [{"output_type": "stream", "name": "stdout", "text": "xy\nz\n"}]
    real.close()


def test_carriage_returns_are_collapsed_like_a_frontend(shell):
    with OutputCapture(shell) as cap:
        for i in range(100):
            sys.stdout.write(f"\r{i}%")
        sys.stdout.write("\r\n")  # "\r" right before "\n" keeps the line
        print("done\rDONE")
    assert cap.outputs[0]["text"] == "99%\r\nDONE\n"


def test_placeholder_for_widgets_is_pure():
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"text/plain": "IntSlider(value=3)", WIDGET_MIME: {"model_id": "abc"}}}
    before = json.dumps(widget)
    ph = placeholder_for_widgets(widget)
    assert json.dumps(widget) == before
    assert WIDGET_MIME not in ph["data"]
    assert ph["data"]["text/plain"].startswith("[widget IntSlider — widgets do not outlive")
    assert "re-run the cell" in ph["data"]["text/html"]
    plain = {"output_type": "stream", "name": "stdout", "text": "x"}
    assert placeholder_for_widgets(plain) is plain


def test_replay_shows_header_then_outputs(shell):
    recorded = [
        {"output_type": "stream", "name": "stdout", "text": "hi\n"},
        {"output_type": "display_data", "data": {"text/html": "<b>x</b>", "text/plain": "x"},
         "metadata": {}},
        {"output_type": "display_data", "metadata": {},
         "data": {"text/plain": "IntSlider(value=3)", WIDGET_MIME: {"model_id": "abc"}}},
        {"output_type": "execute_result", "data": {"text/plain": "42"}, "metadata": {}},
        {"output_type": "stream", "name": "stderr", "text": "err\n"},
    ]
    with OutputCapture(shell) as cap:
        replay_outputs(shell, recorded, HEADER)
    got = cap.outputs
    assert got[0]["data"]["text/plain"] == HEADER and "restored" in got[0]["data"]["text/html"]
    assert got[1] == recorded[0] and got[-1] == recorded[-1]
    assert got[2]["data"]["text/html"] == "<b>x</b>"
    assert got[3]["data"]["text/plain"].startswith("[widget IntSlider")
    assert got[4]["output_type"] == "display_data" and got[4]["data"] == {"text/plain": "42"}
    assert all(o["metadata"]["contd_nb"] == {"restored": True} for o in got[:5] if "data" in o)
    with OutputCapture(shell) as cap:
        replay_outputs(shell, [], None)
    assert cap.outputs == []


# ---------------------------------------------------------------- a real kernel (nbclient)

BODY = (
    "print('hi'); import sys; print('err', file=sys.stderr)\\n"
    "from IPython.display import HTML, display; display(HTML('<b>x</b>'))\\n"
    "import ipywidgets; display(ipywidgets.IntSlider(value=3))\\n"
    "import matplotlib.pyplot as plt; plt.plot([1,2]); 40+2"
)
CAPTURE_CELL = f"""from contd_nb.notebook.capture import OutputCapture, replay_outputs
import json
with OutputCapture(get_ipython()) as cap:
    get_ipython().run_cell("{BODY}")
print(json.dumps(cap.outputs)[:100000], file=open('out.json','w'))
"""
# pyplot is imported already: the figure must still be flushed inside the capture window.
# (No trailing ";": a nested run_cell(store_history=False) checks the OUTER cell for it.)
SECOND_CAPTURE_CELL = """with OutputCapture(get_ipython()) as cap2:
    get_ipython().run_cell("plt.figure(); _l = plt.plot([3, 1])")
assert [o['output_type'] for o in cap2.outputs] == ["display_data"], str(cap2.outputs)[:300]
assert 'image/png' in cap2.outputs[0]['data']
"""
REPLAY_CELL = f"""from contd_nb.notebook.capture import replay_outputs
import json
replay_outputs(get_ipython(), json.load(open('out.json')), {HEADER!r})
"""


def _run(cells: list[str], workdir: Path, kernel: str):
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=60, kernel_name=kernel,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def _find(outputs, predicate):
    hits = [o for o in outputs if predicate(o)]
    assert hits, json.dumps(outputs)[:2000]
    return hits[0]


def _assert_has_items(outputs, *, restored: bool):
    def stream(name):
        return "".join(o["text"] for o in outputs
                       if o["output_type"] == "stream" and o["name"] == name)

    assert "hi\n" in stream("stdout") and "err\n" in stream("stderr")
    _find(outputs, lambda o: o.get("data", {}).get("text/html") == "<b>x</b>")
    png = _find(outputs, lambda o: "image/png" in o.get("data", {}))
    kind = "display_data" if restored else "execute_result"
    _find(outputs, lambda o: o["output_type"] == kind and o["data"] == {"text/plain": "42"})
    return png["data"]["image/png"]


@pytest.fixture(scope="module")
def captured(kernelspec, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("capture_kernel")
    nb = _run([CAPTURE_CELL, SECOND_CAPTURE_CELL], workdir, kernelspec)
    return workdir, nb


def test_real_kernel_capture_records_and_shows_live(captured):
    workdir, nb = captured
    recorded = json.loads((workdir / "out.json").read_text())
    png = _assert_has_items(recorded, restored=False)
    widget = _find(recorded, lambda o: WIDGET_MIME in o.get("data", {}))
    assert widget["data"]["text/plain"] == "IntSlider(value=3)"
    live = nb.cells[0].outputs  # shown live in the notebook too
    assert _assert_has_items(live, restored=False) == png
    _find(live, lambda o: WIDGET_MIME in o.get("data", {}))


def test_real_kernel_replay_in_a_new_kernel(captured, kernelspec):
    workdir, _ = captured
    recorded = json.loads((workdir / "out.json").read_text())
    nb = _run([REPLAY_CELL], workdir, kernelspec)
    shown = nb.cells[0].outputs
    assert shown[0]["output_type"] == "display_data"
    assert shown[0]["data"]["text/plain"] == HEADER and "text/html" in shown[0]["data"]
    assert _assert_has_items(shown, restored=True) == _assert_has_items(recorded, restored=False)
    assert not any(WIDGET_MIME in o.get("data", {}) for o in shown)
    ph = _find(shown, lambda o: "[widget" in o.get("data", {}).get("text/plain", ""))
    assert ph["data"]["text/plain"].startswith("[widget IntSlider — widgets do not outlive")
    assert "re-run the cell" in ph["data"]["text/html"]
    assert not any(o["output_type"] == "error" for o in shown)
