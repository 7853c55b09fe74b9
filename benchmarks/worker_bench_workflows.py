"""The workflow that ``bench_workers.py`` enqueues; worker processes import it by name."""

from __future__ import annotations

import time

from contd_nb import step, workflow


@step()
def unit(i: int, work_s: float) -> int:
    time.sleep(work_s)  # stands for ~5 ms of real work
    return i


@workflow()
def bench_flow(n_steps: int, work_s: float) -> int:
    return sum(unit(i, work_s) for i in range(n_steps))
