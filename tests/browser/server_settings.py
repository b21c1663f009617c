"""Settings of the server the browser tests drive: the project's own, with the sandbox's status ticks sped up."""

from __future__ import annotations

from config.settings import *  # noqa: F403

# sent → delivered → read within two seconds of a send, so the tests watch the ticks move without long waits.
WHATSAPP_SANDBOX_STATUS_DELAYS = (0.3, 0.8, 1.5)
