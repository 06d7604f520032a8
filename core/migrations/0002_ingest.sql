-- Ingest: rollups and the named queries the ingester runs inside its batch transaction.
-- The rollups are plain tables on both storage paths (plain PostgreSQL and TimescaleDB): the
-- ingester keeps them current in the same transaction that stores the readings, so they are
-- exact at every commit, late readings included. TimescaleDB continuous aggregates cannot
-- compute the kWh of an energy register per bucket (that needs the reading before the bucket,
-- a window function), so the same tables serve both paths; see docs/ingest.md.

-- One row per sensor and UTC minute / UTC hour. avg = sum / count. last_* is the reading with
-- the newest timestamp in the bucket. energy_kwh is set for energy registers only: the kWh
-- consumed in the bucket, i.e. the sum over the bucket's readings of the increase from the
-- previous reading (which may lie in an earlier bucket); a register reset counts from zero.
CREATE TABLE rollups_1m (
    sensor_id   text NOT NULL,
    bucket      timestamptz NOT NULL,
    count       bigint NOT NULL CHECK (count > 0),
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    avg         double precision GENERATED ALWAYS AS (sum / count) STORED,
    last_ts     timestamptz NOT NULL,
    last_value  double precision NOT NULL,
    energy_kwh  double precision,
    PRIMARY KEY (sensor_id, bucket)
);

CREATE TABLE rollups_1h (LIKE rollups_1m INCLUDING ALL);

-- kWh of one energy register in [bucket_start, bucket_start + width): the increase of every
-- reading in the bucket over the reading before it (a reset counts from zero).
CREATE FUNCTION energy_in_bucket(sensor text, bucket_start timestamptz, width interval)
RETURNS double precision LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(CASE WHEN prev IS NULL THEN 0
                             WHEN value >= prev THEN value - prev
                             ELSE value END), 0)
      FROM (SELECT ts, value, lag(value) OVER (ORDER BY ts) AS prev
              FROM ((SELECT ts, value FROM readings
                      WHERE sensor_id = sensor AND ts < bucket_start
                      ORDER BY ts DESC LIMIT 1)
                    UNION ALL
                    (SELECT ts, value FROM readings
                      WHERE sensor_id = sensor AND ts >= bucket_start
                        AND ts < bucket_start + width)) w) x
     WHERE ts >= bucket_start
$$;

-- Refresh energy_kwh after energy readings were inserted (the arrays name them). A reading
-- changes the kWh of its own minute and of the minute of the reading after it (whose
-- predecessor it now is); the hourly row moves by the same difference. Run it after
-- the batch's rows were merged into the rollups, so every touched bucket has its row.
CREATE FUNCTION refresh_energy_rollups(sensor_ids text[], tss timestamptz[])
RETURNS void LANGUAGE sql AS $$
    WITH ins AS (
        SELECT * FROM unnest(sensor_ids, tss) AS i(sensor_id, ts)
    ), succ AS (
        SELECT i.sensor_id, n.ts
          FROM ins i
          CROSS JOIN LATERAL (SELECT r.ts FROM readings r
                               WHERE r.sensor_id = i.sensor_id AND r.ts > i.ts
                               ORDER BY r.ts LIMIT 1) n
    ), touched AS (
        SELECT DISTINCT sensor_id, date_trunc('minute', ts, 'UTC') AS bucket
          FROM (SELECT * FROM ins UNION ALL SELECT * FROM succ) t
    ), fresh AS (
        SELECT t.sensor_id, t.bucket,
               energy_in_bucket(t.sensor_id, t.bucket, interval '1 minute') AS kwh,
               coalesce(r.energy_kwh, 0) AS old_kwh
          FROM touched t
          JOIN rollups_1m r ON r.sensor_id = t.sensor_id AND r.bucket = t.bucket
    ), minute_update AS (
        UPDATE rollups_1m r SET energy_kwh = f.kwh
          FROM fresh f
         WHERE r.sensor_id = f.sensor_id AND r.bucket = f.bucket
    ), hour_delta AS (
        SELECT sensor_id, date_trunc('hour', bucket, 'UTC') AS bucket, sum(kwh - old_kwh) AS d
          FROM fresh GROUP BY 1, 2
    )
    UPDATE rollups_1h r SET energy_kwh = coalesce(r.energy_kwh, 0) + h.d
      FROM hour_delta h
     WHERE r.sensor_id = h.sensor_id AND r.bucket = h.bucket
$$;

-- The stored readings right before and right after each (sensor, ts): what an energy reading
-- must be checked against before it is stored.
CREATE FUNCTION reading_neighbours(sensor_ids text[], tss timestamptz[])
RETURNS TABLE (sensor_id text, ts timestamptz, prev_ts timestamptz,
               prev_value double precision, next_ts timestamptz, next_value double precision)
LANGUAGE sql STABLE AS $$
    SELECT i.sensor_id, i.ts, p.ts, p.value, n.ts, n.value
      FROM unnest(sensor_ids, tss) AS i(sensor_id, ts)
      LEFT JOIN LATERAL (SELECT r.ts, r.value FROM readings r
                          WHERE r.sensor_id = i.sensor_id AND r.ts < i.ts
                          ORDER BY r.ts DESC LIMIT 1) p ON true
      LEFT JOIN LATERAL (SELECT r.ts, r.value FROM readings r
                          WHERE r.sensor_id = i.sensor_id AND r.ts > i.ts
                          ORDER BY r.ts LIMIT 1) n ON true
$$;
