"""Code for tests/test_magics.py: a @step called from notebook cells and a Python @workflow
that a child process starts and kills, then ``%contd_resume`` resumes in-process.

Both the pytest process and the children import this module (tests/ is on the children's
PYTHONPATH and on pytest's sys.path), so the journaled function path
``magics_workflows:pipeline`` resolves everywhere.

Every real run of a step appends one line to a side-effect file (flushed and fsynced before the
step returns), so the tests count how often each step really ran.
"""

from __future__ import annotations

import os
from pathlib import Path

from contd_nb import step, workflow

CRASH_ENV = "MAGICS_WORKFLOWS_CRASH_AFTER"


def record(side: str, line: str) -> None:
    with open(side, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_side(side: str | os.PathLike) -> list[str]:
    p = Path(side)
    return p.read_text(encoding="utf-8").splitlines() if p.exists() else []


@step()
def counted_double(side: str, value: int) -> int:
    """A durable step called from a notebook cell: records each real run."""
    record(side, f"double {value}")
    return 2 * value


@step()
def tenfold(side: str, i: int) -> int:
    record(side, f"step {i}")
    return 10 * i


@workflow()
def pipeline(side: str, n: int) -> list[int]:
    """n steps; with CRASH_ENV=k in the environment the process dies (os._exit, no cleanup,
    lease still held) right after step k completed."""
    crash_after = os.environ.get(CRASH_ENV)
    out = []
    for i in range(n):
        out.append(tenfold(side, i))
        if crash_after is not None and i == int(crash_after):
            os._exit(17)
    return out
