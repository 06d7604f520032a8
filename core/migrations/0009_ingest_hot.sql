-- Room on every page for the rows the ingest path updates over and over: sensor_latest (one
-- update per sensor and batch) and the rollups (one per touched bucket and refresh). None of
-- the updated columns is indexed, so with free space on the page PostgreSQL updates in place
-- (a HOT update: no new index entries, less to vacuum). Applies to pages written from now on.
ALTER TABLE sensor_latest SET (fillfactor = 50);
ALTER TABLE rollups_1m SET (fillfactor = 80);
ALTER TABLE rollups_1h SET (fillfactor = 50);
