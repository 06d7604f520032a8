"""Prometheus metrics of one ingester, and a tiny asyncio HTTP server for ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from core.payload import Reason

logger = logging.getLogger(__name__)


class IngestMetrics:
    """Every metric of the ingester, in a registry of its own (several may run in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter("upstairs_ingest_messages", "MQTT messages received", registry=r)
        self.stored = Counter("upstairs_ingest_readings_stored", "readings committed", registry=r)
        self.duplicates = Counter(
            "upstairs_ingest_readings_duplicate",
            "readings already stored (redelivered), not stored again",
            registry=r,
        )
        self.dead = Counter(
            "upstairs_ingest_dead_letters", "dead-letter rows by reason", ["reason"], registry=r
        )
        for reason in Reason:
            self.dead.labels(str(reason))
        self.batches = Counter(
            "upstairs_ingest_batches", "committed batches by path", ["path"], registry=r
        )
        self.batch_rows = Histogram(
            "upstairs_ingest_batch_rows",
            "readings per committed batch",
            buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "upstairs_ingest_commit_seconds",
            "time to write and commit one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.queue_rows = Gauge(
            "upstairs_ingest_queue_readings", "parsed readings waiting for a batch", registry=r
        )
        self.queue_messages = Gauge(
            "upstairs_ingest_queue_messages", "messages waiting for their commit", registry=r
        )
        self.broker_up = Gauge(
            "upstairs_ingest_broker_connected", "1 while connected to the broker", registry=r
        )
        self.database_up = Gauge(
            "upstairs_ingest_database_connected", "1 while connected to PostgreSQL", registry=r
        )
        self.db_errors = Counter(
            "upstairs_ingest_database_errors", "failed batch attempts (retried)", registry=r
        )
        self.registry_reloads = Counter(
            "upstairs_ingest_registry_reloads", "sensor registry loads", registry=r
        )
        self.registry_sensors = Gauge(
            "upstairs_ingest_registry_sensors", "sensors in the loaded registry", registry=r
        )

        self.rollup_partials = Counter(
            "upstairs_ingest_rollup_partials",
            "pending partials merged by the refresher",
            registry=r,
        )
        self.rollup_seconds = Histogram(
            "upstairs_ingest_rollup_refresh_seconds",
            "time of one rollup refresh transaction",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.rollup_refreshed = Gauge(
            "upstairs_ingest_rollup_refreshed_timestamp_seconds",
            "unix time of the last successful rollup refresh",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


@contextlib.asynccontextmanager
async def serve_metrics(metrics: IngestMetrics, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``GET /metrics`` until the block exits; yields the bound port (0: not served)."""
    if port == 0:
        yield 0
        return

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                body, status, ctype = metrics.render(), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    bound = int(server.sockets[0].getsockname()[1])
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
