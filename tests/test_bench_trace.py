"""bench/trace.py: the marks a wrapped function writes, and the report of a send's steps read from them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import trace


@pytest.fixture
def trace_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("BENCH_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(trace, "_fd", None)
    yield tmp_path
    if trace._fd is not None:  # the file the marks opened
        os.close(trace._fd)


def _labels(directory: Path) -> list[str]:
    (path,) = directory.glob("trace-*.log")
    return [line.split()[1] for line in path.read_text().splitlines()]


def test_wrapped_functions_mark_their_start_and_end_when_asked(trace_file: Path) -> None:
    class Steps:
        def step(self, n: int) -> int:
            return n * 2

        async def hop(self, n: int) -> int:
            await asyncio.sleep(0)
            return n + 1

        def fails(self) -> None:
            raise ValueError("kept")

    trace._wrap(Steps, "step", "step", lambda self, n: n > 0)
    trace._wrap(Steps, "hop", "hop")
    trace._wrap(Steps, "fails", "fails")
    p = Steps()
    assert p.step(2) == 4 and p.step(0) == 0  # the second is not marked
    assert asyncio.run(p.hop(1)) == 2
    with pytest.raises(ValueError, match="kept"):
        p.fails()
    assert _labels(trace_file) == ["step", "step.end", "hop", "hop.end", "fails", "fails.end"]


def test_the_report_pairs_each_sends_marks(tmp_path: Path, capsys: Any) -> None:
    lines = []
    for send in range(20):
        start = send * 50_000_000
        offsets = {"request": 0, "sql": 1_000_000, "sql.end": 1_500_000, "frame": 3_000_000 + send * 10_000}
        lines += [f"{start + at} {label}" for label, at in offsets.items()]
    lines.append(f"{10**10} request")  # a send cut off before its frame: left out
    path = tmp_path / "trace-1.log"
    path.write_text("\n".join(lines) + "\n")
    trace.report(str(path))
    out = capsys.readouterr().out
    assert "20 sends of the most common shape (21 in all)" in out
    assert "request → sql" in out and "p50  1.000" in out
    assert "sql.end → frame" in out
    assert "request → frame: p50 3.095 ms" in out
