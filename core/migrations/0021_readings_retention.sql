-- Retention of raw readings: `upstairs db retention` (docs/operations.md, "Retention").
--
-- Raw readings are the largest table by far (168 sensors every second are 14.5 million rows a
-- day); everything the API serves past a day or so reads the rollups, the quarter-hour energy
-- and the tenants' days, which are small and kept for good. This drops the raw readings of
-- whole months whose end lies at or before `cutoff`: a partition is dropped, not deleted from,
-- so it costs no vacuum and no bloat. With TimescaleDB, drop_chunks does the same for the
-- 1-day chunks (that branch cannot run on these machines; it is not tested here).
--
-- Returns what it dropped (or, with dry_run, would drop): the partition or chunk, and the end
-- of its range.
CREATE FUNCTION drop_readings_before(cutoff timestamptz, dry_run boolean)
RETURNS TABLE (part text, range_end timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    rel regclass;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'readings'::regclass) THEN
        -- a hypertable
        RETURN QUERY EXECUTE format(
            'SELECT c::text, NULL::timestamptz FROM %s(''readings'', older_than => $1) c',
            CASE WHEN dry_run THEN 'show_chunks' ELSE 'drop_chunks' END)
            USING cutoff;
        RETURN;
    END IF;
    -- the months of ensure_readings_partition: readings_YYYYMM, [month start, next) in UTC
    FOR rel, part, range_end IN
        SELECT c.oid::regclass, c.relname::text,
               (make_timestamp(substr(c.relname, 10, 4)::int, substr(c.relname, 14, 2)::int, 1,
                               0, 0, 0) + interval '1 month') AT TIME ZONE 'UTC'
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'readings'::regclass AND c.relname ~ '^readings_[0-9]{6}$'
         ORDER BY c.relname
    LOOP
        CONTINUE WHEN range_end > cutoff;
        IF NOT dry_run THEN
            EXECUTE format('DROP TABLE %s', rel);
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;
