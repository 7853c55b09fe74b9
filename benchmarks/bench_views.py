"""How fast the pandas views are on a big journal: 1M events over 1,000 workflows.

Run: python benchmarks/bench_views.py [--workflows 1000] [--events-per-workflow 1000]
                                      [--reps 7] [--out benchmarks/results/views.json] [--keep]

The journal is built with DuckDB SQL straight into the real schema (the store creates the
schema first): per workflow, ``workflow_started``, then step events (every 25th a
``step_failed`` with a retry, the step's completion after it; one workflow in ten is a notebook
run whose cells journal ``step_started`` + ``step_completed`` with ``info.cell`` and re-run
cells), then ``workflow_completed``; rows are interleaved across workflows (ordered by seq,
then workflow) as concurrent runs write them. Plus 10 restores, 10 snapshots and one lease per
workflow.

Timed (median of ``--reps``, each call a full view: SQL, DataFrame, dtypes):
  events(one workflow)  target  50 ms
  steps() for all       target 500 ms
  restores()            target 100 ms
"warm" calls find the journal open (the store keeps it while the process is busy); "cold" calls
come after the store let the file go (it does after 0.1 s idle) and include reopening it.
Ratios are measured / target (< 1 meets the target). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

TARGETS_MS = {"events(one workflow)": 50.0, "steps() all": 500.0, "restores()": 100.0}


def build(path: Path, n_wf: int, per_wf: int) -> dict:
    import duckdb

    from contd_nb.persistence.duckdb_store import DuckDBStore

    store = DuckDBStore(path)  # creates the schema
    store.close()
    t0 = time.perf_counter()
    con = duckdb.connect(str(path))
    con.execute("SET preserve_insertion_order = true")
    now = time.time() - 86400
    con.execute(f"""
        INSERT INTO workflows
        SELECT printf('wf-%05d', w), CASE WHEN w % 10 = 0 THEN printf('nb-%05d', w)
                                          ELSE 'pipeline' END,
               CASE WHEN w % 10 = 0 THEN printf('notebook:nb-%05d', w)
                    ELSE 'jobs:pipeline' END,
               CASE WHEN w % 50 = 7 THEN 'failed' ELSE 'completed' END,
               {now} + w, {now} + w + {per_wf} * 0.01, NULL, NULL, NULL, NULL,
               CASE WHEN w % 50 = 7 THEN '{{"error_type":"ValueError","message":"bad"}}' END,
               NULL
        FROM range({n_wf}) t(w)""")
    # one row per (workflow, seq); step numbers follow the engine's numbering
    con.execute(f"""
        CREATE TEMP TABLE g AS
        SELECT w, s, w % 10 = 0 AS nb,
               CASE WHEN s = 1 THEN 'workflow_started'
                    WHEN s = {per_wf} THEN 'workflow_completed'
                    WHEN w % 10 = 0 AND s % 2 = 0 THEN 'step_started'
                    WHEN w % 10 = 0 THEN 'step_completed'
                    WHEN s % 25 = 0 THEN 'step_failed'
                    ELSE 'step_completed' END AS kind,
               {now} + w + s * 0.01 AS t
        FROM range({n_wf}) a(w), range(1, {per_wf} + 1) b(s)""")
    con.execute("""
        INSERT INTO events
        SELECT printf('wf-%05d', w), s, kind,
               CASE WHEN kind IN ('workflow_started', 'workflow_completed', 'step_started')
                        THEN NULL
                    WHEN nb THEN CAST(s / 2 AS INTEGER)
                    WHEN kind = 'step_failed' THEN CAST(s - s // 25 AS INTEGER)
                    ELSE CAST(s - 1 - s // 25 AS INTEGER) END,
               CASE WHEN kind IN ('workflow_started', 'workflow_completed') THEN NULL
                    WHEN nb THEN printf('cell-%02d', (s // 2) % 40)
                    ELSE printf('step_%d', (s - s // 25) % 7) END,
               '{"attempt":' || CASE WHEN kind = 'step_failed' THEN '1'
                                     WHEN NOT nb AND s % 25 = 1 THEN '2' ELSE '1' END
               || ',"started_at":' || CAST(t - 0.004 AS VARCHAR)
               || ',"ended_at":' || CAST(t AS VARCHAR)
               || ',"info":' || CASE
                    WHEN kind = 'step_failed' THEN '"{\\"error_type\\":\\"ConnectionError\\",'
                        || '\\"message\\":\\"reset\\",\\"traceback\\":\\"Traceback ...\\",'
                        || '\\"will_retry\\":true,\\"delay_s\\":0.5}"'
                    WHEN nb AND kind LIKE 'step_%' THEN
                        '"{\\"cell\\":true,\\"code_hash\\":\\"0123456789abcdef\\"}"'
                    WHEN kind = 'step_completed' THEN '"{\\"code_hash\\":\\"0123456789abcdef\\"}"'
                    ELSE 'null' END
               || ',"enc":' || CASE WHEN kind = 'step_completed' THEN '"json"' ELSE 'null' END
               || ',"sum":"' || md5(CAST(s AS VARCHAR)) || '","token":1}',
               CASE WHEN kind = 'step_completed' THEN CAST('12345678901234567890' AS BLOB) END
        FROM g ORDER BY s, w""")
    con.execute(f"""
        INSERT INTO restores
        SELECT printf('wf-%05d', w), {now} + w + r * 10, 1.5 + (r * 37 + w) % 40,
               (r * 53 + w) % 100, CASE WHEN r > 0 THEN r * 100 END,
               CASE WHEN r % 3 = 0 THEN 'inspect' ELSE 'resume' END,
               printf('host:%d:abcdef01', w)
        FROM range({n_wf}) a(w), range(10) b(r)""")
    con.execute(f"""
        INSERT INTO snapshots
        SELECT printf('wf-%05d', w), k * 100, k * 104, {now} + w + k, 'pickle',
               CAST(repeat('x', 200) AS BLOB), 'sum'
        FROM range({n_wf}) a(w), range(1, 11) b(k)""")
    con.execute(f"""
        INSERT INTO leases
        SELECT printf('wf-%05d', w), CASE WHEN w % 100 = 0 THEN 'host:1:abcdef01' END, 3,
               {time.time()} + 30, 'host', 1, NULL, {now} + w, {now} + w
        FROM range({n_wf}) t(w)""")
    count = con.execute("SELECT count(*) FROM events").fetchone()[0]
    con.execute("CHECKPOINT")
    con.close()
    return {"events": count, "build_s": time.perf_counter() - t0,
            "file_mb": path.stat().st_size / 1e6}


def timed(fn, reps: int, cold: bool, store) -> tuple[float, list[float], int]:
    times, rows = [], 0
    for _ in range(reps):
        if cold:
            store.idle()  # what the janitor does after 0.1 s idle
        t0 = time.perf_counter()
        df = fn()
        times.append((time.perf_counter() - t0) * 1000)
        rows = len(df)
    return statistics.median(times), times, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflows", type=int, default=1000)
    ap.add_argument("--events-per-workflow", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=str(HERE / "results" / "views.json"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    import duckdb
    import pandas as pd

    from contd_nb import views
    from contd_nb.persistence.adapters import open_store

    work = HERE / ".work" / f"views-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    path = work / "journal.duckdb"
    try:
        info = build(path, args.workflows, args.events_per_workflow)
        print(f"journal: {info['events']:,} events over {args.workflows:,} workflows, "
              f"{info['file_mb']:.0f} MB, built in {info['build_s']:.1f}s")
        store = open_store(str(path))
        one = f"wf-{args.workflows // 2:05d}"
        cases = {
            "events(one workflow)": lambda: views.events(one, journal=str(path)),
            "steps() all": lambda: views.steps(journal=str(path)),
            "restores()": lambda: views.restores(journal=str(path)),
        }
        for fn in cases.values():  # warm-up: imports, first open
            fn()
        results = {}
        print(f"{'view':<22}{'rows':>9}{'warm p50 ms':>13}{'cold p50 ms':>13}"
              f"{'target ms':>11}{'warm/target':>13}{'cold/target':>13}")
        for name, fn in cases.items():
            warm, warm_all, rows = timed(fn, args.reps, False, store)
            cold, cold_all, _ = timed(fn, args.reps, True, store)
            target = TARGETS_MS[name]
            results[name] = {"rows": rows, "warm_ms": warm, "cold_ms": cold,
                             "warm_all_ms": warm_all, "cold_all_ms": cold_all,
                             "target_ms": target, "warm_ratio": warm / target,
                             "cold_ratio": cold / target}
            print(f"{name:<22}{rows:>9,}{warm:>13.1f}{cold:>13.1f}{target:>11.0f}"
                  f"{warm / target:>13.2f}{cold / target:>13.2f}")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "journal": info, "workflows": args.workflows,
            "events_per_workflow": args.events_per_workflow, "reps": args.reps,
            "results": results, "python": platform.python_version(),
            "duckdb": duckdb.__version__, "pandas": pd.__version__,
            "machine": platform.machine()}, indent=2))
        print(f"results -> {out}")
        store.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
