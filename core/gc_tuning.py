"""The garbage collector's settings of a long-running service process."""

from __future__ import annotations

import gc

#: A collection of the youngest generation every 50,000 net allocations of container objects
#: instead of 700; the older generations as often as before, relative to it.
THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Fewer cyclic garbage collections, and none that walks what lives as long as the process.

    A service allocates many short-lived, acyclic tuples, dicts and lists (a batch of
    readings, the rows of a request): reference counting frees them at once, but at the
    default thresholds (a collection every 700 net allocations) the collector walked the
    objects in hand again and again. In the ingester that was about 15 % of the
    parse-check-aggregate time; in the API, under 20 concurrent requests of the benchmark's
    distinct phase, about 1,200 collections in 45 s (0.7 s in all, single pauses up to 38 ms)
    where these thresholds leave 185 (65 ms in all; docs/api.md, "Results", third session).
    Everything alive when this is called (modules, settings, routes, models) is frozen out of
    the collector's view first."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
