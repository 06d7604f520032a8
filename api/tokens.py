"""API tokens: create, list, revoke (run by the CLI with the main database URL).

A token is ``ups_`` + 43 random URL-safe characters (256 bits). It is shown once, when it is
created; the database keeps only its SHA-256. Operators see every building; a tenant token
belongs to one tenant of one building.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from api.auth import TOKEN_PREFIX, token_hash

Role = Literal["operator", "tenant"]

#: Name of the tokens that :func:`demo_credentials` rotates.
DEMO_NAME = "demo"


class TokenError(ValueError):
    """A token cannot be created or revoked as asked."""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    name: str
    role: Role
    building_id: str | None
    tenant_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_token(
    conn: psycopg.Connection[Any],
    role: Role,
    name: str,
    building_id: str | None = None,
    tenant_id: str | None = None,
) -> tuple[int, str]:
    """Store a new token; return its id and the secret (not stored, shown once)."""
    if role == "tenant":
        if not tenant_id:
            raise TokenError("a tenant token needs --tenant")
        building_id = building_id or _only_building(conn)
        row = conn.execute(
            "SELECT 1 FROM tenants WHERE building_id = %s AND id = %s", (building_id, tenant_id)
        ).fetchone()
        if row is None:
            raise TokenError(f"building {building_id!r} has no tenant {tenant_id!r}")
    elif tenant_id or building_id:
        raise TokenError("an operator token sees every building: no --tenant or --building")
    secret = new_secret()
    row = conn.execute(
        "INSERT INTO api_tokens (name, role, building_id, tenant_id, token_hash)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (name, role, building_id, tenant_id, token_hash(secret)),
    ).fetchone()
    assert row is not None
    return int(row[0]), secret


def _only_building(conn: psycopg.Connection[Any]) -> str:
    rows = conn.execute("SELECT id FROM buildings ORDER BY id LIMIT 2").fetchall()
    if len(rows) != 1:
        raise TokenError("name the building with --building (the database holds several)")
    return str(rows[0][0])


def list_tokens(conn: psycopg.Connection[Any], *, include_revoked: bool = False) -> list[TokenInfo]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, name, role, building_id, tenant_id, created_at, last_used_at, revoked_at"
            " FROM api_tokens WHERE %s OR revoked_at IS NULL ORDER BY id",
            (include_revoked,),
        )
        return [TokenInfo(**row) for row in cur.fetchall()]


def revoke_token(conn: psycopg.Connection[Any], token_id: int) -> bool:
    """Revoke a token (its browser sessions end with it); False if none was active."""
    cur = conn.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
        (token_id,),
    )
    return cur.rowcount == 1


def demo_credentials(conninfo: str, building_id: str) -> dict[str, Any]:
    """Rotate the demo tokens: one operator token and one per tenant of ``building_id``.

    Earlier demo tokens (name ``demo``) are revoked, so the file written by ``upstairs demo``
    always holds the only valid demo tokens. Returns
    ``{"operator": "...", "tenants": {"<tenant id>": "..."}}``.
    """
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL"
            " AND (role = 'operator' OR building_id = %s)",
            (DEMO_NAME, building_id),
        )
        _, operator = create_token(conn, "operator", DEMO_NAME)
        tenants: dict[str, str] = {}
        rows = conn.execute(
            "SELECT id FROM tenants WHERE building_id = %s ORDER BY id", (building_id,)
        ).fetchall()
        for (tenant_id,) in rows:
            _, tenants[str(tenant_id)] = create_token(
                conn, "tenant", DEMO_NAME, building_id, str(tenant_id)
            )
    return {"operator": operator, "tenants": tenants}
