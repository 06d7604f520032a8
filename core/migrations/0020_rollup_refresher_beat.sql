-- The rollup refresher's heartbeat: when a refresh last ran, whoever ran it.
--
-- Rollups, sensor_latest (the live floors), the quarter-hour energy and the tenants' days (the
-- bills) are all kept current by the refresher; if no refresher runs, readings are still
-- stored, but everything the API serves stops moving. The ingesters' /metrics show their own
-- refresher, but a standalone `python -m ingest.refresh` serves none, and none of them is
-- what an operator watches. So each refresh that held the refresher's lock (see
-- refresh_rollups) also stamps this one row, in the same transaction, and the API reports its
-- age in /readyz and /metrics (docs/operations.md, "Is the refresher running?").
CREATE TABLE rollup_refresher (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),  -- one row
    refreshed_at timestamptz NOT NULL
);

GRANT SELECT ON rollup_refresher TO upstairs_api;
GRANT SELECT ON rollup_refresher TO grafana_reader;
