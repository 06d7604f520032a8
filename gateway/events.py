"""Status messages of a floor gateway (contract v1 ``.../{floor}/status``, :class:`GatewayStatus`).

Three kinds, told apart by ``state`` and the first word of ``detail`` (docs/gateway.md):

- birth, retained: ``state: online``; ``detail`` is absent when every device answers, or
  ``faults n=2 ref-f03-load-z2=timeout ref-f03-temp-z1=exception_0x0B`` (sensor=reason,
  sorted by sensor; spaces in a reason become ``_``);
- last will and clean stop, retained: ``state: offline``, ``detail`` ``connection lost`` or
  ``stopped``;
- gap event, not retained: ``state: online``, ``detail``
  ``gap reason=count_cap dropped=1200 first=2026-11-21T10:00:00.000Z last=...Z``: readings
  polled between ``first`` and ``last`` (poll times) were dropped from the queue by a cap.
"""

from __future__ import annotations

from datetime import UTC, datetime

from core.payload import GatewayStatus, encode_ts, parse_timestamp
from gateway.queue import Gap


def ms_to_dt(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


def _status(source: str, state: str, detail: str | None, with_ts: bool = True) -> bytes:
    status = GatewayStatus.model_validate(
        {
            "source": source,
            "state": state,
            "ts": datetime.now(UTC) if with_ts else None,
            "detail": detail,
        }
    )
    return status.model_dump_json(exclude_none=True).encode()


def birth(source: str, faults: dict[str, str]) -> bytes:
    """Retained ``online`` status, listing the devices that are faulty now."""
    return _status(source, "online", format_faults(faults))


def offline(source: str, detail: str) -> bytes:
    """Retained ``offline`` status: the last will (no ts: it is written at connect time)."""
    return _status(source, "offline", detail, with_ts=detail != "connection lost")


def gap_event(source: str, gap: Gap) -> bytes:
    return _status(source, "online", format_gap(gap))


def format_faults(faults: dict[str, str]) -> str | None:
    if not faults:
        return None
    items = " ".join(f"{s}={r.replace(' ', '_')}" for s, r in sorted(faults.items()))
    return f"faults n={len(faults)} {items}"


def format_gap(gap: Gap) -> str:
    return (
        f"gap reason={gap.reason} dropped={gap.dropped} "
        f"first={encode_ts(ms_to_dt(gap.first_ts_ms))} last={encode_ts(ms_to_dt(gap.last_ts_ms))}"
    )


def parse_detail(detail: str | None) -> tuple[str, dict[str, str]]:
    """Split a status detail into its kind (``faults``, ``gap``, ...) and key=value pairs."""
    if not detail:
        return "", {}
    kind, _, rest = detail.partition(" ")
    pairs = dict(item.partition("=")[::2] for item in rest.split() if "=" in item)
    return kind, pairs


def parse_gap(detail: str | None) -> tuple[int, datetime, datetime] | None:
    """(dropped, first, last) of a gap event's detail; None for any other status."""
    kind, pairs = parse_detail(detail)
    if kind != "gap":
        return None
    return int(pairs["dropped"]), parse_timestamp(pairs["first"]), parse_timestamp(pairs["last"])
