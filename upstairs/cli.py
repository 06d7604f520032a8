"""The ``upstairs`` command line: one entry point for every service and tool.

Services are imported lazily, inside the command that runs them, so ``upstairs api`` never
loads the ingester and a broken optional piece cannot stop the others from starting.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from core.building_file import BuildingFileError, load_building

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_BUILDING = (
    Path(__file__).resolve().parent.parent / "deploy" / "buildings" / "ref-tower.yaml"
)

logger = logging.getLogger("upstairs")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _database_errors(command: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """A database command's answer to a database it cannot use: one line that says what to
    do, exit 1, no traceback."""

    def run(args: argparse.Namespace) -> int:
        import psycopg

        try:
            return command(args)
        except psycopg.OperationalError as exc:
            print(
                f"error: cannot use the database (UPSTAIRS_DATABASE_URL): {_first_line(exc)}",
                file=sys.stderr,
            )
        except (psycopg.errors.UndefinedFunction, psycopg.errors.UndefinedTable) as exc:
            print(
                f"error: the database schema is not current ({_first_line(exc)});"
                " run `upstairs db migrate`",
                file=sys.stderr,
            )
        return EXIT_FAIL

    return run


@_database_errors
def _cmd_db_migrate(args: argparse.Namespace) -> int:
    from core.db import migrate
    from upstairs.services import endpoints

    with endpoints(args.data_dir, need_broker=False) as ep:
        applied = migrate(ep.database_url)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return EXIT_OK


@_database_errors
def _cmd_db_retention(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    import pydantic

    from ingest.settings import IngestSettings
    from upstairs.retention import (
        RetentionError,
        StillLockedError,
        check_raw_days,
        delete_old_dead_letters,
        drop_old_readings,
    )
    from upstairs.services import endpoints

    try:
        check_raw_days(args.raw_days, IngestSettings().max_age_days)
    except (RetentionError, pydantic.ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    now, dry = datetime.now(UTC), args.dry_run
    with endpoints(args.data_dir, need_broker=False) as ep:
        letters = delete_old_dead_letters(ep.database_url, args.dead_letter_days, now, dry_run=dry)
        print(
            f"{letters} dead letter(s) older than {args.dead_letter_days} days"
            f" {'to delete' if dry else 'deleted'}"
        )
        try:
            cutoff, parts = drop_old_readings(ep.database_url, args.raw_days, now, dry_run=dry)
        except StillLockedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL
    verb = "would drop" if dry else "dropped"
    for part, end in parts:
        print(f"{verb} {part}" + (f" (readings before {end:%Y-%m-%d %H:%M %Z})" if end else ""))
    print(
        f"{len(parts)} partition(s) of raw readings {'to drop' if dry else 'dropped'},"
        f" ending at or before {cutoff:%Y-%m-%d %H:%M %Z} ({args.raw_days} days and a day ago)"
    )
    return EXIT_OK


@_database_errors
def _cmd_building_apply(args: argparse.Namespace) -> int:
    import psycopg

    from core.building_store import apply_building
    from core.db import migrate
    from upstairs.services import endpoints

    try:
        building = load_building(args.file)
    except BuildingFileError as exc:
        print(f"error: {args.file} is not a valid building file:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    with endpoints(args.data_dir, need_broker=False) as ep:
        migrate(ep.database_url)
        with psycopg.connect(ep.database_url) as conn:
            result = apply_building(conn, building)
    print(f"building {building.id}: {result}")
    return EXIT_OK


def _cmd_building_check(args: argparse.Namespace) -> int:
    try:
        building = load_building(args.file)
    except BuildingFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{args.file}: building {building.id} is valid: {len(building.floors)} floors, "
        f"{len(building.zones)} zones, {len(building.tenants)} tenants, "
        f"{len(building.sensors)} sensors"
    )
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from upstairs.launcher import run_demo

    return run_demo(
        data_dir=args.data_dir,
        port=args.port,
        building_file=args.building,
        scenario=args.scenario,
        speed=args.speed,
        mode=args.mode,
        backfill_hours=args.backfill_hours,
    )


def _cmd_simulate(args: argparse.Namespace) -> int:
    from upstairs.simulate import run_simulate

    return run_simulate(
        args.building,
        args.mode,
        args.speed,
        args.scenario,
        args.seed,
        args.port_base,
        args.backfill_hours,
    )


def _delegate(module: str, func: str = "main") -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        entry: Callable[[list[str]], int] = getattr(importlib.import_module(module), func)
        return entry(list(args.rest))

    return run


def _days(text: str) -> int:
    """A whole number of days, 1 to 36,500 (argparse turns the error into a usage error)."""
    days = int(text)
    if not 1 <= days <= 36_500:
        raise argparse.ArgumentTypeError(f"{text}: give a whole number of days, 1 to 36500")
    return days


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upstairs", description="Building management for multi-tenant vertical factories."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".upstairs"), help="embedded services' data folder"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("migrate", help="apply pending migrations").set_defaults(func=_cmd_db_migrate)
    retention = db.add_parser(
        "retention", help="drop raw readings of months past the retention (docs/operations.md)"
    )
    retention.add_argument(
        "--raw-days",
        type=_days,
        default=400,
        help="keep raw readings this many days (400; at least the ingesters' max_age_days)",
    )
    retention.add_argument(
        "--dead-letter-days",
        type=_days,
        default=90,
        help="keep dead letters this many days (90)",
    )
    retention.add_argument("--dry-run", action="store_true", help="list, drop nothing")
    retention.set_defaults(func=_cmd_db_retention)

    building = sub.add_parser("building", help="building files").add_subparsers(
        dest="building_command", required=True
    )
    apply = building.add_parser("apply", help="validate a building file and write it")
    apply.add_argument("file", type=Path)
    apply.set_defaults(func=_cmd_building_apply)
    check = building.add_parser("check", help="validate a building file, write nothing")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_cmd_building_check)

    demo = sub.add_parser("demo", help="run the whole platform with a simulated building")
    demo.add_argument("--data-dir", type=Path, default=Path(".upstairs"), dest="data_dir")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--building", type=Path, default=DEFAULT_BUILDING)
    demo.add_argument("--scenario", default="normal")
    demo.add_argument(
        "--speed", type=float, default=1.0, help="with --backfill-hours: how fast to catch up"
    )
    demo.add_argument(
        "--backfill-hours",
        type=float,
        default=0.0,
        help="simulate this much history first (at --speed), then run live",
    )
    demo.add_argument(
        "--mode",
        choices=["mqtt", "modbus"],
        default="mqtt",
        help="mqtt: simulators publish directly; modbus: Modbus TCP devices + one gateway a floor",
    )
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser("simulate", help="run the device simulators of a building")
    sim.add_argument("--building", type=Path, default=DEFAULT_BUILDING)
    sim.add_argument("--mode", choices=["mqtt", "modbus"], default="mqtt")
    sim.add_argument("--port-base", type=int, default=15000, help="modbus: port = base + floor")
    sim.add_argument(
        "--backfill-hours",
        type=float,
        default=0.0,
        help="mqtt: start this far in the past and run at --speed until now, then real time",
    )
    sim.add_argument("--speed", type=float, default=1.0)
    sim.add_argument("--scenario", default="normal")
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=_cmd_simulate)

    services = {
        "ingest": ("ingest.service", "MQTT telemetry into PostgreSQL"),
        "api": ("api.main", "the HTTP API and pages"),
        "gateway": ("gateway.service", "a floor gateway: Modbus TCP devices to MQTT"),
        "alerts": ("alerts.service", "the alert engine and live floor state"),
        "rollups": ("ingest.refresh", "the rollup refresher alone (ingesters can run it too)"),
    }
    for name, (module, help_text) in services.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(module))

    from upstairs import tokens_cli

    tokens_cli.register(sub)
    from upstairs import mqtt_credentials

    mqtt_credentials.register(sub)
    from upstairs import grafana

    grafana.register(sub)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench_command", required=True
    )
    b_ingest = bench.add_parser("ingest", help="end-to-end ingest rate", add_help=False)
    b_ingest.add_argument("rest", nargs=argparse.REMAINDER)
    b_ingest.set_defaults(func=_delegate("ingest.bench"))
    b_gateway = bench.add_parser("gateway", help="gateway polling rate, RSS, drain", add_help=False)
    b_gateway.add_argument("rest", nargs=argparse.REMAINDER)
    b_gateway.set_defaults(func=_delegate("gateway.bench"))
    for name, module in (
        ("alerts", "alerts.bench"),
        ("api", "api.bench"),
        ("scale", "upstairs.bench_scale"),
    ):
        b = bench.add_parser(name, help=f"{name} latency", add_help=False)
        b.add_argument("rest", nargs=argparse.REMAINDER)
        b.set_defaults(func=_delegate(module))
    return parser


# Commands whose own ``main(argv)`` parses the rest of the command line.
DELEGATED = {
    ("ingest",): "ingest.service",
    ("api",): "api.main",
    ("gateway",): "gateway.service",
    ("alerts",): "alerts.service",
    ("rollups",): "ingest.refresh",
    ("bench", "ingest"): "ingest.bench",
    ("bench", "gateway"): "gateway.bench",
    ("bench", "alerts"): "alerts.bench",
    ("bench", "api"): "api.bench",
    ("bench", "scale"): "upstairs.bench_scale",
}


def _delegated(argv: list[str]) -> tuple[str, list[str]] | None:
    """``upstairs [-v] api --port 1`` -> ("api.main", ["--port", "1"])."""
    words = [a for a in argv if a not in ("-v", "--verbose")]
    for key, module in DELEGATED.items():
        if tuple(words[: len(key)]) == key:
            return module, words[len(key) :]
    return None


def _bench(entry: Callable[[list[str]], int], rest: list[str]) -> int:
    """Benchmarks run against the configured services, else embedded ones started here."""
    import os

    from upstairs.services import endpoints

    _setup_logging()
    with endpoints(Path(os.environ.get("UPSTAIRS_DATA_DIR", ".upstairs"))) as ep:
        os.environ.update(ep.env())
        return entry(rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if (target := _delegated(argv)) is not None:
        import importlib

        module, rest = target
        entry: Callable[[list[str]], int] = importlib.import_module(module).main
        if (
            module.endswith((".bench", ".bench_scale"))
            and "-h" not in rest
            and "--help" not in rest
        ):
            return _bench(entry, rest)
        return entry(rest)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("ingest", "api", "gateway", "bench"):
        _setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
