"""Benchmarks: every hot path against a baseline measured in the same run (docs/performance.md, bench/README.md)."""

from __future__ import annotations
