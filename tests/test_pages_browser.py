"""Acceptance tests of the pages in a real browser (Debian's Chromium under Playwright),
against a real API server, the real alert engine, PostgreSQL and MQTT. Page load times are
written to .upstairs/page-load/*.json (a report, not an assertion)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.alerts_helpers import mqtt_client, ref_tower, store_building
from tests.api_helpers import store_readings, token
from tests.browser_helpers import (
    Recorder,
    api_server,
    chromium,
    report,
    service,
    sign_in,
    timed_goto,
)
from tests.conftest import MqttTarget
from tests.test_pages import TOWER, foreign_words, seed

pytestmark = pytest.mark.timeout(240)


def _wait(page, selector: str, timeout_s: float, state: str = "visible") -> float:
    start = time.perf_counter()
    page.wait_for_selector(selector, timeout=timeout_s * 1000, state=state)
    return time.perf_counter() - start


def test_operator_live_overload_ack_and_fire(
    db_url: str, mqtt: MqttTarget, service_env: dict[str, str], tmp_path: Path
) -> None:
    building = ref_tower(zone_load={"on_delay_s": 0.0}, floor_load={"on_delay_s": 0.0})
    store_building(db_url, building)
    env = {
        **service_env,
        "UPSTAIRS_ALERTS_TICK_S": "0.1",
        "UPSTAIRS_ALERTS_COMMAND_POLL_S": "0.2",
        "UPSTAIRS_ALERTS_STATE_MIN_INTERVAL_S": "0.2",
    }
    operator = token(db_url, "operator")
    timings = {}
    with (
        service(["alerts"], env, tmp_path / "alerts.log"),
        api_server(env, tmp_path / "api.log") as base,
        mqtt_client(mqtt) as m,
        chromium() as browser,
    ):
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        sign_in(page, base, operator)
        timings["building"] = timed_goto(page, base + "/")
        assert page.locator("section.band").count() == 10
        page.wait_for_selector("#live-status[data-state='on']", timeout=10_000)
        # an overload on floor 5, as the floor gateway would publish it
        now = datetime.now(UTC)
        m.telemetry(5, [("ref-f05-load-z1", now, 560.0), ("ref-f05-load-z2", now, 200.0)])
        seconds = _wait(page, "#floor-5[data-status='critical']", 5)
        band = page.locator("#floor-5").inner_text()
        assert "Critical" in band and "112 %" in band and "1 critical" in band
        # acknowledge it from the alerts page: the page and the API both show it
        timings["alerts"] = timed_goto(page, base + "/alerts?floor=5&severity=critical")
        row = page.locator("tr[data-rule='zone_load']")
        row.locator("button[data-action='ack']").click()
        page.wait_for_selector("tr[data-rule='zone_load'][data-state='acknowledged']")
        assert (
            "acknowledged by operator:test-operator-all"
            in page.locator("tr[data-rule='zone_load'] td.who").inner_text()
        )
        alerts = httpx.get(
            f"{base}/api/v1/alerts?floor=5&severity=critical",
            headers={"Authorization": f"Bearer {operator}"},
        ).json()
        assert [a["state"] for a in alerts if a["rule"] == "zone_load"] == ["acknowledged"]
        # fire on floor 7: the banner names floors 6, 7, 8 and their tenants
        timed_goto(page, base + "/")
        m.telemetry(7, [("ref-f07-fire-z1", datetime.now(UTC), 1.0)])
        fire_s = _wait(page, "#evacuation:not([hidden])", 5)
        banner = page.locator("#evacuation").inner_text()
        assert "FIRE on floor 7" in banner and "evacuate floors 6, 7, 8" in banner
        assert "Zhangjiang Silicon Design & Test Lab" in banner
        assert page.locator("#floor-7").get_attribute("data-status") == "fire"
        # the detector returns to normal; the operator resets the latched alarm
        m.telemetry(7, [("ref-f07-fire-z1", datetime.now(UTC), 0.0)])
        page.goto(base + "/alerts?floor=7")
        page.wait_for_selector("tr[data-rule='fire'] button[data-action='reset']")
        assert page.locator("tr[data-rule='fire'] button[data-action='shelve']").count() == 0
        deadline = time.monotonic() + 10
        while True:  # a reset is refused until the engine has seen the detector clear
            page.locator("tr[data-rule='fire'] button[data-action='reset']").first.click()
            page.wait_for_function(
                "() => document.getElementById('action-status').textContent.match(/✓|⚠/)"
            )
            if "✓" in page.locator("#action-status").inner_text():
                break
            assert time.monotonic() < deadline, page.locator("#action-status").inner_text()
            time.sleep(0.3)
            page.reload()
        page.goto(base + "/")
        _wait(page, "#evacuation[hidden]", 15, state="attached")
        assert page.locator("#floor-7").get_attribute("data-status") != "fire"
    report("operator", {**timings, "overload_shown_s": {"s": round(seconds, 2)},
                        "fire_banner_s": {"s": round(fire_s, 2)}})  # fmt: skip


def test_tenant_sees_only_itself_and_stale_sensors_show(
    db_url: str, mqtt: MqttTarget, service_env: dict[str, str], tmp_path: Path
) -> None:
    store_building(db_url, TOWER)
    now = datetime.now(UTC)
    seed(db_url, now)
    rows = []  # 30 days of hourly energy for every meter: the daily chart and the bill
    for sensor in TOWER.sensors:
        if sensor.kind.value == "energy":
            start = now - timedelta(days=30)
            rows += [(sensor.id, start + timedelta(hours=h), 1000.0 + 40 * h) for h in range(718)]
    store_readings(db_url, rows)
    with psycopg.connect(db_url) as conn:  # a fire next door: cellforge is told, not where
        conn.execute(
            "INSERT INTO alerts (building_id, rule, subject, floor, zone_id, sensor_id,"
            " tenant_ids, severity, state, latched, message, opened_at, evacuation_floors)"
            " VALUES ('ref-tower', 'fire', 'sensor:ref-f03-fire-z1', 3, 'f03-z1',"
            " 'ref-f03-fire-z1', '{cellforge,northbridge,jinqiao-smt}', 'critical', 'open',"
            " true, 'FIRE: detector ref-f03-fire-z1 in alarm on floor 3 (zone f03-z1)', now(),"
            " '{2,3,4}')"
        )
    tenant = token(db_url, "tenant", "cellforge", "ref-tower")
    operator = token(db_url, "operator")
    timings = {}
    with api_server(service_env, tmp_path / "api.log") as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 768, "height": 1024})  # tablet
        seen = Recorder(page)
        sign_in(page, base, tenant)
        timings["tenant"] = timed_goto(page, base + "/tenant")
        assert page.locator("#chart-daily canvas").count() >= 1
        assert "kWh in" in page.locator("#daily-note").inner_text()
        assert page.locator("#bill tbody tr").count() == 3  # peak, flat, valley
        assert "CNY" in page.locator("#bill tfoot").inner_text()
        page.wait_for_selector("#evacuation:not([hidden])")
        assert "Your space on floor 2" in page.locator("#evacuation").inner_text()
        page.select_option("#movein select[name=zone]", "f02-z2")
        page.fill("#movein input[name=mass_kg]", "150000")
        page.click("#movein button[type=submit]")
        page.wait_for_selector("#movein-result .verdict.v-refuse")
        assert "Zone floor load" in page.locator("#movein-result").inner_text()
        with page.expect_download() as download:
            page.click("#bill-csv")
        assert "peak" in Path(download.value.path()).read_text()
        page.goto(base + "/alerts")
        page.goto(base + "/floors/3")  # not for tenants: back to its own page
        assert page.url.endswith("/tenant")
        page.wait_for_selector("body[data-ready='1']")
        seen.texts.append(page.content())
        everything = "\n".join(seen.texts)
        assert "Cellforge Battery Systems" in everything
        leaked = sorted(w for w in foreign_words("cellforge") if w in everything)
        assert not leaked, leaked
        assert len(seen.texts) > 10
        op = browser.new_page(viewport={"width": 1366, "height": 768})
        sign_in(op, base, operator)
        timings["floor"] = timed_goto(op, base + "/floors/3")
        stale = op.locator("tr[data-sensor='ref-f03-temp-z2']")
        assert "q-stale" in (stale.get_attribute("class") or "")
        assert "stale" in stale.locator("td.quality").inner_text()
        assert op.locator("#chart-load canvas").count() >= 1
    report("tenant", timings)
    print(json.dumps(timings))
