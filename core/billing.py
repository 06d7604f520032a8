"""Tenant bills from energy-register consumption under time-of-use tariffs (pure logic).

Input is the kWh consumed per fixed-width bin (15 minutes, or 1 minute when a tariff window
does not fall on a quarter hour), each bin starting at a UTC instant; the bins come from the
rollups, whose kWh per bucket is the increase of a register over the reading before it, a
reset counting from zero. The rules, documented in docs/api.md:

* a bin belongs to the time-of-use period of its start, in the building's local time;
* the increase between two readings belongs to the bin of the later reading, so consumption
  across a data gap, or across midnight at a month's start, is billed where the gap ends;
* the 15-minute demand (kW) of a quarter hour is its kWh times 4; the peak demand is the
  highest of the month, and the contract utilisation is that peak over the contracted kW.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from core.building import Tariff

DEMAND_MINUTES = 15


def month_bounds(tz: ZoneInfo, year: int, month: int) -> tuple[datetime, datetime]:
    """The local calendar month ``year-month`` as a UTC interval [start, end)."""
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def period_by_minute(tariff: Tariff) -> list[str]:
    """The name of the tariff's period for each of the 1,440 local minutes of a day."""
    out = [""] * (24 * 60)
    for period in tariff.periods:
        for start, end in period.minute_ranges():
            for minute in range(start, end):
                out[minute] = period.name
    return out


def bin_minutes(tariff: Tariff, tz: ZoneInfo, start: datetime, end: datetime) -> int:
    """15 when every window edge and every UTC offset in [start, end) is on a quarter hour."""
    edges = {m for p in tariff.periods for r in p.minute_ranges() for m in r}
    if any(m % DEMAND_MINUTES for m in edges):
        return 1
    probe = start
    while probe < end:
        offset = probe.astimezone(tz).utcoffset() or timedelta()
        if (offset.total_seconds() / 60) % DEMAND_MINUTES:
            return 1
        probe += timedelta(days=1)
    return DEMAND_MINUTES


@dataclass(frozen=True, slots=True)
class PeriodLine:
    name: str
    price_per_kwh: float
    kwh: float
    cost: float


@dataclass(frozen=True, slots=True)
class Bill:
    currency: str
    periods: list[PeriodLine]
    total_kwh: float
    total_cost: float
    peak_demand_kw: float | None
    peak_demand_at: datetime | None  # start of the peak quarter hour (UTC)
    contracted_kw: float
    contract_utilisation_pct: float | None
    bins_with_data: int


def compute_bill(
    tariff: Tariff,
    tz: ZoneInfo,
    contracted_kw: float,
    bins: Iterable[tuple[datetime, float]],
) -> Bill:
    """Bill the kWh of ``bins`` (start as an aware datetime, kWh); bins may repeat a start."""
    by_minute = period_by_minute(tariff)
    kwh: dict[str, float] = defaultdict(float)
    quarters: dict[datetime, float] = defaultdict(float)
    starts: set[datetime] = set()
    for start, value in bins:
        local = start.astimezone(tz)
        kwh[by_minute[local.hour * 60 + local.minute]] += value
        quarter = local.replace(minute=local.minute - local.minute % DEMAND_MINUTES, second=0)
        quarters[quarter.astimezone(UTC)] += value
        starts.add(start)
    lines = [
        PeriodLine(
            name=p.name,
            price_per_kwh=p.price_per_kwh,
            kwh=round(kwh[p.name], 3),
            cost=round(kwh[p.name] * p.price_per_kwh, 2),
        )
        for p in tariff.periods
    ]
    peak_at: datetime | None = None
    peak: float | None = None
    if quarters:
        peak_at = max(quarters, key=lambda q: (quarters[q], -q.timestamp()))
        peak = quarters[peak_at] * 60 / DEMAND_MINUTES
    return Bill(
        currency=tariff.currency,
        periods=lines,
        total_kwh=round(sum(kwh.values()), 3),
        total_cost=round(sum(line.cost for line in lines), 2),
        peak_demand_kw=None if peak is None else round(peak, 3),
        peak_demand_at=peak_at,
        contracted_kw=contracted_kw,
        contract_utilisation_pct=None if peak is None else round(100 * peak / contracted_kw, 2),
        bins_with_data=len(starts),
    )
