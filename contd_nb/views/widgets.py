"""ipywidgets (8) built on the views: a journal browser, a lease panel, a retry timeline and a
recovery dashboard; ``dashboard()`` puts them in one Tab.

Every widget reads the journal through the views (one short query per refresh or click), so a
kernel running a workflow on the same journal goes on. The lease panel counts down to each
lease's expiry with a background timer (re-reading the leases every ``reread_s`` seconds, as
heartbeats move the expiry); ``close()`` stops the timer. Where no widget frontend is there
(plain IPython, ipywidgets missing) ``dashboard()`` returns a ``StaticReport`` with HTML tables
and the plots as images.
"""

from __future__ import annotations

import base64
import html
import threading
import time
from typing import Any

from . import frames, plots

# The widget classes (Dashboard, JournalBrowser, LeasePanel, RetryTimeline, RecoveryDashboard)
# are made on first access, so importing this module does not import ipywidgets.
__all__ = ["StaticReport", "dashboard", "event_html", "has_widget_frontend", "retry_rate"]

_MAX_ROWS = 200


def has_widget_frontend() -> bool:
    """True in a Jupyter kernel with ipywidgets installed (a frontend can render widgets)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def _source(journal, engine) -> dict:
    """The views' journal arguments, resolved once (the store, so every read hits the same
    journal even if the default engine changes)."""
    store = frames._store(journal, engine)
    return {"journal": store}


def _engine_for(store, engine):
    """An engine on ``store`` for lease actions: the given one, the default one if it uses
    this store, else a new one (it holds no lease)."""
    from ..core.engine import ExecutionEngine

    if engine is not None:
        return engine
    default = ExecutionEngine._instance
    if default is not None and default.store is store:
        return default
    session_mod = __import__("sys").modules.get("contd_nb.notebook.session")
    session = session_mod.NotebookSession.current if session_mod else None
    if session is not None and session.engine.store is store:
        return session.engine
    return ExecutionEngine(store)


def _table(df, columns: list[str] | None = None, max_rows: int = _MAX_ROWS) -> str:
    """A DataFrame as a compact HTML table (escaped)."""
    if columns is not None:
        df = df[columns]
    more = len(df) - max_rows
    text = df.head(max_rows).to_html(index=False, na_rep="", border=0, classes="contd-table")
    if more > 0:
        text += f"<div class='contd-more'>... {more} more rows</div>"
    return text


_CSS = """<style>
.contd-table {border-collapse: collapse; font-size: 12px; font-family: monospace;}
.contd-table th, .contd-table td {padding: 2px 8px; border-bottom: 1px solid #ddd;
  text-align: left;}
.contd-table th {background: #f3f3f3;}
.contd-more, .contd-note {color: #666; font-size: 12px;}
</style>"""


def _fmt(value) -> str:
    """A cell of a view as text; "" for a missing value (pd.NA, NaN, None)."""
    import pandas as pd

    return "" if value is None or pd.isna(value) else str(value)


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'/>"


def _w():
    import ipywidgets

    return ipywidgets


# -- journal browser ------------------------------------------------------------------------------
class _Base:
    def _init_source(self, journal, engine) -> None:
        self._src = _source(journal, engine)
        self._engine = engine


def _make_browser_class():
    W = _w()

    class JournalBrowser(W.VBox, _Base):
        """Workflows, then the chosen workflow's steps, then one event of the chosen step:
        its fields, payload preview (decoded, truncated) and error traceback."""

        def __init__(self, workflow_id: str | None = None, *, journal=None, engine=None,
                     **kwargs) -> None:
            self._init_source(journal, engine)
            self.workflows = W.Select(description="Workflows", rows=8,
                                      layout=W.Layout(width="100%"))
            self.steps = W.Select(description="Steps", rows=8, layout=W.Layout(width="100%"))
            self.events = W.Select(description="Events", rows=6, layout=W.Layout(width="100%"))
            self.detail = W.HTML()
            self.refresh_button = W.Button(description="Refresh", icon="refresh")
            self.refresh_button.on_click(lambda _: self.refresh())
            super().__init__([W.HBox([W.HTML("<b>Journal browser</b>"), self.refresh_button]),
                              self.workflows, self.steps, self.events, self.detail], **kwargs)
            self._events_df = None
            self.workflows.observe(self._on_workflow, names="value")
            self.steps.observe(self._on_step, names="value")
            self.events.observe(self._on_event, names="value")
            self.refresh(workflow_id)

        def refresh(self, workflow_id: str | None = None) -> None:
            df = frames.workflows(**self._src)
            options = [(f"{r.workflow_id}  [{r.status}]  {r.kind}, {r.steps_done} steps, "
                        f"{r.failures} failed attempts, {r.resumes} resumes", r.workflow_id)
                       for r in df.itertuples()]  # one option per workflow (the list shown)
            keep = workflow_id or self.workflows.value
            self.workflows.options = options
            ids = [o[1] for o in options]
            if keep in ids:
                self.workflows.value = keep
            elif ids:
                self.workflows.value = ids[-1]

        def _on_workflow(self, change) -> None:
            wid = change["new"]
            self.steps.options, self.events.options, self.detail.value = [], [], ""
            if wid is None:
                return
            st = frames.steps(wid, **self._src)
            self._events_df = frames.events(wid, **self._src)
            opts = [(f"#{_fmt(r.step_number)} {r.step_name}  [{r.status}]  "
                     f"{r.attempts} attempt(s)"
                     + (f", last error {r.last_error_type}" if isinstance(r.last_error_type, str)
                        else ""), (int(r.first_seq), int(r.last_seq), r.step_name))
                    for r in st.head(_MAX_ROWS).itertuples()]
            self.steps.options = [("(all events of the workflow)", None)] + opts
            self.steps.value = opts[0][1] if opts else None
            if not opts:
                self._show_events(None)

        def _on_step(self, change) -> None:
            self._show_events(change["new"])

        def _show_events(self, key) -> None:
            ev = self._events_df
            if ev is None:
                return
            if key is not None:
                first, last, name = key
                ev = ev[(ev["step_name"] == name) & (ev["seq"] >= first) & (ev["seq"] <= last)]
            opts = [(f"seq {r.seq}  {r.kind}" + (f"  attempt {_fmt(r.attempt)}"
                                                 if _fmt(r.attempt) else "")
                     + (f"  {r.error_type}: {r.message}" if isinstance(r.error_type, str)
                        else ""), int(r.seq))
                    for r in ev.head(_MAX_ROWS).itertuples()]
            self.events.options = opts
            self.events.value = opts[-1][1] if opts else None

        def _on_event(self, change) -> None:
            seq = change["new"]
            wid = self.workflows.value
            if seq is None or wid is None:
                self.detail.value = ""
                return
            self.detail.value = event_html(frames.event_detail(wid, seq, **self._src))

    return JournalBrowser


def event_html(d: dict) -> str:
    """One event (``event_detail``) as HTML: fields, payload preview, traceback."""
    esc = html.escape
    rows = [(k, d[k]) for k in ("workflow_id", "seq", "kind", "step_number", "step_name",
                                "attempt", "started_at", "ended_at", "encoding",
                                "payload_bytes", "lease_token") if d.get(k) is not None]
    if d.get("error_type"):
        rows.append(("error", f"{d['error_type']}: {d.get('message')}"))
    out = ["<table class='contd-table'>"] + [
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in rows] + ["</table>"]
    if d.get("payload_preview") is not None:
        out.append(f"<div><b>payload</b></div><pre class='contd-payload'>"
                   f"{esc(d['payload_preview'])}</pre>")
    if d.get("traceback"):
        out.append(f"<div><b>traceback</b></div><pre class='contd-traceback' "
                   f"style='color:#b71c1c'>{esc(d['traceback'])}</pre>")
    return _CSS + "".join(out)


# -- lease panel ----------------------------------------------------------------------------------
def _countdown_text(expires_at: float | None, state: str) -> str:
    if state == "released" or expires_at is None:
        return "released"
    left = expires_at - time.time()
    if left <= 0:
        return f"expired {-left:.0f}s ago"
    return f"expires in {left:.0f}s"


def _make_lease_class():
    W = _w()

    class LeasePanel(W.VBox, _Base):
        """Current leases: owner, host, pid, token and a live countdown to expiry. "Force
        release" asks to confirm (a second button, "Confirm"), then calls
        ``engine.lease_manager.force_release``: the holder is fenced out. A background timer
        updates the countdowns every ``tick_s`` and re-reads the leases every ``reread_s``;
        ``close()`` stops it."""

        def __init__(self, workflow_id: str | None = None, *, journal=None, engine=None,
                     tick_s: float = 1.0, reread_s: float = 5.0, **kwargs) -> None:
            self._init_source(journal, engine)
            self.workflow_id = workflow_id
            self.tick_s, self.reread_s = tick_s, reread_s
            self.status = W.HTML()
            self.rows_box = W.VBox()
            self.refresh_button = W.Button(description="Refresh", icon="refresh")
            self.refresh_button.on_click(lambda _: self.refresh())
            super().__init__([W.HBox([W.HTML("<b>Leases</b>"), self.refresh_button]),
                              self.rows_box, self.status], **kwargs)
            self.force_buttons: dict[str, Any] = {}
            self.confirm_buttons: dict[str, Any] = {}
            self.cancel_buttons: dict[str, Any] = {}
            self.countdowns: dict[str, Any] = {}
            self._confirm_boxes: dict[str, Any] = {}
            self._asking: set[str] = set()
            self._expiry: dict[str, tuple[float | None, str]] = {}
            self._lock = threading.Lock()
            self._stop = threading.Event()
            self.refresh()
            self._timer = threading.Thread(target=self._run_timer, daemon=True,
                                           name="contd-lease-countdown")
            self._timer.start()

        # the timer ------------------------------------------------------------------------
        def _run_timer(self) -> None:
            last_read = time.monotonic()
            while not self._stop.wait(self.tick_s):
                try:
                    if time.monotonic() - last_read >= self.reread_s:
                        last_read = time.monotonic()
                        self.refresh()
                    else:
                        self._tick()
                except Exception as e:  # noqa: BLE001 - shown in the panel; keep ticking
                    self.status.value = f"<span class='contd-note'>refresh failed: " \
                                        f"{html.escape(str(e))}</span>"

        @property
        def timer_running(self) -> bool:
            return self._timer.is_alive()

        def _tick(self) -> None:
            with self._lock:
                for wid, (expires, state) in self._expiry.items():
                    label = self.countdowns.get(wid)
                    if label is not None:
                        label.value = _countdown_text(expires, state)

        def close(self) -> None:
            self._stop.set()
            if self._timer.is_alive() and threading.current_thread() is not self._timer:
                self._timer.join(timeout=max(5.0, 2 * self.tick_s))
            super().close()

        # reading --------------------------------------------------------------------------
        def refresh(self) -> None:
            df = frames.leases(self.workflow_id, **self._src)
            held = df[df["state"] != "released"]
            released = df[df["state"] == "released"]
            with self._lock:
                rows = []
                self._expiry = {}
                for r in held.head(_MAX_ROWS).itertuples():
                    rows.append(self._row(r))
                if not len(held):
                    rows.append(W.HTML("<span class='contd-note'>no lease is held</span>"))
                if len(released):
                    rows.append(W.HTML(_CSS + "<div class='contd-note'>released:</div>"
                                       + _table(released, ["workflow_id", "token",
                                                           "host", "renewed_at"])))
                self.rows_box.children = rows
            self.status.value = (f"<span class='contd-note'>{len(held)} held or expired, "
                                 f"{len(released)} released; read "
                                 f"{time.strftime('%H:%M:%S', time.gmtime())} UTC</span>")

        def _row(self, r):
            wid = r.workflow_id
            expires = r.expires_at.timestamp() if r.expires_at is not None else None
            self._expiry[wid] = (expires, str(r.state))
            countdown = self.countdowns.get(wid) or W.HTML()
            countdown.value = _countdown_text(expires, str(r.state))
            self.countdowns[wid] = countdown
            info = W.HTML(f"<b>{html.escape(wid)}</b> &nbsp; owner "
                          f"<code>{html.escape(str(r.owner_id))}</code> on "
                          f"{html.escape(str(r.host))}, pid {r.pid}, token {r.token} "
                          f"[{r.state}]")
            force = W.Button(description="Force release", button_style="warning",
                             tooltip=f"take the lease of {wid} from its holder")
            confirm = W.Button(description="Confirm", button_style="danger",
                               tooltip=f"force-release {wid} now")
            cancel = W.Button(description="Cancel")
            # a question that is open stays open across the periodic re-read
            box = W.HBox([W.HTML(f"Force-release <b>{html.escape(wid)}</b>? Its holder is "
                                 "fenced out: its next journal write fails."),
                          confirm, cancel],
                         layout=W.Layout(display="flex" if wid in self._asking else "none"))
            force.on_click(lambda _b, w=wid: self.ask(w))
            confirm.on_click(lambda _b, w=wid: self.confirm(w))
            cancel.on_click(lambda _b, w=wid: self.cancel(w))
            self.force_buttons[wid], self.confirm_buttons[wid] = force, confirm
            self.cancel_buttons[wid], self._confirm_boxes[wid] = cancel, box
            return W.VBox([W.HBox([info, countdown, force]), box])

        # actions --------------------------------------------------------------------------
        def ask(self, workflow_id: str) -> None:
            with self._lock:
                self._asking.add(workflow_id)
                self._confirm_boxes[workflow_id].layout.display = "flex"

        def cancel(self, workflow_id: str) -> None:
            with self._lock:
                self._asking.discard(workflow_id)
                self._confirm_boxes[workflow_id].layout.display = "none"

        def confirm(self, workflow_id: str) -> None:
            with self._lock:
                self._asking.discard(workflow_id)
            engine = _engine_for(self._src["journal"], self._engine)
            before = engine.lease_manager.force_release(workflow_id)
            self.refresh()
            owner = before.owner_id if before is not None else None
            self.status.value = (f"<b>force-released {html.escape(workflow_id)}</b> (was "
                                 f"held by {html.escape(str(owner))}, token "
                                 f"{before.token if before else '-'})")

    return LeasePanel


# -- retry timeline and recovery ------------------------------------------------------------------
def _make_timeline_class():
    W = _w()

    class RetryTimeline(W.VBox, _Base):
        """Attempts per step over time (failures marked) and the retry rate by step."""

        def __init__(self, workflow_id: str | None = None, *, journal=None, engine=None,
                     **kwargs) -> None:
            self._init_source(journal, engine)
            ids = list(frames.workflows(**self._src)["workflow_id"])
            self.choose = W.Dropdown(options=[("all workflows", "")] + [(i, i) for i in ids],
                                     value=workflow_id if workflow_id in ids else "",
                                     description="Workflow")
            self.image = W.Image(format="png")
            self.table = W.HTML()
            super().__init__([W.HTML("<b>Retry timeline</b>"), self.choose, self.image,
                              self.table], **kwargs)
            self.choose.observe(lambda _: self.refresh(), names="value")
            self.refresh()

        def refresh(self) -> None:
            att = frames.attempts(self.choose.value or None, **self._src)
            self.image.value = plots.retry_timeline_png(att)
            self.table.value = _CSS + "<div><b>Retry rate by step</b></div>" + _table(
                retry_rate(att))

    class RecoveryDashboard(W.VBox, _Base):
        """Restore duration against events replayed, snapshots taken, per workflow."""

        def __init__(self, workflow_id: str | None = None, *, journal=None, engine=None,
                     **kwargs) -> None:
            self._init_source(journal, engine)
            self.workflow_id = workflow_id
            self.image = W.Image(format="png")
            self.table = W.HTML()
            super().__init__([W.HTML("<b>Recovery</b>"), self.image, self.table], **kwargs)
            self.refresh()

        def refresh(self) -> None:
            rs = frames.restores(self.workflow_id, **self._src)
            sn = frames.snapshots(self.workflow_id, **self._src)
            self.image.value = plots.recovery_png(rs, sn)
            self.table.value = _CSS + _table(frames.recovery(self.workflow_id, **self._src))

    return RetryTimeline, RecoveryDashboard


def retry_rate(attempts):
    """Retry rate by step (from ``attempts()``): tries, failures, failures per try."""
    if attempts.empty:
        import pandas as pd

        return pd.DataFrame({"workflow_id": [], "step_name": [], "tries": [],
                             "failed": [], "retry_rate": []})
    g = attempts.assign(failed=attempts["outcome"] == "failed").groupby(
        ["workflow_id", "step_name"], observed=True, sort=False)
    out = g.agg(tries=("attempt", "size"), failed=("failed", "sum")).reset_index()
    out["retry_rate"] = (out["failed"] / out["tries"]).round(3)
    return out.sort_values(["retry_rate", "tries"], ascending=False, kind="stable")


def _make_dashboard_class():
    W = _w()
    JournalBrowser = _classes()["JournalBrowser"]
    LeasePanel = _classes()["LeasePanel"]
    RetryTimeline = _classes()["RetryTimeline"]
    RecoveryDashboard = _classes()["RecoveryDashboard"]

    class Dashboard(W.Tab):
        """The four widgets as tabs: Journal, Leases, Retries, Recovery."""

        TITLES = ("Journal", "Leases", "Retries", "Recovery")

        def __init__(self, workflow_id: str | None = None, *, journal=None, engine=None,
                     **kwargs) -> None:
            src = dict(journal=_source(journal, engine)["journal"], engine=None)
            self.engine = engine
            self.browser = JournalBrowser(workflow_id, **src)
            self.leases = LeasePanel(None, **src)
            self.leases._engine = engine
            self.timeline = RetryTimeline(workflow_id, **src)
            self.recovery = RecoveryDashboard(None, **src)
            super().__init__([self.browser, self.leases, self.timeline, self.recovery],
                             **kwargs)
            self.titles = self.TITLES

        def close(self) -> None:
            for child in (self.browser, self.leases, self.timeline, self.recovery):
                child.close()
            super().close()

    return Dashboard


_CLASSES: dict[str, type] = {}


def _classes() -> dict[str, type]:
    """The widget classes, made on first use (ipywidgets is imported only then)."""
    if not _CLASSES:
        _CLASSES["JournalBrowser"] = _make_browser_class()
        _CLASSES["LeasePanel"] = _make_lease_class()
        _CLASSES["RetryTimeline"], _CLASSES["RecoveryDashboard"] = _make_timeline_class()
        _CLASSES["Dashboard"] = _make_dashboard_class()
    return _CLASSES


def __getattr__(name: str):
    if name in ("JournalBrowser", "LeasePanel", "RetryTimeline", "RecoveryDashboard",
                "Dashboard"):
        return _classes()[name]
    raise AttributeError(name)


# -- without a widget frontend --------------------------------------------------------------------
class StaticReport:
    """What ``dashboard()`` shows without a widget frontend: the same content as static HTML
    tables and PNG plots (``_repr_html_``), and a short text summary (``repr``)."""

    def __init__(self, workflow_id: str | None = None, *, journal=None, engine=None) -> None:
        src = _source(journal, engine)
        self.workflow_id = workflow_id
        self.workflows = frames.workflows(workflow_id, **src)
        self.steps = frames.steps(workflow_id, **src)
        self.leases = frames.leases(**src)
        self.attempts = frames.attempts(workflow_id, **src)
        self.restores = frames.restores(**src)
        self.snapshots = frames.snapshots(**src)
        self.recovery = frames.recovery(**src)

    def __repr__(self) -> str:
        held = int((self.leases["state"] == "held").sum())
        failed = int((self.attempts["outcome"] == "failed").sum())
        return (f"contd_nb journal: {len(self.workflows)} workflow(s), {len(self.steps)} "
                f"step(s), {failed} failed attempt(s), {held} lease(s) held, "
                f"{len(self.restores)} restore(s)")

    def _repr_html_(self) -> str:
        failures = self.attempts[self.attempts["outcome"] == "failed"]
        parts = [_CSS, f"<h3>{html.escape(repr(self))}</h3>",
                 "<h4>Workflows</h4>", _table(self.workflows, [
                     "workflow_id", "kind", "status", "created_at", "steps_done", "failures",
                     "resumes", "error_type", "lease_owner"]),
                 "<h4>Steps</h4>", _table(self.steps, [
                     "workflow_id", "step_number", "step_name", "status", "attempts",
                     "failures", "runs", "duration_ms", "last_error_type"]),
                 "<h4>Leases</h4>", _table(self.leases, [
                     "workflow_id", "state", "owner_id", "host", "pid", "token",
                     "expires_at", "expires_in_s"]),
                 "<h4>Failed attempts</h4>", _table(failures, [
                     "workflow_id", "step_name", "attempt", "started_at", "duration_ms",
                     "error_type", "message", "will_retry"]),
                 "<h4>Retry rate by step</h4>", _table(retry_rate(self.attempts)),
                 _img(plots.retry_timeline_png(self.attempts)),
                 "<h4>Recovery</h4>", _table(self.recovery),
                 _img(plots.recovery_png(self.restores, self.snapshots))]
        return "\n".join(parts)


def dashboard(workflow_id: str | None = None, *, journal=None, engine=None,
              widgets: bool | None = None):
    """The journal browser, lease panel, retry timeline and recovery dashboard in one Tab
    (``Dashboard``); with ``widgets=False``, or by default where no widget frontend is there,
    a ``StaticReport`` (HTML tables and plots)."""
    if widgets is None:
        widgets = has_widget_frontend()
    if not widgets:
        return StaticReport(workflow_id, journal=journal, engine=engine)
    return _classes()["Dashboard"](workflow_id, journal=journal, engine=engine)
