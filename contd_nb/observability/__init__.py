"""Operations: Prometheus metrics, health checks and logging.

    from contd_nb.observability import setup_observability
    setup_observability(metrics_port=9090)      # metrics on http://127.0.0.1:9090/metrics

    from contd_nb.observability.health import HealthChecker
    HealthChecker().check_all()                 # database, storage, leases

Metrics need the ``metrics`` extra (``pip install contd_nb[metrics]``, prometheus-client);
health and logging need nothing beyond contd_nb.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..sdk.errors import ConfigurationError
from .logging_setup import configure_logging

if TYPE_CHECKING:
    from .metrics import MetricsServer

__all__ = ["configure_logging", "metrics_server", "setup_observability"]

_lock = threading.Lock()
_server: MetricsServer | None = None


def _metrics_module():
    try:
        from . import metrics
    except ImportError as e:
        if "prometheus_client" not in str(e):
            raise
        raise ConfigurationError(
            "contd_nb metrics need prometheus-client, which is not installed",
            hint="pip install 'contd_nb[metrics]' (or pip install prometheus-client)") from e
    return metrics


def setup_observability(metrics_port: int | None = 9090, host: str = "127.0.0.1",
                        log_level: int | str | None = None) -> MetricsServer | None:
    """Subscribe the metrics to every engine and serve them on ``host:metrics_port``
    (loopback by default; ``metrics_port=None``: collect without serving; 0: a free port).
    ``log_level`` also configures the ``contd_nb`` loggers. Calling it again is harmless:
    the listener is subscribed once and the running server is returned (not a second one).
    """
    global _server
    if log_level is not None:
        configure_logging(log_level)
    metrics = _metrics_module()
    with _lock:
        metrics.install()
        if metrics_port is None:
            return _server
        if _server is not None:
            if metrics_port not in (0, _server.port) or host != _server.host:
                import logging

                logging.getLogger("contd_nb.observability").warning(
                    "metrics are already served on %s; not starting another server on %s:%s",
                    _server.url, host, metrics_port)
            return _server
        if not isinstance(metrics_port, int) or isinstance(metrics_port, bool) \
                or not 0 <= metrics_port <= 65535:
            raise ConfigurationError(f"metrics_port={metrics_port!r} is not valid: a port "
                                     "number 0-65535 (0: any free port)")
        try:
            _server = metrics.start_server(metrics_port, host)
        except OSError as e:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{metrics_port}: {e.strerror or e}",
                hint="choose another port (setup_observability(metrics_port=...)) or stop "
                "the process that uses it") from e
        return _server


def metrics_server() -> MetricsServer | None:
    """The server ``setup_observability`` started in this process, if any."""
    return _server
