"""``upstairs tokens create|list|revoke``: API tokens (see docs/api.md)."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from upstairs.services import endpoints

    return endpoints(args.data_dir, need_broker=False)


def _create(args: argparse.Namespace) -> int:
    import psycopg

    from api.tokens import TokenError, create_token
    from core.db import migrate

    with _connect(args) as ep:
        migrate(ep.database_url)
        try:
            with psycopg.connect(ep.database_url) as conn:
                token_id, secret = create_token(
                    conn, args.role, args.name, args.building, args.tenant
                )
        except TokenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    print(
        f"token {token_id} ({args.role}, {args.name}); shown once, keep it safe:", file=sys.stderr
    )
    print(secret)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    import psycopg

    from api.tokens import list_tokens
    from core.db import migrate

    with _connect(args) as ep:
        migrate(ep.database_url)
        with psycopg.connect(ep.database_url) as conn:
            tokens = list_tokens(conn, include_revoked=args.all)
    print(f"{'id':>5}  {'role':8}  {'building/tenant':30}  {'name':20}  {'last used':20}  revoked")
    for t in tokens:
        owner = f"{t.building_id}/{t.tenant_id}" if t.tenant_id else "*"
        used = t.last_used_at.strftime("%Y-%m-%d %H:%M") if t.last_used_at else "never"
        revoked = t.revoked_at.strftime("%Y-%m-%d %H:%M") if t.revoked_at else ""
        print(f"{t.id:>5}  {t.role:8}  {owner:30}  {t.name:20}  {used:20}  {revoked}")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    import psycopg

    from api.tokens import revoke_token

    with _connect(args) as ep, psycopg.connect(ep.database_url) as conn:
        done = revoke_token(conn, args.id)
    if not done:
        print(f"error: no active token {args.id}", file=sys.stderr)
        return EXIT_FAIL
    print(f"token {args.id} revoked")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tokens create|list|revoke`` to the ``upstairs`` parser's subcommands."""
    tokens = subparsers.add_parser("tokens", help="API tokens").add_subparsers(
        dest="tokens_command", required=True
    )
    create = tokens.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--role", choices=["operator", "tenant"], required=True)
    create.add_argument("--tenant", help="tenant id (tenant tokens)")
    create.add_argument("--building", help="building id (default: the only one)")
    create.add_argument("--name", required=True, help="a label: who or what holds the token")
    create.set_defaults(func=_create)
    lst = tokens.add_parser("list", help="list tokens (never their secrets)")
    lst.add_argument("--all", action="store_true", help="include revoked tokens")
    lst.set_defaults(func=_list)
    revoke = tokens.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=_revoke)
