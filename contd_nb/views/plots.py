"""matplotlib figures of the views, rendered to PNG bytes (for ``ipywidgets.Image`` or an
``<img>`` in the static HTML report).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly: no pyplot, so
nothing touches the notebook's own figures or the global backend.
"""

from __future__ import annotations

import io

__all__ = ["recovery_png", "retry_timeline_png"]

OK, FAIL, SNAP, NO_SNAP = "#2e7d32", "#c62828", "#1565c0", "#ef6c00"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def retry_timeline_png(attempts, max_steps: int = 25) -> bytes:
    """Attempts per step over time: one row per step (the ``max_steps`` with the most tries),
    a bar per try from its start to its end, completed tries green, failed tries red with an
    x (a timeout is marked 'T')."""
    import pandas as pd

    df = attempts.dropna(subset=["started_at", "ended_at"])
    label = df["workflow_id"].astype(str) + " / " + df["step_name"].astype(str)
    df = df.assign(label=label)
    busiest = df.groupby("label", sort=False).size().sort_values(ascending=False)
    keep = list(busiest.index[:max_steps])
    df = df[df["label"].isin(keep)]
    fig = _figure(9, 1.6 + 0.3 * max(len(keep), 2))
    ax = fig.add_subplot()
    if df.empty:
        _empty(ax, "no step attempts in this journal yet")
        return _png(fig)
    order = {name: i for i, name in enumerate(sorted(keep, key=lambda k: df.loc[
        df["label"] == k, "started_at"].min()))}
    y = df["label"].map(order)
    start = df["started_at"].dt.tz_convert("UTC").dt.tz_localize(None)
    end = df["ended_at"].dt.tz_convert("UTC").dt.tz_localize(None)
    width = (end - start).clip(lower=pd.Timedelta(milliseconds=1))
    failed = (df["outcome"] == "failed").to_numpy()
    colors = [FAIL if f else OK for f in failed]
    ax.barh(y, width, left=start, height=0.5, color=colors)
    fails = df[failed]
    if not fails.empty:
        ax.scatter(end[failed], y[failed], marker="x", color=FAIL, s=40, zorder=3,
                   label="failed attempt")
        timeouts = fails["timeout"].fillna(False).to_numpy(dtype=bool)
        for x_, y_ in zip(end[failed][timeouts], y[failed][timeouts], strict=True):
            ax.annotate("T", (x_, y_), xytext=(4, 4), textcoords="offset points", color=FAIL)
    ax.scatter(end[~failed], y[~failed], marker="o", color=OK, s=18, zorder=3,
               label="completed attempt")
    ax.set_yticks(list(order.values()), list(order.keys()), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time (UTC)")
    ax.set_title(f"Retry timeline: {int(failed.sum())} failed and {int((~failed).sum())} "
                 f"completed attempts")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    return _png(fig)


def recovery_png(restores, snapshots) -> bytes:
    """Left: restore duration (ms) against events replayed, one point per restore (blue: from
    a snapshot, orange: from the start). Right: snapshots taken per workflow."""
    fig = _figure(10, 3.6)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    if restores.empty:
        _empty(ax1, "no restores yet")
    else:
        snap = restores["from_snapshot"].fillna(False).to_numpy(dtype=bool)
        x = restores["events_replayed"].astype("float64")
        y = restores["duration_ms"]
        ax1.scatter(x[~snap], y[~snap], color=NO_SNAP, s=22, label="from the start")
        ax1.scatter(x[snap], y[snap], color=SNAP, s=22, label="from a snapshot")
        ax1.set_xlabel("events replayed")
        ax1.set_ylabel("restore duration (ms)")
        ax1.set_title(f"Restores: {len(restores)}")
        ax1.set_xlim(left=0)
        ax1.set_ylim(bottom=0)
        ax1.legend(fontsize=8)
    if snapshots.empty:
        _empty(ax2, "no snapshots yet")
    else:
        per = snapshots.groupby("workflow_id", observed=True).size().sort_values()[-15:]
        ax2.barh([str(i) for i in per.index], per.to_numpy(), color=SNAP, height=0.6)
        ax2.xaxis.get_major_locator().set_params(integer=True)
        ax2.set_xlabel("snapshots taken")
        ax2.tick_params(axis="y", labelsize=8)
        ax2.set_title("Snapshots per workflow")
    return _png(fig)
