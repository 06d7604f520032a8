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
-- The partitions of readings with their real bounds: the literals carry their offsets, so this
-- reads right in any session time zone, and whatever made the partition (ensure_readings_partition
-- of 0001 made months that are not whole UTC months in some zones, see 0022). A bound that is
-- not a time (DEFAULT, MINVALUE, MAXVALUE) is NULL.
CREATE FUNCTION readings_partitions()
RETURNS TABLE (rel regclass, part text, range_start timestamptz, range_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass, c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'readings'::regclass
$$;

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
    FOR rel, part, range_end IN
        SELECT p.rel, p.part, p.range_end FROM readings_partitions() p ORDER BY p.range_end
    LOOP
        CONTINUE WHEN range_end IS NULL OR range_end > cutoff;
        IF NOT dry_run THEN
            EXECUTE format('DROP TABLE %s', rel);
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;
