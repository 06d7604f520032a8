-- Packed minutes: one row per sensor and closed UTC hour holding that hour's 1-minute rollups
-- as JSON text, for the floor history by minute (api/packed.py). A day of a floor by minute
-- was 5,760 rollup rows for PostgreSQL to find and fold into arrays and for the API to decode
-- and encode again, number by number; from packs it is about 100 rows whose text goes into the
-- answer as it is.
--
-- A pack holds the minutes present (``mask``: bit i for minute i of the hour) and, in minute
-- order, their avg (rounded to 4 decimals, as the API serves it), min and max as JSON numbers
-- joined by commas (a value that is not a finite number is written null). Only load, power
-- and temperature sensors have packs (pack_sensor_ids(): what a floor's history shows).
--
-- A pack, where there is one, equals what ``rollups_1m`` holds for its hour; readers treat an
-- hour without a pack as unpacked and read the minutes. That is kept by:
--   * refresh_rollups: minutes it merges into an hour already closed delete that hour's pack
--     and put the hour in minute_pack_pending, in the same transaction; pack_due_hours (each
--     refresh) packs pending closed hours, and when an hour closes, every such sensor's hour
--     (the sweep, from minute_pack_state);
--   * pack_hours(sensors, from, to), for whoever writes rollups_1m by other means (the demo
--     seed and the bench seed call it).
-- Energy rollups (refresh_energy updates their kWh) are never packed.
--
-- Row-level security: a tenant reads a pack only if the whole hour lies inside its windows on
-- the sensor (the same windows as for rollups_1m); an hour it may read only in part is read
-- from rollups_1m, minute by minute, under that table's policy.

-- No refresh runs meanwhile (its lock): one started on the old refresh_rollups would merge
-- minutes into hours packed below without queuing them.
SELECT pg_advisory_xact_lock(1431326546, 1);

CREATE TABLE minute_packs (
    sensor_id  text NOT NULL,
    hour       timestamptz NOT NULL,
    mask       bigint NOT NULL,
    avg        text NOT NULL,
    min        text NOT NULL,
    max        text NOT NULL,
    PRIMARY KEY (sensor_id, hour)
);

CREATE TABLE minute_pack_pending (
    sensor_id  text NOT NULL,
    hour       timestamptz NOT NULL,
    PRIMARY KEY (sensor_id, hour)
);

-- The hour up to which every sensor's closed hours have been swept into minute_pack_pending.
CREATE TABLE minute_pack_state (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    swept_to   timestamptz NOT NULL
);

-- (STABLE: the text of a float depends on extra_float_digits, 1 in the packing functions and
-- in the API's sessions: the shortest text that reads back as the same double.)
CREATE OR REPLACE FUNCTION json_number(x double precision) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN x IS NULL OR x = 'NaN' OR x = 'Infinity' OR x = '-Infinity' THEN 'null'
                ELSE x::text END
$$;

-- The sensors that have packs: what a floor's history shows.
CREATE OR REPLACE FUNCTION pack_sensor_ids() RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(id), '{}') FROM sensors
     WHERE kind IN ('load', 'power', 'temperature')
$$;

-- What a pack holds of a minute (and the API folds alike from minutes, api/packed.py): the
-- minute's bit in its UTC hour's mask, and the avg as served (4 decimals) as JSON text.
CREATE OR REPLACE FUNCTION minute_bit(bucket timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT 1::bigint << (extract(epoch FROM bucket - date_trunc('hour', bucket, 'UTC'))::integer
                         / 60)
$$;
CREATE OR REPLACE FUNCTION json_avg(x double precision) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT json_number(round(x * 1e4::float8) / 1e4::float8)
$$;

-- Pack (again) the hours of these sensors; the pending rows of those hours are done. An
-- hour without minutes is left without a pack.
CREATE OR REPLACE FUNCTION pack_pairs(sensor_ids text[], hours timestamptz[]) RETURNS integer
LANGUAGE plpgsql SET extra_float_digits = 1 AS $$
DECLARE
    packed integer;
BEGIN
    DELETE FROM minute_packs k
     USING unnest(sensor_ids, hours) AS d(sensor_id, hour)
     WHERE k.sensor_id = d.sensor_id AND k.hour = d.hour;
    WITH due AS (
        SELECT DISTINCT d.sensor_id, d.hour
          FROM unnest(sensor_ids, hours) AS d(sensor_id, hour)
         WHERE d.sensor_id = ANY (pack_sensor_ids())
    ), made AS (
        INSERT INTO minute_packs AS p (sensor_id, hour, mask, avg, min, max)
        SELECT d.sensor_id, d.hour, bit_or(minute_bit(r.bucket)),
               string_agg(json_avg(r.avg), ',' ORDER BY r.bucket),
               string_agg(json_number(r.min), ',' ORDER BY r.bucket),
               string_agg(json_number(r.max), ',' ORDER BY r.bucket)
          FROM due d JOIN rollups_1m r ON r.sensor_id = d.sensor_id
           AND r.bucket >= d.hour AND r.bucket < d.hour + interval '1 hour'
         GROUP BY d.sensor_id, d.hour
        ON CONFLICT (sensor_id, hour) DO UPDATE
           SET mask = excluded.mask, avg = excluded.avg, min = excluded.min, max = excluded.max
        RETURNING 1
    )
    SELECT count(*) INTO packed FROM made;
    DELETE FROM minute_pack_pending q
     USING unnest(sensor_ids, hours) AS d(sensor_id, hour)
     WHERE q.sensor_id = d.sensor_id AND q.hour = d.hour;
    RETURN packed;
END;
$$;

-- Pack every closed UTC hour of these sensors with minutes in [from_ts, to_ts).
CREATE OR REPLACE FUNCTION pack_hours(sensor_ids text[], from_ts timestamptz,
                                      to_ts timestamptz) RETURNS integer
LANGUAGE sql AS $$
    SELECT coalesce(pack_pairs(array_agg(sensor_id), array_agg(hour)), 0)
      FROM (SELECT DISTINCT r.sensor_id, date_trunc('hour', r.bucket, 'UTC') AS hour
              FROM rollups_1m r
             WHERE r.sensor_id = ANY (sensor_ids) AND r.bucket >= from_ts AND r.bucket < to_ts
               AND r.bucket < date_trunc('hour', now(), 'UTC')) h
$$;

-- Each refresh: sweep the hours closed since the last sweep into the pending set (every
-- sensor that may have packs), then pack pending hours that are closed.
CREATE OR REPLACE FUNCTION pack_due_hours() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    now_hour timestamptz := date_trunc('hour', now(), 'UTC');
    swept timestamptz;
    pairs_s text[];
    pairs_h timestamptz[];
BEGIN
    SELECT swept_to INTO swept FROM minute_pack_state;
    IF swept IS NULL THEN
        INSERT INTO minute_pack_state (swept_to) VALUES (now_hour);
    ELSIF swept < now_hour THEN  -- (after a long stop, the last 14 days: what is read by minute)
        INSERT INTO minute_pack_pending (sensor_id, hour)
        SELECT s, h FROM unnest(pack_sensor_ids()) AS s,
               generate_series(greatest(swept, now_hour - interval '14 days'),
                               now_hour - interval '1 hour', interval '1 hour') AS h
        ON CONFLICT DO NOTHING;
        UPDATE minute_pack_state SET swept_to = now_hour;
    END IF;
    -- at most 1,000 hours a refresh (60,000 minutes), the newest first: a large building's
    -- top of the hour, or a backlog, is packed over a few refreshes instead of stalling one;
    -- meanwhile the API reads those hours' minutes (a queued hour has no pack: see below)
    SELECT array_agg(sensor_id), array_agg(hour) INTO pairs_s, pairs_h
      FROM (SELECT sensor_id, hour FROM minute_pack_pending WHERE hour < now_hour
             ORDER BY hour DESC LIMIT 1000) due;
    IF pairs_s IS NULL THEN
        RETURN 0;
    END IF;
    RETURN pack_pairs(pairs_s, pairs_h);
END;
$$;

-- As in migration 0015, and the hours it merges into that are closed go to be packed.
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
    ), closed AS (  -- minutes of hours already closed: pack those hours again (0017) ...
        SELECT DISTINCT sensor_id, date_trunc('hour', bucket, 'UTC') AS hour FROM part
         WHERE bucket < date_trunc('hour', now(), 'UTC')
    ), packs AS (
        INSERT INTO minute_pack_pending (sensor_id, hour) SELECT sensor_id, hour FROM closed
        ON CONFLICT DO NOTHING
    ), stale AS (  -- ... and until then, no pack of theirs is read: the minutes are
        DELETE FROM minute_packs k USING closed c
         WHERE k.sensor_id = c.sensor_id AND k.hour = c.hour
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
    PERFORM pack_due_hours();
    RETURN consumed;
END;
$$;

-- Row-level security and grants as for rollups_1m (0004, 0008, 0011), the hour whole.
ALTER TABLE minute_packs ENABLE ROW LEVEL SECURITY;
ALTER TABLE minute_packs FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON minute_packs TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY api_read ON minute_packs FOR SELECT TO upstairs_api USING (
    (SELECT api_is_operator())
    OR sensor_id = ANY ((SELECT api_tenant_meters())::text[])
    OR coalesce((SELECT api_tenant_zone_windows())[array_position(
           (SELECT api_tenant_zone_sensors()), sensor_id)]
       @> tstzrange(hour, hour + interval '1 hour', '[)'), false));
GRANT SELECT ON minute_packs TO upstairs_api;

-- The closed hours of the last 14 days (the longest range served by minute), then the sweep
-- starts from this hour.
SELECT pack_hours(pack_sensor_ids(), date_trunc('hour', now(), 'UTC') - interval '14 days',
                  now());
INSERT INTO minute_pack_state (swept_to) VALUES (date_trunc('hour', now(), 'UTC'));

-- The API's reads are short; a misestimated plan (generate_series is guessed at 1,000 rows)
-- crossed jit_above_cost and spent 0.5-1.6 s compiling a query that runs in 2 ms.
ALTER ROLE upstairs_api SET jit = off;
