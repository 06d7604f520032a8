"""MQTT telemetry into PostgreSQL: batched, idempotent, acknowledged only after commit.

``upstairs ingest`` runs :func:`main`; embedders call :func:`run_ingester` with an
:class:`IngestSettings`. The rollup refresher runs inside the ingester or on its own
(``python -m ingest.refresh``, not imported here so that ``-m`` runs it cleanly).
``upstairs bench ingest`` is ``ingest.bench.main`` (not imported here: it pulls in the
publishers).
"""

from ingest.rollups import RollupRefresher
from ingest.service import main, run_ingester
from ingest.settings import IngestSettings

__all__ = ["IngestSettings", "RollupRefresher", "main", "run_ingester"]
