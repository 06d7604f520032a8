"""The gateway's SQLite store-and-forward queue, on a real file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.events import format_gap, parse_gap
from gateway.queue import QueueError, ReadingQueue

T0 = 1_790_000_000_000  # ms since 1970


def _rows(n: int, start: int = 0) -> list[tuple[str, int, float]]:
    return [(f"s{i % 3}", T0 + (start + i) * 100, float(start + i)) for i in range(n)]


def _queue(path: Path, **kwargs: float) -> ReadingQueue:
    return ReadingQueue(
        path,
        max_readings=int(kwargs.get("max_readings", 1000)),
        max_age_s=kwargs.get("max_age_s", 3600.0),
    )


def test_append_fetch_ack(tmp_path: Path) -> None:
    with _queue(tmp_path / "q.sqlite") as q:
        assert q.append(_rows(5), T0) == (1, 5)
        assert q.append(_rows(3, 5), T0) == (6, 8)
        assert q.count == 8
        rows = q.fetch(0, 8, 4)
        assert [r[0] for r in rows] == [1, 2, 3, 4]
        assert rows[0] == (1, "s0", T0, 0.0)
        assert q.ack(1, 4) == 4
        assert q.count == 4
        assert [r[0] for r in q.fetch(0, 8, 100)] == [5, 6, 7, 8]
        assert q.fetch(6, 7, 100)[0][0] == 7


def test_ids_never_go_back_even_when_emptied(tmp_path: Path) -> None:
    with _queue(tmp_path / "q.sqlite") as q:
        q.append(_rows(3), T0)
        q.ack(1, 3)
        assert q.count == 0
        assert q.append(_rows(2), T0) == (4, 5)
        assert q.last_id() == 5


def test_count_cap_drops_exactly_the_oldest(tmp_path: Path) -> None:
    with _queue(tmp_path / "q.sqlite", max_readings=10) as q:
        q.append(_rows(8), T0)
        q.append(_rows(7, 8), T0)  # 15 readings, cap 10: the 5 oldest go
        assert q.count == 10
        assert [r[2] for r in q.fetch(0, 100, 100)] == [T0 + i * 100 for i in range(5, 15)]
        q.append(_rows(3, 15), T0)  # 3 more go, merged into the same gap record
        gaps = q.take_gaps()
        assert len(gaps) == 1
        gap = gaps[0]
        assert (gap.reason, gap.dropped) == ("count_cap", 8)
        assert (gap.first_ts_ms, gap.last_ts_ms) == (T0, T0 + 700)
        assert q.dropped_total == 8
        # a gap handed out is not merged into any more: the next drop opens a new one
        q.append(_rows(1, 18), T0)
        assert [g.dropped for g in q.take_gaps()] == [1]
        q.ack_gap(gap)
        q.release_gaps([])
        assert q.take_gaps() == []  # the second one is still handed out


def test_age_cap_uses_poll_time(tmp_path: Path) -> None:
    with _queue(tmp_path / "q.sqlite", max_age_s=1.0) as q:
        q.append(_rows(20), T0 + 2_000)  # readings T0 .. T0+1900; cutoff T0+1000
        assert q.count == 10
        assert min(r[2] for r in q.fetch(0, 100, 100)) == T0 + 1000
        (gap,) = q.take_gaps()
        assert (gap.reason, gap.dropped) == ("age_cap", 10)
        assert q.enforce_caps(T0 + 10_000) == 10
        assert q.count == 0


def test_queue_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with _queue(path, max_readings=5) as q:
        q.append(_rows(8), T0)
        assert q.reserve_seq() == 0
        assert q.reserve_seq(10) == 1
    with _queue(path, max_readings=5) as q:
        assert q.count == 5
        assert q.reserve_seq() == 11
        assert [g.dropped for g in q.take_gaps()] == [3]
        assert q.append(_rows(1, 8), T0) == (9, 9)


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(QueueError, match="version 99"):
        _queue(path)


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(QueueError):
        _queue(path)


def test_gap_detail_round_trip(tmp_path: Path) -> None:
    with _queue(tmp_path / "q.sqlite", max_readings=2) as q:
        q.append(_rows(5), T0)
        (gap,) = q.take_gaps()
    detail = format_gap(gap)
    assert detail == (
        "gap reason=count_cap dropped=3"
        " first=2026-09-21T14:13:20.000Z last=2026-09-21T14:13:20.200Z"
    )
    dropped, first, last = parse_gap(detail) or (0, None, None)
    assert dropped == 3
    assert first is not None and last is not None
    assert round(first.timestamp() * 1000) == T0
    assert parse_gap("faults n=1 x=timeout") is None
