"""Hysteresis and on-/off-delays of one (rule, subject): the pure core of "no flapping".

A :class:`Condition` holds the confirmed level (None = clear) and, while the input says
something else, a pending move with its direction and start time. A move up must hold for the
on-delay, a move down for the off-delay; a reading that goes back to the confirmed level
cancels the pending move. Leaving a level needs the value to fall a deadband below the
level's threshold (:func:`target_level`). With incomplete input (a stale meter in a sum) a
condition may still rise, since the known part already proves it, but it never falls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core.alert_types import SEVERITY_RANK, Severity

Level = Severity | None


def rank(level: Level) -> int:
    return -1 if level is None else SEVERITY_RANK[level]


@dataclass(slots=True)
class Condition:
    level: Level = None
    pending_dir: int = 0  # +1 rising, -1 falling, 0 none
    pending_since: datetime | None = None

    @property
    def idle(self) -> bool:
        """Clear with nothing pending: no need to remember (or persist) it."""
        return self.level is None and self.pending_dir == 0

    def snapshot(self) -> tuple[Level, int, datetime | None]:
        return (self.level, self.pending_dir, self.pending_since)


@dataclass(frozen=True, slots=True)
class Transition:
    old: Level
    new: Level


def target_level(
    value: float, levels: Sequence[tuple[Severity, float]], deadband: float, current: Level
) -> Level:
    """The level ``value`` asks for. ``levels`` are (severity, threshold), ascending.

    A level is entered at its threshold and kept down to ``threshold - deadband``.
    """
    out: Level = None
    for severity, threshold in levels:
        if value >= threshold or (
            rank(severity) <= rank(current) and value >= threshold - deadband
        ):
            out = severity
    return out


def advance(
    cond: Condition,
    target: Level,
    at: datetime,
    on_delay_s: float,
    off_delay_s: float,
    *,
    can_fall: bool = True,
) -> Transition | None:
    """Move ``cond`` toward ``target`` observed at ``at``; return the confirmed change, if any."""
    if target == cond.level:
        cond.pending_dir, cond.pending_since = 0, None
        return None
    direction = 1 if rank(target) > rank(cond.level) else -1
    if direction < 0 and not can_fall:
        cond.pending_dir, cond.pending_since = 0, None
        return None
    if cond.pending_dir != direction or cond.pending_since is None:
        cond.pending_dir, cond.pending_since = direction, at
    delay = on_delay_s if direction > 0 else off_delay_s
    if (at - cond.pending_since).total_seconds() >= delay:
        old = cond.level
        cond.level, cond.pending_dir, cond.pending_since = target, 0, None
        return Transition(old, target)
    return None
