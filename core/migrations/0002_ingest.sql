-- Ingest: rollups, the pending partials that keep them current, and the ingester's queries.
-- The rollups are plain tables on both storage paths (plain PostgreSQL and TimescaleDB),
-- maintained off the ingest hot path, like a continuous aggregate with a refresh policy: each
-- ingest transaction stores its readings plus their partial aggregates per (sensor, UTC
-- minute) in rollup_pending (append-only); refresh_rollups() merges those into the rollups
-- (late readings included) and recomputes energy kWh from raw readings. TimescaleDB continuous aggregates cannot compute the
-- kWh of an energy register per bucket (that needs the reading before the bucket, a window
-- function), so the same tables serve both paths; see docs/ingest.md.

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

-- Partial aggregates of newly stored readings per (sensor, UTC minute), one row per ingest
-- transaction and pair: written by the transaction that stored the readings, merged into the
-- rollups and deleted by refresh_rollups(). Append-only, no index: it costs the ingester one
-- small COPY per batch.
CREATE TABLE rollup_pending (
    sensor_id   text NOT NULL,
    bucket      timestamptz NOT NULL,
    count       bigint NOT NULL,
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    last_ts     timestamptz NOT NULL,
    last_value  double precision NOT NULL
);

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

-- Merge up to max_rows pending partials into the rollups, in one transaction (the caller's),
-- deleting them in the same statement: each partial counts exactly once, in any commit order
-- (counts and sums add, min/max, last by timestamp). energy_kwh needs the reading before each
-- bucket, so the touched minutes of energy registers are recomputed from raw readings, plus
-- the minute of the first reading after each (its predecessor may have changed: a late
-- reading); an hour's kWh is the sum of its minutes'.
-- Returns the partials consumed, or -1 when another refresher holds the lock.
CREATE FUNCTION refresh_rollups(max_rows integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    consumed integer;
    e_sensors text[];
    e_buckets timestamptz[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(1431326546, 1) THEN  -- "UPRR": one refresher at a time
        RETURN -1;
    END IF;
    WITH taken AS (
        DELETE FROM rollup_pending
         WHERE ctid = ANY (ARRAY(SELECT ctid FROM rollup_pending LIMIT max_rows))
        RETURNING *
    ), part AS (
        SELECT sensor_id, bucket, sum(count) AS count, sum(sum) AS sum, min(min) AS min,
               max(max) AS max, max(last_ts) AS last_ts,
               (array_agg(last_value ORDER BY last_ts DESC))[1] AS last_value
          FROM taken GROUP BY 1, 2
    ), minutes AS (
        INSERT INTO rollups_1m AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value)
        SELECT * FROM part ORDER BY 1, 2
        ON CONFLICT (sensor_id, bucket) DO UPDATE SET
            count = r.count + excluded.count,
            sum = r.sum + excluded.sum,
            min = least(r.min, excluded.min),
            max = greatest(r.max, excluded.max),
            last_ts = greatest(r.last_ts, excluded.last_ts),
            last_value = CASE WHEN excluded.last_ts > r.last_ts
                              THEN excluded.last_value ELSE r.last_value END
    ), hours AS (
        INSERT INTO rollups_1h AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value)
        SELECT sensor_id, date_trunc('hour', bucket, 'UTC'), sum(count), sum(sum), min(min),
               max(max), max(last_ts), (array_agg(last_value ORDER BY last_ts DESC))[1]
          FROM part GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (sensor_id, bucket) DO UPDATE SET
            count = r.count + excluded.count,
            sum = r.sum + excluded.sum,
            min = least(r.min, excluded.min),
            max = greatest(r.max, excluded.max),
            last_ts = greatest(r.last_ts, excluded.last_ts),
            last_value = CASE WHEN excluded.last_ts > r.last_ts
                              THEN excluded.last_value ELSE r.last_value END
    ), energy AS (
        SELECT p.sensor_id, p.bucket FROM part p JOIN sensors s ON s.id = p.sensor_id
         WHERE s.kind = 'energy'
    )
    SELECT (SELECT count(*) FROM taken), array_agg(sensor_id), array_agg(bucket)
      INTO consumed, e_sensors, e_buckets
      FROM energy;
    IF e_sensors IS NOT NULL THEN
        PERFORM refresh_energy(e_sensors, e_buckets);
    END IF;
    RETURN consumed;
END;
$$;

-- energy_kwh of the given minutes of energy registers and of the minute of the first reading
-- after each, recomputed from raw readings; then their hours' energy_kwh from the minutes.
CREATE FUNCTION refresh_energy(sensor_ids text[], buckets timestamptz[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    h_sensors text[];
    h_buckets timestamptz[];
BEGIN
    WITH touched AS (
        SELECT * FROM unnest(sensor_ids, buckets) AS t(sensor_id, bucket)
    ), successor AS (
        SELECT t.sensor_id, date_trunc('minute', n.ts, 'UTC') AS bucket
          FROM touched t
          CROSS JOIN LATERAL (SELECT r.ts FROM readings r
                               WHERE r.sensor_id = t.sensor_id
                                 AND r.ts >= t.bucket + interval '1 minute'
                               ORDER BY r.ts LIMIT 1) n
    ), work AS (
        SELECT * FROM touched UNION SELECT * FROM successor
    ), updated AS (
        UPDATE rollups_1m r
           SET energy_kwh = energy_in_bucket(w.sensor_id, w.bucket, interval '1 minute')
          FROM work w
         WHERE r.sensor_id = w.sensor_id AND r.bucket = w.bucket
        RETURNING r.sensor_id, date_trunc('hour', r.bucket, 'UTC') AS hour
    ), hours AS (
        SELECT DISTINCT sensor_id, hour FROM updated
    )
    SELECT array_agg(sensor_id), array_agg(hour) INTO h_sensors, h_buckets FROM hours;
    UPDATE rollups_1h h
       SET energy_kwh = (SELECT sum(m.energy_kwh) FROM rollups_1m m
                          WHERE m.sensor_id = h.sensor_id AND m.bucket >= h.bucket
                            AND m.bucket < h.bucket + interval '1 hour')
      FROM unnest(h_sensors, h_buckets) AS t(sensor_id, bucket)
     WHERE h.sensor_id = t.sensor_id AND h.bucket = t.bucket;
END;
$$;

-- The stored readings right before and right after each (sensor, ts): what a late energy
-- reading must be checked against before it is stored.
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
