"""Benchmark: the hub holding thousands of idle agent connections, and a reconnect storm.

For each N in --counts (default 2000,5000): N simulated agents, enrolled for real, log in and
stay idle; prints the hub's RSS per connection and its idle CPU, over a window that holds at
least one keepalive cycle (the hub's --keepalive, the agents' own SSH keepalive, whichever is
shorter), and that CPU per 10,000 connections. Then a reconnect storm: N
agents (--storm, default 2000) running and reporting, the hub restarted (SIGTERM, start
again on the same port and data); prints the time until every agent is back and how many
reports were lost (every report an agent produced must be in the store).

Usage: python bench/hub_connections.py [--counts 2000,5000,20000] [--storm 2000]
       [--keepalive SECONDS] [--tcp-keepalive IDLE:INTERVAL:COUNT] [--agent-keepalive SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import asyncssh
import psutil

from estate.inventory import simulate
from estate.inventory.hub._keys import load_or_create_host_key
from estate.inventory.hub._settings import HubSettings
from estate.inventory.hub._tokens import make_token
from estate.inventory.store import Store

BARE_WINDOW_S = 30.0  # the hub's CPU with no connection, measured first and subtracted


def raise_open_files() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # 20,000 connections need more than most default limits; root may raise the hard one.
    for target in (200_000, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Hub:
    def __init__(self, data: Path, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.data, self.port, self.extra = data, port, extra
        self.proc: subprocess.Popen[str] | None = None
        self._store: Store | None = None  # opened once: `connected` is polled while timed

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "estate.inventory.hub.cli", "serve", "--listen",
             f"127.0.0.1:{self.port}", "--data", str(self.data), "--max-unauthenticated",
             "5000", "--login-timeout", "120",
             # Every simulated agent comes from 127.0.0.1: lift the per-source front door,
             # which would otherwise (rightly) pace this storm at 10 connections a second.
             "--connection-rate", "1000000", "--connection-burst", "1000000",
             "--max-unauthenticated-per-source", "5000", "--early-drop", "5000:30",
             *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
                return
        raise SystemExit("hub did not start")

    def stop(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self.proc:
            self.proc.terminate()
            self.proc.wait(60)

    def ps(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def connected(self) -> int:
        if self._store is None:
            # Polled through asyncio.to_thread: the store allows any one thread at a time.
            self._store = Store.open(self.data)
        return sum(1 for a in self._store.agents() if a.connected)


async def enrol(sim: simulate.Simulator, data: Path, n: int) -> list[simulate.Identity]:
    """N identities: reused from simulated.json, the missing ones enrolled for real."""
    path = data / "simulated.json"
    idents = simulate.load_identities(path)[:n]
    if len(idents) < n:
        store = Store.open(data)
        token_id, secret, _ = store.create_token("Bench", "Lab", n, timedelta(hours=6), "bench")
        store.close()
        token = make_token(token_id, secret, sim.host_key.get_fingerprint("sha256"))
        gate = asyncio.Semaphore(32)

        async def one(i: int) -> simulate.Identity:
            async with gate:
                return await sim.enrol(i, token, "Bench", "Lab")

        start = time.monotonic()
        idents += await asyncio.gather(*(one(i) for i in range(len(idents), n)))
        print(f"  enrolled {n} agents in {time.monotonic() - start:.0f} s", flush=True)
        simulate.save_identities(path, idents)
    return idents


async def cpu_percent(ps: psutil.Process, window_s: float) -> float:
    """The process's CPU (user and system) over the next `window_s`, in % of one core."""
    cpu0, t0 = sum(ps.cpu_times()[:2]), time.monotonic()
    await asyncio.sleep(window_s)
    return 100 * (sum(ps.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)


async def hold_idle(hub: Hub, sim: simulate.Simulator, idents: list[simulate.Identity],
                    window_s: float) -> tuple[float, float, float, float]:
    """Log every agent in and keep it idle; (RSS MB before, RSS MB after, idle CPU %, the
    hub's CPU % with no connection: its own timers, to subtract)."""
    ps = hub.ps()
    base_rss = ps.memory_info().rss
    bare = await cpu_percent(ps, BARE_WINDOW_S)
    gate = asyncio.Semaphore(64)
    conns: list[asyncssh.SSHClientConnection] = []

    async def one(ident: simulate.Identity) -> None:
        async with gate:
            conns.append(await sim._connect(ident.agent_id, ident.key))

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in idents))
    print(f"  {len(conns)} agents logged in after {time.monotonic() - start:.0f} s", flush=True)
    await asyncio.sleep(5)  # let the presence updates settle
    rss = ps.memory_info().rss
    cpu = await cpu_percent(ps, window_s)
    for c in conns:
        c.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    return base_rss / 2**20, rss / 2**20, cpu, bare


async def storm(hub: Hub, sim: simulate.Simulator, idents: list[simulate.Identity]) -> None:
    tasks = [asyncio.create_task(sim.run_agent(i)) for i in idents]
    deadline = time.monotonic() + 600
    while sim.stats.connected < len(idents) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await asyncio.sleep(3)
    print(f"  {sim.stats.connected} agents connected and reporting; restarting the hub",
          flush=True)
    await asyncio.to_thread(hub.stop)
    down = time.monotonic()
    await asyncio.sleep(2)
    await asyncio.to_thread(hub.start)
    back = None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        if sim.stats.connected >= len(idents) and await asyncio.to_thread(hub.connected) \
                >= len(idents):
            back = time.monotonic() - down
            break
    await asyncio.sleep(5)  # backlogs drain
    sim.stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    gave_up = sum(1 for t in tasks if t.exception())
    print(f"  all {len(idents)} agents back {back:.1f} s after the hub went down "
          f"(down for ~2 s)" if back else "  NOT all agents came back within 10 minutes")
    return gave_up


def count_lost(data: Path, sim: simulate.Simulator) -> tuple[int, int]:
    store = Store.open(data)
    try:
        stored = store.report_count()
    finally:
        store.close()
    pending = sum(sim.stats.pending.values())
    return stored, pending


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="2000,5000")
    parser.add_argument("--storm", type=int, default=2000)
    parser.add_argument("--idle-window", type=float, default=None,
                        help="seconds of idle CPU measured (default: one keepalive cycle "
                             "plus 10 s, at least 60)")
    parser.add_argument("--keepalive", type=float, default=HubSettings.keepalive_interval_s,
                        help="the hub's --keepalive (default: the hub's default)")
    parser.add_argument("--tcp-keepalive", default=None, metavar="IDLE:INTERVAL:COUNT",
                        help="the hub's --tcp-keepalive (default: the hub's default)")
    parser.add_argument("--agent-keepalive", type=float, default=0.0,
                        help="the simulated agents' own SSH keepalive, 0 for none (default "
                             "0, as the real agent's: it relies on TCP keepalive)")
    args = parser.parse_args()
    cycle = min((s for s in (args.keepalive, args.agent_keepalive) if s > 0), default=0.0)
    window = args.idle_window or max(60.0, cycle + 10)
    extra = ("--keepalive", f"{args.keepalive:g}",
             *(("--tcp-keepalive", args.tcp_keepalive) if args.tcp_keepalive else ()))
    limit = raise_open_files()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}; open files {limit}")
    counts = [int(c) for c in args.counts.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "hub"
        hub = Hub(data, extra=extra)
        hub.start()
        key, _ = load_or_create_host_key(data)
        try:
            print(f"idle connections (hub --keepalive {args.keepalive:g} s, agents' own "
                  f"keepalive {args.agent_keepalive:g} s, CPU over {window:.0f} s):")
            results = []
            for n in counts:
                sim = simulate.Simulator(f"127.0.0.1:{hub.port}", key,
                                         keepalive_s=args.agent_keepalive)
                idents = asyncio.run(enrol(sim, data, n))
                # A fresh hub, so memory freed by enrolment does not hide what connections cost.
                hub.stop()
                hub.start()
                before, after, cpu, bare = asyncio.run(hold_idle(hub, sim, idents, window))
                per = (after - before) * 1024 / n
                results.append((n, before, after, per, cpu, bare))
                print(f"  {n} idle: hub RSS {before:.0f} -> {after:.0f} MB, {per:.1f} KB per "
                      f"connection, idle CPU {cpu:.2f}% of a core ({bare:.2f}% with no "
                      f"connection), {(cpu - bare) * 10_000 / n:.2f}% per 10,000 "
                      f"connections", flush=True)
            if args.storm:
                print(f"reconnect storm ({args.storm} agents, reporting every 60 s, "
                      f"reconnect cap 60 s):")
                sim = simulate.Simulator(f"127.0.0.1:{hub.port}", key, interval_s=60.0,
                                         reconnect_max_s=60.0, start_spread_s=10.0)
                idents = asyncio.run(enrol(sim, data, args.storm))
                gave_up = asyncio.run(storm(hub, sim, idents))
                stored, pending = count_lost(data, sim)
                print(f"  reports acked {sim.stats.acked}, stored {stored}, still unacked "
                      f"{pending}; agents that gave up: {gave_up}")
        finally:
            hub.stop()
    print("| idle connections | hub RSS before | after | KB per connection | idle CPU | "
          "no connection | per 10,000 |")
    for n, before, after, per, cpu, bare in results:
        print(f"| {n} | {before:.0f} MB | {after:.0f} MB | {per:.1f} | {cpu:.2f}% | "
              f"{bare:.2f}% | {(cpu - bare) * 10_000 / n:.2f}% |")


if __name__ == "__main__":
    main()
