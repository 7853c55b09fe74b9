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
