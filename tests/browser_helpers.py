"""Browser tests and screenshots: Debian's Chromium under Playwright, real services.

``python -m tests.browser_helpers screenshots --out docs/screenshots`` (``make screenshots``)
runs ``upstairs demo`` on a free port, signs in with the demo credentials and renders every
page at 1366x768, printing each page's load time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

from upstairs.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
UPSTAIRS = str(ROOT / ".venv" / "bin" / "upstairs")


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@contextlib.contextmanager
def service(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An ``upstairs`` subprocess, stopped (SIGTERM, then SIGKILL) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen([UPSTAIRS, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def api_server(env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    with service(["api", "--port", str(port)], env, log):
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz")
        yield url


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/sign-in")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def timed_goto(page: Page, url: str) -> dict[str, float]:
    """Open ``url``; navigation timing (ms) and the time until the page's data is drawn."""
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)
    ready = (time.perf_counter() - start) * 1000
    nav: dict[str, float] = page.evaluate(
        "() => { const n = performance.getEntriesByType('navigation')[0];"
        " return {ttfb: n.responseStart, dom: n.domContentLoadedEventEnd, load: n.loadEventEnd}; }"
    )
    return {**{k: round(v, 1) for k, v in nav.items()}, "data_ready": round(ready, 1)}


class Recorder:
    """Everything a page received: documents, fetched responses and WebSocket frames."""

    def __init__(self, page: Page) -> None:
        self.texts: list[str] = []
        page.on("response", self._response)
        page.on("websocket", self._socket)

    def _response(self, response: Any) -> None:
        with contextlib.suppress(Exception):  # redirects and aborted loads have no body
            kind = response.headers.get("content-type", "")
            if not kind.startswith(("image/", "font/")):
                self.texts.append(response.text())

    def _socket(self, ws: Any) -> None:
        ws.on("framereceived", lambda payload: self.texts.append(str(payload)))


def report(name: str, timings: dict[str, dict[str, float]]) -> Path:
    """Write page load times where the developer (and CI logs) can find them."""
    out = ROOT / ".upstairs" / "page-load" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    print(f"page load times ({name}, ms):", json.dumps(timings), file=sys.stderr)
    return out


def screenshots(out: Path, port: int) -> int:
    """Run the demo, sign in as the operator and a tenant, render every page."""
    data = ROOT / ".upstairs" / "screenshots-demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSTAIRS_TEST")}
    out.mkdir(parents=True, exist_ok=True)
    args = ["demo", "--port", str(port), "--data-dir", str(data), "--backfill-hours", "2"]
    args += ["--speed", "120"]
    with service(args, env, data.parent / "screenshots-demo.log"):
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", 120)
        creds = json.loads((data / "demo-credentials.json").read_text())
        time.sleep(20)  # let the simulators and the alert engine publish a few states
        timings: dict[str, dict[str, float]] = {}
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            sign_in(page, base, creds["operator"])
            for name, path in (("building", "/"), ("floor", "/floors/5"), ("alerts", "/alerts")):
                timings[name] = timed_goto(page, base + path)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            tenant_page = browser.new_page(viewport={"width": 1366, "height": 768})
            tenant = sorted(creds["tenants"])[0]
            sign_in(tenant_page, base, creds["tenants"][tenant])
            timings["tenant"] = timed_goto(tenant_page, base + "/tenant")
            tenant_page.screenshot(path=str(out / "tenant.png"), full_page=True)
            tablet = browser.new_page(viewport={"width": 768, "height": 1024})
            sign_in(tablet, base, creds["operator"])
            timed_goto(tablet, base + "/")
            tablet.screenshot(path=str(out / "building-tablet.png"))
            tenant_page.goto(f"{base}/sign-in")
            tenant_page.screenshot(path=str(out / "sign-in.png"))
        report("demo", timings)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.browser_helpers")
    parser.add_argument("command", choices=["screenshots"])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    return screenshots(args.out, args.port or free_port())


if __name__ == "__main__":
    sys.exit(main())
