"""``upstairs simulate``: the device simulators of a building, until SIGINT/SIGTERM.

``--mode mqtt`` publishes contract-v1 telemetry straight to the broker, starting
``--backfill-hours`` in the past and running ``--speed`` times faster until it reaches the
wall clock, then in real time (timestamps are never in the future); ``--mode modbus``
serves every floor's devices over Modbus TCP on 127.0.0.1 (port base + floor) for the
floor gateways to poll.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.building_file import BuildingFileError, load_building
from core.settings import MqttSettings, parse_mqtt_url


def run_simulate(
    building_file: Path,
    mode: str,
    speed: float,
    scenario: str,
    seed: int,
    port_base: int = 15000,
    backfill_hours: float = 0.0,
) -> int:
    from simulators import MODBUS_SCENARIOS, SCENARIOS, run_modbus_simulator, run_mqtt_simulator

    try:
        building = load_building(building_file)
    except BuildingFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    known = MODBUS_SCENARIOS if mode == "modbus" else tuple(SCENARIOS)
    if scenario not in known:
        print(f"unknown scenario {scenario!r}; known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if mode == "modbus":
            await run_modbus_simulator(
                building, port_base=port_base, speed=speed, scenario=scenario, seed=seed, stop=stop
            )
            return
        settings = MqttSettings()
        if not settings.mqtt_url:
            raise SystemExit("UPSTAIRS_MQTT_URL must be set (upstairs demo sets it for you)")
        await run_mqtt_simulator(
            building,
            parse_mqtt_url(settings.mqtt_url),
            prefix=settings.topic_prefix,
            speed=speed,
            scenario=scenario,
            seed=seed,
            stop=stop,
            start=datetime.now(UTC) - timedelta(hours=backfill_hours),
            catch_up=True,
        )

    asyncio.run(run())
    return 0
