"""The API's caches: remembered tokens honour revocation in time, cached answers stay per
principal, and a cached answer is renewed after its window."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg

from tests.api_helpers import bearer, client, store_readings, token
from tests.test_api_isolation import seed


def test_a_revoked_token_is_refused_within_the_auth_cache_window(db_url: str) -> None:
    seed(db_url)
    secret = token(db_url, "tenant", "a", "iso")
    window = 1.0
    with client(db_url, api_auth_cache_s=window, api_cache_s=30) as c:
        path = "/api/v1/buildings/iso/floors"
        assert c.get(path, headers=bearer(secret)).status_code == 200
        with psycopg.connect(db_url) as conn:
            conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE revoked_at IS NULL")
        revoked = time.monotonic()
        # Within the window this replica may still know the token (a cached answer, too) ...
        while time.monotonic() - revoked < window + 0.2:
            r = c.get(path, headers=bearer(secret))
            if r.status_code == 401:
                break
            assert r.status_code == 200
            time.sleep(0.05)
        # ... after it, never: not even for an answer that is still in the response cache.
        assert time.monotonic() - revoked <= window + 0.5
        assert c.get(path, headers=bearer(secret)).status_code == 401
        assert c.get(path).status_code == 401


def test_cached_answers_never_cross_tenants(db_url: str) -> None:
    seed(db_url)
    # a's floor 1 draws more than b's, so their floor summaries differ
    store_readings(db_url, [("a-p00", datetime.now(UTC).replace(microsecond=0), 5000.0)])
    secrets = {t: token(db_url, "tenant", t, "iso") for t in ("a", "b")}
    op = token(db_url, "operator")
    since = (datetime.now(UTC) - timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    paths = [
        "/api/v1/buildings/iso/floors",
        "/api/v1/buildings/iso/floors/1/history?metric=power&step=1m&from=" + since,
        "/api/v1/buildings/iso/floors/1/history?metric=load&step=1m&from=" + since,
    ]
    with client(db_url, api_cache_s=60) as c:
        for _ in range(3):  # the second and third rounds come from the cache
            for path in paths:
                seen = {}
                for who, secret in (*secrets.items(), ("operator", op)):
                    r = c.get(path, headers=bearer(secret))
                    assert r.status_code == 200, r.text
                    seen[who] = r.text
                assert '"b-' not in seen["a"] and '"a-' not in seen["b"], path
                assert len({seen["a"], seen["b"], seen["operator"]}) == 3, path
        power = c.get("/api/v1/tenants/a/power", headers=bearer(secrets["a"]))
        assert power.status_code == 200
        # a's cached answer is a's: b asking for a's power still gets 404
        assert c.get("/api/v1/tenants/a/power", headers=bearer(secrets["b"])).status_code == 404


def test_a_cached_answer_is_renewed_after_its_window(db_url: str) -> None:
    seed(db_url)
    secret = token(db_url, "operator")
    window = 0.5
    path = "/api/v1/sensors/a-p00/readings?step=raw&from=" + (
        (datetime.now(UTC) - timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    )
    with client(db_url, api_cache_s=window) as c:
        before = c.get(path, headers=bearer(secret)).json()["series"][0]["t"]
        store_readings(db_url, [("a-p00", datetime.now(UTC).replace(microsecond=0), 7.0)])
        assert c.get(path, headers=bearer(secret)).json()["series"][0]["t"] == before
        time.sleep(window + 0.1)  # older than the window: computed again
        after = c.get(path, headers=bearer(secret)).json()["series"][0]["t"]
    assert len(after) == len(before) + 1
