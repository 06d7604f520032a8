-- sensor_latest moves in the rollup refresh, from the merged partials (one update per sensor
-- and refresh instead of one per sensor and ingest batch); the ingester still moves it in
-- the batch's transaction for energy registers, whose check reads it. Only forward in time.
-- Otherwise the function of migration 0002, unchanged.
CREATE OR REPLACE FUNCTION refresh_rollups(max_rows integer) RETURNS integer
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
    ), latest AS (
        INSERT INTO sensor_latest AS l (sensor_id, ts, value, received_at)
        SELECT DISTINCT ON (sensor_id) sensor_id, last_ts, last_value, now()
          FROM part ORDER BY sensor_id, last_ts DESC
        ON CONFLICT (sensor_id) DO UPDATE
           SET ts = excluded.ts, value = excluded.value, received_at = excluded.received_at
         WHERE excluded.ts > l.ts
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
