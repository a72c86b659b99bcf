"""The per-pool gate: a pool a stage refused, carried in the data instead of failing a run.

A batch of pools runs as one Dagster run, so one pool's failed blocking rule must not stop the
others: the stage's output for that pool is a :class:`Blocked` value, and every downstream stage
skips it (and says so) instead of computing with unsafe data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Blocked:
    """A pool a stage did not compute: the stage that refused it first and why."""

    pool_id: str
    stage: str
    reason: str

    def __str__(self) -> str:
        return f"blocked by {self.stage}: {self.reason}"


def first_blocked(pool_id: str, *inputs: Any) -> Blocked | None:
    """The first of a pool's inputs that is :class:`Blocked` (the upstream gate), else None."""
    for value in inputs:
        if isinstance(value, Blocked):
            return value
    return None


def split(outputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Blocked]]:
    """(computed pools, blocked pools) of a stage's batch output."""
    done = {p: v for p, v in outputs.items() if not isinstance(v, Blocked)}
    blocked = {p: v for p, v in outputs.items() if isinstance(v, Blocked)}
    return done, blocked
