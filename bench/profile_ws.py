"""Profile the Daphne process under socket load: handshakes, then tenant fan-out, then typing (py-spy, all threads).

    .venv/bin/python -m bench.profile_ws --sockets 1000 --sends 20
    .venv/bin/python -m bench.profile_ws --sockets 1000 --sends 0 --rounds 4   # handshake CPU, 4 times over

Starts the same system as the benchmarks (bench/scenarios.py `system`), records `py-spy --format raw` for each phase and
prints the functions with the most samples (own and inclusive) and the Daphne CPU per operation. Raw stacks are kept
in bench/results/logs/ for flame graphs (`flamegraph.pl` or speedscope).

With --rounds N the sockets are closed and opened again N - 1 more times (a reconnect like M8's, without its jitter)
and the CPU per handshake of every round is printed with their median: on a box shared with other work one round
can be off by 20 %. Only the first round is profiled. Each round also prints the CPU the close took per socket and,
with BENCH_GC_LOG=1 in the environment, the collections over BENCH_GC_LOG_MS that Daphne logged during the close
and during the reconnects (count, total ms, largest).

With --behind K, K messages (2K durable events) are sent while the sockets are away, and each socket comes back
with `sync` from the last seq it had seen, as in M8: the CPU per reconnect then includes the replay of 2K frames.

    .venv/bin/python -m bench.profile_ws --sockets 1000 --sends 0 --rounds 4 --behind 5
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

from bench import scenarios
from bench.harness import OPEN_ERRORS, Report, Sock, amint, services_up


def pyspy_start(pid: int, out: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(__file__).resolve().parent.parent / ".venv/bin/py-spy")
    return subprocess.Popen(
        [exe, "record", "-p", str(pid), "-r", "200", "--format", "raw", "-o", str(out), "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pyspy_stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def summarize(path: Path, top: int = 30) -> str:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return f"(no profile at {path})"
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        # Idle threads (waiting in select/epoll or on a queue) are not CPU.
        leaf = frames[-1]
        if any(w in leaf for w in ("epoll", "select (", "_worker (concurrent", "wait (threading")):
            continue
        total += count
        own[leaf] += count
        for f in set(frames):
            incl[f] += count
    lines = [f"samples (non-idle): {total}", "-- own --"]
    lines += [f"{100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["-- inclusive --"]
    lines += [f"{100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top * 2)]
    return "\n".join(lines)


_GC_LINE = re.compile(r"gc: generation (\d) took ([\d.]+) ms")


def gc_pauses(log: Path, start: int) -> str:
    """The collections Daphne logged (BENCH_GC_LOG=1) since byte `start` of its log: count, total and largest ms."""
    if not log.exists():
        return ""
    with log.open("rb") as f:
        f.seek(start)
        took = [float(m.group(2)) for m in _GC_LINE.finditer(f.read().decode(errors="replace"))]
    return f"{len(took)} collections, {sum(took):.0f} ms, largest {max(took, default=0):.0f} ms" if took else "none"


def log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


async def resync_many(sys_: scenarios.System, since: list[int], concurrency: int = 50) -> tuple[list[Sock], int]:
    """One socket per entry of `since` (users round-robin), each sending `sync` from its own last seq like a client
    that reconnects (M8); returns once every one has its `sync:done` (the sockets and the failures)."""
    users = [sys_.tenant.user_ids[i % len(sys_.tenant.user_ids)] for i in range(len(since))]
    tickets = await amint(sys_.tenant.id, users)
    gate = asyncio.Semaphore(concurrency)
    socks: list[Sock] = []
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with gate:
            s = Sock(str(i))
            try:
                await s.open(sys_.port, sys_.tenant.slug, tickets[i], sync=False)
                await s.send("sync", {"since": since[i]})
                await asyncio.wait_for(s.synced.wait(), 30)
                socks.append(s)
            except Exception as exc:
                failures += 1
                OPEN_ERRORS[type(exc).__name__] += 1
                await s.close()

    await asyncio.gather(*(one(i) for i in range(len(since))))
    return socks, failures


async def reconnect_rounds(
    sys_: scenarios.System, socks: list, sockets: int, rounds: int, first: float, behind: int = 0
) -> list:
    """Close every socket, let the server settle (and the offline grace pass), open them again; `rounds` - 1 times.
    With `behind`, that many messages are sent while they are away and each comes back with `sync` from its last
    seq. Returns the sockets of the last round; prints the CPU per reconnect of each round and the median."""
    per_round = [first]
    log = sys_.daphne.log_path
    for r in range(rounds - 1):
        since = [s.last_seq() for s in socks]
        mark, cpu0 = log_size(log), sys_.daphne.cpu_seconds()
        await scenarios.close_many(socks)
        await scenarios.quiesce(sys_.daphne)
        close_cpu = sys_.daphne.cpu_seconds() - cpu0
        await asyncio.sleep(4)  # presence's offline grace (3 s) and its announcements
        await scenarios.quiesce(sys_.daphne)
        closing = gc_pauses(log, mark)
        if behind:
            conv = sys_.tenant.conversation_ids[1]
            for k in range(behind):
                await sys_.post_message(conv, f"behind-{r}-{k}", "sent while the sockets were away")
            await scenarios.quiesce(sys_.daphne)
        mark, cpu0, t0 = log_size(log), sys_.daphne.cpu_seconds(), time.perf_counter()
        if behind:
            socks, failures = await resync_many(sys_, since)
        else:
            socks, _, failures = await sys_.sockets(sockets)
        cpu, wall = sys_.daphne.cpu_seconds() - cpu0, time.perf_counter() - t0
        per_round.append(1000 * cpu / max(1, len(socks)))
        what = f"reconnects + sync of {2 * behind} missed frames" if behind else "handshakes (again)"
        print(
            f"{what}: {len(socks)} in {wall:.1f} s, {per_round[-1]:.2f} ms CPU each, failures {failures}; "
            f"close before: {1000 * close_cpu / max(1, len(since)):.2f} ms CPU per socket"
        )
        if closing:
            print(f"  collections during the close: {closing}; during the reconnects: {gc_pauses(log, mark)}")
    if rounds > 1:
        print(
            f"CPU per reconnect per round: {', '.join(f'{v:.2f}' for v in per_round)} ms; "
            f"median of the reconnect rounds {statistics.median(per_round[1:]):.2f} ms"
        )
    return socks


async def run(sockets: int, sends: int, typing: int, rounds: int = 1, behind: int = 0) -> None:
    services = await asyncio.to_thread(services_up)
    ctx = scenarios.Ctx(services=services, report=Report(), quick=True)
    logs = services.log_dir
    try:
        async with scenarios.system(ctx) as sys_:
            pid = sys_.daphne.pid
            prof = pyspy_start(pid, logs / "prof-handshake.txt")
            cpu0, t0 = sys_.daphne.cpu_seconds(), time.perf_counter()
            socks, times, failures = await sys_.sockets(sockets)
            cpu_h, wall_h = sys_.daphne.cpu_seconds() - cpu0, time.perf_counter() - t0
            pyspy_stop(prof)
            await scenarios.quiesce(sys_.daphne)
            await scenarios.settle(sys_, socks)
            print(
                f"handshakes: {len(socks)} in {wall_h:.1f} s, {1000 * cpu_h / max(1, len(socks)):.2f} ms CPU each, "
                f"failures {failures}"
            )
            socks = await reconnect_rounds(sys_, socks, sockets, rounds, 1000 * cpu_h / max(1, len(socks)), behind)
            await scenarios.quiesce(sys_.daphne)
            await scenarios.settle(sys_, socks)
            got = Counter[str]()

            def hook(sock: object, frame: dict, now: float) -> None:
                if frame["type"] == "message:new":
                    got[frame["data"].get("client_id") or ""] += 1

            for s in socks:
                s.hook = hook
            prof = pyspy_start(pid, logs / "prof-fanout.txt")
            cpu0 = sys_.daphne.cpu_seconds()
            conv = sys_.tenant.conversation_ids[1]
            for k in range(sends):
                await sys_.post_message(conv, f"prof-{k}", "fan-out " + "x" * 32)
                await asyncio.sleep(0.3)
            deadline = time.perf_counter() + 20
            while sum(got.values()) < len(socks) * sends and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            cpu_f = sys_.daphne.cpu_seconds() - cpu0
            pyspy_stop(prof)
            delivered = sum(got.values())
            print(
                f"fan-out: {delivered}/{len(socks) * sends} delivered, "
                f"{1e6 * cpu_f / max(1, delivered):.0f} µs Daphne CPU per delivery (incl. sends)"
            )
            for name in ("handshake", "fanout"):
                print(f"\n===== {name} =====")
                print(summarize(logs / f"prof-{name}.txt"))
            await scenarios.close_many(socks)
    finally:
        services.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--sends", type=int, default=20)
    parser.add_argument("--typing", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="handshake rounds (close all, reconnect all)")
    parser.add_argument(
        "--behind", type=int, default=0, help="messages sent while the sockets are away (each syncs from its last seq)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.sockets, args.sends, args.typing, args.rounds, args.behind))


if __name__ == "__main__":
    main()
