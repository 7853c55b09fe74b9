"""What contd_nb costs in a notebook: per-cell overhead, a 1M-row DataFrame, "Run All".

Run: python benchmarks/bench_notebook.py [--cells 300] [--rows 1000000] [--reps 3]
                                         [--out benchmarks/results/notebook.json] [--keep]

Every measurement runs in its own subprocess (a DuckDB journal file is held by one process),
on DuckDB journal files in a fresh scratch directory under benchmarks/.work/, deleted at the
end. A benchmark, not a test: it reports numbers and fails only when a measurement cannot run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_steps import run_script  # noqa: E402

TARGET_ADDED_MS = 5.0  # aim: a trivial step cell costs at most 5 ms (p50) more than plain
TARGET_DF_RATIO = 2.0  # aim: DataFrame persist/restore at most 2x Arrow IPC to a file
WARMUP = 20
QUICKSTART = REPO / "notebooks" / "01-quickstart.ipynb"
KILL_AFTER = 0.25  # seconds into the crashed cell (each synthetic cell sleeps 0.5 s)
SETUP = """import os, time
import numpy as np, pandas as pd, pyarrow as pa

def build(seed, n={rows}):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({{"id": np.arange(n, dtype="int64"), "x": rng.random(n),
                         "y": rng.standard_normal(n), "k": rng.integers(0, 1000, n),
                         "s": "name-" + pd.Series(rng.integers(0, 50_000, n)).astype(str)}})

def check(df):
    return [len(df), int(df["k"].sum()), round(float(df["x"].sum()), 6), str(df["s"].iloc[-1])]
"""


def pcts(xs: list[float]) -> dict:
    """Milliseconds summary of a list of seconds."""
    ms = sorted(x * 1000 for x in xs)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"n": len(ms), "p50_ms": q[49], "p90_ms": q[89], "min_ms": ms[0], "max_ms": ms[-1]}


# ----------------------------------------------------------------------------- runners
class ShellRunner:
    """A real IPython InteractiveShell in this process."""

    def __init__(self, d: Path) -> None:
        from IPython.core.interactiveshell import InteractiveShell

        os.chdir(d)
        self.sh = InteractiveShell.instance()

    def run(self, code: str) -> None:
        r = self.sh.run_cell(code)
        if not r.success:
            raise RuntimeError(f"{code[:60]!r}: {r.error_before_exec or r.error_in_exec!r}")

    def eval(self, expr: str):
        return eval(expr, self.sh.user_ns)


class KernelRunner:
    """A real ipykernel (the venv's python3 kernelspec) driven by jupyter_client."""

    def __init__(self, d: Path) -> None:
        from jupyter_client.manager import start_new_kernel

        self.km, self.kc = start_new_kernel(kernel_name="python3", cwd=str(d))

    def run(self, code: str, **kw) -> dict:
        reply = self.kc.execute_interactive(code, timeout=300, output_hook=lambda m: None, **kw)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code[:60]!r}: {reply['content'].get('evalue')}")
        return reply

    def eval(self, expr: str):
        out = self.run("", user_expressions={"v": expr})["content"]["user_expressions"]["v"]
        return eval(out["data"]["text/plain"])


def timed(runner, code: str) -> float:
    t = time.perf_counter()
    runner.run(code)
    return time.perf_counter() - t


COMPLETIONS = ("__import__('contd_nb.notebook.session', fromlist=['_'])"
               ".NotebookSession.current.state.completions")


# ----------------------------------------------------------------------------- children
def child_cells(d: Path, a, kind: str) -> dict:
    """(1) `x = 1` plain vs as a step that runs and commits vs as a step that is restored."""
    r = (ShellRunner if kind == "shell" else KernelRunner)(d)
    try:
        r.run(f"%load_ext contd_nb\n%contd_run bench-{kind} --journal {d / (kind + '.duckdb')}")
        for i in range(WARMUP):
            r.run("x = 1")
            r.run(f"%%contd_step w{i}\nx = 1")
        plain, step, plain2, restore = [], [], [], []
        for i in range(a.cells):  # interleaved, so drift hits both alike
            plain.append(timed(r, "x = 1"))
            step.append(timed(r, f"%%contd_step s{i}\nx = 1"))
        ran = r.eval(COMPLETIONS)
        for i in range(a.cells):
            plain2.append(timed(r, "x = 1"))
            restore.append(timed(r, f"%%contd_step s{i}\nx = 1"))
        assert ran == WARMUP + a.cells == r.eval(COMPLETIONS), (ran, r.eval(COMPLETIONS))
        out = {"plain": pcts(plain), "step": pcts(step), "plain_2": pcts(plain2),
               "restore": pcts(restore)}
        if kind == "shell":  # where a step cell's time goes
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for i in range(200):
                r.run(f"%%contd_step p{i}\nx = 1")
            prof.disable()
            buf = io.StringIO()
            st = pstats.Stats(prof, stream=buf)
            st.sort_stats("tottime").print_stats(12)
            st.sort_stats("cumulative").print_stats("contd_nb", 25)
            out["profile"] = buf.getvalue()
        return out
    finally:
        if kind == "kernel":
            r.kc.stop_channels()
            r.km.shutdown_kernel(now=True)


def _arrow_write(df, path: Path, sync: bool) -> None:
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=True)
    with open(path, "wb") as f:
        with pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def child_df_write(d: Path, a) -> dict:
    """(2) persist: step cell `df = build(s)` minus the plain cell `df = build(s)`."""
    r = ShellRunner(d)
    r.run(SETUP.format(rows=a.rows))
    r.run(f"%load_ext contd_nb\n%contd_run bench-df --journal {d / 'df.duckdb'}")
    from contd_nb.notebook.session import NotebookSession
    from contd_nb.notebook.values import value_hash

    journal, res = NotebookSession.current.run.journal, collections.defaultdict(list)

    def lap(key, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        res[key].append(time.perf_counter() - t)
        return out

    for seed in range(a.reps):  # a new seed each time: equal content would be stored once
        lap("build", r.run, f"df = build({seed})")
        df = r.sh.user_ns["df"]
        lap("arrow_sync", _arrow_write, df, d / f"df{seed}.arrow", True)
        lap("arrow_nosync", _arrow_write, df, d / f"nosync{seed}.arrow", False)
        enc, payload = lap("encode", journal.encode, df, "df")
        lap("hash", value_hash, enc, payload)
        del df, payload
        lap("step", r.run, f"%%contd_step df{seed}\ndf = build({seed})")
        res["persist"].append(res["step"][-1] - res["build"][-1])
    out = {k: statistics.median(v) * 1000 for k, v in res.items()}
    out["journal_write"] = out["persist"] - out["encode"] - out["hash"]
    out["arrow_bytes"] = (d / f"df{a.reps - 1}.arrow").stat().st_size
    out["journal_bytes"] = sum(f.stat().st_size for f in d.glob("df.duckdb*"))
    return out


def child_df_read(d: Path, a, mode: str) -> dict:
    """(2) restore in a new shell on the same journal; and Arrow IPC read, in that process."""
    r = ShellRunner(d)
    r.run(SETUP.format(rows=a.rows))
    last = a.reps - 1
    t = time.perf_counter()
    import pyarrow as pa

    df = pa.ipc.open_file(str(d / f"df{last}.arrow")).read_all().to_pandas()
    arrow_read = time.perf_counter() - t
    os.environ["CONTD_JOURNAL"] = str(d / "df.duckdb")
    r.run("%load_ext contd_nb")
    if mode == "cell":
        open_s = timed(r, f"%contd_run bench-df --journal {d / 'df.duckdb'}")
        restore = timed(r, f"%%contd_step df{last}\ndf = build({last})")
        assert r.eval(COMPLETIONS) == a.reps  # restored, not run
    else:
        open_s, restore = 0.0, timed(r, "%contd_resume bench-df")
    assert r.eval("check(df)") == r.eval("check")(df)  # restored == the Arrow file's frame
    return {"restore_ms": restore * 1000, "open_ms": open_s * 1000,
            "arrow_read_ms": arrow_read * 1000}


def _synthetic(n: int = 8) -> list[str]:
    return ["%load_ext contd_nb\n%contd_run bench-runall"] + [
        f"%%contd_step expensive-{i}\nimport time\ntime.sleep(0.5)  # an expensive call\n"
        f"r{i} = {i} * 10\nprint('computed', r{i})" for i in range(1, n + 1)]


def _run_nb(sources: list[str], d: Path, journal: Path, kill_at: int | None = None) -> dict:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    os.environ["CONTD_JOURNAL"] = str(journal)  # the kernel inherits it
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(d)}})
    t0 = time.perf_counter()
    cells, dead, during = 0.0, False, None
    try:
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                timer = None
                if i == kill_at:
                    timer = threading.Timer(KILL_AFTER, os.kill,
                                            (client.km.provisioner.pid, signal.SIGKILL))
                    timer.start()
                t = time.perf_counter()
                try:
                    client.execute_cell(cell, i)
                finally:
                    cells += time.perf_counter() - t
                if timer is not None:  # the cell ended before the kill: kill between cells
                    timer.cancel()
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(client.km.provisioner.pid, signal.SIGKILL)
                    during = False
                    raise DeadKernelError("killed after the cell")
    except DeadKernelError:
        dead, during = True, during is not False
    return {"wall_s": time.perf_counter() - t0, "cells_s": cells, "killed": dead,
            "killed_during_cell": during,
            "restored": sum("restored from the journal" in json.dumps(c.outputs)
                            for c in nb.cells),
            "executed": sum(c.get("execution_count") is not None for c in nb.cells)}


def child_runall(d: Path, which: str) -> dict:
    """(3) nbclient with real kernels: from scratch, Run All restored, Run All after a crash."""
    if which == "quickstart":  # crash in its 5th step cell
        import nbformat

        nb = nbformat.read(QUICKSTART, as_version=4)
        sources = [c.source for c in nb.cells if c.cell_type == "code"]
        kill_at = [i for i, s in enumerate(sources) if s.startswith("%%contd_step")][4]
    else:
        sources, kill_at = _synthetic(), 5
    j1, j2 = d / f"{which}.duckdb", d / f"{which}-crash.duckdb"
    return {"kill_at_cell": kill_at, "code_cells": len(sources),
            "kernel_only": _run_nb(["1"], d, d / "unused.duckdb"),
            "scratch": _run_nb(sources, d, j1), "runall": _run_nb(sources, d, j1),
            "crashed": _run_nb(sources, d, j2, kill_at=kill_at),
            "after_crash": _run_nb(sources, d, j2)}


# ----------------------------------------------------------------------------- parent
def run_child(kind: str, d: Path, a, extra: str = "") -> dict:
    res = d / f"{kind}-{extra}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--dir", str(d),
           "--res", str(res), "--extra", extra, "--cells", str(a.cells), "--rows",
           str(a.rows), "--reps", str(a.reps)]
    print(f"  running {kind} {extra} ...", file=sys.stderr, flush=True)
    return run_script(cmd, res)


PARTS = ("cells_shell", "cells_kernel", "df_write", "df_read_cell", "df_read_resume",
         "runall_synthetic", "runall_quickstart")


def ratio(a, b):
    return a / b if a is not None and b else None


def summarize(r: dict) -> dict:
    s: dict = {}
    for kind in ("shell", "kernel"):
        v = r[f"cells_{kind}"]
        if "error" not in v:
            s[f"{kind}_added_p50_ms"] = v["step"]["p50_ms"] - v["plain"]["p50_ms"]
            s[f"{kind}_restore_added_p50_ms"] = v["restore"]["p50_ms"] - v["plain_2"]["p50_ms"]
    w, rc, rr = r["df_write"], r["df_read_cell"], r["df_read_resume"]
    if not any("error" in x for x in (w, rc, rr)):
        s |= {"persist_over_arrow_write_fsync": ratio(w["persist"], w["arrow_sync"]),
              "persist_over_arrow_write_nosync": ratio(w["persist"], w["arrow_nosync"]),
              "restore_cell_over_arrow_read": ratio(rc["restore_ms"], rc["arrow_read_ms"]),
              "resume_over_arrow_read": ratio(rr["restore_ms"], rr["arrow_read_ms"])}
    for nb in ("synthetic", "quickstart"):
        if "error" not in (ra := r.get(f"runall_{nb}", {"error": "not run"})):
            for k in ("wall_s", "cells_s"):
                s[f"{nb}_runall_over_scratch_{k}"] = ratio(ra["runall"][k], ra["scratch"][k])
                s[f"{nb}_after_crash_over_scratch_{k}"] = ratio(ra["after_crash"][k],
                                                                ra["scratch"][k])
    return s


def report(r: dict, a) -> None:
    def f(v, d=3):
        return "n/a" if v is None else f"{v:,.{d}f}"

    s = r["ratios"]
    print(f"\n(1) Wall time per cell (ms), `x = 1`, {a.cells} cells each, DuckDB journal "
          f"on {r['work_dir_fs']}")
    print(f"{'':<30}{'plain p50':>10}{'p90':>8}{'step p50':>10}{'p90':>8}{'ADDED':>8}"
          f"{'restore p50':>13}{'p90':>8}{'added':>8}")
    for kind, label in (("shell", "IPython InteractiveShell"), ("kernel", "ipykernel (jupyter_client)")):
        v = r[f"cells_{kind}"]
        print(f"{label:<30}FAILED" if "error" in v else
              f"{label:<30}" + "".join(f"{f(x):>{w}}" for x, w in (
                  (v["plain"]["p50_ms"], 10), (v["plain"]["p90_ms"], 8), (v["step"]["p50_ms"], 10),
                  (v["step"]["p90_ms"], 8), (s[f"{kind}_added_p50_ms"], 8),
                  (v["restore"]["p50_ms"], 13), (v["restore"]["p90_ms"], 8),
                  (s[f"{kind}_restore_added_p50_ms"], 8))))
    added = [s.get(k) for k in ("shell_added_p50_ms", "kernel_added_p50_ms")]
    met = "n/a" if None in added else "MET" if max(added) <= TARGET_ADDED_MS else "MISSED"
    print(f"  target: a step cell adds <= {TARGET_ADDED_MS} ms (p50): {met}. Restore 'added' "
          "is against the plain cells timed in the same pass.")
    w, rc, rr = r["df_write"], r["df_read_cell"], r["df_read_resume"]
    print(f"\n(2) {a.rows:,} x 5 DataFrame (int64, float64, float64, int64, str), "
          f"median of {a.reps}, ms")
    if "persist_over_arrow_write_fsync" in s:
        for label, ms, rt in (
                ("build it (plain cell)", w["build"], None),
                ("step cell persist (step - plain)", w["persist"],
                 s["persist_over_arrow_write_fsync"]),
                ("  codec.encode (Arrow stream)", w["encode"], None),
                ("  blake2b content hash", w["hash"], None),
                ("  journal write (the rest)", w["journal_write"], None),
                ("Arrow IPC file write + fsync", w["arrow_sync"], None),
                ("Arrow IPC file write, no fsync", w["arrow_nosync"], None),
                ("restore the step cell, new shell", rc["restore_ms"],
                 s["restore_cell_over_arrow_read"]),
                ("  (%contd_run before it)", rc["open_ms"], None),
                ("%contd_resume, new shell", rr["restore_ms"], s["resume_over_arrow_read"]),
                ("Arrow IPC open_file + to_pandas", rc["arrow_read_ms"], None)):
            print(f"  {label:<36}{f(ms, 1):>10}" + (f"   {rt:6.2f}x Arrow" if rt else ""))
        worst = max(s["persist_over_arrow_write_fsync"], s["restore_cell_over_arrow_read"],
                    s["resume_over_arrow_read"])
        print(f"  target: each <= {TARGET_DF_RATIO}x Arrow (write with fsync): "
              f"{'MET' if worst <= TARGET_DF_RATIO else 'MISSED'}; persist / Arrow without "
              f"fsync {s['persist_over_arrow_write_nosync']:.2f}x. Arrow file "
              f"{w['arrow_bytes']:,} B; journal {w['journal_bytes']:,} B for {a.reps} frames")
    for nb, title in (("synthetic", "synthetic: 8 step cells each sleeping 0.5 s"),
                      ("quickstart", "notebooks/01-quickstart.ipynb")):
        if "error" in (ra := r.get(f"runall_{nb}", {"error": "x"})):
            continue
        print(f"\n(3) Run All, nbclient and real kernels, {title}; crash: SIGKILL {KILL_AFTER}s "
              f"into code cell {ra['kill_at_cell']} (during it: "
              f"{ra['crashed']['killed_during_cell']})")
        print(f"  {'run':<44}{'wall s':>8}{'cells s':>9}{'restored':>10}{'executed':>10}")
        for key, label in (("kernel_only", "kernel start + one trivial cell"),
                           ("scratch", "from scratch on journal J (T_scratch)"),
                           ("runall", "Run All again, new kernel on J"),
                           ("crashed", "journal J2: killed in the crash cell"),
                           ("after_crash", "Run All after the crash, new kernel on J2")):
            v = ra[key]
            print(f"  {label:<44}{f(v['wall_s'], 2):>8}{f(v['cells_s'], 2):>9}"
                  f"{v['restored']:>10}{v['executed']:>10}")
        print(f"  Run All restored / scratch: {s[nb + '_runall_over_scratch_wall_s']:.2f}x wall, "
              f"{s[nb + '_runall_over_scratch_cells_s']:.2f}x cells; after crash / scratch: "
              f"{s[nb + '_after_crash_over_scratch_wall_s']:.2f}x wall, "
              f"{s[nb + '_after_crash_over_scratch_cells_s']:.2f}x cells")
    for key in PARTS:
        if "error" in r.get(key, {}):
            print(f"\n[{key}] FAILED {r[key]['error']}:\n{r[key]['stderr_tail']}")
    if (met == "MISSED" or a.profile) and "profile" in r["cells_shell"]:
        print("\nProfile of 200 step cells (InteractiveShell):\n" + r["cells_shell"]["profile"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "notebook.json"))
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--profile", action="store_true", help="print the step-cell profile")
    for hidden in ("--child", "--dir", "--res", "--extra"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        d = Path(a.dir)
        fn = {"cells": lambda: child_cells(d, a, a.extra),
              "df-write": lambda: child_df_write(d, a),
              "df-read": lambda: child_df_read(d, a, a.extra),
              "runall": lambda: child_runall(d, a.extra)}[a.child]
        Path(a.res).write_text(json.dumps(fn()))
        return 0

    work = HERE / ".work" / f"notebook-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    fs = subprocess.run(["df", "-PT", str(work)], capture_output=True, text=True).stdout
    r: dict = {"cells": a.cells, "rows": a.rows, "reps": a.reps, "work_dir": str(work),
               "work_dir_fs": " ".join(fs.splitlines()[-1].split()[:2]) if fs else "?",
               "python": platform.python_version(), "cpus": os.cpu_count(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        r["cells_shell"] = run_child("cells", work, a, "shell")
        r["cells_kernel"] = run_child("cells", work, a, "kernel")
        r["df_write"] = run_child("df-write", work, a)
        for mode in ("cell", "resume"):  # each restore in a new process, reps times
            runs = [run_child("df-read", work, a, mode) for _ in range(a.reps)]
            bad = [x for x in runs if "error" in x]
            r[f"df_read_{mode}"] = bad[0] if bad else {
                k: statistics.median(x[k] for x in runs) for k in runs[0]}
        r["runall_synthetic"] = run_child("runall", work, a, "synthetic")
        if QUICKSTART.exists():
            r["runall_quickstart"] = run_child("runall", work, a, "quickstart")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
            if not any(work.parent.iterdir()):
                work.parent.rmdir()
    r["ratios"] = summarize(r)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    report(r, a)
    print(f"\nresults: {out}")
    return 1 if any("error" in r.get(k, {}) for k in PARTS) else 0


if __name__ == "__main__":
    sys.exit(main())
