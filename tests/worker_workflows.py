"""Workflows for the worker tests (importable by name from worker processes)."""

from __future__ import annotations

import os
import time

from contd_nb import step, workflow


def _record(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@step()
def work(tag: str, i: int, side_file: str, pause: float) -> int:
    time.sleep(pause)
    _record(side_file, f"{tag}:{i}")
    return i * i


@workflow()
def pipeline(tag: str, n: int, side_file: str, pause: float = 0.01) -> int:
    return sum(work(tag, i, side_file, pause) for i in range(n))
