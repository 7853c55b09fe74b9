"""``contd gc``, ``contd export`` and ``contd import``: journal maintenance (DuckDB SQL run
inside one store session, so no other process changes the journal meanwhile)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from .cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError
from .cli_commands import _arrow, _duckdb, _engine
from .core.engine import validate_workflow_id
from .persistence import schema
from .persistence.base import SCHEMA_VERSION, EventRecord
from .persistence.blob_files import crc32
from .sdk.errors import WorkflowNotFound

__all__ = ["cmd_export", "cmd_gc", "cmd_import", "parse_age"]

EXPORT_FORMAT = "contd_nb-export"
EXPORT_VERSION = 1
EVENT_COLUMNS = "workflow_id, seq, kind, step_number, step_name, meta, payload"
TABLES = {  # export file -> (table, columns); blobs are exported apart (with their payload)
    "workflow": ("workflows", schema.WORKFLOW_COLUMNS),
    "events": ("events", EVENT_COLUMNS),
    "snapshots": ("snapshots", schema.SNAPSHOT_COLUMNS),
    "restores": ("restores", schema.RESTORE_COLUMNS),
}
FILES = [*TABLES, "blobs"]


# -- gc ---------------------------------------------------------------------------------------
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.I)
_UNIT = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    m = _AGE.match(text)
    if not m:
        raise CliError(f"--older-than {text!r}: give a number with a unit, e.g. 30d, 12h, "
                       "90m, 45s", EXIT_USAGE)
    return float(m.group(1)) * _UNIT[(m.group(2) or "s").lower()]


def cmd_gc(args) -> int:
    if args.keep_last is not None and args.keep_last < 0:
        raise CliError("--keep-last must be >= 0", EXIT_USAGE)
    cutoff = None if args.older_than is None else time.time() - parse_age(args.older_than)
    engine = _engine(args)
    store = _duckdb(engine, "gc")
    counts: dict[str, int] = {}
    with store._session() as c:  # one gate session: nobody changes the journal meanwhile
        now = time.time()
        rows = c.execute(
            "SELECT w.workflow_id, w.updated_at FROM workflows w LEFT JOIN leases l "
            "ON l.workflow_id = w.workflow_id WHERE w.status IN ('completed', 'failed', "
            "'cancelled') AND (l.owner_id IS NULL OR l.expires_at <= ?) "
            "ORDER BY w.updated_at DESC, w.workflow_id", [now]).fetchall()
        if cutoff is None:
            victims = [r[0] for r in rows[args.keep_last:]]
        else:
            victims = [r[0] for r in rows if r[1] < cutoff]
        ids = "(SELECT unnest(?::VARCHAR[]))"
        if victims and not args.dry_run:
            c.execute("BEGIN TRANSACTION")
            try:
                for table in ("events", "snapshots", "restores", "leases"):
                    counts[table] = c.execute(f"DELETE FROM {table} WHERE workflow_id IN "
                                              f"{ids}", [victims]).fetchone()[0]
                counts["workflows"] = c.execute(
                    f"DELETE FROM workflows WHERE workflow_id IN {ids} AND status IN "
                    "('completed', 'failed', 'cancelled')", [victims]).fetchone()[0]
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        elif victims:
            for table in ("events", "snapshots", "restores", "leases"):
                counts[table] = c.execute(f"SELECT count(*) FROM {table} WHERE workflow_id "
                                          f"IN {ids}", [victims]).fetchone()[0]
            counts["workflows"] = len(victims)
    store.idle()
    kept = len(rows) - len(victims)
    if not victims:
        print(f"nothing to delete ({kept} finished workflows kept; running and interrupted "
              "ones are never deleted)")
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {counts['workflows']} finished workflows ({counts['events']} events, "
          f"{counts['snapshots']} snapshots, {counts['restores']} restores, "
          f"{counts['leases']} leases); kept {kept} finished workflows. Blobs no longer "
          "referenced stay in the journal.")
    for wid in victims[:50]:
        print(f"  {wid}")
    if len(victims) > 50:
        print(f"  ... and {len(victims) - 50} more")
    return EXIT_OK


# -- export -----------------------------------------------------------------------------------
def _blob_refs(events) -> list[str]:
    """Blob hashes referenced by notebook step completions (JSON manifests of variables)."""
    found: list[str] = []
    for e in events:
        if e["kind"] != "step_completed" or not e["payload"]:
            continue
        if json.loads(e["meta"]).get("enc") != "json":
            continue
        try:
            manifest = json.loads(e["payload"])
        except ValueError:
            continue
        values = manifest.get("values") if isinstance(manifest, dict) else None
        if isinstance(values, dict):
            for ref in values.values():
                if isinstance(ref, dict) and isinstance(ref.get("blob"), str) \
                        and ref["blob"] not in found:
                    found.append(ref["blob"])
    return found


def cmd_export(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    wid = validate_workflow_id(args.workflow_id)
    out = Path(args.directory)
    if (out / "manifest.json").exists():
        raise CliError(f"{out} already holds an export (manifest.json); choose an empty "
                       "directory")
    engine = _engine(args)
    store = _duckdb(engine, "export")
    tables = {}
    with store._session() as c:
        for name, (table, cols) in TABLES.items():
            order = " ORDER BY seq" if table in ("events", "snapshots") else ""
            tables[name] = _arrow(c.execute(f"SELECT {cols} FROM {table} WHERE workflow_id "
                                            f"= ?{order}", [wid]))
        if tables["workflow"].num_rows == 0:
            raise WorkflowNotFound(wid, store.describe())
        hashes = _blob_refs(tables["events"].to_pylist())
        # payloads from their rows or from the files beside the journal, CRC-checked
        blobs = list(store.get_blobs(hashes).values())
    store.idle()
    missing = sorted(set(hashes) - {b.hash for b in blobs})
    if missing:
        raise CliError(f"workflow {wid} refers to blobs missing from the journal: "
                       f"{missing[:3]}")
    tables["blobs"] = pa.table({
        "hash": pa.array([b.hash for b in blobs], pa.string()),
        "encoding": pa.array([b.encoding for b in blobs], pa.string()),
        "payload": pa.array([b.payload for b in blobs], pa.binary()),
        "size": pa.array([b.size for b in blobs], pa.int64()),
        "created_at": pa.array([b.created_at for b in blobs], pa.float64())})
    out.mkdir(parents=True, exist_ok=True)
    for name, tbl in tables.items():
        pq.write_table(tbl, out / f"{name}.parquet")
    manifest = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
                "schema_version": SCHEMA_VERSION, "workflow_id": wid,
                "exported_at": time.time(), "source_journal": store.describe(),
                "rows": {name: tbl.num_rows for name, tbl in tables.items()}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    rows = manifest["rows"]
    print(f"exported {wid} to {out}: {rows['events']} events, {rows['snapshots']} snapshots, "
          f"{rows['restores']} restores, {rows['blobs']} blobs")
    return EXIT_OK


# -- import -----------------------------------------------------------------------------------
def _read_export(directory: Path) -> tuple[dict, dict]:
    import pyarrow.parquet as pq

    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError as e:
        raise CliError(f"{directory} is not a contd export (no manifest.json)",
                       EXIT_NOT_FOUND) from e
    except ValueError as e:
        raise CliError(f"{directory}/manifest.json is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise CliError(f"{directory} is not a contd export (manifest format is "
                       f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version", 0) > EXPORT_VERSION \
            or manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise CliError(f"{directory} was exported by a newer contd_nb (format "
                       f"{manifest.get('format_version')}, schema "
                       f"{manifest.get('schema_version')}); upgrade contd_nb to import it")
    tables = {}
    for name in FILES:
        try:
            tables[name] = pq.read_table(directory / f"{name}.parquet")
        except FileNotFoundError as e:
            raise CliError(f"{directory} is incomplete: {name}.parquet is missing") from e
    return manifest, tables


def _check_export(manifest: dict, tables: dict, journal) -> int:
    """Validate ids, checksums and blob hashes; return how many pickled values fail this
    journal's key (they would be refused when read)."""
    from .core import codec
    from .sdk.errors import PayloadSignatureError

    wid = validate_workflow_id(manifest.get("workflow_id"))
    if tables["workflow"].num_rows != 1:
        raise CliError(f"the export holds {tables['workflow'].num_rows} workflow rows, not 1")
    for name in TABLES:
        ids = set(tables[name].column("workflow_id").to_pylist())
        if ids - {wid}:
            raise CliError(f"{name}.parquet holds rows of other workflows "
                           f"({sorted(ids - {wid})[:3]}), not only {wid}")
    unsigned = 0
    for row in tables["events"].to_pylist():
        meta = json.loads(row["meta"])
        rec = EventRecord(row["workflow_id"], row["seq"], row["kind"], row["step_number"],
                          row["step_name"], meta.get("attempt"), meta.get("started_at"),
                          meta.get("ended_at"), meta.get("info"), meta.get("enc"),
                          row["payload"], meta.get("sum"), meta.get("token"))
        journal.verify(rec)  # JournalCorrupted names the workflow and seq
        if rec.encoding == "pickle":
            try:
                codec.unsign(journal.key, rec.payload or b"", wid, rec.seq, "a value")
            except PayloadSignatureError:
                unsigned += 1
    from .notebook.values import value_hash

    for b in tables["blobs"].to_pylist():
        if value_hash(b["encoding"], b["payload"]) != b["hash"] or len(b["payload"]) != b["size"]:
            raise CliError(f"blob {b['hash']} in blobs.parquet does not match its hash: the "
                           "export is damaged")
    pickled = [*(r["payload"] for r in tables["snapshots"].to_pylist()),
               *(r["payload"] for r in tables["blobs"].to_pylist()
                 if r["encoding"] == "pickle")]
    for payload in pickled:
        try:
            codec.unsign(journal.key, payload or b"", wid, None, "a value")
        except PayloadSignatureError:
            unsigned += 1
    return unsigned


def cmd_import(args) -> int:
    directory = Path(args.directory)
    manifest, tables = _read_export(directory)
    engine = _engine(args, create=True)
    store = _duckdb(engine, "import")
    unsigned = _check_export(manifest, tables, engine.journal)
    wid = manifest["workflow_id"]
    blobs = tables["blobs"].to_pylist()
    with store._session() as c:
        if c.execute("SELECT count(*) FROM workflows WHERE workflow_id = ?",
                     [wid]).fetchone()[0]:
            raise CliError(f"workflow {wid} already exists in {store.describe()}; not "
                           "imported (delete it first with `contd gc`, or import into "
                           "another journal)")
        have = store._known_blobs(c, [b["hash"] for b in blobs]) if blobs else set()
        new = [b for b in blobs if b["hash"] not in have]
        for b in new:  # files first: a committed row never refers to a missing file
            if b["size"] >= store.blob_file_threshold:
                store._blob_files.write(b["hash"], b["payload"])
        c.execute("BEGIN TRANSACTION")
        try:
            for name, (table, cols) in TABLES.items():
                view = f"_contd_import_{name}"
                c.register(view, tables[name])
                try:
                    c.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view}")
                finally:
                    c.unregister(view)
            for b in new:
                in_file = b["size"] >= store.blob_file_threshold
                c.execute("INSERT INTO blobs VALUES (?,?,?,?,?,?,?)",
                          [b["hash"], b["encoding"], None if in_file else b["payload"],
                           b["size"], b["created_at"], crc32(b["payload"]), in_file])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
    store.idle()
    rows = {name: tbl.num_rows for name, tbl in tables.items()}
    print(f"imported {wid} into {store.describe()}: {rows['events']} events, "
          f"{rows['snapshots']} snapshots, {rows['restores']} restores, {rows['blobs']} blobs")
    if unsigned:
        print(f"warning: {unsigned} pickled values were signed with another journal's key and "
              "will be refused when read here: copy the source journal's key file (.key "
              "beside it) or set CONTD_SIGNING_KEY", file=sys.stderr)
    return EXIT_OK
