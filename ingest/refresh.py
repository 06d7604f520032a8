"""``python -m ingest.refresh``: only the rollup refresher, as a service of its own.

For deployments where the ingesters run with ``UPSTAIRS_INGEST_ROLLUP_INTERVAL_S=0``. Applies
pending migrations first, like the ingester. Not imported by ``ingest/__init__.py``, so that
``python -m`` runs it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from core.db import migrate
from ingest.metrics import IngestMetrics
from ingest.rollups import RollupRefresher
from ingest.settings import IngestSettings

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Run only the rollup refresher until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m ingest.refresh", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    settings = IngestSettings()
    url = settings.db.database_url
    if url is None:
        logger.error("the rollup refresher needs UPSTAIRS_DATABASE_URL")
        return 2
    if settings.rollup_interval_s <= 0:
        settings = settings.model_copy(update={"rollup_interval_s": 1.0})

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.to_thread(migrate, url)
        await RollupRefresher(settings, IngestMetrics()).run(stop)

    asyncio.run(_run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
