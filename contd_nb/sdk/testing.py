"""Test helpers: ``ContdTestCase`` gives each test an isolated journal file and crash injection.

    tc = ContdTestCase(); tc.setUp()
    result = tc.run_workflow("test", my_workflow, {})

``run_workflow(..., crash_after_step=N)`` stops the run right after step N's completion is
journaled, the way a killed process would (no failure recorded, lease left behind);
``fail_step=N`` makes step N raise ``InjectedFailure`` on its first ``fail_times`` attempts.
``resume_workflow`` continues it; ``steps_ran`` / ``steps_replayed`` and the assertions say what
happened in the last call.
"""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path
from typing import Any

from ..core.engine import EngineEvent, ExecutionEngine

__all__ = ["ContdTestCase", "InjectedFailure", "SimulatedCrash"]


class SimulatedCrash(BaseException):
    """Raised by crash injection; a BaseException so workflow code cannot catch it."""


class InjectedFailure(Exception):
    """Raised by ``fail_step`` injection: an ordinary, retryable step failure."""


class ContdTestCase(unittest.TestCase):
    journal_backend = "duckdb"     # or "memory"
    lease_ttl = 30.0

    def setUp(self) -> None:
        super_setup = getattr(super(), "setUp", None)
        if super_setup:
            super_setup()
        self._tmp = tempfile.mkdtemp(prefix="contd-test-")
        journal = "memory" if self.journal_backend == "memory" else \
            str(Path(self._tmp) / "journal.duckdb")
        self.engine = ExecutionEngine(journal, lease_ttl=self.lease_ttl)
        self._previous = ExecutionEngine.set_instance(self.engine)
        self._ran: dict[int, str] = {}
        self.steps_replayed: list[str] = []
        self._injection: dict[str, Any] = {}
        self.engine.add_listener(self._observe)

    def tearDown(self) -> None:
        ExecutionEngine.set_instance(self._previous)
        self.engine.close()
        self.engine.store.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- observing and injecting --------------------------------------------------------------
    def _observe(self, event: EngineEvent) -> None:
        if event.kind == "step_started":
            self._ran[event.fields["step_number"]] = event.fields["step_name"]
        elif event.kind == "step_replayed":
            self.steps_replayed.append(event.fields["step_name"])

    @property
    def steps_ran(self) -> list[str]:
        """Steps of the last run_workflow/resume_workflow call that ran for real."""
        return [self._ran[n] for n in sorted(self._ran)]

    def _fault(self, point: str, step_name: str, step_number: int, attempt: int) -> None:
        inj = self._injection
        if point == "attempt" and inj.get("fail_step") == step_number \
                and inj["fails_left"] > 0:
            inj["fails_left"] -= 1
            raise InjectedFailure(f"injected failure of step {step_number} '{step_name}' "
                                  f"(attempt {attempt})")
        if point == "completed" and inj.get("crash_after_step") == step_number:
            raise SimulatedCrash(f"simulated crash after step {step_number} '{step_name}'")

    # -- running ------------------------------------------------------------------------------
    def run_workflow(self, workflow_id: str, workflow_fn, inputs: dict | None = None, *,
                     crash_after_step: int | None = None, fail_step: int | None = None,
                     fail_times: int = 1) -> Any:
        """Run ``workflow_fn(**inputs)`` as workflow ``workflow_id``. With
        ``crash_after_step`` it raises SimulatedCrash right after that step was journaled;
        with ``fail_step`` that step raises InjectedFailure on its first ``fail_times``
        attempts (retried per its RetryPolicy)."""
        definition = getattr(workflow_fn, "__contd_workflow__", None)
        if definition is None:
            raise TypeError(f"{workflow_fn!r} is not decorated with @workflow")
        self._ran, self.steps_replayed = {}, []
        self._injection = {"crash_after_step": crash_after_step, "fail_step": fail_step,
                           "fails_left": fail_times if fail_step else 0}
        self.engine.fault_hook = self._fault
        try:
            if definition.is_async:
                import asyncio

                return asyncio.run(self.engine.arun(definition, (), dict(inputs or {}),
                                                    workflow_id))
            return self.engine.run(definition, (), dict(inputs or {}), workflow_id)
        finally:
            self.engine.fault_hook = None

    def resume_workflow(self, workflow_id: str, workflow_fn, inputs: dict | None = None) -> Any:
        """Continue a workflow after a crash or failure."""
        return self.run_workflow(workflow_id, workflow_fn, inputs)

    # -- assertions ---------------------------------------------------------------------------
    def assertStepsRan(self, names: list[str]) -> None:  # noqa: N802 - unittest style
        self.assertEqual(self.steps_ran, list(names), "steps that ran for real")

    def assertStepsReplayed(self, names: list[str]) -> None:  # noqa: N802
        self.assertEqual(self.steps_replayed, list(names), "steps replayed from the journal")

    def assertWorkflowStatus(self, workflow_id: str, status: str) -> None:  # noqa: N802
        rec = self.engine.store.get_workflow(workflow_id)
        self.assertIsNotNone(rec, f"workflow {workflow_id} is not in the journal")
        self.assertEqual(rec.status, status)
