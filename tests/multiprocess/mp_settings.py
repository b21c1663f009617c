"""Settings for the Daphne processes started by test_two_daphnes.py: the project's, with fast presence timers."""

from __future__ import annotations

import os

from config.settings import *  # noqa: F403

PRESENCE_TTL = float(os.environ.get("PRESENCE_TTL", "30"))
PRESENCE_HEARTBEAT = float(os.environ.get("PRESENCE_HEARTBEAT", "10"))
PRESENCE_OFFLINE_GRACE = float(os.environ.get("PRESENCE_OFFLINE_GRACE", "3"))
