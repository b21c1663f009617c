"""SocketBatch: the presence calls that many sockets make at once go to the store together, each socket still
getting its own answer."""

from __future__ import annotations

import asyncio
import threading

import pytest

from inbox.consumers import SocketBatch, socket_batch


class Recorder:
    """A run_many that records its batches; `gate` holds a batch in its thread until the test lets it go."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.gate.wait(timeout=5)
        if self.fail_on is not None and self.fail_on in items:
            raise ConnectionError("store down")
        return [item * 10 for item in items]


async def test_calls_of_one_loop_turn_go_as_one_batch_and_each_gets_its_own_answer() -> None:
    run = Recorder()
    batch = SocketBatch(run)
    answers = await asyncio.gather(*(batch(i) for i in range(20)))
    assert answers == [i * 10 for i in range(20)]
    assert run.batches == [list(range(20))]


async def test_calls_made_while_a_batch_runs_gather_into_the_next_one() -> None:
    run = Recorder()
    run.gate.clear()
    batch = SocketBatch(run)
    first = [asyncio.ensure_future(batch(i)) for i in range(3)]
    while not run.batches:  # the first batch is in its thread, held
        await asyncio.sleep(0.001)
    later = [asyncio.ensure_future(batch(i)) for i in range(3, 8)]
    await asyncio.sleep(0.01)
    assert run.batches == [[0, 1, 2]]
    run.gate.set()
    assert await asyncio.gather(*first, *later) == [i * 10 for i in range(8)]
    assert run.batches == [[0, 1, 2], [3, 4, 5, 6, 7]]
    assert await batch(9) == 90  # idle again: the next call goes at once
    assert run.batches[-1] == [9]


async def test_a_failure_reaches_every_call_of_its_batch_and_the_next_batch_still_runs() -> None:
    run = Recorder(fail_on=2)
    batch = SocketBatch(run)
    results = await asyncio.gather(*(batch(i) for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert await asyncio.gather(batch(5), batch(6)) == [50, 60]


async def test_a_caller_that_gives_up_leaves_the_others_their_answers() -> None:
    run = Recorder()
    run.gate.clear()
    batch = SocketBatch(run)
    calls = [asyncio.ensure_future(batch(i)) for i in range(3)]
    while not run.batches:
        await asyncio.sleep(0.001)
    calls[1].cancel()
    run.gate.set()
    assert await calls[0] == 0 and await calls[2] == 20
    with pytest.raises(asyncio.CancelledError):
        await calls[1]


async def test_batches_are_kept_per_function_and_event_loop() -> None:
    run_a, run_b = Recorder(), Recorder()
    assert socket_batch(run_a) is socket_batch(run_a)
    assert socket_batch(run_a) is not socket_batch(run_b)
    mine = socket_batch(run_a)

    def other_loop() -> SocketBatch:
        async def get() -> SocketBatch:
            return socket_batch(run_a)

        return asyncio.run(get())

    assert await asyncio.to_thread(other_loop) is not mine
