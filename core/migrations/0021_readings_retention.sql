-- Retention of raw readings: `upstairs db retention` (docs/operations.md, "Retention").
--
-- Raw readings are the largest table by far (168 sensors every second are 14.5 million rows a
-- day); everything the API serves past a day or so reads the rollups, the quarter-hour energy
-- and the tenants' days, which are small and kept for good. This drops the partitions of raw
-- readings (months) whose upper bound lies at or before `cutoff`: dropped, not deleted from, so
-- it costs no vacuum and no bloat. With TimescaleDB, drop_chunks does the same for the
-- 1-day chunks (that branch cannot run on these machines; it is not tested here).
--
-- Returns what it dropped (or, with dry_run, would drop): the partition or chunk, and the end
-- of its range (the upper bound of the partition; NULL for a chunk). A partition without an
-- upper bound (a DEFAULT or MAXVALUE one) is never dropped.
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
    -- every partition by its real upper bound (the literal carries its offset, so this reads
    -- right in any session time zone), not by its name: partitions made by 0001's
    -- ensure_readings_partition in a session zone with daylight saving are not whole UTC months
    FOR rel, part, range_end IN
        SELECT c.oid::regclass, c.relname::text,
               substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'readings'::regclass
         ORDER BY 3
    LOOP
        CONTINUE WHEN range_end IS NULL OR range_end > cutoff;
        IF NOT dry_run THEN
            EXECUTE format('DROP TABLE %s', rel);
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;
