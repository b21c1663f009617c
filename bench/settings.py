"""The project's settings plus the bench-only URLconf (an empty view, the R_ingest baseline).

Presence timings can be shortened from the environment (BENCH_PRESENCE_TTL, BENCH_PRESENCE_HEARTBEAT) so that the
multi-process checks see a killed process's users go offline in seconds rather than half a minute. Nothing else
differs from config.settings.
"""

from __future__ import annotations

import os

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
ASGI_APPLICATION = "bench.asgi.application"
if os.environ.get("BENCH_PRESENCE_TTL"):
    PRESENCE_TTL = float(os.environ["BENCH_PRESENCE_TTL"])
if os.environ.get("BENCH_PRESENCE_HEARTBEAT"):
    PRESENCE_HEARTBEAT = float(os.environ["BENCH_PRESENCE_HEARTBEAT"])
if os.environ.get("BENCH_OFFLINE_GRACE"):
    PRESENCE_OFFLINE_GRACE = float(os.environ["BENCH_OFFLINE_GRACE"])
