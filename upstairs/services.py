"""Where the database and the broker are: the configured ones, or embedded ones.

``UPSTAIRS_DATABASE_URL`` / ``UPSTAIRS_MQTT_URL`` set: used as they are. Unset: an embedded
PostgreSQL and an embedded broker are started in the data folder and stopped on exit. The
pip broker can be forced with ``UPSTAIRS_EMBEDDED_BROKER=iotcore`` (default ``auto``: a
``mosquitto`` on PATH if there is one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    mqtt_url: str
    embedded_database: bool
    embedded_broker: str | None

    def env(self) -> dict[str, str]:
        return {"UPSTAIRS_DATABASE_URL": self.database_url, "UPSTAIRS_MQTT_URL": self.mqtt_url}


@contextmanager
def endpoints(data_dir: Path, *, need_broker: bool = True) -> Iterator[Endpoints]:
    """Yield the endpoints, starting embedded services for what is not configured."""
    database_url = os.environ.get("UPSTAIRS_DATABASE_URL") or None
    mqtt_url = os.environ.get("UPSTAIRS_MQTT_URL") or None
    broker_kind: str | None = None
    with ExitStack() as stack:
        if database_url is None or (need_broker and mqtt_url is None):
            data_dir.mkdir(parents=True, exist_ok=True)
        if database_url is None:
            from upstairs.embedded import EmbeddedPostgres

            logger.info("UPSTAIRS_DATABASE_URL unset: starting embedded PostgreSQL")
            pg = stack.enter_context(EmbeddedPostgres(data_dir.resolve() / "pg"))
            database_url = pg.url
        if need_broker and mqtt_url is None:
            from upstairs.embedded import EmbeddedBroker

            prefer = os.environ.get("UPSTAIRS_EMBEDDED_BROKER", "auto")
            logger.info("UPSTAIRS_MQTT_URL unset: starting an embedded broker (%s)", prefer)
            broker = stack.enter_context(
                EmbeddedBroker(data_dir.resolve() / "broker", prefer=prefer)
            )
            mqtt_url, broker_kind = broker.url, broker.kind
        yield Endpoints(
            database_url=database_url,
            mqtt_url=mqtt_url or "",
            embedded_database="UPSTAIRS_DATABASE_URL" not in os.environ
            or not os.environ["UPSTAIRS_DATABASE_URL"],
            embedded_broker=broker_kind,
        )
