"""Writes: validate → persist → log the durable event (events.emit) → broadcast after commit → return.

Split by area so that each module stays readable; import from here.
"""

from __future__ import annotations

from .core import (
    UNSET,
    contact_upsert,
    conversation_open_or_get,
    conversation_update,
    message_append,
    message_status_set,
    read_marker_set,
)

__all__ = [
    "UNSET",
    "contact_upsert",
    "conversation_open_or_get",
    "conversation_update",
    "message_append",
    "message_status_set",
    "read_marker_set",
]
