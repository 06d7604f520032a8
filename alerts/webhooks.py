"""Webhook delivery from the outbox: at least once, in order per URL, HMAC-signed.

Each outbox row is POSTed as it was written (the event JSON). Headers:
``X-Upstairs-Event-Id`` (receivers drop repeats by it), ``X-Upstairs-Timestamp`` (Unix
seconds) and ``X-Upstairs-Signature: sha256=<hex>`` = HMAC-SHA256 of ``"{timestamp}." + body``
with the shared secret. A failed row is retried with jittered exponential backoff and blocks
the rows behind it for the same URL, so the receiver sees every alert's events in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
from psycopg.rows import tuple_row

from alerts.clock import Clock
from core.aio import wait_event

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Upstairs-Signature"
TIMESTAMP_HEADER = "X-Upstairs-Timestamp"
EVENT_HEADER = "X-Upstairs-Event-Id"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def backoff_s(attempts: int, initial_s: float, max_s: float) -> float:
    """Full-jitter exponential backoff: 0.5..1 x initial * 2^(attempts-1), capped."""
    base = min(max_s, initial_s * 2 ** max(0, attempts - 1))
    return float(base * random.uniform(0.5, 1.0))


class WebhookSender:
    def __init__(
        self,
        conninfo: str,
        buildings: Sequence[str],
        secret: bytes,
        clock: Clock,
        *,
        timeout_s: float = 5.0,
        initial_s: float = 1.0,
        max_s: float = 60.0,
        poll_s: float = 1.0,
    ) -> None:
        self.conninfo = conninfo
        self.buildings = list(buildings)
        self.secret = secret
        self.clock = clock
        self.timeout_s = timeout_s
        self.initial_s, self.max_s, self.poll_s = initial_s, max_s, poll_s
        self.wake = asyncio.Event()

    async def run(self) -> None:
        async with (
            await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn,
            httpx.AsyncClient(timeout=self.timeout_s) as http,
        ):
            while True:
                delivered = await self.deliver_due(conn, http)
                if delivered:
                    continue
                self.wake.clear()
                await wait_event(self.wake, self.poll_s)

    async def deliver_due(self, conn: psycopg.AsyncConnection[Any], http: httpx.AsyncClient) -> int:
        """Try the head of every URL's queue that is due; return how many were delivered."""
        now = self.clock.now()
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(
            "SELECT DISTINCT ON (url) id, url, event_id, body, attempts, next_attempt_at"
            " FROM alert_webhook_outbox WHERE delivered_at IS NULL AND building_id = ANY(%s)"
            " ORDER BY url, id",
            (self.buildings,),
        )
        heads = await cur.fetchall()
        delivered = 0
        for row_id, url, event_id, body, attempts, next_at in heads:
            if next_at > now:
                continue
            error = await self._post(http, url, int(event_id), bytes(body), now)
            if error is None:
                await conn.execute(
                    "UPDATE alert_webhook_outbox SET delivered_at = %s, attempts = attempts + 1,"
                    " last_error = NULL WHERE id = %s",
                    (now, row_id),
                )
                delivered += 1
            else:
                delay = backoff_s(attempts + 1, self.initial_s, self.max_s)
                await conn.execute(
                    "UPDATE alert_webhook_outbox SET attempts = attempts + 1, last_error = %s,"
                    " next_attempt_at = %s WHERE id = %s",
                    (error[:500], now + timedelta(seconds=delay), row_id),
                )
                logger.warning(
                    "webhook %s: event %s not delivered (attempt %d, retry in %.1f s): %s",
                    url, event_id, attempts + 1, delay, error,
                )  # fmt: skip
        return delivered

    async def _post(
        self, http: httpx.AsyncClient, url: str, event_id: int, body: bytes, now: datetime
    ) -> str | None:
        timestamp = str(int(now.timestamp()))
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: str(event_id),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
        }
        try:
            response = await http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"
