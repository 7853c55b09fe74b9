"""Prometheus metrics fed by engine events.

The core never imports prometheus_client: this module subscribes one global listener
(``ExecutionEngine.add_global_listener``) that turns every engine's events into metrics in a
registry of contd_nb's own (``REGISTRY``), so they do not mix with an application's default
registry. Labels are bounded: a workflow NAME or a step NAME at most, never a workflow id.

    from contd_nb.observability import setup_observability
    setup_observability(metrics_port=9090)     # http://127.0.0.1:9090/metrics
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..core.engine import EngineEvent, ExecutionEngine

__all__ = ["REGISTRY", "MetricsServer", "install", "installed", "start_server", "uninstall"]

log = logging.getLogger("contd_nb.observability")

REGISTRY = CollectorRegistry(auto_describe=True)

_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
_COUNTS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000, 100000)
_STEP_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_WRITE_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_BYTES = tuple(float(1 << n) for n in range(10, 31, 2))  # 1 KiB .. 1 GiB

RESTORE_DURATION = Histogram(
    "contd_restore_duration_milliseconds",
    "Time to restore a workflow's state (latest snapshot plus the events after it)",
    ["purpose"], buckets=_MS, registry=REGISTRY)
EVENTS_REPLAYED = Histogram(
    "contd_events_replayed_per_restore",
    "Journal events replayed by one restore (after the snapshot it started from)",
    ["purpose"], buckets=_COUNTS, registry=REGISTRY)
STEPS_STARTED = Counter("contd_steps_started_total", "Step attempts started", ["step"],
                        registry=REGISTRY)
STEPS_COMPLETED = Counter("contd_steps_completed_total", "Steps completed (journaled)",
                          ["step"], registry=REGISTRY)
STEPS_FAILED = Counter("contd_steps_failed_total", "Step attempts that failed", ["step"],
                       registry=REGISTRY)
STEPS_REPLAYED = Counter("contd_steps_replayed_total",
                         "Step calls answered from the journal without running", ["step"],
                         registry=REGISTRY)
STEP_DURATION = Histogram("contd_step_duration_seconds",
                          "Duration of step attempts (completed or failed)",
                          ["step", "outcome"], buckets=_STEP_S, registry=REGISTRY)
STEP_RETRIES = Counter("contd_step_retries_total",
                       "Failed step attempts that will be retried", ["step"], registry=REGISTRY)
STEP_TIMEOUTS = Counter("contd_step_timeouts_total", "Step attempts that timed out", ["step"],
                        registry=REGISTRY)
LEASES_ACQUIRED = Counter("contd_leases_acquired_total", "Workflow leases acquired",
                          registry=REGISTRY)
LEASE_CONFLICTS = Counter("contd_lease_conflicts_total",
                          "Lease acquisitions refused (another live executor holds it)",
                          registry=REGISTRY)
LEASES_EXPIRED = Counter("contd_leases_expired_total",
                         "Leases taken over from an expired or dead owner", ["reason"],
                         registry=REGISTRY)
LEASES_FORCE_RELEASED = Counter("contd_leases_force_released_total",
                                "Leases force-released by an administrator", registry=REGISTRY)
ACTIVE_WORKFLOWS = Gauge("contd_active_workflows",
                         "Workflows running in this process", ["workflow"], registry=REGISTRY)
WORKFLOWS_FINISHED = Counter("contd_workflows_finished_total",
                             "Workflow executions that ended, by outcome",
                             ["workflow", "outcome"], registry=REGISTRY)
JOURNAL_WRITE = Histogram("contd_journal_write_seconds", "Latency of one journal commit",
                          buckets=_WRITE_S, registry=REGISTRY)
SNAPSHOTS_WRITTEN = Counter("contd_snapshots_written_total", "State snapshots written",
                            registry=REGISTRY)
SNAPSHOT_SIZE = Histogram("contd_snapshot_size_bytes", "Size of written snapshots",
                          buckets=_BYTES, registry=REGISTRY)

# workflow id -> workflow name, for the workflows this process runs now (the gauge)
_active: dict[str, str] = {}
_active_lock = threading.Lock()


def _name(value: Any) -> str:
    return str(value) if value else "unknown"


def _set_active(name: str) -> None:  # called with _active_lock held
    ACTIVE_WORKFLOWS.labels(name).set(sum(1 for n in _active.values() if n == name))


def on_event(event: EngineEvent) -> None:
    """The listener: one engine event to metrics."""
    f, kind = event.fields, event.kind
    if kind == "journal_write":
        JOURNAL_WRITE.observe(f.get("duration_ms", 0.0) / 1000)
    elif kind == "step_started":
        STEPS_STARTED.labels(_name(f.get("step_name"))).inc()
    elif kind == "step_completed":
        step = _name(f.get("step_name"))
        STEPS_COMPLETED.labels(step).inc()
        STEP_DURATION.labels(step, "completed").observe(f.get("duration_ms", 0.0) / 1000)
    elif kind == "step_failed":
        step = _name(f.get("step_name"))
        STEPS_FAILED.labels(step).inc()
        STEP_DURATION.labels(step, "failed").observe(f.get("duration_ms", 0.0) / 1000)
        if f.get("will_retry"):
            STEP_RETRIES.labels(step).inc()
        if f.get("timeout"):
            STEP_TIMEOUTS.labels(step).inc()
    elif kind == "step_replayed":
        STEPS_REPLAYED.labels(_name(f.get("step_name"))).inc()
    elif kind == "restore":
        purpose = _name(f.get("purpose"))
        RESTORE_DURATION.labels(purpose).observe(f.get("duration_ms", 0.0))
        EVENTS_REPLAYED.labels(purpose).observe(f.get("events_replayed", 0))
    elif kind == "snapshot_written":
        SNAPSHOTS_WRITTEN.inc()
        SNAPSHOT_SIZE.observe(f.get("size_bytes", 0))
    elif kind == "lease_acquired":
        LEASES_ACQUIRED.inc()
    elif kind == "lease_conflict":
        LEASE_CONFLICTS.inc()
    elif kind == "lease_expired":
        LEASES_EXPIRED.labels("expired").inc()
    elif kind == "lease_takeover":
        LEASES_EXPIRED.labels("owner_dead").inc()
    elif kind == "lease_force_released":
        LEASES_FORCE_RELEASED.inc()
    elif kind in ("workflow_started", "workflow_resumed"):
        name = _name(f.get("workflow_name"))
        with _active_lock:
            _active[event.workflow_id or ""] = name
            _set_active(name)
    elif kind in ("workflow_completed", "workflow_failed", "workflow_interrupted"):
        with _active_lock:
            name = _active.pop(event.workflow_id or "", None) or _name(f.get("workflow_name"))
            _set_active(name)
        WORKFLOWS_FINISHED.labels(name, kind.removeprefix("workflow_")).inc()


def install() -> None:
    """Subscribe the listener to every engine (idempotent)."""
    ExecutionEngine.add_global_listener(on_event)


def uninstall() -> None:
    ExecutionEngine.remove_global_listener(on_event)


def installed() -> bool:
    return on_event in ExecutionEngine._global_listeners


@dataclass(frozen=True)
class MetricsServer:
    """Where the metrics are served (``setup_observability`` returns it)."""

    host: str
    port: int
    server: Any = None
    thread: Any = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def start_server(port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``REGISTRY`` over HTTP on host:port (port 0: any free port)."""
    from prometheus_client import start_http_server

    result = start_http_server(port, addr=host, registry=REGISTRY)
    server, thread = result if isinstance(result, tuple) else (None, None)
    actual = server.server_address[1] if server is not None else port
    log.info("serving contd_nb metrics on http://%s:%d/metrics", host, actual)
    return MetricsServer(host, actual, server, thread)


class JournalCollector:
    """Gauges read from a journal at each scrape (``contd metrics serve``): workflows by
    status, leases by state, the journal's size, and whether it could be read."""

    def __init__(self, store) -> None:
        self.store = store

    def describe(self):
        return []

    def collect(self):
        import os
        import time

        from prometheus_client.core import GaugeMetricFamily

        from ..core.leases import HOST, owner_is_dead

        up = GaugeMetricFamily("contd_journal_up", "Whether the journal could be read")
        try:
            was_open = self.store.is_open()
            try:
                workflows = self.store.list_workflows()
                leases = self.store.list_leases()
            finally:
                if not was_open:
                    self.store.idle()
        except Exception as e:  # noqa: BLE001 - a scrape reports, it does not fail
            log.warning("metrics: cannot read journal %s: %s", self.store.describe(), e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now = time.time()
        held = {r.workflow_id for r in leases if r.owner_id is not None and r.expires_at > now}
        by_status = dict.fromkeys(("running", "interrupted", "completed", "failed",
                                   "cancelled"), 0)
        for w in workflows:
            status = "interrupted" if w.status == "running" and w.workflow_id not in held \
                else w.status
            by_status[status] = by_status.get(status, 0) + 1
        g = GaugeMetricFamily("contd_journal_workflows", "Workflows in the journal by status",
                              labels=["status"])
        for status, n in by_status.items():
            g.add_metric([status], n)
        yield g
        states = dict.fromkeys(("held", "expired", "owner_gone", "released"), 0)
        for r in leases:
            if r.owner_id is None:
                states["released"] += 1
            elif r.expires_at <= now:
                states["expired"] += 1
            elif owner_is_dead(r, HOST):
                states["owner_gone"] += 1
            else:
                states["held"] += 1
        g = GaugeMetricFamily("contd_journal_leases", "Leases in the journal by state",
                              labels=["state"])
        for state, n in states.items():
            g.add_metric([state], n)
        yield g
        path = getattr(self.store, "path", None)
        if path:
            size = sum(os.path.getsize(p) for p in (path, path + ".wal")
                       if os.path.isfile(p))
            yield GaugeMetricFamily("contd_journal_size_bytes",
                                    "Size of the journal file and its WAL", value=size)


_collectors: dict[str, JournalCollector] = {}


def register_journal_collector(store) -> JournalCollector:
    """Add the journal gauges to ``REGISTRY`` (once per journal)."""
    key = store.describe()
    with _active_lock:
        if key not in _collectors:
            _collectors[key] = JournalCollector(store)
            REGISTRY.register(_collectors[key])
        return _collectors[key]
