"""Run benchmark scenarios and print the results table (also written to bench/results/).

python -m bench.run                 # everything (M6 ramps on into M7), a few minutes
python -m bench.run m1 m4           # some scenarios
python -m bench.run --quick m3      # shorter durations while developing
make bench [SCEN=m1] [QUICK=1]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import resource
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench import scenarios
from bench.harness import RESULTS, Report, Row, machine, services_up

ALL = ["floor", "m1", "m1x2", "m2", "m2x2", "m3", "m4", "m9", "m5", "m8", "m8x2", "m6+m7"]


async def main(names: list[str], quick: bool, stamp: str) -> Report:
    report = Report()
    report.meta.update(machine())
    report.meta["started"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    report.meta["mode"] = "quick" if quick else "full"
    services = await asyncio.to_thread(services_up)
    ctx = scenarios.Ctx(services=services, report=report, quick=quick)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    try:
        for name in names:
            print(f"== {name}", flush=True)
            base, _, arg = name.partition("@")
            if base == "m6+m7":
                fn = functools.partial(scenarios.m6, ramp_to=15000)
            elif arg:  # e.g. m1@20,100 (rates) or m4@100,1000 (socket counts): the scenario's first parameter
                fn = functools.partial(_with_arg, scenarios.SCENARIOS[base], tuple(int(x) for x in arg.split(",")))
            else:
                fn = scenarios.SCENARIOS[base]
            # The load generator's own garbage collector stays out of the measured windows: with a scenario's
            # sockets and samples in its heap, a full collection paused this process 90-290 ms (the end of M3's
            # load, once run 6's 125 ms max), which a sample in flight counted as server latency. It runs between
            # scenarios instead; nothing a scenario keeps is cyclic garbage in bulk (24 GB of memory here).
            gc.collect()
            gc.disable()
            try:
                await asyncio.wait_for(fn(ctx), timeout=420)
            except Exception as exc:  # one broken scenario does not hide the others' figures
                report.add(Row(name.upper(), "scenario failed", f"{type(exc).__name__}: {exc}"[:200], ok=False))
                ctx.notes.append(f"{name} failed: {exc!r}")
            finally:
                gc.enable()
                gc.collect()
            report.save(f"{stamp}-partial")  # what has run so far survives an interrupted run
    finally:
        services.stop_all()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall0
    cpu = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)
    report.add(
        Row(
            "M10",
            "all scenarios: seq gaps / duplicates",
            f"{ctx.gaps} / {ctx.dups}",
            target="0 / 0",
            ok=ctx.gaps == 0 and ctx.dups == 0,
        )
    )
    report.meta["load generator CPU"] = f"{cpu:.0f} s over {wall:.0f} s wall ({100 * cpu / wall:.0f} % of one core)"
    report.meta["server logs"] = str(services.log_dir)
    from bench.harness import OPEN_ERRORS

    if OPEN_ERRORS:
        report.meta["failed handshakes by error"] = dict(OPEN_ERRORS)
    if ctx.notes:
        report.meta["notes"] = "; ".join(ctx.notes)
    return report


def _with_arg(scenario: Any, values: tuple[int, ...], ctx: scenarios.Ctx) -> Any:
    return scenario(ctx, values)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "scenarios",
        nargs="*",
        help=f"any of {', '.join(scenarios.SCENARIOS)}, m6+m7; NAME@a,b sets rates (m1) or socket counts (m4, m6)",
    )
    parser.add_argument("--quick", action="store_true", help="shorter durations (development)")
    args = parser.parse_args()
    names = [n.lower() for n in args.scenarios] or ALL
    unknown = [n for n in names if n.partition("@")[0] not in scenarios.SCENARIOS and n != "m6+m7"]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    report = asyncio.run(main(names, args.quick, stamp))
    (RESULTS / f"{stamp}-partial.md").unlink(missing_ok=True)
    (RESULTS / f"{stamp}-partial.json").unlink(missing_ok=True)
    label = "-".join(n.replace("+", "").replace("@", "_").replace(",", "_") for n in names)
    path = report.save(f"{stamp}-{label if len(names) < 4 else 'all' if names == ALL else 'subset'}")
    print()
    for key, value in report.meta.items():
        print(f"{key}: {value}")
    print()
    print(report.table())
    print(f"\nsaved to {path}")
    failed = [r for r in report.rows if r.ok is False]
    sys.exit(0 if not any(r.metric == "scenario failed" for r in failed) else 1)


if __name__ == "__main__":
    cli()
