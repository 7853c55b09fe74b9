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
