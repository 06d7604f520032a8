-- The current tenant's sensor arrays of the row-level security policies (0008, 0011, 0017,
-- 0018) computed once per transaction instead of once per table a query reads.
--
-- Each policy reads api_tenant_meters(), api_tenant_zone_sensors() and
-- api_tenant_zone_windows() as InitPlans: once per statement and table reference, so a
-- tenant's power (three rollup reads) computed its meters three times, about 0.08 ms each.
-- Now the first call in a transaction keeps its answer in a transaction-local setting
-- (app.memo_*) under the tenant it was computed for (app.tenant_id); later calls of the same
-- transaction for the same tenant parse it back. A memo of another tenant (after a rescope),
-- or any memo while no tenant is set, is ignored and the arrays are computed anew, so what a
-- policy lets through is what it was. The memo ends with the transaction, as app.tenant_id
-- does. One difference: a lease or sensor change committed by someone else between two
-- statements of one API transaction (a request's pipeline) is seen from the next transaction
-- on, not from the next statement; the API's own transactions never change either.
--
-- A memo is "<app.tenant_id><TAB><array as text>": tenant ids never hold a tab (the API's id
-- pattern and the building file allow none; one that did would never match). With no tenant
-- set nothing is memoised or read (the arrays are then empty anyway). The lease windows go
-- through text as ISO 8601 with a numeric offset whatever the session's DateStyle (the
-- function's SET): other styles print zone abbreviations, which do not read back to the same
-- instant (IST, say). Whoever may set app.tenant_id may set a memo too: the API role, which
-- is trusted with the first already; a memo adds no power over it.
--
-- PARALLEL UNSAFE (as the functions were by default): set_config fails in a parallel worker.

CREATE FUNCTION api_memo_get(name text) RETURNS text LANGUAGE plpgsql STABLE PARALLEL UNSAFE AS $$
DECLARE
    memo text := current_setting('app.memo_' || name, true);
    who text := coalesce(current_setting('app.tenant_id', true), '');
BEGIN
    IF who = '' OR memo IS NULL OR strpos(memo, E'\t') <> length(who) + 1
       OR left(memo, length(who)) <> who THEN
        RETURN NULL;
    END IF;
    RETURN substr(memo, length(who) + 2);
END;
$$;

CREATE FUNCTION api_memo_put(name text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE AS $$
DECLARE
    who text := coalesce(current_setting('app.tenant_id', true), '');
BEGIN
    IF who <> '' THEN
        PERFORM set_config('app.memo_' || name, who || E'\t' || value, true);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION api_tenant_meters() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL UNSAFE AS $$
DECLARE
    memo text := api_memo_get('meters');
    found text[];
BEGIN
    IF memo IS NOT NULL THEN
        RETURN memo::text[];
    END IF;
    found := (SELECT coalesce(array_agg(id), '{}') FROM sensors
               WHERE building_id = api_tenant_building() AND tenant_id = api_tenant());
    PERFORM api_memo_put('meters', found::text);
    RETURN found;
END;
$$;

CREATE OR REPLACE FUNCTION api_tenant_zone_sensors() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL UNSAFE AS $$
DECLARE
    memo text := api_memo_get('zone_sensors');
    found text[];
BEGIN
    IF memo IS NOT NULL THEN
        RETURN memo::text[];
    END IF;
    found := (SELECT coalesce(array_agg(sensor_id ORDER BY sensor_id), '{}')
                FROM (SELECT DISTINCT sensor_id FROM api_sensor_tenancy
                       WHERE from_ts <> '-infinity') z);
    PERFORM api_memo_put('zone_sensors', found::text);
    RETURN found;
END;
$$;

CREATE OR REPLACE FUNCTION api_tenant_zone_windows() RETURNS tstzmultirange[]
LANGUAGE plpgsql STABLE PARALLEL UNSAFE SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    memo text := api_memo_get('zone_windows');
    found tstzmultirange[];
BEGIN
    IF memo IS NOT NULL THEN
        RETURN memo::tstzmultirange[];
    END IF;
    found := (SELECT coalesce(array_agg(windows ORDER BY sensor_id), '{}')
                FROM (SELECT sensor_id, range_agg(tstzrange(from_ts, to_ts, '[)')) AS windows
                        FROM api_sensor_tenancy WHERE from_ts <> '-infinity'
                       GROUP BY sensor_id) z);
    PERFORM api_memo_put('zone_windows', found::text);
    RETURN found;
END;
$$;
