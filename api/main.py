"""Entry point of ``upstairs api``."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from api.app import create_app
from api.settings import ApiSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstairs api", description="Run the HTTP API.")
    parser.add_argument("--host", help="listen address (UPSTAIRS_API_HOST)")
    parser.add_argument("--port", type=int, help="listen port (UPSTAIRS_API_PORT)")
    args = parser.parse_args(argv)
    settings = ApiSettings()
    if args.host:
        settings.api_host = args.host
    if args.port is not None:
        settings.api_port = args.port
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level="info",
        access_log=False,
    )
    return 0
