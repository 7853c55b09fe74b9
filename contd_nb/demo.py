"""The demo: a workflow is killed with SIGKILL mid-run, then resumed from the journal.

    python -m contd_nb.demo            # uses .contd/journal.duckdb (or CONTD_JOURNAL)

It starts an 8-step "research pipeline" (each step stands for a slow, paid API call) in a
child process, kills that process with SIGKILL while step 5 runs, resumes the workflow here,
and prints which steps were replayed from the journal, which ran, and how long the restore
took.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from contd_nb import Client, RetryPolicy, StepConfig, step, workflow
from contd_nb.core.engine import EngineEvent, ExecutionEngine
from contd_nb.persistence.adapters import resolve_journal

TOPICS = ["durable execution", "write-ahead logs", "leases", "fencing tokens",
          "snapshots", "idempotency keys", "retries with backoff", "exactly-once"]
STEP_SECONDS = 0.4


@step(StepConfig(retry=RetryPolicy(max_attempts=3, backoff_initial=0.1)))
def summarize(topic: str) -> dict:
    """Stands for an expensive API call: slow, and worth not paying for twice."""
    time.sleep(STEP_SECONDS)
    print(f"    [pid {os.getpid()}] summarized {topic!r}", flush=True)
    return {"topic": topic, "summary": f"{topic}: {len(topic)} letters of insight"}


@workflow()
def research_pipeline(topics: list[str]) -> list[dict]:
    return [summarize(t) for t in topics]


def _child(workflow_id: str) -> None:
    Client().run(research_pipeline, TOPICS, workflow_id=workflow_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contd_nb.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", metavar="WORKFLOW_ID", help=argparse.SUPPRESS)
    parser.add_argument("--kill-after", type=int, default=4, metavar="N",
                        help="kill the child while step N+1 runs (default 4)")
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0

    journal = resolve_journal()
    workflow_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    print(f"journal: {journal}\nworkflow: {workflow_id} ({len(TOPICS)} steps, "
          f"~{STEP_SECONDS}s each)\n")
    print(f"1) running it in a child process; SIGKILL while step {args.kill_after + 1} runs")
    child = subprocess.Popen([sys.executable, "-m", "contd_nb.demo", "--child", workflow_id],
                             stdout=subprocess.PIPE, text=True)
    done = 0
    assert child.stdout is not None
    for line in child.stdout:
        print(line, end="")
        if "summarized" in line:
            done += 1
            if done == args.kill_after:
                time.sleep(STEP_SECONDS / 2)  # now inside the next step
                child.send_signal(signal.SIGKILL)
                break
    child.wait()
    print(f"    child killed (exit {child.returncode}) after {done} completed steps\n")

    print("2) resuming it here from the journal")
    engine = ExecutionEngine.get_instance()
    seen: dict[str, list] = {"replayed": [], "ran": [], "restore": []}

    def listen(event: EngineEvent) -> None:
        f = event.fields
        if event.kind == "step_replayed":
            seen["replayed"].append(f["step_number"])
        elif event.kind == "step_started":
            seen["ran"].append(f["step_number"])
        elif event.kind == "restore" and f.get("purpose") == "resume":
            seen["restore"].append(f)

    engine.add_listener(listen)
    t0 = time.perf_counter()
    result = Client().resume(workflow_id)
    total = time.perf_counter() - t0
    engine.remove_listener(listen)

    restore = seen["restore"][0]
    print(f"\nreplayed from the journal (not run again): steps {seen['replayed']}")
    print(f"ran now:                                   steps {seen['ran']}")
    print(f"restore: {restore['duration_ms']:.1f} ms, {restore['events_replayed']} events "
          f"replayed, snapshot used: {restore['snapshot_step'] is not None}")
    print(f"resume total: {total:.2f}s for {len(seen['ran'])} steps that had not completed")
    print(f"result: {len(result)} summaries, first: {result[0]['summary']!r}")
    ok = seen["replayed"] == list(range(1, done + 1)) and \
        seen["ran"] == list(range(done + 1, len(TOPICS) + 1)) and len(result) == len(TOPICS)
    print("\nOK: nothing that completed ran twice" if ok else "\nUNEXPECTED: see above")
    engine.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
