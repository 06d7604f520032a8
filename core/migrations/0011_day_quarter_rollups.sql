-- Two more rollup levels, for the reads that would otherwise aggregate thousands of rows per
-- request (docs/api.md, "Where the time goes"):
--
-- rollups_1d  one row per sensor and *local day of its building* (bucket = that day's local
--             midnight): a tenant's power for 30 days by day reads 30 rows per meter instead of
--             720 hourly ones. Same columns and merge rules as rollups_1m / rollups_1h; kept
--             by refresh_rollups() from the same pending partials (minutes, so a day is exact
--             in every time zone, also those whose offset is not a whole hour).
-- energy_15m  one row per energy register and UTC quarter hour: the kWh consumed in it (the
--             sum of its minutes' energy_kwh). Bills are summed and demand is measured per
--             local quarter hour; every time zone's offset is a multiple of 15 minutes, so a
--             UTC quarter hour is a local one. A month's bill reads ~3,000 rows per meter
--             instead of ~43,000. Kept by refresh_energy() whenever it recomputes minutes.
--
-- rollups_1d.energy_kwh is the sum of the day's quarter hours. Both tables carry the same
-- row-level security as the other rollups (policy api_read of migration 0008: operators all;
-- a tenant its own meters, and a zone's sensors for the local days it leases the zone; a
-- lease starts and ends at a local midnight, so a day or a quarter hour is wholly in or out).

CREATE TABLE rollups_1d (LIKE rollups_1m INCLUDING ALL);
ALTER TABLE rollups_1d SET (fillfactor = 50);

CREATE TABLE energy_15m (
    sensor_id   text NOT NULL,
    bucket      timestamptz NOT NULL,
    energy_kwh  double precision NOT NULL,
    PRIMARY KEY (sensor_id, bucket)
) WITH (fillfactor = 70);

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
    ), days AS (
        INSERT INTO rollups_1d AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value)
        SELECT p.sensor_id, date_trunc('day', p.bucket, b.timezone), sum(p.count), sum(p.sum),
               min(p.min), max(p.max), max(p.last_ts),
               (array_agg(p.last_value ORDER BY p.last_ts DESC))[1]
          FROM part p JOIN sensors s ON s.id = p.sensor_id
          JOIN buildings b ON b.id = s.building_id
         GROUP BY 1, 2 ORDER BY 1, 2
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

-- As in migration 0002, plus: the quarter hours of the recomputed minutes (from the minutes)
-- and their local days (from the quarter hours).
CREATE OR REPLACE FUNCTION refresh_energy(sensor_ids text[], buckets timestamptz[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    h_sensors text[];
    h_buckets timestamptz[];
    q_sensors text[];
    q_buckets timestamptz[];
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
        RETURNING r.sensor_id, r.bucket
    ), hours AS (
        SELECT DISTINCT sensor_id, date_trunc('hour', bucket, 'UTC') AS hour FROM updated
    ), quarters AS (
        SELECT DISTINCT sensor_id, date_bin('15 minutes', bucket, 'epoch') AS quarter
          FROM updated
    )
    SELECT (SELECT array_agg(sensor_id) FROM hours), (SELECT array_agg(hour) FROM hours),
           (SELECT array_agg(sensor_id) FROM quarters), (SELECT array_agg(quarter) FROM quarters)
      INTO h_sensors, h_buckets, q_sensors, q_buckets;
    UPDATE rollups_1h h
       SET energy_kwh = (SELECT sum(m.energy_kwh) FROM rollups_1m m
                          WHERE m.sensor_id = h.sensor_id AND m.bucket >= h.bucket
                            AND m.bucket < h.bucket + interval '1 hour')
      FROM unnest(h_sensors, h_buckets) AS t(sensor_id, bucket)
     WHERE h.sensor_id = t.sensor_id AND h.bucket = t.bucket;
    INSERT INTO energy_15m AS e (sensor_id, bucket, energy_kwh)
    SELECT t.sensor_id, t.bucket,
           (SELECT coalesce(sum(m.energy_kwh), 0) FROM rollups_1m m
             WHERE m.sensor_id = t.sensor_id AND m.bucket >= t.bucket
               AND m.bucket < t.bucket + interval '15 minutes')
      FROM unnest(q_sensors, q_buckets) AS t(sensor_id, bucket)
     ORDER BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO UPDATE SET energy_kwh = excluded.energy_kwh;
    UPDATE rollups_1d d
       SET energy_kwh = (SELECT sum(e.energy_kwh) FROM energy_15m e
                          WHERE e.sensor_id = d.sensor_id AND e.bucket >= t.day_start
                            AND e.bucket < t.day_end)
      FROM (SELECT DISTINCT q.sensor_id, x.day_start,
                   (x.day_start AT TIME ZONE b.timezone + interval '1 day')
                       AT TIME ZONE b.timezone AS day_end
              FROM unnest(q_sensors, q_buckets) AS q(sensor_id, bucket)
              JOIN sensors s ON s.id = q.sensor_id
              JOIN buildings b ON b.id = s.building_id
             CROSS JOIN LATERAL (SELECT date_trunc('day', q.bucket, b.timezone) AS day_start) x
           ) t
     WHERE d.sensor_id = t.sensor_id AND d.bucket = t.day_start;
END;
$$;

-- Fill both tables from the rollups already stored (this migration, and the API benchmark's
-- seeding): quarter hours and days from the 1-minute rollups; days that have no 1-minute
-- rollups (older history kept only by the hour) from the hourly ones, an hour counting for the
-- local day it starts in (exact where the building's offset is a whole number of hours).
CREATE FUNCTION backfill_day_quarter_rollups() RETURNS void LANGUAGE sql AS $$
    INSERT INTO energy_15m (sensor_id, bucket, energy_kwh)
    SELECT sensor_id, date_bin('15 minutes', bucket, 'epoch'), sum(energy_kwh)
      FROM rollups_1m WHERE energy_kwh IS NOT NULL GROUP BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO UPDATE SET energy_kwh = excluded.energy_kwh;
    INSERT INTO rollups_1d AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value,
                                 energy_kwh)
    SELECT m.sensor_id, date_trunc('day', m.bucket, b.timezone), sum(m.count), sum(m.sum),
           min(m.min), max(m.max), max(m.last_ts),
           (array_agg(m.last_value ORDER BY m.last_ts DESC))[1], sum(m.energy_kwh)
      FROM rollups_1m m JOIN sensors s ON s.id = m.sensor_id
      JOIN buildings b ON b.id = s.building_id
     GROUP BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO NOTHING;
    INSERT INTO rollups_1d AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value,
                                 energy_kwh)
    SELECT h.sensor_id, date_trunc('day', h.bucket, b.timezone), sum(h.count), sum(h.sum),
           min(h.min), max(h.max), max(h.last_ts),
           (array_agg(h.last_value ORDER BY h.last_ts DESC))[1], sum(h.energy_kwh)
      FROM rollups_1h h JOIN sensors s ON s.id = h.sensor_id
      JOIN buildings b ON b.id = s.building_id
     WHERE NOT EXISTS (SELECT 1 FROM rollups_1m m WHERE m.sensor_id = h.sensor_id
                          AND m.bucket >= date_trunc('day', h.bucket, b.timezone)
                          AND m.bucket < (date_trunc('day', h.bucket, b.timezone)
                                          AT TIME ZONE b.timezone + interval '1 day')
                                         AT TIME ZONE b.timezone)
     GROUP BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO NOTHING;
$$;

SELECT backfill_day_quarter_rollups();
ANALYZE rollups_1d;
ANALYZE energy_15m;

-- Row-level security and grants as for the other rollups (0004, 0006, 0008).
DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['rollups_1d', 'energy_15m'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE format('CREATE POLICY owner_all ON %I TO CURRENT_USER USING (true)'
                       ' WITH CHECK (true)', tbl);
        EXECUTE format(
            'CREATE POLICY api_read ON %1$I FOR SELECT TO upstairs_api USING ('
            ' (SELECT api_is_operator())'
            ' OR sensor_id = ANY ((SELECT api_tenant_meters())::text[])'
            ' OR coalesce((SELECT api_tenant_zone_windows())[array_position('
            '     (SELECT api_tenant_zone_sensors()), sensor_id)] @> bucket, false))',
            tbl);
        EXECUTE format('GRANT SELECT ON %I TO upstairs_api', tbl);
        EXECUTE format('GRANT SELECT ON %I TO grafana_reader', tbl);
        EXECUTE format('CREATE POLICY grafana_read ON %I FOR SELECT TO grafana_reader'
                       ' USING (true)', tbl);
    END LOOP;
END;
$$;
