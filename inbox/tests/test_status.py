from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from inbox.status import RANK, StatusError, status_apply

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = ["sent", "delivered", "read", "failed"]
ERR = StatusError(code=131026, title="Message undeliverable", detail="not on WhatsApp")


def replay(sequence: list[str]) -> tuple[str, dict[str, datetime | None], StatusError | None]:
    current = "pending"
    times: dict[str, datetime | None] = {"sent_at": None, "delivered_at": None, "read_at": None, "failed_at": None}
    error = None
    for i, status in enumerate(sequence):
        t = status_apply(
            current=current,
            new=status,
            at=T0 + timedelta(seconds=i),
            known_times=times,
            error=ERR if status == "failed" else None,
        )
        times.update(t.time_fields)
        if t.changed:
            current = t.status
            if t.error:
                error = t.error
    return current, times, error


def expected(sequence: list[str]) -> str:
    """The rule, stated independently: failed wins unless it came after delivered/read; else the max rank."""
    current = "pending"
    for status in sequence:
        if current == "failed":
            break
        if status == "failed":
            if RANK[current] < RANK["delivered"]:
                current = "failed"
        elif RANK[status] > RANK[current]:
            current = status
    return current


def test_it_never_moves_backwards_over_every_order_of_every_subset() -> None:
    for size in range(1, len(STATUSES) + 1):
        for subset in itertools.combinations(STATUSES, size):
            for order in itertools.permutations(subset):
                final, times, error = replay(list(order))
                assert final == expected(list(order)), order
                non_failed = [s for s in order if s != "failed"]
                if "failed" not in order:
                    assert final == max(non_failed, key=RANK.__getitem__)
                if final == "failed":
                    assert error == ERR
                # every step that arrived got its time, whatever the order
                for s in order:
                    if s != "failed" or final == "failed":
                        assert times[f"{s}_at"] is not None


def test_it_keeps_read_when_delivered_arrives_late() -> None:
    final, times, _ = replay(["sent", "read", "delivered"])
    assert final == "read"
    assert times["delivered_at"] == T0 + timedelta(seconds=2)  # a late step's time is still recorded


def test_it_keeps_failed_and_its_error_when_sent_arrives_after() -> None:
    final, _, error = replay(["failed", "sent", "delivered"])
    assert final == "failed"
    assert error is not None and error.code == 131026


def test_played_counts_as_read() -> None:
    assert replay(["sent", "played"])[0] == "read"


@given(st.lists(st.sampled_from(STATUSES + ["played"]), min_size=1, max_size=12))
def test_it_matches_the_rule_for_any_sequence_with_duplicates(sequence: list[str]) -> None:
    normalized = ["read" if s == "played" else s for s in sequence]
    assert replay(sequence)[0] == expected(normalized)
    # idempotent: replaying the same sequence twice in a row changes nothing more
    assert replay(sequence + sequence)[0] == replay(sequence)[0]
