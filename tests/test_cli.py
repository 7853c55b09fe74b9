"""The `contd` CLI through subprocesses (`python -m contd_nb`) on real journals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import child_env, spawn_child
from prometheus_client.parser import text_string_to_metric_families

WFMOD = '''
import os, time
from contd_nb import workflow, step, StepConfig, RetryPolicy, WorkflowConfig

_calls = {"n": 0}

@step(StepConfig(retry=RetryPolicy(max_attempts=3, backoff_initial=0.01,
                                   retryable_exceptions=[ConnectionError])))
def fetch(x):
    _calls["n"] += 1
    if _calls["n"] == 1:
        raise ConnectionError("flaky upstream")
    return x + 1

@step()
def save(x):
    if os.path.exists(os.environ.get("BREAK_FILE", "/nonexistent")):
        raise ValueError("save refused")
    return x * 2

@workflow()
def etl(x=1):
    return save(fetch(x))

@step()
def tick(i, pause):
    time.sleep(pause)
    return i

@step()
def wait_for(path):
    open(path + ".started", "w").close()
    while not os.path.exists(path):
        time.sleep(0.01)
    return "went"

@workflow()
def ticker(n=3, pause=0.0):
    return sum(tick(i, pause) for i in range(n))

@workflow()
def gated(path):
    wait_for(path)
    return tick(1, 0)

@step()
def as_set(x):
    return {x, x + 1}

@workflow(WorkflowConfig(snapshot_interval=1))
def pickled(x=1):
    return sorted(as_set(x))
'''


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "wfmod.py").write_text(WFMOD)
    return tmp_path


def contd(*args: str, journal: Path, cwd: Path, stdin: str | None = None, timeout: float = 90,
          **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "contd_nb", *args], cwd=cwd,
                          env=child_env(journal, **env), capture_output=True, text=True,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("contd: error:")]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.fixture
def journal(work: Path) -> Path:
    return work / "j" / "journal.duckdb"


# -- help and init ----------------------------------------------------------------------------
COMMANDS = ["init", "run", "resume", "status", "list", "events", "leases", "release", "gc",
            "export", "import", "metrics", "health", "worker"]


@pytest.mark.timeout(120)
def test_help_for_every_command_and_exit_codes_documented(work, journal):
    out = contd("--help", journal=journal, cwd=work)
    assert out.returncode == 0
    for cmd in COMMANDS:
        assert f"    {cmd}" in out.stdout, cmd
    for code, words in [("0", "ok"), ("1", "error"), ("2", "usage"), ("3", "not found"),
                        ("4", "locked or busy")]:
        assert f"  {code}  {words}" in out.stdout
    for cmd in [*COMMANDS, "metrics serve"]:
        sub = contd(*cmd.split(), "--help", journal=journal, cwd=work)
        assert sub.returncode == 0 and "usage: contd" in sub.stdout, (cmd, sub.stderr)
    gc_help = contd("gc", "--help", journal=journal, cwd=work).stdout
    assert "never deleted" in gc_help and "blobs" in gc_help.lower()
    bad = contd("frobnicate", journal=journal, cwd=work)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    assert contd(journal=journal, cwd=work).returncode == 2  # no command: help, usage code


@pytest.mark.timeout(120)
def test_init_backends(work, journal):
    out = contd("init", journal=journal, cwd=work)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Created journal: {journal}") and journal.exists()
    assert "schema version 2" in out.stdout
    again = contd("init", "--backend", "duckdb", journal=journal, cwd=work)
    assert again.returncode == 0 and again.stdout.startswith(f"Journal exists: {journal}")

    other = work / "k" / "journal.duckdb"
    sq = contd("init", "--backend", "sqlite", journal=other, cwd=work)
    assert sq.returncode == 0, sq.stderr
    assert "DuckDB is its embedded default" in sq.stdout and other.exists()

    pg_path = work / "pg" / "journal.duckdb"
    pg = contd("init", "--backend", "postgres", journal=pg_path, cwd=work)
    assert pg.returncode == 2
    assert "--backend postgres needs a server" in one_line_error(pg)
    assert not pg_path.exists()


def test_init_postgres_creates_the_schema(work, pg_journal):
    out = contd("init", "--backend", "postgres", journal=pg_journal, cwd=work)
    assert out.returncode == 0, out.stderr
    assert "(PostgreSQL, schema version 2)" in out.stdout
    assert "schema=t_" in out.stdout  # describe() names the journal's schema


# -- run, status, list, events, resume ---------------------------------------------------------
@pytest.mark.timeout(120)
def test_run_status_list_events(work, journal):
    out = contd("run", "wfmod:etl", "--id", "w1", "--input", '{"x": 5}', journal=journal,
                cwd=work)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == 12
    assert "workflow w1 completed" in out.stderr

    st = contd("status", "w1", "--json", journal=journal, cwd=work)
    info = json.loads(st.stdout)
    assert (info["status"], info["steps_completed"], info["name"]) == ("completed", 2, "etl")
    text = contd("status", "w1", journal=journal, cwd=work).stdout
    assert "status    completed" in text and "steps     2 completed" in text

    summary = json.loads(contd("status", "--json", journal=journal, cwd=work).stdout)
    assert summary["by_status"] == {"completed": 1} and summary["schema_version"] == 2

    ls = contd("list", "--status", "completed", journal=journal, cwd=work)
    assert ls.returncode == 0 and ls.stdout.splitlines()[1].split()[:3] == ["w1", "etl",
                                                                             "completed"]
    none = contd("list", "--status", "failed", journal=journal, cwd=work)
    assert none.stdout.strip() == "no workflows with status failed"

    ev = contd("events", "w1", "--json", journal=journal, cwd=work)
    events = [json.loads(ln) for ln in ev.stdout.splitlines()]
    assert [e["kind"] for e in events] == ["workflow_started", "step_failed", "step_completed",
                                           "step_completed", "workflow_completed"]
    assert events[1]["info"]["error_type"] == "ConnectionError"
    assert events[1]["info"]["will_retry"] is True and "traceback" not in events[1]["info"]
    assert [e["attempt"] for e in events[1:4]] == [1, 2, 1]
    plain = contd("events", "w1", journal=journal, cwd=work).stdout
    assert "ConnectionError: flaky upstream (will retry)" in plain


@pytest.mark.timeout(120)
def test_failed_run_then_resume(work, journal):
    brk = work / "break"
    brk.touch()
    out = contd("run", "wfmod:etl", "--id", "w2", journal=journal, cwd=work,
                BREAK_FILE=str(brk))
    assert out.returncode == 1
    line = one_line_error(out)
    assert "workflow w2 failed: ValueError: save refused" in line
    assert "contd resume w2" in line
    dbg = contd("--debug", "resume", "w2", journal=journal, cwd=work, BREAK_FILE=str(brk))
    assert dbg.returncode == 1
    assert "Traceback (most recent call last)" in dbg.stderr and "save refused" in dbg.stderr
    assert "DEBUG" in dbg.stderr and "acquired lease of w2" in dbg.stderr
    brk.unlink()
    res = contd("resume", "w2", journal=journal, cwd=work, BREAK_FILE=str(brk))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == 4
    assert "DEBUG" not in res.stderr
    kinds = [json.loads(ln)["kind"] for ln in
             contd("events", "w2", "--json", journal=journal, cwd=work).stdout.splitlines()]
    # fetch ran once (twice: a retry) and was not run again by either resume
    assert kinds.count("step_completed") == 2 and kinds.count("workflow_resumed") == 2
    assert kinds[-1] == "workflow_completed"


@pytest.mark.timeout(120)
def test_error_exit_codes(work, journal):
    missing = contd("status", journal=journal, cwd=work)
    assert missing.returncode == 3 and "no journal at" in one_line_error(missing)
    assert not journal.exists()
    contd("init", journal=journal, cwd=work)
    nf = contd("status", "nope", journal=journal, cwd=work)
    assert nf.returncode == 3
    line = one_line_error(nf)
    assert "Workflow nope was not found" in line and "hint:" in line
    assert contd("events", "nope", journal=journal, cwd=work).returncode == 3
    assert contd("resume", "nope", journal=journal, cwd=work).returncode == 3
    assert contd("run", "etl", journal=journal, cwd=work).returncode == 2
    assert contd("run", "nomodule:etl", journal=journal, cwd=work).returncode == 3
    assert contd("run", "wfmod:nothing", journal=journal, cwd=work).returncode == 3
    notwf = contd("run", "wfmod:tick", journal=journal, cwd=work)
    assert notwf.returncode == 1 and "is not a workflow" in one_line_error(notwf)
    assert contd("run", "wfmod:etl", "--input", "[1", journal=journal, cwd=work
                 ).returncode == 2
    assert contd("run", "wfmod:etl", "--input", "3", journal=journal, cwd=work
                 ).returncode == 2
    assert contd("status", "bad id!", journal=journal, cwd=work).returncode == 1
    assert contd("gc", journal=journal, cwd=work).returncode == 2
    assert contd("gc", "--older-than", "soon", journal=journal, cwd=work).returncode == 2


@pytest.mark.timeout(120)
def test_busy_journal_exit_code_4_names_the_pid(work, journal):
    contd("init", journal=journal, cwd=work)
    holder = spawn_child(f"""
        import duckdb, time
        c = duckdb.connect({str(journal)!r})
        print("ready", flush=True)
        time.sleep(60)
        """, journal)
    try:
        assert holder.stdout.readline().strip() == "ready"
        out = contd("list", journal=journal, cwd=work, CONTD_BUSY_TIMEOUT="1")
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 4
    assert f"is busy: process {holder.pid}" in one_line_error(out)


# -- leases and release ------------------------------------------------------------------------
def _start_gated(work: Path, journal: Path, wid: str) -> tuple[subprocess.Popen, Path]:
    gate = work / f"go-{wid}"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(work)!r})
            import wfmod
            from contd_nb import Client
            try:
                print(Client().run(wfmod.gated, {str(gate)!r}, workflow_id={wid!r}))
            except Exception as e:
                print(type(e).__name__, flush=True)
                raise SystemExit(5)
            """)], env=child_env(journal), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    started = Path(str(gate) + ".started")
    deadline = time.monotonic() + 60
    while not started.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return child, gate


@pytest.mark.timeout(120)
def test_leases_release_confirmation_and_fencing(work, journal):
    child, gate = _start_gated(work, journal, "w-lease")
    try:
        leases = json.loads(contd("leases", "--json", journal=journal, cwd=work).stdout)
        (lease,) = [x for x in leases if x["workflow_id"] == "w-lease"]
        assert lease["state"] == "held" and lease["pid"] == child.pid
        owner, token = lease["owner_id"], lease["token"]

        locked = contd("resume", "w-lease", journal=journal, cwd=work)
        assert locked.returncode == 4
        assert "is locked by another executor" in one_line_error(locked)

        no = contd("release", "w-lease", journal=journal, cwd=work)  # no stdin: a no
        assert no.returncode == 1
        assert f"Release lease of w-lease held by {owner}? [y/N]" in no.stderr
        assert "not released" in one_line_error(no)
        said_no = contd("release", "w-lease", journal=journal, cwd=work, stdin="n\n")
        assert said_no.returncode == 1
        still = json.loads(contd("leases", "--json", journal=journal, cwd=work).stdout)
        assert [x["state"] for x in still if x["workflow_id"] == "w-lease"] == ["held"]

        yes = contd("release", "w-lease", journal=journal, cwd=work, stdin="y\n")
        assert yes.returncode == 0, yes.stderr
        assert f"was held by {owner}" in yes.stdout and "fenced out" in yes.stdout
        after = json.loads(contd("leases", "--json", journal=journal, cwd=work).stdout)
        (rel,) = [x for x in after if x["workflow_id"] == "w-lease"]
        assert rel["state"] == "released" and rel["owner_id"] is None
        assert rel["token"] == token + 1
        gate.touch()  # the old holder's next write is refused
        out, err = child.communicate(timeout=60)
        assert child.returncode == 5 and out.strip() == "LeaseLost", err
        again = contd("release", "w-lease", "--yes", journal=journal, cwd=work)
        assert again.returncode == 0 and "not held" in again.stdout
        assert contd("release", "w-none", "--yes", journal=journal, cwd=work
                     ).returncode == 3
    finally:
        gate.touch()
        if child.poll() is None:
            child.kill()
        child.communicate()


# -- gc ----------------------------------------------------------------------------------------
def _count(journal: Path, sql: str, *params) -> int:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb
        c = duckdb.connect({str(journal)!r}, read_only=True)
        print(c.execute({sql!r}, {list(params)!r}).fetchone()[0])
        """)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.timeout(180)
def test_gc_keeps_unfinished_and_the_most_recent(work, journal):
    for i in range(3):
        assert contd("run", "wfmod:ticker", "--id", f"g{i}", journal=journal, cwd=work
                     ).returncode == 0
        time.sleep(0.01)
    brk = work / "break"
    brk.touch()
    assert contd("run", "wfmod:etl", "--id", "gfail", journal=journal, cwd=work,
                 BREAK_FILE=str(brk)).returncode == 1
    child, gate = _start_gated(work, journal, "grun")  # running (lease held)
    killed, kgate = _start_gated(work, journal, "gdead")  # interrupted: its process dies
    killed.kill()
    killed.communicate()
    try:
        dry = contd("gc", "--keep-last", "1", "--dry-run", journal=journal, cwd=work)
        assert dry.returncode == 0 and dry.stdout.startswith("would delete 3 finished")
        assert _count(journal, "SELECT count(*) FROM workflows") == 6

        out = contd("gc", "--keep-last", "1", journal=journal, cwd=work)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("deleted 3 finished workflows")
        assert "Blobs no longer referenced stay" in out.stdout
        left = sorted(s["workflow_id"] for s in json.loads(
            contd("list", "--json", journal=journal, cwd=work).stdout))
        assert left == ["gdead", "gfail", "grun"]  # gfail finished last: kept
        for wid in ("g0", "g1", "g2"):
            for table in ("events", "snapshots", "restores", "leases", "workflows"):
                assert _count(journal, f"SELECT count(*) FROM {table} WHERE workflow_id = ?",
                              wid) == 0, (table, wid)
        assert contd("gc", "--older-than", "1h", journal=journal, cwd=work
                     ).stdout.startswith("nothing to delete")
        out = contd("gc", "--older-than", "0s", journal=journal, cwd=work)
        assert out.stdout.startswith("deleted 1 finished workflows") and "gfail" in out.stdout
        left = sorted(s["workflow_id"] for s in json.loads(
            contd("list", "--json", journal=journal, cwd=work).stdout))
        assert left == ["gdead", "grun"]
        assert _count(journal, "SELECT count(*) FROM events WHERE workflow_id = 'grun'") >= 1
    finally:
        gate.touch()
        kgate.touch()
        if child.poll() is None:
            child.communicate(timeout=60)
    assert child.returncode == 0


# -- export / import ---------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_export_import_roundtrip(work, journal):
    import pyarrow.parquet as pq

    key = {"CONTD_SIGNING_KEY": "shared-test-key"}
    assert contd("run", "wfmod:pickled", "--id", "x1", "--input", '{"x": 3}', journal=journal,
                 cwd=work, **key).returncode == 0
    assert contd("status", "x1", journal=journal, cwd=work, **key).returncode == 0
    out_dir = work / "exp"
    ex = contd("export", "x1", str(out_dir), journal=journal, cwd=work, **key)
    assert ex.returncode == 0, ex.stderr
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["blobs.parquet", "events.parquet", "manifest.json", "restores.parquet",
                     "snapshots.parquet", "workflow.parquet"]
    events = pq.read_table(out_dir / "events.parquet").to_pylist()
    assert [e["kind"] for e in events] == ["workflow_started", "step_completed",
                                           "workflow_completed"]
    assert pq.read_table(out_dir / "snapshots.parquet").num_rows == 1
    assert pq.read_table(out_dir / "restores.parquet").num_rows == 1
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["workflow_id"] == "x1" and manifest["rows"]["events"] == 3

    j2 = work / "j2" / "journal.duckdb"
    im = contd("import", str(out_dir), journal=j2, cwd=work, **key)
    assert im.returncode == 0, im.stderr
    assert "imported x1" in im.stdout and "warning" not in im.stderr
    orig = contd("events", "x1", "--json", journal=journal, cwd=work, **key).stdout
    assert contd("events", "x1", "--json", journal=j2, cwd=work, **key).stdout == orig
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from contd_nb import Client
        c = Client(journal={str(j2)!r})
        print(c.result("x1"), c.engine.restore("x1").results)
        """)], env=child_env(j2, **key), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[3, 4] {1: {3, 4}}"

    dup = contd("import", str(out_dir), journal=j2, cwd=work, **key)
    assert dup.returncode == 1 and "already exists" in one_line_error(dup)
    j3 = work / "j3" / "journal.duckdb"  # another key: the pickles will be refused there
    other = contd("import", str(out_dir), journal=j3, cwd=work)
    assert other.returncode == 0
    assert "2 pickled values were signed with another journal's key" in other.stderr
    notexp = contd("import", str(work), journal=j2, cwd=work)
    assert notexp.returncode == 3 and "not a contd export" in one_line_error(notexp)
    again = contd("export", "x1", str(out_dir), journal=journal, cwd=work)
    assert again.returncode == 1 and "already holds an export" in one_line_error(again)
    assert contd("export", "nope", str(work / "e2"), journal=journal, cwd=work
                 ).returncode == 3


@pytest.mark.timeout(120)
def test_export_import_carries_referenced_blobs_small_and_large(work, journal):
    make = f"""
        import json, os, time
        from contd_nb.core.journal import Journal
        from contd_nb.notebook.values import value_hash
        from contd_nb.persistence.adapters import open_store
        from contd_nb.persistence.base import BlobRecord, WorkflowRecord
        store = open_store({str(journal)!r}); j = Journal(store); now = time.time()
        small = json.dumps("hello").encode()
        big = json.dumps(os.urandom(1_500_000).hex()).encode()   # a file beside the journal
        other = json.dumps("not referenced").encode()
        blobs = [BlobRecord(value_hash("json", p), "json", p, len(p), now)
                 for p in (small, big, other)]
        store.insert_workflow(WorkflowRecord("nb1", "nb", None, "completed", now, now))
        j.append("nb1", 1, "workflow_started", None, info={{"name": "nb"}})
        manifest = {{"values": {{"a": {{"blob": blobs[0].hash}}, "b": {{"blob": blobs[1].hash}},
                                "m": {{"module": "json"}}}}, "outputs": []}}
        j.append("nb1", 2, "step_completed", None, step_number=1, step_name="cell",
                 attempt=1, encoding="json", payload=json.dumps(manifest).encode(),
                 blobs=tuple(blobs))
        print(json.dumps([b.hash for b in blobs]))
        """
    made = subprocess.run([sys.executable, "-c", textwrap.dedent(make)],
                          env=child_env(journal), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    small_h, big_h, other_h = json.loads(made.stdout)
    assert (Path(str(journal) + ".blobs") / big_h[:2] / big_h).is_file()
    ex = contd("export", "nb1", str(work / "nbexp"), journal=journal, cwd=work)
    assert ex.returncode == 0, ex.stderr
    assert "2 blobs" in ex.stdout
    import pyarrow.parquet as pq

    rows = pq.read_table(work / "nbexp" / "blobs.parquet").to_pylist()
    assert sorted(r["hash"] for r in rows) == sorted([small_h, big_h])
    j2 = work / "j2" / "journal.duckdb"
    im = contd("import", str(work / "nbexp"), journal=j2, cwd=work)
    assert im.returncode == 0, im.stderr
    check = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json
        from contd_nb.persistence.adapters import open_store
        got = open_store({str(j2)!r}).get_blobs({[small_h, big_h, other_h]!r})
        print(json.dumps({{h: [b.size, json.loads(b.payload)[:12]] for h, b in got.items()}}))
        """)], env=child_env(j2), capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    got = json.loads(check.stdout)
    assert set(got) == {small_h, big_h}  # the unreferenced blob stayed behind
    assert got[small_h] == [len(json.dumps("hello")), "hello"]
    assert got[big_h][0] == 3_000_002
    assert (Path(str(j2) + ".blobs") / big_h[:2] / big_h).is_file()


# -- sharing the journal with a running workflow ---------------------------------------------
@pytest.mark.timeout(180)
def test_status_and_list_while_another_process_runs_a_workflow(work, journal):
    contd("init", journal=journal, cwd=work)
    runner = spawn_child(f"""
        import sys
        sys.path.insert(0, {str(work)!r})
        import wfmod
        from contd_nb import Client
        print(Client().run(wfmod.ticker, 150, 0.005, workflow_id="busy"), flush=True)
        """, journal)
    try:
        deadline = time.monotonic() + 60
        seen_running = False
        while runner.poll() is None and time.monotonic() < deadline:
            st = contd("status", "busy", "--json", journal=journal, cwd=work)
            if st.returncode == 3:  # not journaled yet
                continue
            assert st.returncode == 0, st.stderr
            info = json.loads(st.stdout)
            assert info["status"] in ("running", "completed")
            seen_running |= info["status"] == "running"
            ls = contd("list", journal=journal, cwd=work)
            assert ls.returncode == 0 and "busy" in ls.stdout, ls.stderr
        out, err = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, err
    assert out.strip() == str(sum(range(150)))
    assert seen_running
    final = json.loads(contd("status", "busy", "--json", journal=journal, cwd=work).stdout)
    assert (final["status"], final["steps_completed"]) == ("completed", 150)


@pytest.mark.timeout(120)
def test_events_follow_until_the_workflow_ends(work, journal):
    contd("init", journal=journal, cwd=work)
    child, gate = _start_gated(work, journal, "wf-follow")
    follower = subprocess.Popen(
        [sys.executable, "-m", "contd_nb", "events", "wf-follow", "--follow", "--interval",
         "0.05", "--timeout", "90"], cwd=work, env=child_env(journal),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert follower.poll() is None  # still following a running workflow
        gate.touch()
        out, err = follower.communicate(timeout=90)
    finally:
        gate.touch()
        child.communicate(timeout=60)
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    kinds = [ln.split()[3] for ln in out.splitlines()]
    assert kinds == ["workflow_started", "step_completed", "step_completed",
                     "workflow_completed"]
    assert "stopped following" not in err
    bounded = contd("events", "wf-follow", "--follow", "--timeout", "0.2", journal=journal,
                    cwd=work)
    assert bounded.returncode == 0 and len(bounded.stdout.splitlines()) == 4


# -- metrics serve -----------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_metrics_serve_until_signal(work, journal, sig):
    assert contd("run", "wfmod:ticker", "--id", "m1", journal=journal, cwd=work
                 ).returncode == 0
    srv = subprocess.Popen([sys.executable, "-m", "contd_nb", "metrics", "serve", "--port",
                            "0"], cwd=work, env=child_env(journal), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        assert line.startswith("serving contd_nb metrics on http://127.0.0.1:"), (
            line, srv.stderr.read() if srv.poll() is not None else "")
        url = line.split()[4]
        with urllib.request.urlopen(url, timeout=30) as r:
            text = r.read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(text) for s in fam.samples}
        assert samples[("contd_journal_up", ())] == 1
        assert samples[("contd_journal_workflows", (("status", "completed"),))] == 1
        assert samples[("contd_journal_leases", (("state", "released"),))] == 1
        assert samples[("contd_journal_size_bytes", ())] == sum(
            p.stat().st_size for p in (journal, Path(str(journal) + ".wal")) if p.is_file())
        assert ("contd_steps_started_total", (("step", "tick"),)) not in samples  # none here
        os.kill(srv.pid, sig)
        srv.wait(timeout=30)
    finally:
        if srv.poll() is None:
            srv.kill()
    assert srv.returncode == 0


def test_python_m_demo_module_still_importable():
    out = subprocess.run([sys.executable, "-c", "import contd_nb.demo, contd_nb.__main__"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.timeout(120)
def test_the_guides_debug_run_line(work, journal):
    """docs/TROUBLESHOOTING.md: `contd --debug run my_workflow` (a bare name: my_workflow.py
    in the current folder, its @workflow my_workflow)."""
    (work / "my_workflow.py").write_text(
        "from contd_nb import step, workflow\n\n"
        "@step()\ndef hello():\n    return 'hi'\n\n"
        "@workflow()\ndef my_workflow():\n    return hello()\n")
    out = contd("--debug", "run", "my_workflow", journal=journal, cwd=work)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == "hi"
    assert "DEBUG" in out.stderr and "acquired lease of" in out.stderr
    missing = contd("run", "not_here", journal=journal, cwd=work)
    assert missing.returncode == 2
    assert "give MODULE:FUNCTION" in one_line_error(missing)
