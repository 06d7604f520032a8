"""MQTT topic names of wire contract v1: builders and a parser.

Every topic is ``{prefix}upstairs/v1/{building}/...``. The prefix is empty in production; it
lets several deployments (or test runs) share one broker without seeing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

ROOT = "upstairs"
VERSION = "v1"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TopicError(ValueError):
    """A topic that is not part of contract v1."""


class Channel(StrEnum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    STATE = "state"
    ALERTS = "alerts"
    COMMANDS = "commands"


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid topic level id (no ``+``, ``#``, ``/``), else raise."""
    if not _ID.match(value):
        raise TopicError(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
            " and start with a letter or digit"
        )
    return value


def check_prefix(prefix: str) -> str:
    """A prefix is empty or ends with '/', and holds no wildcard."""
    if prefix and (not prefix.endswith("/") or "+" in prefix or "#" in prefix):
        raise TopicError(f"topic prefix {prefix!r} must end with '/' and hold no '+' or '#'")
    return prefix


def _base(building: str, prefix: str) -> str:
    return f"{check_prefix(prefix)}{ROOT}/{VERSION}/{check_id(building, 'building')}"


def floor_topic(building: str, floor: int, channel: Channel, prefix: str = "") -> str:
    """``upstairs/v1/{building}/{floor}/{telemetry|status|state}``."""
    if channel not in (Channel.TELEMETRY, Channel.STATUS, Channel.STATE):
        raise TopicError(f"{channel} is not a per-floor channel")
    return f"{_base(building, prefix)}/{int(floor)}/{channel.value}"


def telemetry_topic(building: str, floor: int, prefix: str = "") -> str:
    return floor_topic(building, floor, Channel.TELEMETRY, prefix)


def status_topic(building: str, floor: int, prefix: str = "") -> str:
    return floor_topic(building, floor, Channel.STATUS, prefix)


def state_topic(building: str, floor: int, prefix: str = "") -> str:
    return floor_topic(building, floor, Channel.STATE, prefix)


def alerts_topic(building: str, prefix: str = "") -> str:
    """``upstairs/v1/{building}/alerts``: alert lifecycle events."""
    return f"{_base(building, prefix)}/{Channel.ALERTS.value}"


def commands_topic(building: str, prefix: str = "") -> str:
    """``upstairs/v1/{building}/commands``: operator actions for the alert engine."""
    return f"{_base(building, prefix)}/{Channel.COMMANDS.value}"


def subscription(channel: Channel, prefix: str = "", building: str = "+") -> str:
    """A wildcard filter for one channel across buildings (and floors)."""
    base = f"{check_prefix(prefix)}{ROOT}/{VERSION}/{building}"
    if channel in (Channel.ALERTS, Channel.COMMANDS):
        return f"{base}/{channel.value}"
    return f"{base}/+/{channel.value}"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed contract-v1 topic. ``floor`` is None for building-wide channels."""

    building: str
    channel: Channel
    floor: int | None = None


def parse_topic(topic: str, prefix: str = "") -> Topic:
    """Parse a contract-v1 topic; raise :class:`TopicError` for anything else."""
    if prefix:
        if not topic.startswith(prefix):
            raise TopicError(f"topic {topic!r} is outside the prefix {prefix!r}")
        topic = topic[len(prefix) :]
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != ROOT:
        raise TopicError(f"topic {topic!r} is not an {ROOT}/ topic")
    if parts[1] != VERSION:
        raise TopicError(f"topic {topic!r} has contract version {parts[1]!r}, expected {VERSION}")
    building = check_id(parts[2], "building")
    if len(parts) == 4:
        try:
            channel = Channel(parts[3])
        except ValueError as exc:
            raise TopicError(f"unknown channel {parts[3]!r} in {topic!r}") from exc
        if channel not in (Channel.ALERTS, Channel.COMMANDS):
            raise TopicError(f"channel {channel} needs a floor in {topic!r}")
        return Topic(building, channel)
    if len(parts) != 5:
        raise TopicError(f"topic {topic!r} has {len(parts)} levels, expected 4 or 5")
    floor_s = parts[3]
    if not re.fullmatch(r"-?[0-9]{1,3}", floor_s):
        raise TopicError(f"floor {floor_s!r} in {topic!r} is not an integer")
    try:
        channel = Channel(parts[4])
    except ValueError as exc:
        raise TopicError(f"unknown channel {parts[4]!r} in {topic!r}") from exc
    if channel in (Channel.ALERTS, Channel.COMMANDS):
        raise TopicError(f"channel {channel} takes no floor in {topic!r}")
    return Topic(building, channel, int(floor_s))
