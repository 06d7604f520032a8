"""The ingester: MQTT telemetry in, PostgreSQL rows out, acknowledged only after commit.

Two long-lived tasks share an :class:`~ingest.intake.Intake`: the MQTT subscriber parses each
message as it arrives and waits for its commit; the writer forms batches (by size and age),
checks them against the sensor registry and writes each in one transaction. Database trouble
stops the writer, which keeps the batch and retries; the intake fills up, and once the broker
has ``receive_maximum`` unacknowledged messages out to us it stops sending: memory stays
bounded and nothing is lost or acknowledged early.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from core.db import migrate
from core.gc_tuning import tune_gc
from core.payload import Reason
from core.registry import Registry, load_registry_async
from core.settings import SettingsError, parse_mqtt_url
from ingest.intake import Intake, Pending
from ingest.metrics import IngestMetrics, serve_metrics
from ingest.mqtt import Subscriber, telemetry_filter
from ingest.poison import REFUSED_DATA, bisect_readings
from ingest.rollups import RollupRefresher
from ingest.settings import IngestSettings
from ingest.store import AsyncConn, Store, WriteOutcome
from ingest.validate import Checked, Limits, check_readings, parse_message

logger = logging.getLogger(__name__)


class Writer:
    """Forms batches from the intake and commits them; owns the database connection."""

    def __init__(self, settings: IngestSettings, intake: Intake, metrics: IngestMetrics) -> None:
        assert settings.db.database_url is not None
        self._url = settings.db.database_url
        self._settings = settings
        self._intake = intake
        self._metrics = metrics
        self._conn: AsyncConn | None = None
        self._store: Store | None = None
        self._registry: Registry = {}
        self._loaded_at = -1e9
        self._limits = Limits(
            timedelta(seconds=settings.max_future_s), timedelta(days=settings.max_age_days)
        )

    async def run(self) -> None:
        try:
            while True:
                batch = await self._intake.take(self._settings.batch_age_s)
                await self._commit(batch)
                self._metrics.queue_rows.set(self._intake.rows)
                self._metrics.queue_messages.set(self._intake.messages)
        finally:
            await self._disconnect()

    async def close(self) -> None:
        await self._disconnect()

    async def drain(self) -> None:
        """Commit whatever is waiting now (used on a graceful stop)."""
        while self._intake.messages:
            await self._commit(await self._intake.take(0))

    async def _commit(self, batch: list[Pending]) -> None:
        failures = 0
        while True:
            try:
                store = await self._connected()
                checked = await self._checked(batch)
                started = time.perf_counter()
                outcomes = await self._isolate(store, batch, checked)
                elapsed = time.perf_counter() - started
                break
            except asyncio.CancelledError:
                for pending in batch:  # not committed: the broker will redeliver them
                    if not pending.done.done():
                        pending.done.set_result(False)
                raise
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                failures += 1
                self._metrics.db_errors.inc()
                logger.warning("database unavailable (%s); batch kept, retrying", exc)
                await self._disconnect()
            except psycopg.Error:
                failures += 1
                logger.exception("batch of %d messages failed; retrying", len(batch))
            delay = min(self._settings.db_backoff_max_s, 0.05 * 2 ** min(failures, 10))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(True)
        m = self._metrics
        for outcome in outcomes:
            m.stored.inc(outcome.stored)
            m.duplicates.inc(outcome.duplicates)
            for letter in outcome.dead:
                m.dead.labels(str(letter.reason)).inc()
            m.batches.labels("dedup" if outcome.slow_path else "copy").inc()
            m.batch_rows.observe(outcome.stored)
            if outcome.dead:
                logger.info(
                    "batch: %d stored, %d dead letters (%s)",
                    outcome.stored,
                    len(outcome.dead),
                    ", ".join(sorted({str(d.reason) for d in outcome.dead})),
                )
        m.commit_seconds.observe(elapsed)

    def _check(self, batch: list[Pending]) -> Checked:
        return check_readings(
            [p.parsed for p in batch], self._registry, datetime.now(UTC), self._limits
        )

    async def _isolate(
        self, store: Store, batch: list[Pending], checked: Checked | None = None
    ) -> list[WriteOutcome]:
        """Write the batch; when the database refuses its data (a data or integrity error),
        write halves of it until each refused reading stands alone, and dead-letter those.
        Other errors (connection, a missing table, privileges) are not the data's fault:
        the caller keeps the batch and retries it, so a broken schema stalls intake loudly
        instead of dead-lettering every reading."""
        try:
            return [await store.write(checked or self._check(batch))]
        except REFUSED_DATA as exc:  # the data's fault; anything else is retried as a whole
            self._metrics.db_errors.inc()
            if len(batch) > 1:
                logger.warning("batch of %d messages refused (%s); splitting", len(batch), exc)
                mid = len(batch) // 2
                return await self._isolate(store, batch[:mid]) + await self._isolate(
                    store, batch[mid:]
                )
            return await bisect_readings(store, self._check(batch), batch[0].parsed, exc)

    async def _connected(self) -> Store:
        if self._store is None or self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._url,
                autocommit=True,
                connect_timeout=5,
                application_name=self._settings.application_name("writer"),
            )
            self._store = Store(self._conn, energy_reset_kwh=self._settings.energy_reset_kwh)
            self._metrics.database_up.set(1)
            logger.info("connected to the database")
        return self._store

    async def _disconnect(self) -> None:
        conn, self._conn, self._store = self._conn, None, None
        self._metrics.database_up.set(0)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _checked(self, batch: list[Pending]) -> Checked:
        """The batch checked against the registry: reloaded when older than
        ``registry_refresh_s``, or when it misses a sensor the batch names (at most once
        per ``registry_min_reload_s``), so a newly applied building is picked up."""
        age = time.monotonic() - self._loaded_at
        if age >= self._settings.registry_refresh_s:
            await self._load_registry()
        checked = self._check(batch)
        if time.monotonic() - self._loaded_at >= self._settings.registry_min_reload_s and any(
            d.reason is Reason.UNKNOWN_SENSOR for d in checked.dead
        ):
            await self._load_registry()
            checked = self._check(batch)
        return checked

    async def _load_registry(self) -> None:
        assert self._conn is not None
        self._registry = await load_registry_async(self._conn)
        self._loaded_at = time.monotonic()
        self._metrics.registry_reloads.inc()
        self._metrics.registry_sensors.set(len(self._registry))


async def run_ingester(
    settings: IngestSettings,
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run until ``stop`` is set (or the task is cancelled); exit cleanly either way.

    ``ready`` is set once the subscription is in place (messages published after that are
    kept for this ingester's session even while it is away).
    """
    if settings.db.database_url is None or settings.mqtt.mqtt_url is None:
        raise SettingsError("the ingester needs UPSTAIRS_DATABASE_URL and UPSTAIRS_MQTT_URL")
    address = parse_mqtt_url(settings.mqtt.mqtt_url)
    stop = stop or asyncio.Event()
    metrics = IngestMetrics()
    intake = Intake(settings.max_pending_readings, settings.batch_size)
    await _migrate(settings.db.database_url, stop)
    prefix = settings.mqtt.topic_prefix

    async def on_message(topic: str, payload: bytes) -> None:
        metrics.messages.inc()
        await intake.wait_for_room()
        parsed = parse_message(topic, payload, prefix, datetime.now(UTC))
        done = intake.put(parsed)
        await done

    subscriber = Subscriber(
        address,
        client_id=settings.client_id,
        topic_filter=telemetry_filter(prefix, settings.shared_group),
        session_expiry_s=settings.session_expiry_s,
        receive_maximum=settings.receive_maximum,
        on_message=on_message,
        on_state=metrics.broker_up.set,
        backoff_max_s=settings.backoff_max_s,
    )
    writers = [Writer(settings, intake, metrics) for _ in range(settings.writers)]
    async with serve_metrics(metrics, settings.metrics_host, settings.metrics_port):
        mqtt_stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            mqtt_task = group.create_task(subscriber.run(mqtt_stop), name="ingest-mqtt")
            writer_tasks = [
                group.create_task(w.run(), name=f"ingest-writer-{i}") for i, w in enumerate(writers)
            ]
            rollup_stop = asyncio.Event()
            if settings.rollup_interval_s > 0:
                refresher = RollupRefresher(settings, metrics)
                group.create_task(refresher.run(rollup_stop), name="ingest-rollups")
            try:
                if ready is not None:
                    await _first_of(subscriber.connected.wait(), stop.wait())
                    ready.set()
                await stop.wait()
            finally:
                # Graceful: commit and acknowledge what is in hand, then leave the session
                # (never unsubscribe: the broker keeps queuing for us).
                for task in writer_tasks:
                    task.cancel()
                await asyncio.gather(*writer_tasks, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writers[0].drain(), 5)
                await writers[0].close()
                mqtt_stop.set()
                rollup_stop.set()
                await mqtt_task
                abandoned = intake.close()
                if abandoned:
                    logger.info("left %d unacknowledged messages to the broker", abandoned)
                await asyncio.sleep(0)  # let on_message handlers finish
    logger.info("ingester stopped")


async def _first_of(*aws: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.create_task(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _migrate(url: str, stop: asyncio.Event) -> None:
    failures = 0
    while True:
        try:
            applied = await asyncio.to_thread(migrate, url)
            if applied:
                logger.info("applied migrations %s", ", ".join(applied))
            return
        except psycopg.OperationalError as exc:
            failures += 1
            logger.warning("database not reachable for migrations (%s); retrying", exc)
            if stop.is_set():
                raise
            await asyncio.sleep(min(10.0, 0.2 * 2**failures) * random.uniform(0.5, 1.0))


def main(argv: list[str] | None = None) -> int:
    """``upstairs ingest``: run the ingester until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="upstairs ingest", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    settings = IngestSettings()
    tune_gc()

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_ingester(settings, stop=stop)

    try:
        asyncio.run(_run())
    except SettingsError as exc:
        logger.error("%s", exc)
        return 2
    return 0
