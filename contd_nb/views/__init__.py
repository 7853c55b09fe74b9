"""Inspect journals: pandas views, ipywidgets and plots.

``workflows()``, ``steps()``, ``events()``, ``attempts()``, ``leases()``, ``restores()``
(plus ``snapshots()``, ``recovery()`` and ``event_detail()``) return DataFrames with documented,
stable columns (see ``contd_nb.views.frames``). ``dashboard()`` (or ``%contd_inspect``) opens the
widgets: a journal browser, a lease panel, a retry timeline and a recovery dashboard; without a
widget frontend they show static HTML tables.
"""

from __future__ import annotations

from .frames import (
    attempts,
    event_detail,
    events,
    leases,
    recovery,
    restores,
    snapshots,
    steps,
    workflows,
)

__all__ = ["attempts", "dashboard", "event_detail", "events", "leases", "recovery", "restores",
           "snapshots", "steps", "workflows"]


def dashboard(workflow_id: str | None = None, *, journal=None, engine=None,
              widgets: bool | None = None):
    """The journal browser, lease panel, retry timeline and recovery dashboard together (an
    ipywidgets Tab); a static HTML report (tables and plots) with ``widgets=False``, or by
    default where there is no widget frontend (plain IPython, ipywidgets missing)."""
    from .widgets import dashboard as _dashboard

    return _dashboard(workflow_id, journal=journal, engine=engine, widgets=widgets)
