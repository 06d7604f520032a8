"""Entry point of ``upstairs api``."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.settings import ApiSettings
from core.gc_tuning import tune_gc


def app_factory() -> FastAPI:
    """The application of one worker process, built from the environment."""
    return _frozen(create_app(ApiSettings()))


def _frozen(app: FastAPI) -> FastAPI:
    """``app``, with the garbage collector tuned for a service (:func:`core.gc_tuning.tune_gc`:
    everything built so far, which lives as long as the process, kept out of its passes, and
    far fewer passes); once per process, here in the entry point (a test building many apps
    does not)."""
    tune_gc()
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
