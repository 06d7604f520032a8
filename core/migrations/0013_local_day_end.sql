-- The end of a local day where daylight saving time starts at midnight (America/Santiago,
-- America/Asuncion, Asia/Beirut, ...): on that day the clock goes from 23:59:59 to 01:00, so
-- the day starts at 01:00 and has 23 hours. Migration 0011 ended a day at its start (as a local
-- time) plus one day: 01:00 of the next day, an hour late, so the day's energy in the daily
-- rollups (refresh_energy) also counted the first hour of the next day. The end of a day is
-- the next day's start: its local date's midnight (which, where that midnight does not exist,
-- PostgreSQL reads in the offset before the change: the 01:00 that date_trunc also gives).
CREATE FUNCTION local_day_end(day_start timestamptz, tz text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT (((day_start AT TIME ZONE tz)::date + 1)::timestamp) AT TIME ZONE tz
$$;

-- As in migration 0011, the day's end by local_day_end.
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
             CROSS JOIN LATERAL (SELECT date_trunc('day', q.bucket, b.timezone) AS day_start) x
           ) t
     WHERE d.sensor_id = t.sensor_id AND d.bucket = t.day_start;
END;
$$;

-- The days 0011 got wrong: the energy of every day whose end it computed differently, again
-- from the quarter hours (as refresh_energy keeps it).
UPDATE rollups_1d d
   SET energy_kwh = (SELECT sum(e.energy_kwh) FROM energy_15m e
                      WHERE e.sensor_id = d.sensor_id AND e.bucket >= d.bucket
                        AND e.bucket < local_day_end(d.bucket, b.timezone))
  FROM sensors s JOIN buildings b ON b.id = s.building_id
 WHERE s.id = d.sensor_id AND s.kind = 'energy'
   AND (d.bucket AT TIME ZONE b.timezone + interval '1 day') AT TIME ZONE b.timezone
       <> local_day_end(d.bucket, b.timezone);
