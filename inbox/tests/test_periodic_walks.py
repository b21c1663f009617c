"""A process's periodic walks over its sockets (presence heartbeat, membership re-check) let the event loop run
between steps: one walk over 15,000 held sockets in one go held it for 10-40 ms (bench M7's probe)."""

from __future__ import annotations

import asyncio

import pytest

from inbox import consumers


async def test_a_walk_yields_to_the_loop_between_steps_and_keeps_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "WALK_STEP", 10)
    seen_by_other_task: list[int] = []
    visited: list[int] = []

    def odd_doubled(n: int) -> int | None:
        visited.append(n)
        return 2 * n if n % 2 else None

    async def other() -> None:
        while True:
            seen_by_other_task.append(len(visited))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(other())
    await asyncio.sleep(0)
    result = await consumers._in_steps(range(35), odd_doubled)
    watcher.cancel()
    assert result == [2 * n for n in range(35) if n % 2]  # in order, the Nones left out
    # The other task ran between the steps of 10, and never in the middle of one.
    assert {10, 20, 30} <= set(seen_by_other_task)
    assert all(n % 10 == 0 or n == 35 for n in seen_by_other_task)


async def test_a_walk_takes_a_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets that come or go while a walk yields do not break it (the set it walks may change meanwhile)."""
    monkeypatch.setattr(consumers, "WALK_STEP", 2)
    sockets = {1, 2, 3, 4, 5}

    async def churn() -> None:
        sockets.discard(5)
        sockets.add(6)

    task = asyncio.create_task(churn())
    result = await consumers._in_steps(sockets, lambda s: s)
    await task
    assert sorted(result) == [1, 2, 3, 4, 5]
