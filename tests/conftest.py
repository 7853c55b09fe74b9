"""Shared fixtures: real journal files in tmp dirs, an engine per test, child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from contd_nb import ExecutionEngine

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """A fresh DuckDB journal file location (not created yet)."""
    return tmp_path / "contd" / "journal.duckdb"


@pytest.fixture
def engine(journal_path: Path):
    """An engine on a real DuckDB file, installed as the default instance for the test."""
    eng = ExecutionEngine(str(journal_path), lease_ttl=30.0)
    previous = ExecutionEngine.set_instance(eng)
    yield eng
    ExecutionEngine.set_instance(previous)
    eng.close()
    eng.store.close()


@pytest.fixture
def memory_engine():
    eng = ExecutionEngine("memory")
    previous = ExecutionEngine.set_instance(eng)
    yield eng
    ExecutionEngine.set_instance(previous)
    eng.close()


def child_env(journal: Path | str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CONTD_JOURNAL"] = str(journal)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run_child(code: str, journal: Path | str, timeout: float = 120, **extra_env: str
              ) -> subprocess.CompletedProcess:
    """Run python code in a child process on the given journal; returns the finished
    process (stdout/stderr as text)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env=child_env(journal, **extra_env), capture_output=True,
                          text=True, timeout=timeout)


def spawn_child(code: str, journal: Path | str, **extra_env: str) -> subprocess.Popen:
    """Start python code in a child process (stdout/stderr piped, text)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            env=child_env(journal, **extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def kernelspec(tmp_path_factory):
    """A ``python3`` kernelspec that runs this interpreter with the repo importable. Kernels
    started by these tests get no CONTD_JOURNAL: each notebook names its journal."""
    pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager

    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PYTHONPATH", "CONTD_JOURNAL")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    os.environ.pop("CONTD_JOURNAL", None)
    if "python3" not in KernelSpecManager().find_kernel_specs():
        from ipykernel.kernelspec import install

        prefix = tmp_path_factory.mktemp("kernelspec")
        install(prefix=str(prefix), kernel_name="python3")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            filter(None, [str(prefix / "share" / "jupyter"), saved["JUPYTER_PATH"]]))
    yield "python3"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# -- PostgreSQL: one throwaway server per session, one schema per test ------------------------
_pg_server: dict = {}


def _no_server(why: str) -> None:
    """Without a server a developer's run skips the PostgreSQL tests; CI (CI=true) fails."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def pg_base_url() -> str:
    """The test PostgreSQL server's URL: CONTD_TEST_PG_URL if set (scripts/test.sh starts one
    for the whole run), else a server started here with scripts/pg.sh on a free loopback port
    and stopped when the session ends. Skips the test when neither is possible (fails under
    CI)."""
    url = os.environ.get("CONTD_TEST_PG_URL")
    if url:
        return url
    if "url" not in _pg_server:
        if "error" in _pg_server:
            _no_server(_pg_server["error"])
        import atexit
        import shlex

        done = subprocess.run(["bash", str(ROOT / "scripts" / "pg.sh"), "start"],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            _pg_server["error"] = f"no PostgreSQL server for the tests: {done.stderr[-500:]}"
            _no_server(_pg_server["error"])
        env = {}
        for line in done.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0] if value else ""
        _pg_server.update(url=env["PGTEST_DSN"], dir=env["PGTEST_DIR"])
        atexit.register(subprocess.run, ["bash", str(ROOT / "scripts" / "pg.sh"), "stop",
                                         env["PGTEST_DIR"]], capture_output=True, timeout=60)
    return _pg_server["url"]


def pg_schema_url(base: str | None = None, prefix: str = "t") -> str:
    """A URL of the test server with a fresh schema of its own (``?schema=t_<random>``)."""
    import uuid

    base = base or pg_base_url()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}schema={prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The session's PostgreSQL server (see ``pg_base_url``); tests isolate themselves with
    ``pg_schema_url(pg_url)`` or the ``pg_journal`` fixture."""
    return pg_base_url()


@pytest.fixture
def pg_journal(pg_url: str) -> str:
    """A PostgreSQL journal URL with a schema of its own for this test."""
    return pg_schema_url(pg_url)


# -- CI runs everything ------------------------------------------------------------------------
# A developer without PostgreSQL, Chromium or a mountable tmpfs gets skips; CI (CI=true) must
# run every test, so there any skip fails the run (a missing install step cannot hide).
def pytest_sessionfinish(session, exitstatus):
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for rep in skipped:
            reason = rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else rep.longrepr
            print(f"\nCI: skipped test not allowed: {rep.nodeid}: {reason}")
        session.exitstatus = 1
