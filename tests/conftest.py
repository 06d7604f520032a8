"""Shared fixtures: a real PostgreSQL and a real MQTT broker for every test.

``UPSTAIRS_TEST_DATABASE_URL`` / ``UPSTAIRS_TEST_MQTT_URL`` point the suite at running
services (``.ci/run`` sets them when the machine's PostgreSQL and Mosquitto answer). Unset,
the suite starts the embedded ones once per session. Nothing is ever skipped for want of a
service. Each test gets a schema of its own and a topic prefix of its own.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from core.db import migrate, with_search_path
from core.settings import MqttAddress, parse_mqtt_url
from tests.mqtt_broker import broker  # noqa: F401 (fixture for the MQTT security tests)

ROOT = Path(__file__).resolve().parent.parent
REF_TOWER = ROOT / "deploy" / "buildings" / "ref-tower.yaml"


@pytest.fixture(scope="session")
def tmp_session_dir() -> Iterator[Path]:
    base = ROOT / ".upstairs" / "test-tmp"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def pg_server_url(tmp_session_dir: Path) -> Iterator[str]:
    """URL of a PostgreSQL server: the configured one, else an embedded one."""
    url = os.environ.get("UPSTAIRS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from upstairs.embedded import EmbeddedPostgres

    with EmbeddedPostgres(tmp_session_dir / "pg") as server:
        yield server.url


@pytest.fixture(scope="session")
def mqtt_server_url(tmp_session_dir: Path) -> Iterator[str]:
    """URL of an MQTT broker: the configured one, else an embedded one."""
    url = os.environ.get("UPSTAIRS_TEST_MQTT_URL")
    if url:
        yield url
        return
    from upstairs.embedded import EmbeddedBroker

    with EmbeddedBroker(tmp_session_dir / "broker") as embedded:
        yield embedded.url


@pytest.fixture
def db_url(pg_server_url: str) -> Iterator[str]:
    """A migrated schema of this test's own; its conninfo sets the search_path."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = with_search_path(pg_server_url, schema)
    try:
        migrate(url)
        yield url
    finally:  # a migration that fails leaves no schema behind either
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@dataclass(frozen=True)
class MqttTarget:
    url: str
    address: MqttAddress
    prefix: str  # this test's topic prefix, ends with '/'


@pytest.fixture
def mqtt(mqtt_server_url: str) -> MqttTarget:
    return MqttTarget(
        mqtt_server_url, parse_mqtt_url(mqtt_server_url), f"t-{secrets.token_hex(4)}/"
    )


@pytest.fixture
def service_env(db_url: str, mqtt: MqttTarget) -> dict[str, str]:
    """Environment for a service subprocess pointed at this test's schema and prefix."""
    env = dict(os.environ)
    env.update(
        UPSTAIRS_DATABASE_URL=db_url,
        UPSTAIRS_MQTT_URL=mqtt.url,
        UPSTAIRS_TOPIC_PREFIX=mqtt.prefix,
    )
    return env


@pytest.fixture(autouse=True)
def _no_leftover_tasks() -> Iterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    yield
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        return
    if loop.is_closed():
        return
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    assert not pending, f"test left tasks running: {pending}"
