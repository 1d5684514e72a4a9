"""Benchmark: incidents at 20,000 hosts (docs/benchmarks.md "Incidents").

A hub (`estate-hub serve`, SQLite) over a store seeded with --hosts hosts: --site-hosts of
them at one site are simulated agents (inventory/simulate.py) holding real SSH connections
and reporting every --interval seconds; the others are held online by a registered peer hub
row (what another hub of the estate looks like in the store), so the correlator reads a whole
estate on every pass. Phases:

1. ingest CPU: the hub's CPU per stored report for --window seconds with the correlator off
   (`--no-incidents`), then, after a restart, on: the ratio (target <= 1.1);
2. outage: the site's agents all drop at once; the time from the last disconnect the hub
   recorded to the site-outage incident committed listing every one of them (target <= 2 s),
   read by polling the store every 20 ms.

Usage: python bench/health.py [--hosts 20000] [--site-hosts 500] [--interval 10]
       [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._seed import seed  # noqa: E402
from estate.inventory import simulate  # noqa: E402
from estate.inventory.hub._keys import load_or_create_host_key  # noqa: E402
from estate.inventory.store import iso, open_store, parse_time, utcnow  # noqa: E402

HUB = [sys.executable, "-m", "estate.inventory.hub.cli"]
SITE = ("Fire & Rescue", "Station 99")
PEER = "bench-peer"  # the registered hub that "holds" the seeded hosts


def enrol_site(data: Path, n: int) -> list[simulate.Identity]:
    """N agents at SITE, each with its own key, enrolled through the store (no SSH)."""
    store = open_store(None, data, durable=False)
    try:
        token_id, secret, _ = store.create_token(*SITE, n, timedelta(hours=6), "bench")
        idents = []
        for i in range(n):
            key = asyncssh.generate_private_key("ssh-ed25519")
            enrolled = store.enrol(token_id, secret,
                                   key.export_public_key("openssh").decode().strip(),
                                   key.get_fingerprint("sha256"), f"site-{i:04d}")
            idents.append(simulate.Identity(100_000 + i, enrolled["agent_id"], key, *SITE))
        return idents
    finally:
        store.close()


def hold_online(data: Path, agent_ids: set[str]) -> None:
    """The seeded hosts online, held by PEER: a hub row that lives an hour without a
    heartbeat, so the bench's hub neither releases nor sweeps them."""
    store = open_store(None, data, durable=False)
    try:
        store.register_hub(PEER, None, 3600.0, None, utcnow())
        now = iso(utcnow())
        with store.db.transaction():
            store.db.executemany("UPDATE agents SET connected = 1, connected_hub = ?, "
                                 "connected_at = ?, epoch = 1 WHERE id = ?",
                                 [(PEER, now, a) for a in sorted(agent_ids)])
            # No connectivity verdicts: fake_report's file-server probe fails at random, and
            # a bench of one site's outage wants no shared-service incidents beside it.
            store.db.execute("UPDATE hosts SET net = NULL, net_at = NULL")
    finally:
        store.close()


class Hub:
    def __init__(self, data: Path, extra: tuple[str, ...]) -> None:
        self.log = open(data.parent / "hub.log", "a")
        self.proc = subprocess.Popen([*HUB, "serve", "--listen", "127.0.0.1:0", "--data",
                                      str(data), "--report-burst", "0", *extra],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
                break
        else:
            raise SystemExit("bench: the hub did not start (see hub.log)")
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def count(data: Path, sql: str, args: tuple[Any, ...] = ()) -> Any:
    store = open_store(None, data)
    try:
        return store.db.execute(sql, args).fetchone()
    finally:
        store.close()


async def run_agents(sim: simulate.Simulator, idents: list[simulate.Identity]) -> list[Any]:
    return [asyncio.create_task(sim.run_agent(i)) for i in idents]


async def wait_connected(data: Path, ids: list[str], connected: bool, timeout: float) -> None:
    marks = ", ".join("?" for _ in ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count(data, f"SELECT COUNT(*) FROM agents WHERE connected = ? AND id IN ({marks})",
                  (1 if connected else 0, *ids))[0]
        if n == len(ids):
            return
        await asyncio.sleep(0.5)
    raise SystemExit(f"bench: agents not {'connected' if connected else 'gone'} in time")


async def ingest_cpu(hub: Hub, data: Path, window: float) -> tuple[float, int]:
    """Hub CPU ms per stored report over `window` seconds."""
    before_reports = count(data, "SELECT COUNT(*) FROM samples")[0]
    before_cpu = hub.cpu_s()
    await asyncio.sleep(window)
    reports = count(data, "SELECT COUNT(*) FROM samples")[0] - before_reports
    return (hub.cpu_s() - before_cpu) * 1000 / max(reports, 1), reports


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="estate-bench-health-"))
    data = folder / "data"
    data.mkdir(mode=0o700)
    started = time.monotonic()
    seed(data, args.hosts - args.site_hosts)
    idents = enrol_site(data, args.site_hosts)
    site_ids = [i.agent_id for i in idents]
    store = open_store(None, data)
    seeded = {a.id for a in store.agents()} - set(site_ids)
    store.close()
    hold_online(data, seeded)
    print(f"seeded {len(seeded)} hosts held online by a peer hub row and {len(idents)} "
          f"simulated agents at {SITE[1]} in {time.monotonic() - started:.0f} s", flush=True)
    key, _ = load_or_create_host_key(data)
    results: dict[str, float] = {}
    flags = ("--outage-window", str(args.outage_window))
    for phase, extra in (("off", ("--no-incidents",)), ("on", ())):
        hub = Hub(data, (*flags, *extra))
        sim = simulate.Simulator(f"127.0.0.1:{hub.port}", key, interval_s=args.interval,
                                 reconnect_max_s=5.0, start_spread_s=args.interval,
                                 max_connecting=50)
        tasks = await run_agents(sim, idents)
        await wait_connected(data, site_ids, True, 300)
        await asyncio.sleep(args.interval)  # every agent past its first report
        ms, reports = await ingest_cpu(hub, data, args.window)
        results[phase] = ms
        print(f"correlator {phase}: {ms:.3f} ms hub CPU per report ({reports} reports in "
              f"{args.window:g} s)", flush=True)
        if phase == "off":
            sim.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            hub.stop()
            continue
        # The correlator opens nothing in its first window after starting to lead.
        await asyncio.sleep(max(0.0, args.outage_window - args.window - args.interval) + 1)
        sim.take_down(site_ids)
        polls = 0
        while True:
            row = count(data, "SELECT id, hosts FROM incidents WHERE subject = ? AND "
                        "state = 'open'", (f"site:{SITE[0]}/{SITE[1]}",))
            polls += 1
            if row and row[1] >= len(site_ids):
                seen = utcnow()
                break
            await asyncio.sleep(0.02)
        last = count(data, f"SELECT MAX(disconnected_at) FROM agents WHERE id IN "
                     f"({', '.join('?' for _ in site_ids)})", tuple(site_ids))[0]
        opened = count(data, "SELECT opened_at FROM incidents WHERE id = ?", (row[0],))[0]
        first = count(data, f"SELECT MIN(disconnected_at) FROM agents WHERE id IN "
                      f"({', '.join('?' for _ in site_ids)})", tuple(site_ids))[0]
        delay = (seen - parse_time(last)).total_seconds()
        results["outage_s"] = delay
        print(f"outage: {len(site_ids)} disconnects over "
              f"{(parse_time(last) - parse_time(first)).total_seconds():.2f} s; incident "
              f"opened {(parse_time(opened) - parse_time(first)).total_seconds():.2f} s after "
              f"the first; listing all {len(site_ids)} seen {delay:.2f} s after the last "
              f"disconnect (target <= 2 s)", flush=True)
        sim.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        hub.stop()
    print(f"ingest CPU per report, correlator on / off: {results['on'] / results['off']:.3f}"
          f" (target <= 1.1)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20_000)
    parser.add_argument("--site-hosts", type=int, default=500)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--outage-window", type=float, default=120.0)
    asyncio.run(main(parser.parse_args()))
