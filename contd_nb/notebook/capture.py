"""Record what a notebook cell shows while still showing it, and show it again later.

``OutputCapture(shell)`` is a context manager. While it is active it records, in nbformat-like
JSON-safe dicts, everything the running code shows in the cell:

* ``sys.stdout`` / ``sys.stderr`` writes: the streams are replaced by a tee that forwards every
  call to the original stream (an ipykernel ``OutStream`` in a kernel) and records the text;
* rich displays: ``shell.display_pub.publish`` (what ``display()``, ``publish_display_data`` and
  matplotlib's inline ``post_execute`` flush all call) is wrapped on the instance; ``update=True``
  publishes update the recorded output with the same ``display_id``; ``clear_output`` drops what
  was recorded before it (at the next output when ``wait=True``), as a frontend would;
* the last-expression result: ``shell.displayhook.write_format_data`` (``DisplayHook`` and
  ipykernel's ``ZMQShellDisplayHook`` both funnel the format dict through it);
* tracebacks shown by the shell (``shell._showtraceback``) as ``error`` outputs.

Everything is restored on exit, even if the body raised; captures nest (inner and outer both
record). ``replay_outputs`` shows recorded outputs again under a "restored" header; widget
outputs become a placeholder (``placeholder_for_widgets``) since widgets die with their kernel.
"""

from __future__ import annotations

import base64
import html
import numbers
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
RESTORED_KEY = "contd_nb"  # output metadata key marking replayed outputs: {"restored": True}
_CR = re.compile(r"^.*\r(?=[^\n])", re.M)  # text a later "\r" on the same line overwrites
_WIDGET_NAME = re.compile(r"\s*([A-Za-z_][\w.]*)\(")


def _collapse_cr(prev: str, chunk: str) -> str:
    """``prev + chunk`` with carriage-return overwrites applied as a frontend would."""
    text = prev + chunk
    if "\r" not in chunk and not prev.endswith("\r"):
        return text
    cut = prev.rfind("\n") + 1  # lines before this are complete and already collapsed
    return text[:cut] + _CR.sub("", text[cut:])


def _json_safe(value: Any, mime: str = "") -> Any:
    if isinstance(value, (bytes, bytearray)):
        if mime.startswith("text/") or mime.endswith(("json", "xml", "javascript")):
            return bytes(value).decode("utf-8", "replace")
        return base64.b64encode(value).decode("ascii")
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v, mime or str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, mime) for v in value]
    return str(value)


class _Tee:
    """A text stream that forwards everything to ``stream`` and reports written text."""

    def __init__(self, stream: Any, name: str, record: Callable[[str, str], None]):
        object.__setattr__(self, "_tee_stream", stream)
        object.__setattr__(self, "_tee_name", name)
        object.__setattr__(self, "_tee_record", record)

    def write(self, s: Any) -> Any:
        n = self._tee_stream.write(s)
        if s:
            self._tee_record(self._tee_name, s if isinstance(s, str) else _json_safe(s, "text/"))
        return n

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> Any:
        return self._tee_stream.flush()

    def isatty(self) -> bool:
        try:
            return bool(self._tee_stream.isatty())
        except Exception:
            return False

    def fileno(self) -> int:
        return self._tee_stream.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, errors, closed, buffer, set_parent...
        if name.startswith("_tee_"):  # not initialised (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self._tee_stream, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # IPython's run_cell patches ``sys.stdout.write`` on the instance (history recording):
        # our own methods are overridden on the tee, anything else goes to the real stream.
        if hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            setattr(self._tee_stream, name, value)

    def __repr__(self) -> str:
        return f"<contd_nb tee of {self._tee_stream!r}>"


class OutputCapture:
    """Context manager recording what the code run inside it shows (see the module docstring)."""

    def __init__(self, shell: Any):
        self.shell = shell
        self._items: list[tuple[dict, str | None]] = []  # (output, display_id)
        self._lock = threading.RLock()
        self._quiet = 0  # > 0 while the shell itself writes to the streams (prompts, repr print)
        self._pending_clear = False
        self._undo: list[tuple[Any, str, bool, Any]] = []
        self._saved_streams: tuple[Any, Any] | None = None

    @property
    def outputs(self) -> list[dict]:
        with self._lock:
            return [out for out, _ in self._items]

    # -- recording ----------------------------------------------------------------------------
    def _add(self, output: dict, display_id: str | None = None) -> None:
        with self._lock:
            if self._pending_clear:
                self._items.clear()
                self._pending_clear = False
            if output["output_type"] == "stream":
                last = self._items[-1][0] if self._items else None
                if last and last["output_type"] == "stream" and last["name"] == output["name"]:
                    last["text"] = _collapse_cr(last["text"], output["text"])
                    return
                output["text"] = _collapse_cr("", output["text"])
            self._items.append((output, display_id))

    def _on_stream(self, name: str, text: str) -> None:
        if not self._quiet:
            self._add({"output_type": "stream", "name": name, "text": text})

    def _call_quietly(self, original: Callable, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._quiet += 1
        try:
            return original(*args, **kwargs)
        finally:
            with self._lock:
                self._quiet -= 1

    def _on_publish(self, args: tuple, kwargs: dict) -> None:
        data = kwargs.get("data", args[0] if args else None) or {}
        md = kwargs.get("metadata", args[1] if len(args) > 1 else None) or {}
        display_id = (kwargs.get("transient") or {}).get("display_id")
        data, md = _json_safe(dict(data)), _json_safe(dict(md))
        if kwargs.get("update"):  # update_display_data: change what is recorded, if ours
            with self._lock:
                for out, did in self._items:
                    if display_id is not None and did == display_id:
                        out["data"], out["metadata"] = data, md
            return
        self._add({"output_type": "display_data", "data": data, "metadata": md}, display_id)

    # -- wrappers ------------------------------------------------------------------------------
    def _wrap_publish(self, original: Callable) -> Callable:
        def publish(*args: Any, **kwargs: Any) -> Any:
            result = self._call_quietly(original, *args, **kwargs)
            self._on_publish(args, kwargs)
            return result

        return publish

    def _wrap_clear(self, original: Callable) -> Callable:
        def clear_output(*args: Any, **kwargs: Any) -> Any:
            result = self._call_quietly(original, *args, **kwargs)
            with self._lock:
                if kwargs.get("wait", args[0] if args else False):
                    self._pending_clear = True
                else:
                    self._items.clear()
                    self._pending_clear = False
            return result

        return clear_output

    def _wrap_result(self, original: Callable) -> Callable:
        def write_format_data(format_dict: dict, md_dict: dict | None = None) -> Any:
            result = self._call_quietly(original, format_dict, md_dict)
            data, md = _json_safe(dict(format_dict or {})), _json_safe(dict(md_dict or {}))
            self._add({"output_type": "execute_result", "data": data, "metadata": md})
            return result

        return write_format_data

    def _wrap_quiet(self, original: Callable) -> Callable:
        return lambda *args, **kwargs: self._call_quietly(original, *args, **kwargs)

    def _wrap_error(self, original: Callable) -> Callable:
        def _showtraceback(etype: Any, evalue: Any, stb: list[str]) -> Any:
            result = self._call_quietly(original, etype, evalue, stb)
            ename = getattr(etype, "__name__", str(etype))
            self._add({"output_type": "error", "ename": ename, "evalue": str(evalue),
                       "traceback": [str(line) for line in stb or []]})
            return result

        return _showtraceback

    # -- install / restore ---------------------------------------------------------------------
    def _patch(self, obj: Any, name: str, wrap: Callable[[Callable], Callable]) -> None:
        original = getattr(obj, name, None)
        if original is None or not callable(original):
            return
        own = vars(obj)
        self._undo.append((obj, name, name in own, own.get(name)))
        setattr(obj, name, wrap(original))

    def _restore(self) -> None:
        if self._saved_streams is not None:
            sys.stdout, sys.stderr = self._saved_streams
            self._saved_streams = None
        while self._undo:
            obj, name, had, previous = self._undo.pop()
            if had:
                setattr(obj, name, previous)
            else:
                vars(obj).pop(name, None)

    def __enter__(self) -> OutputCapture:
        shell = self.shell
        try:
            pub, hook = getattr(shell, "display_pub", None), getattr(shell, "displayhook", None)
            if pub is not None:
                self._patch(pub, "publish", self._wrap_publish)
                self._patch(pub, "clear_output", self._wrap_clear)
            if hook is not None:
                self._patch(hook, "write_format_data", self._wrap_result)
                self._patch(hook, "write_output_prompt", self._wrap_quiet)
            self._patch(shell, "_showtraceback", self._wrap_error)
            self._saved_streams = (sys.stdout, sys.stderr)
            sys.stdout = _Tee(sys.stdout, "stdout", self._on_stream)
            sys.stderr = _Tee(sys.stderr, "stderr", self._on_stream)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: Any) -> bool:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        self._restore()
        return False


def placeholder_for_widgets(output: dict) -> dict:
    """``output`` itself, or for a widget output a short text/plain + text/html placeholder."""
    data = output.get("data") or {}
    if WIDGET_MIME not in data:
        return output
    plain = data.get("text/plain")
    plain = "".join(plain) if isinstance(plain, list) else str(plain or "")
    match = _WIDGET_NAME.match(plain)
    what = f"widget {match.group(1)}" if match else "widget"
    text = f"[{what} — widgets do not outlive their kernel; re-run the cell to get it back]"
    style = "color:#6a737d;font-style:italic"
    return {"output_type": output.get("output_type", "display_data"),
            "data": {"text/plain": text,
                     "text/html": f'<div style="{style}">{html.escape(text)}</div>'},
            "metadata": {}}


def replay_outputs(shell: Any, outputs: list[dict], header: str | None) -> None:
    """Show ``header`` (if any) then ``outputs`` again, as restored (see the module docstring).

    Displays go through ``shell.display_pub.publish`` (what ``publish_display_data`` calls on
    the singleton shell); an ``execute_result`` is shown as display_data; streams are written to
    ``sys.stdout`` / ``sys.stderr``; an ``error`` output's traceback is written to stderr.
    """
    publish = shell.display_pub.publish
    marker = {RESTORED_KEY: {"restored": True}}
    if header:
        style = "color:#6a737d;font-size:0.85em"
        publish(data={"text/plain": header,
                      "text/html": f'<div style="{style}">{html.escape(header)}</div>'},
                metadata=dict(marker))
    for output in outputs:
        output = placeholder_for_widgets(output)
        kind = output.get("output_type")
        if kind == "stream":
            stream = sys.stderr if output.get("name") == "stderr" else sys.stdout
            text = output.get("text", "")
            stream.write("".join(text) if isinstance(text, list) else text)
            stream.flush()
        elif kind in ("display_data", "execute_result"):
            publish(data=dict(output.get("data") or {}),
                    metadata={**(output.get("metadata") or {}), **marker})
        elif kind == "error":
            lines = output.get("traceback") or [f"{output.get('ename')}: {output.get('evalue')}"]
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()
