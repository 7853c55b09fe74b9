"""The ``contd`` command (also ``python -m contd_nb``): run, resume and inspect workflows,
leases and the journal from a shell. Commands live in ``cli_commands``."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from .sdk.errors import (
    ContdError,
    JournalBusy,
    WorkflowLocked,
    WorkflowNotFound,
)

__all__ = ["EXIT_BUSY", "EXIT_ERROR", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_USAGE", "CliError",
           "build_parser", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_BUSY = 0, 1, 2, 3, 4

log = logging.getLogger("contd_nb.cli")

EPILOG = """\
journal:
  --journal PATH, else $CONTD_JOURNAL, else .contd/journal.duckdb (in the current folder).
  The CLI shares the file with running notebooks and workers: it waits its turn (up to
  $CONTD_BUSY_TIMEOUT seconds, default 30).

exit codes:
  0  ok
  1  error (the message says what and what to do)
  2  usage error (bad arguments)
  3  not found (workflow, lease or journal)
  4  locked or busy (another executor holds the workflow, or another process the journal)

examples:
  contd init
  contd run pipeline:etl --id etl-2024-06 --input '{"day": "2024-06-01"}'
  contd status etl-2024-06
  contd events etl-2024-06 --follow
  contd --debug resume etl-2024-06
"""


class CliError(Exception):
    """An error the CLI reports in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: exit code 2, one line after the usage
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _sub(subs, name: str, help_: str, description: str | None = None):
    return subs.add_parser(name, help=help_, description=description or help_,
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="contd", description="contd_nb: durable workflows and notebook steps. "
                "Run, resume and inspect workflows and leases on a journal.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--journal", metavar="PATH",
                   help="journal file (default: $CONTD_JOURNAL or .contd/journal.duckdb)")
    p.add_argument("--debug", action="store_true",
                   help="DEBUG logs (lease, replay and retry decisions) and a traceback on "
                   "errors")
    p.add_argument("--version", action="version", version=f"contd_nb {__version__}")
    subs = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = _sub(subs, "init", "create the journal", "Create the journal (a DuckDB file) and "
             "print where it is. DuckDB is the embedded default: one file, no server.")
    s.add_argument("--backend", choices=["duckdb", "postgres", "sqlite"], default="duckdb",
                   help="duckdb (default); postgres (with --journal postgresql://... or "
                   "DATABASE_URL: creates the schema); sqlite: contd_nb uses DuckDB as its "
                   "embedded journal and creates that")

    s = _sub(subs, "run", "run a @workflow function", "Import MODULE and run its @workflow "
             "FUNCTION (modules are found from the current folder too). The result is "
             "printed as JSON. With --id of an existing workflow, it continues that one.")
    s.add_argument("target", metavar="MODULE:FUNCTION",
                   help="e.g. pipeline:etl or mypkg.jobs:nightly; a bare NAME means NAME:NAME "
                   "when NAME.py is in the current folder")
    s.add_argument("--id", dest="workflow_id", help="workflow id (default: the workflow's "
                   "configured id, else a new one)")
    s.add_argument("--input", default=None, metavar="JSON",
                   help="arguments as JSON: an object (keyword arguments) or an array "
                   "(positional ones)")

    s = _sub(subs, "resume", "continue a workflow from its journal", "Continue workflow ID: "
             "completed steps return their journaled results without running. Its function "
             "is imported by the name it was journaled under.")
    s.add_argument("workflow_id", metavar="ID")

    s = _sub(subs, "status", "a workflow's status, or the journal's summary")
    s.add_argument("workflow_id", metavar="ID", nargs="?")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = _sub(subs, "list", "list workflows")
    s.add_argument("--status", choices=["running", "interrupted", "completed", "failed",
                                        "cancelled"], help="only workflows in this state")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = _sub(subs, "events", "a workflow's journal events", "Print workflow ID's events in "
             "order (no payloads). --follow keeps printing new ones until the workflow ends "
             "(or Ctrl-C).")
    s.add_argument("workflow_id", metavar="ID")
    s.add_argument("--follow", "-f", action="store_true", help="wait for new events")
    s.add_argument("--interval", type=float, default=0.5, help="seconds between polls "
                   "(--follow; default 0.5)")
    s.add_argument("--timeout", type=float, default=None, help="stop following after this "
                   "many seconds")
    s.add_argument("--json", action="store_true", help="one JSON object per line")

    s = _sub(subs, "leases", "list workflow leases (owner, expiry, state)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = _sub(subs, "release", "force-release a workflow's lease", "Force-release workflow "
             "ID's lease. Its holder, if still running, is fenced out: its next journal "
             "write is refused. Asks for confirmation unless --yes.")
    s.add_argument("workflow_id", metavar="ID")
    s.add_argument("--yes", "-y", action="store_true", help="do not ask")

    s = _sub(subs, "gc", "delete finished workflows (retention)", "Delete the rows of "
             "finished workflows (completed, failed, cancelled): their events, snapshots, "
             "restore timings, leases and workflow rows. Running and interrupted workflows "
             "are never deleted. Content-addressed blobs (notebook variables) may stay in the "
             "journal even when nothing references them any more.")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--keep-last", type=int, metavar="N",
                   help="keep the N most recently finished workflows")
    g.add_argument("--older-than", metavar="AGE",
                   help="delete those finished longer ago than AGE (e.g. 30d, 12h, 90m, 45s)")
    s.add_argument("--dry-run", action="store_true", help="only say what would be deleted")

    s = _sub(subs, "export", "export a workflow to Parquet files", "Write workflow ID (its "
             "workflow row, events, snapshots, restore timings and the blobs it references) "
             "to Parquet files in DIR, with a manifest.json.")
    s.add_argument("workflow_id", metavar="ID")
    s.add_argument("directory", metavar="DIR")

    s = _sub(subs, "import", "import a workflow exported by `contd export`", "Read DIR "
             "written by `contd export` into the journal. Refuses a workflow id that exists. "
             "Pickled values stay signed with the source journal's key: copy its key file "
             "or set CONTD_SIGNING_KEY to read them here.")
    s.add_argument("directory", metavar="DIR")

    s = _sub(subs, "metrics", "Prometheus metrics")
    msubs = s.add_subparsers(dest="metrics_command", metavar="ACTION", parser_class=_Parser)
    ms = _sub(msubs, "serve", "serve metrics until SIGTERM/SIGINT", "Serve Prometheus "
              "metrics: this process's engine metrics and gauges read from the journal at "
              "each scrape (workflows by status, leases by state, journal size).")
    ms.add_argument("--port", type=int, default=9090, help="default 9090")
    ms.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback)")

    s = _sub(subs, "worker", "resume orphaned workflows until stopped", "Poll the journal "
             "for unfinished Python workflows whose lease expired, was released or belongs "
             "to a dead process on this host, and resume them (functions are imported by the "
             "name they were journaled under; modules are found from the current folder "
             "too). Several workers resume each orphan once. SIGTERM/SIGINT interrupt the "
             "workflow in hand, release its lease and stop.")
    s.add_argument("--poll", type=float, default=0.5, help="seconds between polls "
                   "(default 0.5)")
    s.add_argument("--once", action="store_true", help="resume what is orphaned now, then "
                   "exit")
    s.add_argument("--max-seconds", type=float, default=None, help="stop after this long")

    s = _sub(subs, "health", "check the journal: database, storage, leases")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    text = text.replace("\n  hint: ", "; hint: ")
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _exit_code(e: BaseException) -> int:
    if isinstance(e, CliError):
        return e.code
    if isinstance(e, WorkflowNotFound):
        return EXIT_NOT_FOUND
    if isinstance(e, (WorkflowLocked, JournalBusy)):
        return EXIT_BUSY
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .observability.logging_setup import configure_logging

    configure_logging("WARNING", debug=args.debug)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "metrics" and args.metrics_command is None:
        parser.parse_args([*(argv or sys.argv[1:]), "--help"])
    from . import cli_commands

    try:
        return getattr(cli_commands, f"cmd_{args.command}")(args) or EXIT_OK
    except KeyboardInterrupt:
        print("contd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `contd events ID | head`
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"contd: error: {_one_line(e)}", file=sys.stderr)
        if not args.debug and not isinstance(e, (ContdError, CliError)):
            print("contd: (run with --debug for the traceback)", file=sys.stderr)
        return _exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
