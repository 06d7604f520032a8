"""``upstairs mqtt credentials``: Mosquitto users, passwords and ACLs made from building files.

One MQTT user name (a *principal*) per role: every floor gateway of every building has its own;
the platform services share one each (``upstairs-ingest`` for all ingesters, ``upstairs-alerts``,
``upstairs-api``) and ``upstairs-operator`` is a read-only account for diagnostics
(``mosquitto_sub``). Three files are written to the output folder:

``passwd``
    the Mosquitto password file, in the format of ``mosquitto_passwd`` 2.x: one
    ``name:$7$ITERATIONS$SALT$HASH`` line per user, PBKDF2-HMAC-SHA512, salt and hash in
    standard base64. Mode 0640.
``acl``
    the Mosquitto ACL file: one ``user`` block per principal with the topics it may read or
    write (contract v1, ``docs/contract.md``). Nothing else is allowed; anonymous clients get no
    rules at all (and ``mosquitto.conf`` refuses them). Mode 0640.
``secrets.env``
    the plain passwords for the operator, one ``MQTT_PASSWORD_<USER>=...`` line per user, in
    the dotenv format Docker Compose reads (``--env-file``). Mode 0600.

Running the command again keeps the passwords already in ``secrets.env`` (so adding a building
or a floor does not log every service out) unless ``--rotate`` is given.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from core.building import Building
from core.building_file import BuildingFileError, load_building
from core.topics import (
    ROOT,
    VERSION,
    Channel,
    TopicError,
    alerts_topic,
    check_prefix,
    commands_topic,
    status_topic,
    subscription,
    telemetry_topic,
)

__all__ = [
    "ACL_FILE",
    "PASSWORD_FILE",
    "SECRETS_FILE",
    "Access",
    "Credentials",
    "CredentialsError",
    "Principal",
    "Role",
    "Rule",
    "acl_text",
    "check_name",
    "gateway_user",
    "hash_password",
    "principals",
    "register",
    "verify_password",
    "write_credentials",
]

EXIT_OK, EXIT_USAGE = 0, 2
PASSWORD_FILE, ACL_FILE, SECRETS_FILE = "passwd", "acl", "secrets.env"

#: mosquitto_passwd 2.0 uses 101 iterations and a 12-byte salt. The passwords made here are
#: 256-bit random tokens, so the iteration count is not what protects them; a higher count would
#: only cost CPU on every CONNECT.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
_PASSWORD_BYTES = 32

_ENV_PREFIX = "MQTT_PASSWORD_"
_SPACE = re.compile(r"[\s\x00-\x1f\x7f]")
_FORBIDDEN = re.compile(r"[+#/:\s\x00-\x1f\x7f]")


class CredentialsError(ValueError):
    """Input the generator refuses: a bad user name, topic prefix or set of buildings."""


class Role(StrEnum):
    GATEWAY = "gateway"
    INGEST = "ingest"
    ALERTS = "alerts"
    API = "api"
    OPERATOR = "operator"


#: The user names of the platform services (one each, whatever the number of buildings).
PLATFORM_USERS: Mapping[Role, str] = {
    Role.INGEST: "upstairs-ingest",
    Role.ALERTS: "upstairs-alerts",
    Role.API: "upstairs-api",
    Role.OPERATOR: "upstairs-operator",
}


class Access(StrEnum):
    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"


def check_name(name: str) -> str:
    """Return ``name`` if it can be a Mosquitto user name here, else raise CredentialsError.

    Refused: empty, longer than 128, ``+``, ``#``, ``/`` (they would turn into topic wildcards
    or levels wherever a name fills a topic level), ``:`` (the password-file separator),
    whitespace and control characters.
    """
    if not name or len(name) > 128:
        raise CredentialsError(f"user name {name!r} must be 1-128 characters")
    if bad := _FORBIDDEN.search(name):
        raise CredentialsError(
            f"user name {name!r} contains {bad.group()!r}: '+', '#', '/', ':', whitespace and"
            " control characters are refused"
        )
    return name


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``topic <access> <topic>`` line of an ACL file."""

    access: Access
    topic: str

    def __post_init__(self) -> None:
        levels = self.topic.split("/")
        if not self.topic or _SPACE.search(self.topic):
            raise CredentialsError(f"ACL topic {self.topic!r} is empty or holds whitespace")
        for i, level in enumerate(levels):
            if ("+" in level and level != "+") or ("#" in level and level != "#"):
                raise CredentialsError(f"ACL topic {self.topic!r}: a wildcard must fill a level")
            if level == "#" and i != len(levels) - 1:
                raise CredentialsError(f"ACL topic {self.topic!r}: '#' must be the last level")

    def line(self) -> str:
        return f"topic {self.access.value} {self.topic}"


@dataclass(frozen=True, slots=True)
class Principal:
    """An MQTT user and what it may do."""

    name: str
    role: Role
    rules: tuple[Rule, ...]
    comment: str = ""

    def __post_init__(self) -> None:
        check_name(self.name)

    @property
    def env_var(self) -> str:
        """Its password's variable in ``secrets.env``: ``MQTT_PASSWORD_UPSTAIRS_INGEST``."""
        return _ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", self.name.upper())


def gateway_user(building_id: str, floor: int) -> str:
    """The user name of a floor gateway, the same as its default telemetry ``source``."""
    return check_name(f"{building_id}-f{floor:02d}-gw")


def _platform_rules(role: Role, building: str, prefix: str) -> list[Rule]:
    telemetry = subscription(Channel.TELEMETRY, prefix, building)
    status = subscription(Channel.STATUS, prefix, building)
    state = subscription(Channel.STATE, prefix, building)
    alerts = alerts_topic(building, prefix)
    commands = commands_topic(building, prefix)
    r, w = Access.READ, Access.WRITE
    if role is Role.INGEST:
        return [Rule(r, telemetry)]
    if role is Role.ALERTS:
        return [Rule(r, telemetry), Rule(r, status), Rule(w, state), Rule(w, alerts),
                Rule(r, commands)]  # fmt: skip
    if role is Role.API:
        return [Rule(r, state), Rule(r, alerts), Rule(w, commands)]
    if role is Role.OPERATOR:
        return [Rule(r, f"{prefix}{ROOT}/{VERSION}/{building}/#")]
    raise AssertionError(role)  # pragma: no cover


_COMMENTS: Mapping[Role, str] = {
    Role.INGEST: "all ingesters (shared subscription group): telemetry in",
    Role.ALERTS: "alert engine: telemetry and status in; floor state and alert events out;"
    " operator commands in",
    Role.API: "API: floor state and alert events in; operator commands out",
    Role.OPERATOR: "read-only diagnostics (mosquitto_sub), broker statistics",
}


def principals(buildings: Sequence[Building], prefix: str = "") -> list[Principal]:
    """Every principal of a broker serving ``buildings``, platform services first."""
    try:
        check_prefix(prefix)
    except TopicError as exc:
        raise CredentialsError(str(exc)) from exc
    if _SPACE.search(prefix):
        raise CredentialsError(f"topic prefix {prefix!r} must not hold whitespace")
    ids = [b.id for b in buildings]
    if not ids:
        raise CredentialsError("at least one building is needed")
    if len(set(ids)) != len(ids):
        raise CredentialsError(f"a building is given twice: {sorted(ids)}")
    result: list[Principal] = []
    for role, name in PLATFORM_USERS.items():
        rules = [rule for b in ids for rule in _platform_rules(role, b, prefix)]
        if role is Role.OPERATOR:
            rules.append(Rule(Access.READ, "$SYS/#"))
        result.append(Principal(name, role, tuple(rules), _COMMENTS[role]))
    for building in buildings:
        for floor in sorted(f.number for f in building.floors):
            own = (
                Rule(Access.WRITE, telemetry_topic(building.id, floor, prefix)),
                Rule(Access.WRITE, status_topic(building.id, floor, prefix)),
            )
            comment = f"floor gateway of {building.id}, floor {floor}: its own topics, write only"
            result.append(Principal(gateway_user(building.id, floor), Role.GATEWAY, own, comment))
    _check_unique(result)
    return result


def _check_unique(found: Iterable[Principal]) -> None:
    names: set[str] = set()
    env_vars: dict[str, str] = {}
    for p in found:
        if p.name in names:
            raise CredentialsError(f"user name {p.name!r} would be used twice")
        if (other := env_vars.get(p.env_var)) is not None:
            raise CredentialsError(f"users {other!r} and {p.name!r} both map to {p.env_var}")
        names.add(p.name)
        env_vars[p.env_var] = p.name


# -- password hashes ---------------------------------------------------------------------------


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """``$7$ITER$SALT$HASH``: what ``mosquitto_passwd`` 2.x writes after ``name:``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """True if ``encoded`` (a ``$7$`` or ``$6$`` hash of mosquitto_passwd) is of ``password``."""
    parts = encoded.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            iterations, salt, digest = int(parts[2]), parts[3], parts[4]
            derived = hashlib.pbkdf2_hmac(
                "sha512", password.encode(), base64.b64decode(salt), iterations
            )
        elif len(parts) == 4 and parts[1] == "6":
            salt, digest = parts[2], parts[3]
            derived = hashlib.sha512(password.encode() + base64.b64decode(salt)).digest()
        else:
            return False
        return hmac.compare_digest(derived, base64.b64decode(digest))
    except ValueError:
        return False


# -- files ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """What :func:`write_credentials` wrote."""

    out: Path
    principals: tuple[Principal, ...]
    passwords: Mapping[str, str] = field(repr=False)  # user name -> password
    reused: int = 0

    @property
    def password_file(self) -> Path:
        return self.out / PASSWORD_FILE

    @property
    def acl_file(self) -> Path:
        return self.out / ACL_FILE

    @property
    def secrets_file(self) -> Path:
        return self.out / SECRETS_FILE


def acl_text(found: Sequence[Principal], header: Sequence[str] = ()) -> str:
    lines = [f"# {h}" for h in header]
    lines += [
        "# Mosquitto ACL file generated by `upstairs mqtt credentials`; do not edit, regenerate.",
        "# Every user may do only what its block below says. Anonymous clients have no rules",
        "# (and mosquitto.conf sets allow_anonymous false).",
    ]
    for p in found:
        lines += ["", f"# {p.role.value}: {p.comment}" if p.comment else f"# {p.role.value}"]
        lines.append(f"user {p.name}")
        lines += [rule.line() for rule in p.rules]
    return "\n".join(lines) + "\n"


def _secrets_text(found: Sequence[Principal], passwords: Mapping[str, str]) -> str:
    lines = [
        "# MQTT passwords generated by `upstairs mqtt credentials`. Keep this file secret (0600).",
        "# Docker Compose: `docker compose --env-file deploy/mosquitto/credentials/secrets.env`.",
    ]
    for p in found:
        lines += [f"# user {p.name} ({p.role.value})", f"{p.env_var}={passwords[p.name]}"]
    return "\n".join(lines) + "\n"


def _read_secrets(path: Path) -> dict[str, str]:
    """``MQTT_PASSWORD_*`` variables of an existing secrets file (env var -> password)."""
    found: dict[str, str] = {}
    if not path.exists():
        return found
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith(_ENV_PREFIX) and "=" in line:
            key, value = line.split("=", 1)
            if value:
                found[key] = value
    return found


def _write(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically; the new file has ``mode`` from its first byte on."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_credentials(
    buildings: Sequence[Building], out: Path, prefix: str = "", *, rotate: bool = False
) -> Credentials:
    """Write ``passwd``, ``acl`` and ``secrets.env`` for ``buildings`` into ``out``."""
    found = principals(buildings, prefix)
    out.mkdir(parents=True, exist_ok=True)
    old = {} if rotate else _read_secrets(out / SECRETS_FILE)
    passwords: dict[str, str] = {}
    reused = 0
    for p in found:
        if p.env_var in old:
            passwords[p.name] = old[p.env_var]
            reused += 1
        else:
            passwords[p.name] = secrets.token_urlsafe(_PASSWORD_BYTES)
    header = [
        f"buildings: {', '.join(b.id for b in buildings)}",
        f"topic prefix: {prefix!r}",
    ]
    # The secrets first: if a later write fails, the passwords of the new hashes are not lost.
    _write(out / SECRETS_FILE, _secrets_text(found, passwords), 0o600)
    passwd = "".join(f"{p.name}:{hash_password(passwords[p.name])}\n" for p in found)
    _write(out / PASSWORD_FILE, passwd, 0o640)
    _write(out / ACL_FILE, acl_text(found, header), 0o640)
    return Credentials(out, tuple(found), passwords, reused)


# -- command line --------------------------------------------------------------------------------


def _cmd_credentials(args: argparse.Namespace) -> int:
    from core.settings import MqttSettings

    buildings: list[Building] = []
    for path in args.building:
        try:
            buildings.append(load_building(path))
        except BuildingFileError as exc:
            print(f"error: {path} is not a valid building file:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_USAGE
    try:
        prefix = args.topic_prefix if args.topic_prefix is not None else MqttSettings().topic_prefix
        done = write_credentials(buildings, args.out, prefix, rotate=args.rotate)
    except (CredentialsError, TopicError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    gateways = sum(1 for p in done.principals if p.role is Role.GATEWAY)
    print(
        f"{len(done.principals)} MQTT users ({gateways} floor gateways), "
        f"{done.reused} password(s) kept, {len(done.principals) - done.reused} new:\n"
        f"  {done.password_file}  (Mosquitto password_file)\n"
        f"  {done.acl_file}  (Mosquitto acl_file)\n"
        f"  {done.secrets_file}  (plain passwords, mode 0600: keep it secret)"
    )
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mqtt credentials`` to the ``upstairs`` parser's subcommands."""
    mqtt = subparsers.add_parser("mqtt", help="MQTT broker tools").add_subparsers(
        dest="mqtt_command", required=True
    )
    cred = mqtt.add_parser(
        "credentials",
        help="write Mosquitto password, ACL and secrets files for buildings",
        description="Write a Mosquitto password file, an ACL file and a secrets file (0600)"
        " with one user per floor gateway and per platform service.",
    )
    cred.add_argument(
        "--building", type=Path, action="append", required=True,
        help="building file (YAML); repeat for every building the broker serves",
    )  # fmt: skip
    cred.add_argument("--out", type=Path, required=True, help="folder to write the files to")
    cred.add_argument(
        "--topic-prefix", default=None, help="topic prefix (default: UPSTAIRS_TOPIC_PREFIX or none)"
    )
    cred.add_argument(
        "--rotate", action="store_true", help="new passwords for everyone (default: keep existing)"
    )
    cred.set_defaults(func=_cmd_credentials)
