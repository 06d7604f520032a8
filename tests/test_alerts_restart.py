"""Kill -9 and restart the engine process; a webhook receiver that is down for 60 s."""

from __future__ import annotations

import asyncio
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts.clock import ManualClock
from alerts.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.alerts_helpers import (
    T0,
    command,
    command_result,
    mqtt_client,
    ref_tower,
    rows,
    running_engine,
    settings_for,
    store_building,
    wait_for,
)
from upstairs.embedded import free_port

QUIET = {"staleness": {"intervals": 1000}}


def _start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "alerts"],
        env={**env, "UPSTAIRS_ALERTS_TICK_S": "0.1", "UPSTAIRS_ALERTS_SESSION_EXPIRY_S": "120"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_kill_and_restart_keeps_alerts_and_pending_on_delay(db_url, mqtt, service_env):
    store_building(db_url, ref_tower(**QUIET, zone_load={"on_delay_s": 3}))
    with mqtt_client(mqtt) as m:
        m.subscribe("upstairs/v1/ref-tower/alerts")
        m.subscribe("upstairs/v1/ref-tower/1/state")
        proc = _start(service_env)
        try:
            await wait_for(lambda: m.states(1), 15, "the engine to start")
            now = lambda: datetime.now(UTC)  # noqa: E731
            m.telemetry(5, [("ref-f05-fire-z1", now(), 1)])
            m.telemetry(5, [("ref-f05-fire-z1", now(), 0)])
            for _ in range(5):  # zone f03-z1 over its limit for 4 s: an open alert
                m.telemetry(3, [("ref-f03-load-z1", now(), 530)])
                await asyncio.sleep(1)
            await wait_for(lambda: len(m.events()) >= 3, what="fire + load events")
            t0 = now()  # zone f03-z2: the on-delay starts now
            m.telemetry(3, [("ref-f03-load-z2", t0, 530)])
            await wait_for(
                lambda: rows(
                    db_url, "SELECT 1 FROM alert_conditions WHERE subject = 'zone:f03-z2'"
                    " AND pending_dir = 1",
                ),
                what="the pending on-delay to be stored",
            )  # fmt: skip
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            m.telemetry(3, [("ref-f03-load-z2", now(), 531)])  # queued in the session
            proc = _start(service_env)
            deadline = time.monotonic() + 15
            while not [e for e in m.events() if e["alert"]["zone"] == "f03-z2"]:
                assert time.monotonic() < deadline, "the pending on-delay never completed"
                m.telemetry(3, [("ref-f03-load-z2", now(), 532)])
                await asyncio.sleep(0.3)
            opened = rows(
                db_url, "SELECT zone_id, opened_at FROM alerts WHERE rule = 'zone_load' ORDER BY id"
            )
            assert [z for z, _ in opened] == ["f03-z1", "f03-z2"]  # no duplicate
            delay = (opened[1][1] - t0).total_seconds()
            assert 3 <= delay < 8, delay
            kinds = [(e["alert"]["zone"], e["kind"]) for e in m.events()]
            assert kinds.count(("f03-z1", "opened")) == 1
            fire = rows(
                db_url, "SELECT id, state, condition_active FROM alerts WHERE rule = 'fire'"
            )
            assert [(s, a) for _, s, a in fire] == [("open", False)]
            reset = command(db_url, fire[0][0], "reset")
            assert await command_result(db_url, reset) == ("done", "reset")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_webhook_receiver_down_for_60_s_loses_nothing(db_url, mqtt) -> None:
    store_building(db_url, ref_tower(**QUIET, zone_load={"on_delay_s": 0}))
    port = free_port()
    secret = "s3cret-for-tests"
    settings = settings_for(
        db_url, mqtt, webhook_urls=[f"http://127.0.0.1:{port}/hook"], webhook_secret=secret,
        webhook_poll_s=0.05, webhook_backoff_initial_s=1, webhook_backoff_max_s=8,
    )  # fmt: skip
    clock = ManualClock(T0)

    async def run_for(seconds: float) -> None:  # simulated seconds, in 1 s steps
        for _ in range(int(seconds)):
            clock.advance(1)
            await asyncio.sleep(0.01)

    with mqtt_client(mqtt) as m:
        m.subscribe("upstairs/v1/ref-tower/alerts")
        async with running_engine(settings, clock, m):
            for value in (520, 300, 520, 460, 300):  # two load alerts, five events
                clock.advance(1)
                m.telemetry(3, [("ref-f03-load-z2", clock.now(), value)])
            clock.advance(1)
            m.telemetry(2, [("ref-f02-fire-z1", clock.now(), 1)])
            m.telemetry(2, [("ref-f02-fire-z1", clock.now() + timedelta(seconds=1), 0)])
            await wait_for(lambda: len(m.events()) >= 7, what="seven events")
            await run_for(30)
        # restart while the receiver is still down
        async with running_engine(settings, clock, m):
            fire_id = rows(db_url, "SELECT id FROM alerts WHERE rule = 'fire'")[0][0]
            assert (await command_result(db_url, command(db_url, fire_id, "reset")))[0] == "done"
            await run_for(30)
            pending = rows(
                db_url, "SELECT count(*), max(attempts) FROM alert_webhook_outbox"
                " WHERE delivered_at IS NULL",
            )[0]  # fmt: skip
            assert pending[0] == 8 and pending[1] >= 3  # the head retried, the rest wait
            _Receiver.got = []
            server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Receiver)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                for _ in range(200):
                    if len(_Receiver.got) >= 8:
                        break
                    await run_for(1)
                    await asyncio.sleep(0.02)
            finally:
                server.shutdown()
                server.server_close()
    events = rows(db_url, "SELECT id, alert_id FROM alert_events ORDER BY id")
    got = _Receiver.got
    assert sorted(int(h["X-Upstairs-Event-Id"]) for h, _ in got) == [e for e, _ in events]
    for headers, body in got:
        assert verify(secret.encode(), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    per_alert: dict[int, list[int]] = {}
    for _, body in got:
        event = json.loads(body)
        per_alert.setdefault(event["alert"]["id"], []).append(event["event_id"])
    assert all(ids == sorted(ids) for ids in per_alert.values())
    assert len(per_alert) == 3
