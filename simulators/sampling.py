"""Which readings are due: every sensor on its own interval, in simulated time.

Transport-free: the MQTT simulator calls :meth:`Sampler.advance` on every publish tick and
sends what comes back. Sample instants are whole multiples of the sensor's interval (in
milliseconds since 1970), so they are the same in every run and strictly increase per sensor.
"""

from __future__ import annotations

import heapq
import logging
from datetime import UTC, datetime, timedelta

from core.payload import Reading
from simulators.scenarios import Scenario
from simulators.values import DeviceModel

logger = logging.getLogger(__name__)

_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SCENARIO_STEP_MS = 1_000
"""The scenario is stepped at most once per simulated second of sample time."""


def _ms(at: datetime) -> int:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"simulated time {at!r} must carry a UTC offset")
    return (at - _UNIX_EPOCH) // timedelta(milliseconds=1)


class Sampler:
    """Due readings of a building's sensors, grouped by floor, in time order.

    ``max_samples`` bounds the readings of one sensor in one :meth:`advance` (after a stall,
    or at a very high speed): past it, the sensor's samples are thinned evenly over the
    period (every 2nd, 3rd, ... instant) rather than cut off, so charts stay continuous.
    """

    def __init__(
        self,
        model: DeviceModel,
        scenario: Scenario,
        start: datetime,
        *,
        max_samples: int = 120,
    ) -> None:
        self.model = model
        self.scenario = scenario
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, not {max_samples!r}")
        self.max_samples = max_samples
        self.skipped = 0
        self._sensors = list(model.sensors)
        self._interval_ms = [max(1, round(s.interval_s * 1000)) for s in self._sensors]
        start_ms = _ms(start)
        self._heap = [(-(-start_ms // iv) * iv, i) for i, iv in enumerate(self._interval_ms)]
        heapq.heapify(self._heap)
        self._last_step_ms: int | None = None

    def advance(self, until: datetime) -> dict[int, list[Reading]]:
        """Readings due up to and including ``until``, by floor, oldest first."""
        until_ms = _ms(until)
        out: dict[int, list[Reading]] = {}
        strides: dict[int, int] = {}  # per sensor, fixed for this call
        heap = self._heap
        while heap and heap[0][0] <= until_ms:
            due_ms, i = heap[0]
            interval = self._interval_ms[i]
            stride = strides.get(i)
            if stride is None:
                behind = (until_ms - due_ms) // interval + 1  # due samples, this one included
                stride = strides[i] = -(-behind // self.max_samples)
                if stride > 1:
                    self.skipped += behind - -(-behind // stride)
                    logger.debug(
                        "sensor %s is %d samples behind: keeping 1 in %d",
                        self._sensors[i].id,
                        behind,
                        stride,
                    )
            at = _UNIX_EPOCH + timedelta(milliseconds=due_ms)
            if self._last_step_ms is None or due_ms - self._last_step_ms >= SCENARIO_STEP_MS:
                self.scenario.step(self.model, at)
                self._last_step_ms = due_ms
            sensor = self._sensors[i]
            value = self.model.value(sensor.id, at)
            if value is not None:
                out.setdefault(sensor.floor, []).append(Reading(sensor.id, at, value))
            heapq.heapreplace(heap, (due_ms + stride * interval, i))
        return out
