"""Debug gauges about the process itself, for soak tests and leak hunts."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Gauge


def track_event_loop_tasks(registry: CollectorRegistry, loop: asyncio.AbstractEventLoop) -> Gauge:
    """``extauthz_event_loop_tasks``: asyncio tasks alive on ``loop``, counted at scrape time
    only (a check pays nothing). Steady traffic must keep it steady; growth is a leak."""
    gauge = Gauge(
        "extauthz_event_loop_tasks",
        "asyncio tasks alive on the serving event loop (steady under steady load).",
        registry=registry,
    )
    gauge.set_function(lambda: len(asyncio.all_tasks(loop)))
    return gauge
