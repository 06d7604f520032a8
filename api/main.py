"""Entry point of ``upstairs api``."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.settings import ApiSettings


def app_factory() -> FastAPI:
    """The application of one worker process, built from the environment."""
    return _frozen(create_app(ApiSettings()))


def _frozen(app: FastAPI) -> FastAPI:
    """``app``, with everything built so far (modules, routes, models) kept out of the garbage
    collector's passes: it lives as long as the process, and every full pass would walk it
    again (once per process, here in the entry point; a test building many apps does not)."""
    gc.freeze()
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstairs api", description="Run the HTTP API.")
    parser.add_argument("--host", help="listen address (UPSTAIRS_API_HOST)")
    parser.add_argument("--port", type=int, help="listen port (UPSTAIRS_API_PORT)")
    parser.add_argument("--workers", type=int, help="worker processes (UPSTAIRS_API_WORKERS)")
    args = parser.parse_args(argv)
    settings = ApiSettings()
    if args.host:
        settings.api_host = args.host
    if args.port is not None:
        settings.api_port = args.port
    workers = args.workers or settings.api_workers
    if not (settings.database_url or settings.api_database_url):
        print(
            "upstairs api: UPSTAIRS_DATABASE_URL (or UPSTAIRS_API_DATABASE_URL) must be set",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # loop/http "auto": uvloop and httptools (dependencies) when importable.
    if workers > 1:  # each worker builds its app from the same environment
        uvicorn.run(
            "api.main:app_factory",
            factory=True,
            workers=workers,
            host=settings.api_host,
            port=settings.api_port,
            log_level="info",
            access_log=False,
        )
    else:
        uvicorn.run(
            _frozen(create_app(settings)),
            host=settings.api_host,
            port=settings.api_port,
            log_level="info",
            access_log=False,
        )
    return 0
