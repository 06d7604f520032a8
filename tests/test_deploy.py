"""The deployment files, checked without Docker (which cannot run on these machines).

``deploy/compose.yaml``: it parses; every file it mounts or names exists (or is one the
credentials tool writes, or the Grafana provisioning the dashboards issue will add); every
``UPSTAIRS_*`` variable of an Upstairs service is a field of the settings class that service
builds (found by introspecting the pydantic-settings classes, not from a list kept here) and
its value passes that class's validation; every command is a real ``upstairs`` subcommand with
options the subcommand knows; every MQTT user is one ``upstairs mqtt credentials`` makes, with
the right password variable; Mosquitto's queue is sized for the reference building.
``deploy/systemd``: ``systemd-analyze verify`` is clean, the commands and the example
environment files pass the same checks.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from alerts.settings import AlertSettings
from api.settings import ApiSettings
from core.building import Building
from core.building_file import load_building
from core.db import migrate
from core.settings import DatabaseSettings, DataDirSettings, MqttSettings, parse_mqtt_url
from gateway.settings import GatewaySettings
from ingest.settings import IngestSettings
from upstairs.cli import DELEGATED, build_parser
from upstairs.mqtt_credentials import (
    ACL_FILE,
    PASSWORD_FILE,
    SECRETS_FILE,
    Role,
    gateway_user,
    principals,
    write_credentials,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
REF_TOWER = DEPLOY / "buildings" / "ref-tower.yaml"
SYSTEMD = DEPLOY / "systemd"

#: Written by `upstairs mqtt credentials --out deploy/mosquitto/credentials` on the site.
GENERATED = {
    Path("mosquitto/credentials") / PASSWORD_FILE,
    Path("mosquitto/credentials") / ACL_FILE,
}
#: Produced by the Grafana dashboards issue, not yet in the repository. Remove an entry when the
#: folder arrives: from then on it must exist like every other mount.
PENDING = {Path("grafana/provisioning"), Path("grafana/dashboards")}

#: The settings classes each command builds (what the code reads from the environment).
#: `db migrate` and `building apply` go through upstairs.services.endpoints, which reads the
#: shared fragments.
SETTINGS_OF: Mapping[tuple[str, ...], tuple[type[BaseSettings], ...]] = {
    ("ingest",): (IngestSettings,),
    ("alerts",): (AlertSettings,),
    ("api",): (ApiSettings,),
    ("gateway",): (GatewaySettings,),
    ("simulate",): (MqttSettings,),
    ("db", "migrate"): (DatabaseSettings, DataDirSettings),
    ("db", "retention"): (DatabaseSettings, DataDirSettings, IngestSettings),
    ("building", "apply"): (DatabaseSettings, DataDirSettings),
}


# -- helpers -------------------------------------------------------------------------------------


def env_names(cls: type[BaseSettings]) -> set[str]:
    """Environment variables a pydantic-settings class reads, nested settings included."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias
        names.add((alias if isinstance(alias, str) else f"{prefix}{name}").upper())
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            names |= env_names(kind)  # built by default_factory: reads its own prefix
        elif isinstance(kind, type) and issubclass(kind, BaseModel):  # pragma: no cover
            raise AssertionError(f"{cls.__name__}.{name}: nested model, extend env_names")
    return names


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        if op and op.endswith("-"):
            return arg or ""
        if op and op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        return ""

    return _VAR.sub(one, value)


def command_key(argv: list[str]) -> tuple[str, ...]:
    for key in sorted(SETTINGS_OF, key=len, reverse=True):
        if tuple(argv[: len(key)]) == key:
            return key
    raise AssertionError(f"no settings mapping for command {argv}")


def _delegated(argv: list[str]) -> str | None:
    return next((m for k, m in DELEGATED.items() if tuple(argv[: len(k)]) == k), None)


def help_text(argv: list[str]) -> str:
    """``upstairs <argv> --help`` output (delegated commands: the module's own parser)."""
    delegated = _delegated(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        if delegated is not None:
            importlib.import_module(delegated).main(["--help"])
        else:
            build_parser().parse_args([*argv, "--help"])
    return out.getvalue()


def check_command(argv: list[str]) -> None:
    """A real ``upstairs`` subcommand, with options its parser documents.

    As in ``upstairs.cli.main``: service commands go to their module's own parser, the rest
    through the CLI's parser (SystemExit, a test failure, if it refuses them)."""
    if _delegated(argv) is None:
        assert callable(build_parser().parse_args(argv).func)
    key = command_key(argv)
    text = help_text(list(key))
    for option in (a for a in argv[len(key) :] if a.startswith("--")):
        assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", text), (argv, option)


def check_environment(argv: list[str], environment: Mapping[str, str]) -> None:
    """Every UPSTAIRS_* key is read by the command's settings, and the values validate."""
    classes = SETTINGS_OF[command_key(argv)]
    readable = set().union(*(env_names(c) for c in classes))
    for key in environment:
        assert key.startswith("UPSTAIRS_"), f"{argv}: {key} is not an Upstairs setting"
        assert key in readable, f"{argv}: {key} is not read by {[c.__name__ for c in classes]}"
    with pytest.MonkeyPatch.context() as mp:
        for key in os.environ:
            if key.startswith("UPSTAIRS_"):
                mp.delenv(key)
        for key, value in environment.items():
            mp.setenv(key, value)
        for cls in classes:
            cls()  # validation error = a value the service would refuse
        if url := environment.get("UPSTAIRS_MQTT_URL"):
            parse_mqtt_url(url)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def building() -> Building:
    return load_building(REF_TOWER)


def upstairs_services(compose: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith("upstairs:"):
            yield name, service


#: Stand-ins for the variables of deploy/.env and secrets.env.
FAKE_ENV = {
    "POSTGRES_PASSWORD": "pg-secret",
    "API_DB_PASSWORD": "api-secret",
    "GRAFANA_ADMIN_PASSWORD": "gf-secret",
    "GRAFANA_DB_PASSWORD": "gfdb-secret",
}


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """The service's environment, interpolated with stand-ins for every ``${VAR}``."""
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping"
    text = " ".join(str(v) for v in env.values())
    stand_ins = {  # for the required ones; ${VAR:-default} takes its default
        m.group(1): FAKE_ENV.get(m.group(1), f"pw-{m.group(1).lower()}")
        for m in _VAR.finditer(text)
        if m.group(2) != ":-"
    }
    return {str(k): interpolate(str(v), stand_ins) for k, v in env.items()}


# -- compose -------------------------------------------------------------------------------------


def test_compose_parses_and_has_every_service(compose: dict[str, Any], building: Building) -> None:
    services = compose["services"]
    core = {"timescaledb", "mosquitto", "grafana", "migrate", "building", "alerts", "api"}
    assert core <= set(services)
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["grafana"]["image"].startswith("grafana/grafana")
    floors = sorted(f.number for f in building.floors)
    demo = {name for name, s in services.items() if "demo" in s.get("profiles", [])}
    assert demo == {"simulators"} | {f"gateway-f{n:02d}" for n in floors}
    for name in core:
        assert "profiles" not in services[name], name
    assert services["migrate"]["restart"] == "no"
    assert services["building"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }


def test_two_ingesters_share_one_subscription_group(compose: dict[str, Any]) -> None:
    ingesters = {
        name: service_env(s)
        for name, s in upstairs_services(compose)
        if s["command"][1] == "ingest"
    }
    assert len(ingesters) == 2
    assert {e["UPSTAIRS_INGEST_SHARED_GROUP"] for e in ingesters.values()} == {"ingest"}
    assert len({e["UPSTAIRS_INGEST_CLIENT_ID"] for e in ingesters.values()}) == 2


def _host_path(spec: str) -> tuple[Path, str] | None:
    """``./x:/y:ro`` -> (deploy/x relative path, /y); named volumes -> None."""
    source, target = spec.split(":")[:2]
    if not source.startswith((".", "/")):
        return None
    return Path(os.path.normpath(source)), target


def test_every_referenced_file_exists(compose: dict[str, Any], tmp_path: Path) -> None:
    # The generated names are the ones the credentials tool writes.
    write_credentials([load_building(REF_TOWER)], tmp_path)
    assert {tmp_path / p.name for p in GENERATED} <= set(tmp_path.iterdir())
    seen_pending: set[Path] = set()
    for name, service in compose["services"].items():
        mounts: dict[str, Path] = {}
        for spec in service.get("volumes", []):
            found = _host_path(spec)
            if found is None:
                assert spec.split(":")[0] in compose["volumes"], f"{name}: volume {spec}"
                continue
            rel, target = found
            mounts[target] = rel
            if rel in GENERATED:
                continue
            if rel in PENDING and not (DEPLOY / rel).exists():
                seen_pending.add(rel)
                continue
            assert (DEPLOY / rel).exists(), f"{name}: {DEPLOY / rel} does not exist"
        if build := service.get("build"):
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        # Files named in the command must be inside a mount and exist on the host.
        for arg in service.get("command", []):
            if arg.startswith("/"):
                base = next((t for t in mounts if arg.startswith(t.rstrip("/") + "/")), None)
                assert base is not None, f"{name}: {arg} is not in a mounted folder"
                host = DEPLOY / mounts[base] / Path(arg).relative_to(base)
                assert host.is_file(), f"{name}: {arg} -> {host} does not exist"
    assert seen_pending <= PENDING
    # Mosquitto: every path in its config comes from a mount of the mosquitto service.
    mosquitto_mounts = [spec.split(":")[1] for spec in compose["services"]["mosquitto"]["volumes"]]
    for line in MOSQUITTO_CONF.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[1].startswith("/") and not line.startswith("#"):
            assert any(
                words[1] == m or words[1].startswith(m.rstrip("/") + "/") for m in mosquitto_mounts
            ), f"mosquitto.conf {words[0]} {words[1]} is not mounted"
    assert (
        "./mosquitto/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro"
        in (compose["services"]["mosquitto"]["volumes"])
    )


def test_every_command_is_a_real_upstairs_subcommand(compose: dict[str, Any]) -> None:
    services = dict(upstairs_services(compose))
    assert services
    for name, service in services.items():
        argv = service["command"]
        assert argv[0] == "upstairs", name
        check_command(argv[1:])


def test_every_environment_key_is_a_setting_the_code_reads(compose: dict[str, Any]) -> None:
    for name, service in upstairs_services(compose):
        env = service_env(service)
        if service["command"][1] != "simulate":  # modbus mode: no broker, no database
            assert env, f"{name} has no environment"
        check_environment(service["command"][1:], env)


def test_env_names_follow_the_settings_classes() -> None:
    """The introspection itself, on fields whose variable names are known."""
    assert {"UPSTAIRS_DATABASE_URL", "UPSTAIRS_MQTT_URL", "UPSTAIRS_INGEST_SHARED_GROUP"} <= (
        env_names(IngestSettings)
    )
    assert "UPSTAIRS_ALERTS_DATABASE_URL" not in env_names(AlertSettings)  # aliased
    assert "UPSTAIRS_DATABASE_URL" in env_names(AlertSettings)
    assert "UPSTAIRS_API_SECURE_COOKIES" in env_names(ApiSettings)
    assert "UPSTAIRS_GATEWAY_MODBUS_HOST" in env_names(GatewaySettings)
    with pytest.raises(AssertionError):
        check_environment(["ingest"], {"UPSTAIRS_INGEST_NO_SUCH_KNOB": "1"})
    with pytest.raises(AssertionError):
        check_environment(["api"], {"UPSTAIRS_INGEST_SHARED_GROUP": "ingest"})


def test_every_mqtt_user_is_a_generated_principal(
    compose: dict[str, Any], building: Building
) -> None:
    made = {p.name: p for p in principals([building])}
    role_of = {"ingest": Role.INGEST, "alerts": Role.ALERTS, "api": Role.API}
    users: dict[str, str] = {}
    for name, service in upstairs_services(compose):
        raw = (service.get("environment") or {}).get("UPSTAIRS_MQTT_URL")
        if raw is None:
            continue
        user = parse_mqtt_url(service_env(service)["UPSTAIRS_MQTT_URL"]).username or ""
        assert user in made, f"{name}: MQTT user {user!r} is not generated"
        var = _VAR.search(raw)
        assert var is not None and var.group(1) == made[user].env_var, name
        argv = service["command"][1:]
        if argv[0] == "gateway":
            floor = int(argv[argv.index("--floor") + 1])
            assert user == gateway_user(building.id, floor), name
        else:
            assert made[user].role is role_of[argv[0]], name
        users[name] = user
    # the gateways each have their own user; the two ingesters share one
    gateways = [u for n, u in users.items() if n.startswith("gateway-")]
    assert len(gateways) == len(set(gateways)) == len(building.floors)


def test_secrets_env_holds_every_variable_compose_needs(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    creds = write_credentials([load_building(REF_TOWER)], tmp_path)
    defined = {
        line.split("=", 1)[0]
        for line in (tmp_path / SECRETS_FILE).read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    example = {
        line.split("=", 1)[0]
        for line in (DEPLOY / "env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    required = {
        m.group(1) for m in _VAR.finditer(COMPOSE.read_text()) if (m.group(2) or "").endswith("?")
    }
    assert required <= defined | example, required - defined - example
    assert {p.env_var for p in creds.principals if p.role is not Role.OPERATOR} >= {
        v for v in required if v.startswith("MQTT_PASSWORD_")
    }


def test_mosquitto_queue_is_sized_for_a_10_minute_ingester_outage(building: Building) -> None:
    conf = MOSQUITTO_CONF.read_text()
    settings = {
        words[0]: words[1]
        for line in conf.splitlines()
        if (words := line.split()) and not line.startswith("#") and len(words) >= 2
    }
    # Readings (the comment's arithmetic) and messages, from the building file and the gateway's
    # batching interval.
    readings_per_s = sum(1 / s.interval_s for s in building.sensors)
    assert math.isclose(readings_per_s, 26.4)
    assert "readings/s" in conf and "26.4" in conf
    interval = GatewaySettings.model_fields["publish_interval_s"].default
    messages = len(building.floors) * math.ceil(600 / interval)
    assert messages == 6000 and "6,000" in conf
    assert int(settings["max_queued_messages"]) >= messages
    assert settings["persistence"] == "true"
    assert settings["allow_anonymous"] == "false"
    assert settings["tls_version"] == "tlsv1.2"
    assert {"password_file", "acl_file", "certfile", "keyfile"} <= set(settings)


# -- systemd -------------------------------------------------------------------------------------

INSTANCES = {"ingest": "1", "alerts": "ref-tower", "gateway": "3", "building": "ref-tower"}


def _units() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".target", ".timer"))


def test_systemd_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` (unknown keys, missing executables, bad dependencies) on
    copies whose ExecStart points at this venv's ``upstairs``; templates as an instance."""
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is needed to check the units"
    exe = str(ROOT / ".venv" / "bin" / "upstairs")
    if not Path(exe).exists():
        exe = shutil.which("upstairs") or exe
    names = []
    for unit in _units():
        text = unit.read_text().replace("/opt/upstairs/venv/bin/upstairs", exe)
        name = unit.name
        if "@." in name:
            kind = name.split("@")[0].removeprefix("upstairs-")
            name = name.replace("@.", f"@{INSTANCES[kind]}.")
        (tmp_path / name).write_text(text)
        names.append(name)
    result = subprocess.run(
        [tool, "verify", *names],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "upstairs" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_systemd_commands_and_environment_files() -> None:
    examples = SYSTEMD / "env"
    for unit in _units():
        text = unit.read_text()
        kind = unit.name.split("@")[0].split(".")[0].removeprefix("upstairs-")
        instance = INSTANCES.get(kind, "1")
        env: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("EnvironmentFile="):
                path = Path(line.split("=", 1)[1].lstrip("-"))
                name = path.name.replace("%i", "").replace("-.env", ".env")
                example = examples / f"{name}.example"
                assert example.is_file(), f"{unit.name}: no example for {path}"
                for raw in example.read_text().splitlines():
                    if "=" in raw and not raw.startswith("#"):
                        key, value = raw.split("=", 1)
                        env[key] = value
            elif line.startswith("Environment="):
                key, value = line.split("=", 1)[1].split("=", 1)
                env[key] = value.replace("%i", instance)
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                argv = line.split("=", 1)[1].replace("%i", instance).split()
                assert argv[0] == "/opt/upstairs/venv/bin/upstairs", unit.name
                check_command(argv[1:])
                check_environment(argv[1:], env)


# -- the TimescaleDB container's init script ----------------------------------------------------


def test_postgres_init_script_makes_roles_the_migrations_accept(tmp_session_dir: Path) -> None:
    """``postgres/initdb/10-upstairs-roles.sh`` as the image's entrypoint runs it (sh, psql, the
    POSTGRES_* variables), twice, on a private PostgreSQL (roles are cluster-wide: never on a
    shared server); then the migrations run and accept the pre-made ``upstairs_api``."""
    from upstairs.embedded import EmbeddedPostgres

    script = DEPLOY / "postgres" / "initdb" / "10-upstairs-roles.sh"
    assert os.access(script, os.X_OK)
    with EmbeddedPostgres(tmp_session_dir / "initdb-pg") as pg:
        params = conninfo_to_dict(pg.url)
        env = {
            **os.environ,
            "PGHOST": str(params["host"]),
            "PGPORT": str(params.get("port", 5432)),
            "POSTGRES_USER": str(params["user"]),
            "POSTGRES_DB": str(params["dbname"]),
            "API_DB_PASSWORD": "it's-a-secret",  # a quote: psql's :'var' must escape it
            "GRAFANA_DB_PASSWORD": "gf-secret",
        }
        for _ in range(2):  # idempotent
            done = subprocess.run(
                ["sh", str(script)],
                check=False,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        migrate(pg.url)
        with psycopg.connect(pg.url) as conn:
            rows = conn.execute(
                "SELECT rolname, rolcanlogin, rolsuper, rolbypassrls, rolpassword IS NOT NULL"
                " FROM pg_authid WHERE rolname IN ('upstairs_api', 'grafana_reader')"
                " ORDER BY rolname"
            ).fetchall()
            reader = conn.execute(
                "SELECT pg_has_role('grafana_reader', 'pg_read_all_data', 'member')"
            ).fetchone()
    assert rows == [
        ("grafana_reader", True, False, False, True),
        ("upstairs_api", True, False, False, True),
    ]
    assert reader == (True,)
