"""Delivery status that never moves backwards, whatever order Meta's webhooks arrive in.

Meta delivers statuses out of order and may skip `delivered` (read while the chat is open). Every writer of
Message.status goes through `status_apply`: the stored status is the highest rank seen; `failed` ends the
message (it keeps Meta's error and later sent/delivered/read change nothing), and a `failed` that arrives after
the message was delivered or read is recorded in the status log but does not overwrite what the customer saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

RANK: dict[str, int] = {"pending": 0, "sent": 1, "delivered": 2, "read": 3}
# Meta's `played` (first play of a voice note) implies read.
ALIASES: dict[str, str] = {"played": "read"}
STATUS_TIME_FIELD: dict[str, str] = {
    "sent": "sent_at",
    "delivered": "delivered_at",
    "read": "read_at",
    "failed": "failed_at",
}


@dataclass(frozen=True)
class StatusError:
    code: int | None
    title: str
    detail: str


@dataclass(frozen=True)
class Transition:
    status: str  # the status to store (may equal the current one)
    changed: bool  # whether the stored status changes
    time_fields: dict[str, datetime]  # per-step times to fill in (only those not known yet)
    error: StatusError | None  # error to store (only when the message becomes failed)


def normalize(status: str) -> str:
    status = ALIASES.get(status, status)
    if status not in RANK and status != "failed":
        raise ValueError(f"unknown message status {status!r}")
    return status


def status_apply(
    *,
    current: str,
    new: str,
    at: datetime,
    known_times: dict[str, datetime | None],
    error: StatusError | None = None,
) -> Transition:
    """Decide what a reported status changes. Pure: the caller persists the result.

    known_times maps "sent_at"/"delivered_at"/"read_at"/"failed_at" to what is stored now.
    """
    new = normalize(new)
    current = normalize(current)
    times: dict[str, datetime] = {}

    def fill(status: str) -> None:
        field = STATUS_TIME_FIELD.get(status)
        if field and known_times.get(field) is None and field not in times:
            times[field] = at

    if current == "failed":
        if new != "failed":
            fill(new)  # a step that happened before the failure still gets its time
        return Transition(status="failed", changed=False, time_fields=times, error=None)
    if new == "failed":
        if RANK[current] >= RANK["delivered"]:
            return Transition(status=current, changed=False, time_fields={}, error=None)
        fill("failed")
        return Transition(status="failed", changed=True, time_fields=times, error=error)
    # A step's time is a fact even when it arrives late (delivered after read): record it, keep the status.
    fill(new)
    if RANK[new] > RANK[current]:
        # A skipped step stays without a time (Meta skips `delivered` when read at once); read implies it.
        return Transition(status=new, changed=True, time_fields=times, error=None)
    return Transition(status=current, changed=False, time_fields=times, error=None)
