"""``upstairs gateway --building FILE --floor N``: the edge bridge of one floor.

Polls the floor's devices over Modbus TCP (:mod:`gateway.poller`), commits the readings to the
SQLite queue once per publish interval (:mod:`gateway.queue`) and publishes them as contract-v1
telemetry at QoS 1 (:mod:`gateway.uplink`). Runs until SIGINT/SIGTERM (or ``stop``); on a clean
stop the last readings are committed and a retained ``offline`` status is published.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from core.building import Building
from core.building_file import BuildingFileError, load_building
from core.registers import RegisterError, floor_port
from core.settings import SettingsError, parse_mqtt_url
from core.topics import status_topic, telemetry_topic
from gateway.poller import Faults, Poller, floor_devices
from gateway.queue import QueueError, ReadingQueue
from gateway.settings import GatewaySettings
from gateway.uplink import Topics, Uplink

logger = logging.getLogger(__name__)

#: A clean stop takes at most ``STOP_WAIT_S`` + 2 s (the offline status) + 3 s (the
#: disconnect) in the uplink; past this, :func:`_stop_deadline` ends the process.
STOP_DEADLINE_S = 15.0


class Gateway:
    """The parts of a running gateway, for :func:`run_gateway` and the benchmark."""

    def __init__(self, building: Building, floor: int, settings: GatewaySettings) -> None:
        building.floor(floor)  # KeyError for a floor the building does not have
        if not settings.mqtt.mqtt_url:
            raise SettingsError("UPSTAIRS_MQTT_URL must be set for the gateway")
        self.settings = settings
        self.floor = floor
        prefix = settings.mqtt.topic_prefix
        self.source = settings.source_name(building.id, floor)
        self.queue = ReadingQueue(
            settings.queue_file(building.id, floor),
            max_readings=settings.queue_max_readings,
            max_age_s=settings.queue_max_age_s,
            full_sync=settings.queue_full_sync,
        )
        self.pending: list[tuple[str, int, float]] = []
        self.faults = Faults()
        self.poller = Poller(
            settings.modbus_host,
            floor_port(settings.modbus_port_base, floor),
            floor_devices(building, floor),
            self._on_reading,
            connections=settings.modbus_connections,
            timeout_s=settings.modbus_timeout_s,
            faults=self.faults,
        )
        self.uplink = Uplink(
            parse_mqtt_url(settings.mqtt.mqtt_url),
            Topics(
                telemetry_topic(building.id, floor, prefix),
                status_topic(building.id, floor, prefix),
            ),
            self.queue,
            self.faults,
            source=self.source,
            client_id=settings.client_id or _client_id(building.id, floor, prefix),
            batch_max=settings.batch_max_readings,
            replay_window=settings.replay_window,
            keepalive_s=settings.keepalive_s,
            backoff_max_s=settings.backoff_max_s,
            status_interval_s=settings.publish_interval_s,
        )

    def _on_reading(self, sensor: str, ts_ms: int, value: float) -> None:
        self.pending.append((sensor, ts_ms, value))

    def commit(self) -> None:
        """Move the polled readings to the queue, and hand them to the live publisher."""
        rows, self.pending = self.pending, []
        ids = self.queue.append(rows, time.time_ns() // 1_000_000)
        if ids is not None:
            self.uplink.send_live(*ids)

    async def _commit_loop(self) -> None:
        interval = self.settings.publish_interval_s
        while True:
            await asyncio.sleep(interval - time.time() % interval)
            try:
                self.commit()
            except Exception:  # a disk fault: keep polling, try again next interval
                logger.exception("could not commit %d readings to the queue", len(self.pending))

    async def run(self, stop: asyncio.Event) -> None:
        logger.info(
            "gateway %s: %d devices on %s:%d, queue %s (%d readings waiting)",
            self.source,
            len(self.poller.devices),
            self.poller.host,
            self.poller.port,
            self.queue.path,
            self.queue.count,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                poll = tg.create_task(self.poller.run(), name="gateway-poll")
                uplink = tg.create_task(self.uplink.run(), name="gateway-uplink")
                commit = tg.create_task(self._commit_loop(), name="gateway-commit")
                await stop.wait()
                for task in (poll, commit):
                    task.cancel()
                await asyncio.wait([poll, commit])
                self.commit()  # the last readings, so that a clean stop loses nothing
                await self.uplink.stop()
                uplink.cancel()
        finally:
            self.queue.close()
            logger.info("gateway %s stopped", self.source)


def _stop_deadline(loop: asyncio.AbstractEventLoop, seconds: float) -> Callable[[], None]:
    """A stop that does not end within ``seconds`` is a bug: log where every task (and, if
    the loop itself is stuck, every thread) waits, and exit with status 3 rather than hang
    whoever waits for us. What was committed to the queue is on disk either way (SQLite, its
    commits in the WAL). Returns what cancels the deadline, for a stop that ended in time."""

    def stuck() -> None:
        logger.error("the gateway did not stop within %g s; its tasks:", seconds)
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    def loop_stuck() -> None:
        logger.error("the gateway's event loop did not stop within %g s", seconds + 5)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)

    handle = loop.call_later(seconds, stuck)
    watchdog = threading.Timer(seconds + 5, loop_stuck)
    watchdog.daemon = True
    watchdog.start()

    def cancel() -> None:
        handle.cancel()
        watchdog.cancel()

    return cancel


def _client_id(building: str, floor: int, prefix: str) -> str:
    tag = f"-{hashlib.sha1(prefix.encode()).hexdigest()[:8]}" if prefix else ""
    return f"upstairs-gw-{building}-{floor}{tag}"


async def run_gateway(
    building: Building,
    floor: int,
    settings: GatewaySettings,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the gateway of one floor until ``stop`` is set (or the task is cancelled)."""
    await Gateway(building, floor, settings).run(stop or asyncio.Event())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="upstairs gateway", description="Edge gateway of one floor: Modbus TCP to MQTT."
    )
    parser.add_argument("--building", type=Path, required=True, help="building file (YAML)")
    parser.add_argument("--floor", type=int, required=True)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # faults are reported by us
    try:
        building = load_building(args.building)
        if args.floor not in {f.number for f in building.floors}:
            print(f"upstairs gateway: no floor {args.floor} in {args.building}", file=sys.stderr)
            return 2
        settings = GatewaySettings()

        async def run() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()

            deadlines: list[Callable[[], None]] = []

            def on_signal() -> None:
                if not stop.is_set():
                    stop.set()
                    deadlines.append(_stop_deadline(loop, STOP_DEADLINE_S))

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal)
            try:
                await run_gateway(building, args.floor, settings, stop=stop)
            finally:
                for cancel in deadlines:  # stopped in time: nothing to report
                    cancel()

        asyncio.run(run())
    except (BuildingFileError, ValidationError, SettingsError, QueueError, RegisterError) as exc:
        print(f"upstairs gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
