"""Database helpers shared by the services: migrations and connection set-up.

Migrations are the numbered ``*.sql`` files in ``core/migrations``. Each is applied once, in
its own transaction, and recorded in ``schema_migrations``. An advisory lock makes concurrent
migrators (two ingesters starting together) wait for each other instead of racing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

logger = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x5570_5354  # "UpST"


class MigrationError(RuntimeError):
    """A migration failed or the recorded history does not match the files."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """All migrations shipped with this version, in order."""
    out = []
    for entry in resources.files("core.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            out.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    out.sort(key=lambda m: m.version)
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a number: {versions}")
    return out


def migrate(conninfo: str) -> list[str]:
    """Apply every pending migration; return the names of those applied now."""
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Migrations are written for UTC: 0001 itself makes the first partitions with a
        # function that, before 0022, worked out a month's end in the session's zone; in a
        # zone with daylight saving (a server's TimeZone follows its host's) they overlapped
        # and a new install failed. Whatever the server's zone, migrations run in UTC.
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        for migration in migrations():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                row = conn.execute(
                    "SELECT checksum FROM schema_migrations WHERE version = %s",
                    (migration.version,),
                ).fetchone()
                if row is not None:
                    if row[0] != migration.checksum:
                        logger.warning(
                            "migration %04d_%s changed after it was applied",
                            migration.version,
                            migration.name,
                        )
                    continue
                try:
                    conn.execute(migration.sql.encode())
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                    ) from exc
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
                applied_now.append(f"{migration.version:04d}_{migration.name}")
                logger.info("applied migration %04d_%s", migration.version, migration.name)
    return applied_now


def with_search_path(conninfo: str, schema: str) -> str:
    """A conninfo whose sessions use ``schema`` first (each test gets its own schema)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ValueError(f"bad schema name {schema!r}")
    option = f"-csearch_path={schema},public"
    return psycopg.conninfo.make_conninfo(conninfo, options=option)
