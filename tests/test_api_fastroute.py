"""The read routes' fast path (api/fastroute.py) answers exactly as FastAPI's own path does.

Every request below goes to the same app twice, once on the fast path and once with it off
(FastAPI's generic dependency and parameter handling), and the two answers must be the same:
status, headers and body. The requests cover good questions and every kind of bad one: no
or bad credentials, unknown, repeated, missing, malformed and out-of-range parameters, ids
that do not match the id pattern, and foreign or absent objects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.testclient import TestClient

from api import fastroute
from api.fastroute import FastRoute, plan_of
from tests.api_helpers import apply, bearer, client, ref_tower, store_readings, token
from tests.conftest import REF_TOWER

START = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
FROM = START.isoformat().replace("+00:00", "Z")
TO = (START + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
MONTH = START.strftime("%Y-%m")
WINDOW = f"from={FROM}&to={TO}"

FLOORS = "/api/v1/buildings/ref-tower/floors"
HISTORY = "/api/v1/buildings/ref-tower/floors/3/history"
READINGS = "/api/v1/sensors/ref-f03-load-z1/readings"
POWER = "/api/v1/tenants/northbridge/power"
BILL = "/api/v1/tenants/northbridge/bill"

# (who asks: operator, tenant, none or bad; path and query)
CASES: list[tuple[str, str]] = [
    ("operator", FLOORS),
    ("tenant", FLOORS),
    ("none", FLOORS),
    ("bad", FLOORS),
    ("operator", f"{FLOORS}?x=1"),
    ("none", f"{FLOORS}?x=1"),
    ("operator", "/api/v1/buildings/nowhere/floors"),
    ("operator", "/api/v1/buildings/-bad!/floors"),
    ("tenant", "/api/v1/buildings/nowhere/floors"),
    ("operator", f"{HISTORY}?metric=load&step=1m&{WINDOW}"),
    ("operator", f"{HISTORY}?metric=load&step=raw&{WINDOW}"),
    ("operator", f"{HISTORY}?metric=power&step=5m&{WINDOW}"),
    ("operator", f"{HISTORY}?metric=temperature&step=1h&{WINDOW}"),
    ("tenant", f"{HISTORY}?metric=load&step=1m&{WINDOW}"),
    ("tenant", f"/api/v1/buildings/ref-tower/floors/1/history?metric=load&{WINDOW}"),
    ("operator", f"{HISTORY}?metric=weight&{WINDOW}"),
    ("operator", f"{HISTORY}?metric=load&step=2m&{WINDOW}"),
    ("operator", f"{HISTORY}?metric=load&from=yesterday&to={TO}"),
    ("operator", f"{HISTORY}?metric=load&from=1700000000&to={TO}"),
    ("operator", f"{HISTORY}?metric=load&from=2026-01-01T00:00:00&to={TO}"),
    ("operator", f"{HISTORY}?metric=load&from={TO}&to={FROM}"),
    ("operator", f"{HISTORY}?metric=load&metric=power&step=1h&{WINDOW}"),
    ("operator", f"{HISTORY}?step=1m&{WINDOW}"),
    ("operator", f"{HISTORY}?metric=load&{WINDOW}&limit=5"),
    ("none", f"{HISTORY}?metric=weight"),
    ("none", f"{HISTORY}?metric=load&bogus=1"),
    ("operator", f"/api/v1/buildings/ref-tower/floors/abc/history?metric=load&{WINDOW}"),
    ("operator", f"/api/v1/buildings/ref-tower/floors/999/history?metric=load&{WINDOW}"),
    ("operator", f"/api/v1/buildings/ref-tower/floors/77/history?metric=load&{WINDOW}"),
    ("operator", f"{READINGS}?step=1m&{WINDOW}"),
    ("operator", f"{READINGS}?step=raw&{WINDOW}"),
    ("tenant", f"{READINGS}?step=1m&{WINDOW}"),
    ("tenant", f"/api/v1/sensors/ref-f01-load-z1/readings?{WINDOW}"),
    ("operator", f"/api/v1/sensors/no-such-sensor/readings?{WINDOW}"),
    ("operator", f"/api/v1/sensors/bad%20id/readings?{WINDOW}"),
    ("operator", f"{READINGS}?step=1m&to={TO}"),
    ("tenant", f"{POWER}?step=1h&{WINDOW}"),
    ("tenant", f"{POWER}?step=1h&{WINDOW}&format=csv"),
    ("tenant", f"{POWER}?step=raw&{WINDOW}"),
    ("tenant", f"{POWER}?step=1h&{WINDOW}&format=xml"),
    ("tenant", f"{POWER}?step=1h&{WINDOW}&building=ref-tower"),
    ("tenant", f"{POWER}?step=1h&{WINDOW}&building=elsewhere"),
    ("operator", f"{POWER}?step=1d&{WINDOW}"),
    ("operator", f"/api/v1/tenants/voltcab/power?step=1h&{WINDOW}"),
    ("tenant", f"/api/v1/tenants/voltcab/power?step=1h&{WINDOW}"),
    ("tenant", f"/api/v1/tenants/no-one/power?step=1h&{WINDOW}"),
    ("tenant", f"{POWER}?step=1h&{WINDOW}&building=-x"),
    ("tenant", f"{BILL}?month={MONTH}"),
    ("tenant", f"{BILL}?month={MONTH}&format=csv"),
    ("operator", f"{BILL}?month={MONTH}&building=ref-tower"),
    ("tenant", f"{BILL}?month=2026-13"),
    ("tenant", f"{BILL}?month=november"),
    ("tenant", BILL),
    ("tenant", f"{BILL}?month={MONTH}&month=2026-01"),
    ("tenant", f"/api/v1/tenants/voltcab/bill?month={MONTH}"),
    ("none", f"{BILL}?month=2026-13"),
    ("bad", f"{BILL}?month={MONTH}"),
    # empty values, encoded names, several errors at once (their order is FastAPI's)
    ("operator", f"{HISTORY}?metric=load&step=&{WINDOW}"),
    ("operator", f"{HISTORY}?metric=load&from=&to="),
    ("tenant", f"{POWER}?step=1h&{WINDOW}&format="),
    ("tenant", f"{POWER}?step=1h&{WINDOW}&%66ormat=csv"),
    ("operator", f"/api/v1/buildings/ref-tower/floors/abc/history?metric=weight&step=2m&{WINDOW}"),
    ("tenant", "/api/v1/tenants/-bad/bill?month=&building=-x"),
]


@pytest.fixture
def tower(db_url: str) -> dict[str, dict[str, str]]:
    apply(db_url, ref_tower(REF_TOWER))
    rows = [
        (sensor, START + timedelta(minutes=m, seconds=5), value + m)
        for m in range(90)
        for sensor, value in (
            ("ref-f03-load-z1", 120.0),
            ("ref-f03-temp-z1", 24.0),
            ("ref-f03-power-northbridge", 300.0),
            ("ref-f03-energy-northbridge", 1000.0),
        )
    ]
    store_readings(db_url, rows)
    return {
        "operator": bearer(token(db_url, "operator")),
        "tenant": bearer(token(db_url, "tenant", "northbridge", "ref-tower")),
        "none": {},
        "bad": bearer("ups_not-a-token"),
    }


def test_the_hot_reads_take_the_fast_path() -> None:
    from api import bills, floors, history, tenants

    fast = {
        r.path
        for m in (floors, history, tenants, bills)
        for r in m.router.routes
        if isinstance(r, FastRoute) and plan_of(r) is not None
    }
    assert fast == {
        "/api/v1/buildings/{building}/floors",
        "/api/v1/buildings/{building}/floors/{floor}/history",
        "/api/v1/sensors/{sensor}/readings",
        "/api/v1/tenants/{tenant}/power",
        "/api/v1/tenants/{tenant}/bill",
    }


def test_dependencies_added_where_the_router_is_included_are_not_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from api import floors

    async def deny() -> None:
        raise HTTPException(403, "denied by the include")

    app = FastAPI()
    app.include_router(floors.router, dependencies=[Depends(deny)])
    with TestClient(app) as c:  # no pool, no database: only the include's check answers
        assert c.get(FLOORS).status_code == 403
    # a FastAPI whose include contexts this cannot see: every route takes FastAPI's path
    route = next(r for r in floors.router.routes if isinstance(r, FastRoute))
    assert plan_of(route) is not None
    monkeypatch.setattr(fastroute, "_CONTEXT_VAR", None)
    assert plan_of(route) is None


def test_fast_and_fastapi_paths_answer_alike(
    db_url: str, tower: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []
    real: Callable[[Any, Request], Awaitable[Response]] = fastroute._serve

    async def counting(plan: Any, request: Request) -> Response:
        served.append(request.url.path)
        return await real(plan, request)

    monkeypatch.setattr(fastroute, "_serve", counting)
    statuses = set()
    with client(db_url, api_cache_s=0.0, api_bill_cache=False) as c:
        for who, url in CASES:
            answers = []
            for enabled in (True, False):
                monkeypatch.setattr(fastroute, "ENABLED", enabled)
                before = len(served)
                r = c.get(url, headers=tower[who])
                assert len(served) == before + (1 if enabled else 0), (who, url, enabled)
                answers.append((r.status_code, sorted(r.headers.items()), r.content))
            fast, slow = answers
            assert fast == slow, (who, url)
            statuses.add(fast[0])
    # the cases reach every kind of answer (so a path that failed alike would show)
    assert statuses >= {200, 401, 404, 422}, statuses
