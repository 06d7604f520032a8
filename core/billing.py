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
from functools import lru_cache
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
    windows = tuple(w for p in tariff.periods for w in p.windows)
    return _bin_minutes(windows, tz.key, start, end)


@lru_cache(maxsize=256)
def _bin_minutes(windows: tuple[str, ...], tz_key: str, start: datetime, end: datetime) -> int:
    edges = {int(w[i : i + 2]) * 60 + int(w[i + 3 : i + 5]) for w in windows for i in (0, 6)}
    if any(m % DEMAND_MINUTES for m in edges):  # windows are 'HH:MM-HH:MM' (core.building)
        return 1
    tz, probe = ZoneInfo(tz_key), start
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


def quarter_periods(
    tariff: Tariff, tz: ZoneInfo, start: datetime, end: datetime
) -> tuple[int, ...]:
    """For each quarter hour from ``start`` (UTC, on a quarter hour) to ``end``: the index in
    ``tariff.periods`` of the period its start falls in, in local time. Needs every UTC offset
    in the range on a quarter hour (:func:`bin_minutes` is 15); a month is ~3,000 entries."""
    key = (tz.key, start, end, tuple((p.name, tuple(p.minute_ranges())) for p in tariff.periods))
    return _quarter_periods(key)


@lru_cache(maxsize=64)
def _quarter_periods(
    key: tuple[str, datetime, datetime, tuple[tuple[str, tuple[tuple[int, int], ...]], ...]],
) -> tuple[int, ...]:
    tz_key, start, end, periods = key
    tz = ZoneInfo(tz_key)
    by_minute = [0] * (24 * 60)
    for index, (_, ranges) in enumerate(periods):
        for first, last in ranges:
            by_minute[first:last] = [index] * (last - first)
    out = []
    t, step = start, timedelta(minutes=DEMAND_MINUTES)
    while t < end:
        local = t.astimezone(tz)
        out.append(by_minute[local.hour * 60 + local.minute])
        t += step
    return tuple(out)


def bill_from_totals(
    tariff: Tariff,
    contracted_kw: float,
    kwh: dict[str, float],
    peak_kwh: float | None,
    peak_at: datetime | None,
    bins_with_data: int,
) -> Bill:
    """The bill of a month whose kWh per period (``kwh``, by period name) and highest quarter
    hour (its kWh and start) are known."""
    shown = {p.name: round(kwh.get(p.name, 0.0), 3) for p in tariff.periods}
    lines = [  # the cost of the kWh as the bill shows them: anyone can check it from the bill
        PeriodLine(
            name=p.name,
            price_per_kwh=p.price_per_kwh,
            kwh=shown[p.name],
            cost=round(shown[p.name] * p.price_per_kwh, 2),
        )
        for p in tariff.periods
    ]
    peak = None if peak_kwh is None else peak_kwh * 60 / DEMAND_MINUTES
    return Bill(
        currency=tariff.currency,
        periods=lines,
        total_kwh=round(sum(kwh.values()), 3),
        total_cost=round(sum(line.cost for line in lines), 2),
        peak_demand_kw=None if peak is None else round(peak, 3),
        peak_demand_at=peak_at,
        contracted_kw=contracted_kw,
        contract_utilisation_pct=None if peak is None else round(100 * peak / contracted_kw, 2),
        bins_with_data=bins_with_data,
    )


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
    peak_at: datetime | None = None
    if quarters:
        peak_at = max(quarters, key=lambda q: (quarters[q], -q.timestamp()))
    peak_kwh = None if peak_at is None else quarters[peak_at]
    return bill_from_totals(tariff, contracted_kw, kwh, peak_kwh, peak_at, len(starts))
