-- A local day of the daily rollups starts at the first of two midnights, as the tenants' days
-- (migration 0014) and Python's zoneinfo (fold 0) start it. Where the clock goes back from
-- 01:00 to 00:00 (America/Havana in November, Atlantic/Azores in October), PostgreSQL reads
-- the ambiguous midnight as the later instant, and date_trunc('day', ...) too. Before this
-- migration the day of rollups_1d was labelled with the second midnight while its energy
-- (refresh_energy) ran from there to local_day_end, which ended the day before at the
-- second midnight as well: the hour between the two midnights was counted in the energy of
-- both days. Now every day is [local_midnight(date), local_midnight(date + 1)): the refresh,
-- the energy of the day and the backfills use local_day_start / local_day_end, and the
-- buildings with a day labelled otherwise are rebuilt (rebuild_local_days).
--
-- local_midnight is written again as one expression (the same answer as migration 0014's
-- subquery, which the tests compare), so that PostgreSQL inlines it into the refresh's rows.

CREATE OR REPLACE FUNCTION local_midnight(d date, tz text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN ((d::timestamp AT TIME ZONE tz) - interval '1 hour') AT TIME ZONE tz = d::timestamp
            THEN (d::timestamp AT TIME ZONE tz) - interval '1 hour'
        WHEN ((d::timestamp AT TIME ZONE tz) - interval '30 minutes') AT TIME ZONE tz
             = d::timestamp
            THEN (d::timestamp AT TIME ZONE tz) - interval '30 minutes'
        ELSE d::timestamp AT TIME ZONE tz
    END
$$;

-- The end of the local day that starts at day_start: the next date's first midnight.
CREATE OR REPLACE FUNCTION local_day_end(day_start timestamptz, tz text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT local_midnight((day_start AT TIME ZONE tz)::date + 1, tz)
$$;

-- As in migration 0011, the day by local_day_start.
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
        SELECT p.sensor_id, local_day_start(p.bucket, b.timezone), sum(p.count), sum(p.sum),
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

-- As in migration 0013, the day by local_day_start.
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
                   local_day_end(x.day_start, b.timezone) AS day_end
              FROM unnest(q_sensors, q_buckets) AS q(sensor_id, bucket)
              JOIN sensors s ON s.id = q.sensor_id
              JOIN buildings b ON b.id = s.building_id
             CROSS JOIN LATERAL (SELECT local_day_start(q.bucket, b.timezone) AS day_start) x
           ) t
     WHERE d.sensor_id = t.sensor_id AND d.bucket = t.day_start;
END;
$$;

-- As in migration 0012, the days by local_day_start and local_day_end.
CREATE OR REPLACE FUNCTION backfill_days_from_hours(only_building text DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rollups_1d AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value,
                                 energy_kwh)
    SELECT h.sensor_id, local_day_start(h.bucket, b.timezone), sum(h.count), sum(h.sum),
           min(h.min), max(h.max), max(h.last_ts),
           (array_agg(h.last_value ORDER BY h.last_ts DESC))[1], sum(h.energy_kwh)
      FROM rollups_1h h JOIN sensors s ON s.id = h.sensor_id
      JOIN buildings b ON b.id = s.building_id
     WHERE only_building IS NULL OR b.id = only_building
     GROUP BY 1, 2, b.timezone
    HAVING date_trunc('hour', local_day_start(h.bucket, b.timezone), 'UTC')
               = local_day_start(h.bucket, b.timezone)
       AND date_trunc('hour', local_day_end(local_day_start(h.bucket, b.timezone), b.timezone),
                      'UTC')
               = local_day_end(local_day_start(h.bucket, b.timezone), b.timezone)
    ON CONFLICT (sensor_id, bucket) DO UPDATE
       SET count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
           last_ts = excluded.last_ts, last_value = excluded.last_value,
           energy_kwh = excluded.energy_kwh
     WHERE r.count < excluded.count;
$$;

CREATE OR REPLACE FUNCTION backfill_days(only_building text DEFAULT NULL) RETURNS void LANGUAGE sql AS $$
    SELECT backfill_days_from_hours(only_building);
    INSERT INTO rollups_1d AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value,
                                 energy_kwh)
    SELECT m.sensor_id, local_day_start(m.bucket, b.timezone), sum(m.count), sum(m.sum),
           min(m.min), max(m.max), max(m.last_ts),
           (array_agg(m.last_value ORDER BY m.last_ts DESC))[1], sum(m.energy_kwh)
      FROM rollups_1m m JOIN sensors s ON s.id = m.sensor_id
      JOIN buildings b ON b.id = s.building_id
     WHERE only_building IS NULL OR b.id = only_building
     GROUP BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO NOTHING;
    INSERT INTO rollups_1d AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value,
                                 energy_kwh)
    SELECT h.sensor_id, local_day_start(h.bucket, b.timezone), sum(h.count), sum(h.sum),
           min(h.min), max(h.max), max(h.last_ts),
           (array_agg(h.last_value ORDER BY h.last_ts DESC))[1], sum(h.energy_kwh)
      FROM rollups_1h h JOIN sensors s ON s.id = h.sensor_id
      JOIN buildings b ON b.id = s.building_id
     WHERE only_building IS NULL OR b.id = only_building
     GROUP BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO NOTHING;
$$;

-- The buildings whose daily rollups have a day labelled at the second midnight: built again.
SELECT rebuild_local_days(b.id)
  FROM buildings b
 WHERE EXISTS (SELECT 1 FROM rollups_1d d JOIN sensors s ON s.id = d.sensor_id
                WHERE s.building_id = b.id AND d.bucket <> local_day_start(d.bucket, b.timezone));
