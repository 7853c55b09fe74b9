"""Per-step latency of durable steps: DuckDB commit floor vs DBOS Transact vs contd_nb.

Run: python benchmarks/bench_steps.py [--steps 1000] [--restore-steps 10000]
                                      [--out benchmarks/results/steps.json]

Each measurement runs in its own subprocess (DuckDB locks a file per process, DBOS has global
state), all on one fresh scratch directory under benchmarks/.work/, deleted at the end.
A benchmark, not a test: it reports numbers and only fails when a measurement cannot run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET_RATIO = 1.3  # product aim: contd p50 per step <= 1.3x the DuckDB commit floor
WARMUP = 20  # steps/rows done before timing, so imports and first-use costs stay out
STARTS = 20  # one-step workflows timed for start/finish latency
RESTORES = 7  # engine.restore() calls per journal; the median is reported
PARTS = ("floor", "dbos", "contd", "restore_snap", "restore_nosnap")


def pcts(xs: list[float]) -> dict:
    """Milliseconds summary of a list of seconds."""
    ms = sorted(x * 1000 for x in xs)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"n": len(ms), "p50_ms": q[49], "p90_ms": q[89], "p99_ms": q[98],
            "min_ms": ms[0], "max_ms": ms[-1], "mean_ms": statistics.fmean(ms)}


# ----------------------------------------------------------------------------- children
def child_floor(d: Path, n: int) -> dict:
    import duckdb

    con = duckdb.connect(str(d / "floor.duckdb"))
    con.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, payload BLOB NOT NULL)")
    payload = os.urandom(100)
    times = []
    for i in range(WARMUP + n):
        t = time.perf_counter()
        con.execute("INSERT INTO t VALUES (?, ?)", [i, payload])  # autocommit: one commit
        times.append(time.perf_counter() - t)
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    con.close()
    assert rows == WARMUP + n, rows
    return {"per_commit": pcts(times[WARMUP:])}


def _timed_runs(wf, n: int) -> dict:
    """Shared driver: warm up, one n-step workflow, then STARTS one-step workflows.

    `wf(n, mark)` appends perf_counter() at body entry and before return to `mark` and returns
    the per-step times. Each call is a new workflow with a generated id."""
    wf(WARMUP, [])
    mark: list[float] = []
    t0 = time.perf_counter()
    steps = wf(n, mark)
    total = time.perf_counter() - t0
    assert len(steps) == n, len(steps)
    starts, finishes = [], []
    for _ in range(STARTS):
        m: list[float] = []
        t = time.perf_counter()
        wf(1, m)
        done = time.perf_counter()
        starts.append(m[0] - t)
        finishes.append(done - m[1])
    return {"per_step": pcts(steps), "workflow_total_ms": total * 1000,
            "start": pcts(starts), "finish": pcts(finishes)}


def _bench_body(trivial):
    """The workflow both products run: n trivial steps, each timed around its call."""

    def wf(n, mark):
        mark.append(time.perf_counter())
        times = []
        for i in range(n):
            t = time.perf_counter()
            trivial(i)
            times.append(time.perf_counter() - t)
        mark.append(time.perf_counter())
        return times

    return wf


def run_dbos(name: str, system_database_url: str, n: int) -> dict:
    """The same trivial-step workflow on DBOS Transact with the given system database."""
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {"name": name, "log_level": "WARNING",
                          "system_database_url": system_database_url}
    DBOS(config=config)

    @DBOS.step()
    def trivial(i):
        return i

    wf = DBOS.workflow()(_bench_body(trivial))
    try:
        DBOS.launch()
        out = _timed_runs(wf, n)
    finally:
        DBOS.destroy(destroy_registry=True)
    return out


def child_dbos(d: Path, n: int) -> dict:
    return run_dbos("bench-steps", f"sqlite:///{d / 'dbos_sys.sqlite'}", n)


def _import_contd():
    if str(REPO) not in sys.path:  # the script's own dir, not the repo, heads sys.path
        sys.path.append(str(REPO))
    try:
        import contd_nb
        from contd_nb import WorkflowConfig, step, workflow

        contd_nb.configure  # noqa: B018  - fail here, clearly, if the API is not there yet
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"contd_nb is not usable yet ({type(e).__name__}: {e}); "
                         "measurements (c) and (d) need contd_nb.configure/workflow/step") from e
    return contd_nb, workflow, step, WorkflowConfig


def child_contd(d: Path, n: int) -> dict:
    return run_contd(str(d / "contd.duckdb"), n)


def run_contd(journal: str, n: int) -> dict:
    """The trivial-step workflow on contd_nb with the given journal (file or URL)."""
    contd_nb, workflow, step, _ = _import_contd()
    engine = contd_nb.configure(journal=journal, snapshot_interval=100)

    @step()
    def trivial(i):
        return i

    wf = workflow()(_bench_body(trivial))

    try:
        out = _timed_runs(wf, n)
    finally:
        engine.close()
    out["contd_nb"] = contd_nb.__version__
    return out


def child_restore_build(d: Path, n: int, interval: int) -> dict:
    contd_nb, workflow, step, WorkflowConfig = _import_contd()
    engine = contd_nb.configure(journal=str(d / f"restore-{interval}.duckdb"),
                                snapshot_interval=interval)
    engine.snapshot_interval = interval  # the setter, as a notebook would use it

    @step()
    def trivial(i):
        return i

    @workflow(WorkflowConfig(workflow_id=f"bench-restore-{interval}"))
    def long_wf(n):
        for i in range(n):
            trivial(i)
        return n

    t = time.perf_counter()
    assert long_wf(n) == n
    total = time.perf_counter() - t
    engine.close()
    return {"build_ms": total * 1000}


def child_restore_read(d: Path, n: int, interval: int) -> dict:
    contd_nb = _import_contd()[0]
    wid = f"bench-restore-{interval}"
    t = time.perf_counter()
    engine = contd_nb.configure(journal=str(d / f"restore-{interval}.duckdb"),
                                snapshot_interval=interval)
    open_ms = (time.perf_counter() - t) * 1000
    walls, durs, last = [], [], None
    try:
        for _ in range(RESTORES):
            t = time.perf_counter()
            last = engine.restore(wid)
            walls.append(time.perf_counter() - t)
            durs.append(last.duration_ms)
    finally:
        engine.close()
    assert last.step_number == n, last
    return {"open_ms": open_ms, "first_wall_ms": walls[0] * 1000,
            "wall_ms_median": statistics.median(walls) * 1000,
            "duration_ms_median": statistics.median(durs),
            "events_replayed": last.events_replayed, "step_number": last.step_number,
            "snapshot_step": last.snapshot_step}


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- parent
def run_child(kind: str, d: Path, n: int, extra: list[str] | None = None) -> dict:
    res = d / f"{kind}-{'-'.join(extra or [])}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--dir", str(d),
           "--n", str(n), "--res", str(res), *(extra or [])]
    print(f"  running {kind} {' '.join(extra or [])} (n={n}) ...", file=sys.stderr, flush=True)
    return run_script(cmd, res)


def run_script(cmd: list[str], res: Path) -> dict:
    """Run a benchmark child process that writes its JSON result to ``res``; an error dict
    (with the tail of its output) if it fails or times out."""
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as e:
        return {"error": "timed out after 1800 s", "stderr_tail": str(e.stderr)[-2000:]}
    if p.returncode != 0 or not res.exists():
        tail = (p.stderr or p.stdout).strip().splitlines()[-25:]
        return {"error": f"exit {p.returncode}", "stderr_tail": "\n".join(tail)}
    return json.loads(res.read_text())


def ratio(a, b):
    return a / b if a is not None and b else None


def report(r: dict) -> None:
    def f(v, unit=" ms"):
        return "n/a" if v is None else f"{v:,.3f}{unit}" if unit else f"{v:,.2f}x"

    def p50(v, sub, q="p50_ms"):
        return f(v.get(sub, {}).get(q))

    print(f"\nPer-step latency, {r['steps']} steps, same disk ({r['work_dir_fs']})")
    print(f"{'measurement':<36}{'p50':>11}{'p90':>11}{'start p50':>12}{'finish p50':>12}")
    for key, label, sub in (("floor", "(a) DuckDB autocommit INSERT", "per_commit"),
                            ("dbos", "(b) DBOS step (SQLite sys db)", "per_step"),
                            ("contd", "(c) contd_nb step (DuckDB journal)", "per_step")):
        v = r[key]
        print(f"{label:<36}  FAILED ({v['error']})" if "error" in v else
              f"{label:<36}{p50(v, sub):>11}{p50(v, sub, 'p90_ms'):>11}"
              f"{p50(v, 'start'):>12}{p50(v, 'finish'):>12}")
    print(f"\nRestore of a completed {r['restore_steps']}-step workflow "
          f"(median of {RESTORES} engine.restore() calls, fresh process)")
    print(f"{'journal':<36}{'wall':>11}{'duration':>11}{'replayed':>10}{'snap step':>10}"
          f"{'open':>11}")
    for key, label in (("restore_snap", "(d) snapshot_interval=100"),
                       ("restore_nosnap", "(d) snapshot_interval=0")):
        v = r[key]
        print(f"{label:<36}  FAILED ({v['error']})" if "error" in v else
              f"{label:<36}{f(v['wall_ms_median']):>11}{f(v['duration_ms_median']):>11}"
              f"{v['events_replayed']!s:>10}{v['snapshot_step']!s:>10}{f(v['open_ms']):>11}")
    rt = r["ratios"]
    met = {None: "n/a", True: "MET", False: "MISSED"}[rt["meets_target"]]
    print("\nRatios")
    print(f"  contd p50 / floor p50          {f(rt['contd_over_floor'], '')}"
          f"   (target <= {TARGET_RATIO}x: {met})")
    print(f"  DBOS p50 / contd p50           {f(rt['dbos_over_contd'], '')}")
    print(f"  DBOS p50 / floor p50           {f(rt['dbos_over_floor'], '')}")
    print(f"  restore wall: no-snap / snap   {f(rt['restore_nosnap_over_snap'], '')}")
    print(f"  contd overhead per step (p50, trivial body ~0): {f(rt['contd_overhead_ms'])}"
          f"; above the floor: {f(rt['contd_minus_floor_ms'])}")
    for key in PARTS:
        if "error" in r[key]:
            print(f"\n[{key}] {r[key]['error']}:\n{r[key]['stderr_tail']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--restore-steps", type=int, default=10000)
    ap.add_argument("--out", default=str(HERE / "results" / "steps.json"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--res", help=argparse.SUPPRESS)
    ap.add_argument("--interval", type=int, default=100, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        d = Path(a.dir)
        fn = {"floor": lambda: child_floor(d, a.n), "dbos": lambda: child_dbos(d, a.n),
              "contd": lambda: child_contd(d, a.n),
              "restore-build": lambda: child_restore_build(d, a.n, a.interval),
              "restore-read": lambda: child_restore_read(d, a.n, a.interval)}[a.child]
        Path(a.res).write_text(json.dumps(fn()))
        return 0

    work = HERE / ".work" / f"steps-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    fs = subprocess.run(["df", "-PT", str(work)], capture_output=True, text=True).stdout
    r = {"steps": a.steps, "restore_steps": a.restore_steps, "work_dir": str(work),
         "work_dir_fs": " ".join(fs.splitlines()[-1].split()[:2]) if fs else "?",
         "python": platform.python_version(), "machine": platform.machine(),
         "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "versions": {k: _dist_version(k) for k in ("duckdb", "dbos", "contd_nb")}}
    try:
        r["floor"] = run_child("floor", work, a.steps)
        r["dbos"] = run_child("dbos", work, a.steps)
        r["contd"] = run_child("contd", work, a.steps)
        for key, iv in (("restore_snap", 100), ("restore_nosnap", 0)):
            b = run_child("restore-build", work, a.restore_steps, ["--interval", str(iv)])
            r[key] = b if "error" in b else {
                **b, **run_child("restore-read", work, a.restore_steps, ["--interval", str(iv)])}
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
            if not any(work.parent.iterdir()):
                work.parent.rmdir()

    def p50(key, sub):
        return r[key].get(sub, {}).get("p50_ms")

    fl, db, ct = p50("floor", "per_commit"), p50("dbos", "per_step"), p50("contd", "per_step")
    cof = ratio(ct, fl)
    r["ratios"] = {
        "contd_over_floor": cof, "meets_target": None if cof is None else cof <= TARGET_RATIO,
        "target": TARGET_RATIO, "dbos_over_contd": ratio(db, ct), "dbos_over_floor": ratio(db, fl),
        "restore_nosnap_over_snap": ratio(r["restore_nosnap"].get("wall_ms_median"),
                                          r["restore_snap"].get("wall_ms_median")),
        "contd_overhead_ms": ct,
        "contd_minus_floor_ms": None if ct is None or fl is None else ct - fl}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    report(r)
    print(f"\nresults: {out}")
    return 1 if any("error" in r[k] for k in PARTS) else 0


if __name__ == "__main__":
    sys.exit(main())
