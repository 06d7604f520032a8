"""The simulated clock: wall-clock time, started now, running ``speed`` times faster."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta


class SimClock:
    """Simulated time starts at ``start`` (default: now, UTC) and runs ``speed`` x wall time.

    ``speed=60`` is a simulated day in 24 minutes. It runs on the monotonic clock, so a wall
    clock step (NTP, DST) never makes simulated time go backwards.
    """

    def __init__(
        self, speed: float = 1.0, start: datetime | None = None, *, catch_up: bool = False
    ) -> None:
        if not math.isfinite(speed) or speed <= 0:
            raise ValueError(f"speed must be a finite number > 0, not {speed!r}")
        if start is not None and (start.tzinfo is None or start.utcoffset() is None):
            raise ValueError("the simulated start time must carry a UTC offset")
        self.speed = speed
        self.catch_up = catch_up
        self.start = (start or datetime.now(UTC)).astimezone(UTC)
        self._origin = time.monotonic()

    def now(self) -> datetime:
        """The current simulated time (UTC).

        With ``catch_up``, simulated time never passes the wall clock: a simulation started
        in the past runs ``speed`` times faster until it reaches now, then in real time. That
        is how ``upstairs demo --speed 60`` backfills history without future timestamps.
        """
        simulated = self.start + timedelta(seconds=(time.monotonic() - self._origin) * self.speed)
        if self.catch_up:
            return min(simulated, datetime.now(UTC))
        return simulated
