-- ensure_readings_partition (0001) added the month to a timestamptz, which PostgreSQL does in
-- the session's time zone. West of UTC a month's start is the evening of the last day of the
-- month before, and the addition clamps it (30 November + 1 month = 30 December): the month
-- after every 30-day one ended a day early, in any zone west of UTC (Etc/GMT+5: December
-- 2026 = [Dec 1, Dec 31)). With daylight saving, months could also overlap (America/New_York:
-- November 2026 ran to Dec 1 01:00 UTC) and the next one failed. Readings in the gaps were
-- dead-lettered. A server's TimeZone follows its host's (Debian's initdb). The month's end is
-- now worked out in UTC, like its start; migrations themselves run in UTC (core.db.migrate).
--
-- Partitions made wrong before this stay as they are (moving readings between partitions is a
-- maintenance job, docs/operations.md, "Retention"); this migration names them in a WARNING.
CREATE OR REPLACE FUNCTION ensure_readings_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month       timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    month_start timestamptz := month AT TIME ZONE 'UTC';
    month_end   timestamptz := (month + interval '1 month') AT TIME ZONE 'UTC';
    part_name   text := 'readings_' || to_char(month, 'YYYYMM');
    parent_schema text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'readings'::regclass) THEN
        RETURN NULL;  -- a hypertable
    END IF;
    SELECT n.nspname INTO parent_schema
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = 'readings'::regclass;
    IF to_regclass(quote_ident(parent_schema) || '.' || quote_ident(part_name)) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.readings FOR VALUES FROM (%L) TO (%L)',
            parent_schema, part_name, parent_schema, month_start, month_end);
    END IF;
    RETURN part_name;
END;
$$;

DO $$
DECLARE
    wrong text;
BEGIN
    SELECT string_agg(format('%s [%s, %s)', part, range_start, range_end), '; ') INTO wrong
      FROM (SELECT p.*, to_date(substr(p.part, 10), 'YYYYMM') AS month
              FROM readings_partitions() p WHERE p.part ~ '^readings_[0-9]{6}$') x
     WHERE (range_start, range_end) IS DISTINCT FROM
           (month AT TIME ZONE 'UTC', (month + interval '1 month') AT TIME ZONE 'UTC');
    IF wrong IS NOT NULL THEN
        RAISE WARNING 'readings partitions that are not whole UTC months (made by 0001 in a '
                      'session time zone west of UTC): %', wrong;
    END IF;
END;
$$;
