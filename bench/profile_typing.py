"""Profile the Daphne process under typing load (benchmark M3's shape): CPU per typing event and where it goes.

    .venv/bin/python -m bench.profile_typing --rate 1000 --seconds 8            # CPU per event + py-spy summary
    .venv/bin/python -m bench.profile_typing --rate 1000 --seconds 8 --no-spy   # CPU per event only

Starts the same system as the benchmarks (bench/scenarios.py `system`), measures the bare Channels echo consumer in
the same Daphne under the same load first (R_typing's baseline, so its CPU per frame is a same-run reference), then
200 typists each in their own conversation with one viewer, alternating typing:start / typing:stop open-loop. py-spy
(`--gil`, raw stacks kept in the bench log directory) records the typing phase.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench import baselines, scenarios
from bench.harness import OpenLoop, Report, ms, services_up, summary
from bench.profile_ws import pyspy_start, pyspy_stop, summarize


async def run(rate: int, seconds: float, conversations: int, spy: bool) -> None:
    services = await asyncio.to_thread(services_up)
    ctx = scenarios.Ctx(services=services, report=Report(), quick=True)
    try:
        async with scenarios.system(ctx) as sys_:
            cpu0 = sys_.daphne.cpu_seconds()
            echo = await baselines.echo_load(
                f"ws://127.0.0.1:{sys_.port}/bench/echo/", sockets=conversations, rate=rate, duration=seconds
            )
            echo_us = 1e6 * (sys_.daphne.cpu_seconds() - cpu0) / max(1, echo["sent"])
            print(
                f"echo baseline: p50 {echo['p50']:.2f} / p99 {echo['p99']:.2f} ms, {echo_us:.0f} µs CPU per frame "
                f"(incl. connects)"
            )
            load = await scenarios.TypingLoad.open(sys_, conversations)
            print(f"typing load from {time.time():.3f}")
            prof = pyspy_start(sys_.daphne.pid, services.log_dir / "prof-typing.txt") if spy else None
            cpu0 = sys_.daphne.cpu_seconds()
            count = await OpenLoop(rate, seconds, grace=5).run(load.one)
            await asyncio.sleep(0.5)
            cpu_us = 1e6 * (sys_.daphne.cpu_seconds() - cpu0) / max(1, count)
            print(f"typing load until {time.time():.3f}")
            if prof is not None:
                pyspy_stop(prof)
            stats = summary(load.lat[len(load.lat) // 10 :])
            print(
                f"typing: {count} events, lost {sum(len(q) for q in load.pending.values())}, p50 {ms(stats['p50']):.2f} "
                f"/ p99 {ms(stats['p99']):.2f} ms, {cpu_us:.0f} µs Daphne CPU per event"
            )
            if spy:
                print(summarize(services.log_dir / "prof-typing.txt"))
            await scenarios.close_many([*load.senders, *load.receivers])
    finally:
        services.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--no-spy", dest="spy", action="store_false")
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.seconds, args.conversations, args.spy))


if __name__ == "__main__":
    main()
