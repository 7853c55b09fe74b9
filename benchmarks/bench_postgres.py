"""Per-step latency on PostgreSQL: a bare commit loop vs DBOS Transact vs contd_nb.

Run: python benchmarks/bench_postgres.py [--steps 1000] [--url postgresql://...]
                                         [--out benchmarks/results/postgres.json]

Without --url a throwaway server is started with scripts/pg.sh (PG_DURABLE=1: fsync and
synchronous_commit on, as a real server) on a free loopback port and stopped at the end. Each
product gets its own place on that one server: the floor a table in schema ``bench_floor``,
contd_nb the schema ``bench_contd``, DBOS a database of its own (``dbos_bench``), each measured
in its own subprocess. A benchmark, not a test: it only fails when a measurement cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_steps import (  # noqa: E402
    WARMUP,
    _dist_version,
    pcts,
    ratio,
    run_contd,
    run_dbos,
    run_script,
)

PARTS = ("floor", "dbos", "contd")


def _with_db(url: str, db: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{db}" + (f"?{query}" if query else "")


# ----------------------------------------------------------------------------- children
def child_floor(url: str, n: int) -> dict:
    """Autocommit INSERT of one 100-byte row (primary key) per commit, psycopg 3."""
    import psycopg

    payload = os.urandom(100)
    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_floor CASCADE")
        conn.execute("CREATE SCHEMA bench_floor")
        conn.execute("CREATE TABLE bench_floor.t (id BIGINT PRIMARY KEY, payload BYTEA NOT NULL)")
        for i in range(WARMUP + n):
            t = time.perf_counter()
            conn.execute("INSERT INTO bench_floor.t VALUES (%s, %s)", (i, payload))
            times.append(time.perf_counter() - t)
        rows = conn.execute("SELECT count(*) FROM bench_floor.t").fetchone()[0]
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', "
            "'synchronous_commit', 'server_version')").fetchall())
    assert rows == WARMUP + n, rows
    return {"per_commit": pcts(times[WARMUP:]), "server": settings}


def child_dbos(url: str, n: int) -> dict:
    return run_dbos("bench-pg", _with_db(url, "dbos_bench"), n)


def child_contd(url: str, n: int) -> dict:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_contd CASCADE")
    return run_contd(f"{url}?schema=bench_contd", n)


# ----------------------------------------------------------------------------- parent
def run_child(kind: str, url: str, n: int, work: Path) -> dict:
    res = work / f"{kind}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--url", url,
           "--n", str(n), "--res", str(res)]
    print(f"  running {kind} (n={n}) ...", file=sys.stderr, flush=True)
    return run_script(cmd, res)


def start_server() -> tuple[str, str]:
    p = subprocess.run(["bash", str(REPO / "scripts" / "pg.sh"), "start"], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PG_DURABLE": "1"})
    if p.returncode != 0:
        raise SystemExit(f"could not start PostgreSQL with scripts/pg.sh:\n{p.stderr}")
    env = {}
    for line in p.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env["PGTEST_DSN"], env["PGTEST_DIR"]


def report(r: dict) -> None:
    def f(v, unit=" ms"):
        return "n/a" if v is None else f"{v:,.3f}{unit}" if unit else f"{v:,.2f}x"

    def p50(v, sub, q="p50_ms"):
        return f(v.get(sub, {}).get(q))

    server = r["floor"].get("server", {})
    print(f"\nPer-step latency on PostgreSQL {server.get('server_version', '?')} (fsync="
          f"{server.get('fsync', '?')}, synchronous_commit={server.get('synchronous_commit', '?')}"
          f"), {r['steps']} steps, one server")
    print(f"{'measurement':<40}{'p50':>11}{'p90':>11}{'start p50':>12}{'finish p50':>12}")
    for key, label, sub in (("floor", "(a) bare autocommit INSERT (psycopg)", "per_commit"),
                            ("dbos", "(b) DBOS step (PostgreSQL sys db)", "per_step"),
                            ("contd", "(c) contd_nb step (PostgreSQL journal)", "per_step")):
        v = r[key]
        print(f"{label:<40}  FAILED ({v['error']})" if "error" in v else
              f"{label:<40}{p50(v, sub):>11}{p50(v, sub, 'p90_ms'):>11}"
              f"{p50(v, 'start'):>12}{p50(v, 'finish'):>12}")
    rt = r["ratios"]
    print("\nRatios (p50)")
    print(f"  contd step / bare commit       {f(rt['contd_over_floor'], '')}")
    print(f"  DBOS step / contd step         {f(rt['dbos_over_contd'], '')}")
    print(f"  DBOS step / bare commit        {f(rt['dbos_over_floor'], '')}")
    print(f"  contd per step above the bare commit: {f(rt['contd_minus_floor_ms'])}")
    for key in PARTS:
        if "error" in r[key]:
            print(f"\n[{key}] {r[key]['error']}:\n{r[key]['stderr_tail']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--url", help="an existing server (default: a throwaway one)")
    ap.add_argument("--out", default=str(HERE / "results" / "postgres.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--res", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        fn = {"floor": child_floor, "dbos": child_dbos, "contd": child_contd}[a.child]
        Path(a.res).write_text(json.dumps(fn(a.url, a.n)))
        return 0

    import tempfile

    server_dir = None
    url = a.url
    if url is None:
        url, server_dir = start_server()
    r = {"steps": a.steps, "server": "throwaway (scripts/pg.sh, PG_DURABLE=1)" if server_dir
         else "given by --url", "python": platform.python_version(),
         "machine": platform.machine(), "cpus": os.cpu_count(),
         "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "versions": {k: _dist_version(k) for k in ("psycopg", "psycopg-pool", "dbos",
                                                     "contd_nb")}}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pg-") as work:
            for key in PARTS:
                r[key] = run_child(key, url, a.steps, Path(work))
    finally:
        if server_dir:
            subprocess.run(["bash", str(REPO / "scripts" / "pg.sh"), "stop", server_dir],
                           capture_output=True, timeout=120)

    def p50(key, sub):
        return r[key].get(sub, {}).get("p50_ms")

    fl, db, ct = p50("floor", "per_commit"), p50("dbos", "per_step"), p50("contd", "per_step")
    r["ratios"] = {"contd_over_floor": ratio(ct, fl), "dbos_over_contd": ratio(db, ct),
                   "dbos_over_floor": ratio(db, fl),
                   "contd_minus_floor_ms": None if ct is None or fl is None else ct - fl}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    report(r)
    print(f"\nresults: {out}")
    return 1 if any("error" in r[k] for k in PARTS) else 0


if __name__ == "__main__":
    sys.exit(main())
