"""``upstairs simulate``: the device simulators of a building, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from core.building_file import BuildingFileError, load_building
from core.settings import MqttSettings, parse_mqtt_url


def run_simulate(building_file: Path, mode: str, speed: float, scenario: str, seed: int) -> int:
    from simulators import SCENARIOS, run_mqtt_simulator

    try:
        building = load_building(building_file)
    except BuildingFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    if scenario not in SCENARIOS:
        print(
            f"unknown scenario {scenario!r}; known: {', '.join(sorted(SCENARIOS))}", file=sys.stderr
        )
        return 2
    settings = MqttSettings()
    if not settings.mqtt_url:
        print("UPSTAIRS_MQTT_URL must be set (upstairs demo sets it for you)", file=sys.stderr)
        return 2
    address = parse_mqtt_url(settings.mqtt_url)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_mqtt_simulator(
            building,
            address,
            prefix=settings.topic_prefix,
            speed=speed,
            scenario=scenario,
            seed=seed,
            stop=stop,
        )

    asyncio.run(run())
    return 0
