"""A notebook run's state as its journal has it, and the decision to restore or run a cell.

Pure functions over plain data: ``fold_notebook`` turns journal events into NotebookState
(the latest completion of each step, where each variable's value comes from, what is pending);
``decide`` says whether a ``%%contd_step`` cell is restored or runs, and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["CellDecision", "CellStep", "NotebookState", "decide", "fold_notebook"]


@dataclass
class CellStep:
    """The latest completion of one notebook step (a cell)."""

    name: str
    seq: int
    code_hash: str
    ran_at: float
    duration_s: float
    attempt: int
    reads: dict[str, list]            # variable -> [producer step name, producer seq]
    values: dict[str, dict]           # variable -> value ref (see values.py)
    deleted: list[str]
    unpersistable: dict[str, str]     # variable -> type name
    outputs: list[dict]

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class NotebookState:
    steps: dict[str, CellStep] = field(default_factory=dict)
    # variable -> (value ref, producer step name, producer seq): the journal's latest value
    variables: dict[str, tuple[dict, str, int]] = field(default_factory=dict)
    pending: str | None = None        # a step that started and did not complete
    completions: int = 0              # how many cell completions (numbers the next one)
    fn_steps: dict[str, dict] = field(default_factory=dict)  # @step calls made in cells
    last_seq: int = 0

    def to_snapshot(self) -> dict:
        return {"steps": {k: v.to_json() for k, v in self.steps.items()},
                "variables": {k: list(v) for k, v in self.variables.items()},
                "pending": self.pending, "completions": self.completions,
                "fn_steps": self.fn_steps, "last_seq": self.last_seq}

    @classmethod
    def from_snapshot(cls, data: dict) -> NotebookState:
        return cls(steps={k: CellStep(**v) for k, v in data["steps"].items()},
                   variables={k: (v[0], v[1], v[2]) for k, v in data["variables"].items()},
                   pending=data["pending"], completions=data["completions"],
                   fn_steps=data["fn_steps"], last_seq=data["last_seq"])


def apply_cell_completion(state: NotebookState, step: CellStep) -> None:
    state.steps[step.name] = step
    for var, ref in step.values.items():
        state.variables[var] = (ref, step.name, step.seq)
    for var, type_name in step.unpersistable.items():
        state.variables[var] = ({"unpersistable": type_name}, step.name, step.seq)
    for var in step.deleted:
        state.variables.pop(var, None)
    if state.pending == step.name:
        state.pending = None
    state.completions += 1


def fold_notebook(state: NotebookState, records: list, decode_manifest) -> NotebookState:
    """Apply event records (after state.last_seq) to the state. ``decode_manifest(record)``
    returns a completion's payload (a dict with "values" and "outputs")."""
    for r in records:
        info = json.loads(r.info) if r.info else {}
        if r.kind == "step_started" and info.get("cell"):
            state.pending = r.step_name
        elif r.kind == "step_completed" and info.get("cell"):
            manifest = decode_manifest(r)
            apply_cell_completion(state, CellStep(
                name=r.step_name, seq=r.seq, code_hash=info.get("code_hash", ""),
                ran_at=r.started_at or r.ended_at,
                duration_s=(r.ended_at - r.started_at) if r.started_at else 0.0,
                attempt=r.attempt or 1, reads=info.get("reads", {}),
                values=manifest.get("values", {}), deleted=info.get("deleted", []),
                unpersistable=info.get("unpersistable", {}),
                outputs=manifest.get("outputs", [])))
        elif r.kind == "step_completed":  # a @step function called from a cell
            state.fn_steps[r.step_name] = {"seq": r.seq, "code_hash": info.get("code_hash"),
                                           "encoding": r.encoding, "payload": r.payload}
        state.last_seq = r.seq
    return state


@dataclass(frozen=True)
class CellDecision:
    run: bool
    reason: str


def decide(state: NotebookState, name: str, code_hash: str, *, force: bool = False,
           always_run: bool = False, missing: frozenset[str] = frozenset()) -> CellDecision:
    """Restore the cell from the journal, or run it (and why).

    ``missing``: variables the cell's restore would need that are gone from the journal's
    reach (unpersistable values it produced)."""
    if force:
        return CellDecision(True, "--force")
    if always_run:
        return CellDecision(True, "--always-run")
    prev = state.steps.get(name)
    if prev is None:
        return CellDecision(True, "first run" if state.pending != name
                            else "it did not complete last time")
    if prev.code_hash != code_hash:
        return CellDecision(True, "code changed")
    for var, (producer, seq) in sorted(prev.reads.items()):
        current = state.steps.get(producer)
        if current is None or current.seq != seq:
            return CellDecision(True, f"upstream `{var}` changed (step '{producer}' ran again)")
    if prev.unpersistable:
        names = ", ".join(f"`{v}`" for v in sorted(prev.unpersistable))
        return CellDecision(True, f"{names} could not be persisted")
    return CellDecision(False, "completed before with the same code")


def value_producers(state: NotebookState) -> dict[str, tuple[str, int]]:
    """variable -> (producer step, seq) for every variable the journal knows."""
    return {var: (producer, seq) for var, (_, producer, seq) in state.variables.items()}


def to_recompute(state: NotebookState) -> dict[str, str]:
    """Variables whose latest value could not be persisted: variable -> type name."""
    return {var: ref["unpersistable"] for var, (ref, _, _) in state.variables.items()
            if "unpersistable" in ref}

