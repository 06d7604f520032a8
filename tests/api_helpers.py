"""Helpers of the API tests: a building in the test's schema, tokens, readings, clients."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime

import psycopg
from fastapi.testclient import TestClient

from api import seed
from api.app import create_app
from api.settings import ApiSettings
from api.tokens import create_token
from core.building import Building
from core.building_file import load_building
from core.building_store import ApplyResult, apply_building

Row = tuple[str, datetime, float]


def apply(db_url: str, building: Building) -> ApplyResult:
    with psycopg.connect(db_url) as conn:
        return apply_building(conn, building)


def ref_tower(path: object) -> Building:
    return load_building(path)  # type: ignore[arg-type]


def token(db_url: str, role: str, tenant: str | None = None, building: str | None = None) -> str:
    with psycopg.connect(db_url) as conn:
        _, secret = create_token(
            conn,
            role,  # type: ignore[arg-type]
            f"test-{role}-{tenant or 'all'}",
            building if role == "tenant" else None,
            tenant,
        )
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def store_readings(db_url: str, rows: Iterable[Row]) -> None:
    """Store readings with their rollups and latest values (see api.seed)."""
    with psycopg.connect(db_url) as conn:
        seed.store(conn, list(rows))


@contextmanager
def client(
    db_url: str, mqtt_url: str | None = None, prefix: str = "", **extra: object
) -> Iterator[TestClient]:
    settings = ApiSettings(
        database_url=db_url,
        mqtt_url=mqtt_url,
        topic_prefix=prefix,
        **extra,  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as c:
        yield c
