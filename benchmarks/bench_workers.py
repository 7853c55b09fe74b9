"""Throughput of `contd worker` processes: 1, 2 and 4 workers, on PostgreSQL and on DuckDB.

Run: python benchmarks/bench_workers.py [--workflows 40] [--steps 20] [--work-ms 5]
                                        [--workers 1,2,4] [--backends postgres,duckdb]
                                        [--url postgresql://...] [--out ...workers.json]

For each backend and worker count: enqueue --workflows workflows of --steps steps (each step
sleeps --work-ms; benchmarks/worker_bench_workflows.py) on a fresh journal (PostgreSQL: its own
``?schema=`` on one throwaway server started with scripts/pg.sh and PG_DURABLE=1, unless --url;
DuckDB: its own file, shared by the workers), start the workers, poll ``Client.list()`` every
--poll (0.1) s until all are completed, then SIGTERM the workers. Wall time runs from starting
the workers (process start-up and imports included) to the poll that saw all completed.
``duckdb@1`` repeats DuckDB polled every 1 s: each poll of a DuckDB file takes the file from
the workers (a hand-over), so the observer itself slows them down. A benchmark, not a test: it
only fails when a configuration does not complete.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from bench_postgres import start_server  # noqa: E402
from worker_bench_workflows import bench_flow  # noqa: E402

from contd_nb import Client  # noqa: E402

WORKER = ("import sys; from contd_nb.cli import main; "
          "sys.exit(main(['worker', '--poll', '0.05', '--max-seconds', '{secs}']))")


def _schema_url(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def run_config(journal: str, n_workers: int, a: argparse.Namespace, logs: Path,
               poll: float) -> dict:
    client = Client(journal)
    ids = [client.enqueue(bench_flow, a.steps, a.work_ms / 1000, workflow_id=f"bw-{k:03d}")
           for k in range(a.workflows)]
    client.engine.store.idle()  # a DuckDB file is free for the workers from their start
    env = {**os.environ, "CONTD_JOURNAL": journal,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    outs = [open(logs / f"worker-{n_workers}-{i}.log", "w") for i in range(n_workers)]
    t0, w0 = time.perf_counter(), time.time()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(secs=a.timeout)], env=env,
                              cwd=REPO, stdout=out, stderr=subprocess.STDOUT) for out in outs]
    completed, wall, polls, list_s = 0, None, 0, []
    try:
        while time.perf_counter() - t0 < a.timeout:
            t = time.perf_counter()
            statuses = client.list()
            list_s.append(time.perf_counter() - t)
            polls += 1
            completed = sum(s.status == "completed" for s in statuses)
            if completed == len(ids) or any(s.status == "failed" for s in statuses):
                break
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(poll)
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for out in outs:
            out.close()
    # from the journal: who ran what, how long steps took, how many workflows were in flight
    step_ms, spans, per_executor, steps_done, resumes = [], [], {}, 0, 0
    for wid in ids:
        events = client.engine.journal.get_events(wid)
        begun = [e for e in events if e.kind == "workflow_resumed"]
        resumes += len(begun)
        done = [e for e in events if e.kind == "workflow_completed"]
        steps = [e for e in events if e.kind == "step_completed"]
        steps_done += len(steps)
        step_ms += [e.duration_ms for e in steps if e.duration_ms is not None]
        if begun and done:
            spans.append((begun[-1].ended_at, done[-1].ended_at))
            ex = begun[-1].info.get("executor", "?")
            per_executor[ex] = per_executor.get(ex, 0) + 1
    results_ok = all(client.result(w) == sum(range(a.steps)) for w in ids) \
        if completed == len(ids) else False
    client.engine.close()
    n_steps = a.workflows * a.steps
    first = min((s for s, _ in spans), default=None)
    last = max((e for _, e in spans), default=None)
    active = None if first is None else last - first
    r = {"workers": n_workers, "completed": completed, "wall_s": wall, "poll_s": poll,
         "polls": polls, "list_ms_mean": 1000 * statistics.fmean(list_s) if list_s else None,
         "list_ms_max": 1000 * max(list_s, default=0),
         "results_ok": results_ok, "steps_completed": steps_done, "resumes": resumes,
         "startup_s": None if first is None else first - w0,
         "steps_per_s": n_steps / wall, "workflows_per_s": a.workflows / wall,
         "overhead_ms": wall * n_workers / n_steps * 1000 - a.work_ms,
         "overhead_after_startup_ms": None if active is None else
         active * n_workers / n_steps * 1000 - a.work_ms,
         "avg_in_flight": None if not active else sum(e - s for s, e in spans) / active,
         "step_p50_ms": statistics.median(step_ms) if step_ms else None,
         "step_p90_ms": statistics.quantiles(step_ms, n=10)[-1] if len(step_ms) > 1
         else None,
         "workflows_per_worker": sorted(per_executor.values(), reverse=True),
         "worker_exit_codes": [p.returncode for p in procs]}
    if completed != len(ids):
        r["error"] = f"{completed}/{len(ids)} completed after {wall:.1f} s"
        r["worker_log_tail"] = (logs / f"worker-{n_workers}-0.log").read_text()[-2000:]
    return r


def report(r: dict) -> None:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    print(f"\n`contd worker` throughput: {r['workflows']} workflows x {r['steps']} steps of "
          f"{r['work_ms']} ms (sleep), {r['cpus']} CPUs; PostgreSQL {r.get('pg_settings', {})}")
    print(f"{'config':<14}{'wall s':>8}{'start s':>8}{'steps/s':>9}{'wf/s':>7}{'speed-up':>9}"
          f"{'ovh ms':>8}{'ovh* ms':>8}{'in flight':>10}{'step p50':>9}{'p90':>7}{'list ms':>8}"
          "  per worker")
    for backend in r["backends"]:
        base = None
        for c in r["results"][backend]:
            name = f"{backend} x{c['workers']}"
            if "error" in c:
                print(f"{name:<14}  FAILED: {c['error']}")
                continue
            if c["workers"] == 1:
                base = c["wall_s"]
            c["speedup"] = base / c["wall_s"] if base else None
            print(f"{name:<14}{c['wall_s']:>8.2f}{f(c['startup_s'], '.2f'):>8}"
                  f"{c['steps_per_s']:>9.1f}{c['workflows_per_s']:>7.2f}"
                  f"{f(c['speedup'], '.2f') + 'x':>9}{c['overhead_ms']:>8.2f}"
                  f"{f(c['overhead_after_startup_ms'], '.2f'):>8}"
                  f"{f(c['avg_in_flight'], '.2f'):>10}{f(c['step_p50_ms'], '.1f'):>9}"
                  f"{f(c['step_p90_ms'], '.1f'):>7}{f(c['list_ms_mean'], '.0f'):>8}"
                  f"  {c['workflows_per_worker']}")
    print("ovh = wall*workers/steps - work; ovh* = the same from the first workflow picked up "
          "to the last completed (no process start-up); in flight = mean workflows running "
          "at once (journal); step p50/p90 = step_completed duration (work + its commit + "
          "any wait for the journal); list ms = mean time of one Client.list() poll")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflows", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--work-ms", type=float, default=5.0)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--backends", default="postgres,duckdb,duckdb@1",
                    help="NAME[@POLL]: postgres or duckdb, polled every POLL s (default --poll)")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between Client.list()")
    ap.add_argument("--url", help="an existing PostgreSQL server (default: a throwaway one)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per configuration")
    ap.add_argument("--out", default=str(HERE / "results" / "workers.json"))
    a = ap.parse_args()
    counts = [int(n) for n in a.workers.split(",")]
    backends = [b.strip() for b in a.backends.split(",")]
    r = {"workflows": a.workflows, "steps": a.steps, "work_ms": a.work_ms, "backends": backends,
         "python": platform.python_version(), "cpus": os.cpu_count(),
         "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": {}}
    url, server_dir = a.url, None
    (HERE / ".work").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="workers-", dir=HERE / ".work"))
    try:
        if any(b.startswith("postgres") for b in backends):
            if url is None:
                url, server_dir = start_server()
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                r["pg_settings"] = dict(conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', "
                    "'synchronous_commit', 'server_version')").fetchall())
            r["server"] = "throwaway (scripts/pg.sh, PG_DURABLE=1)" if server_dir else "--url"
        for backend in backends:
            r["results"][backend] = []
            kind, _, poll = backend.partition("@")
            if kind not in ("postgres", "duckdb"):
                raise SystemExit(f"unknown backend {backend!r}")
            for n in counts:
                print(f"  {backend} with {n} worker(s) ...", file=sys.stderr, flush=True)
                if kind == "postgres":
                    schema = f"bench_workers_{n}_{len(r['results'])}"
                    _drop_schema(url, schema)
                    journal = _schema_url(url, schema)
                else:
                    journal = str(work / f"workers-{n}-{len(r['results'])}.duckdb")
                r["results"][backend].append(run_config(journal, n, a, work,
                                                        float(poll or a.poll)))
    finally:
        if server_dir:
            subprocess.run(["bash", str(REPO / "scripts" / "pg.sh"), "stop", server_dir],
                           capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)
    report(r)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    print(f"\nresults: {out}")
    return 1 if any("error" in c for cs in r["results"].values() for c in cs) else 0


if __name__ == "__main__":
    sys.exit(main())
