"""Benchmark: the availability export of 20,000 hosts over 90 days of presence history.

Seeds a hub's store (20,000 enrolled hosts with a realistic report each, through the store's
own code, enrolled 100 days ago, evaluated against the default compliance policy as a
running hub's are), then presence history: each host a few outages a month of a few minutes
to a few hours, and now and then a whole site down at once (a shared outage). Starts the real
hub and runs the real `estate export --report availability --since` CLI over SSH as an admin
operator, as CSV, XLSX and JSON, `--rounds` times each. Prints for each the wall time (CLI
start to file and manifest written), the hub's CPU time for it (what a busy machine does not
inflate), the rows of each table, the file's size and `estate verify`.

Usage: python bench/availability.py [--hosts 20000] [--days 90] [--outages-per-month 3]
       [--rounds 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncssh
import psutil

from bench._seed import seed
from estate.inventory.compliance import load_policy
from estate.inventory.store import iso, open_store, utcnow
from tests.harness import HubProcess

CASES = (("csv", 10.0), ("xlsx", 10.0), ("json", 10.0))
SITE_OUTAGES_PER_MONTH = 0.5  # a whole site down at once, per site


def add_presence(data: Path, days: int, per_month: float) -> int:
    """Presence history over the last `days` (+ 10) for every seeded host; the rows written.

    Written in bulk through the store's connection: the hub writes one row per connection
    change, which is what this history is, only faster to lay down.
    """
    store = open_store(None, data, durable=False)  # seeding only; the hub runs durable
    rng = random.Random(15)
    now = utcnow()
    start = now - timedelta(days=days + 10)
    hosts = sorted((r.agent_id, r.agency, r.site) for r in store.host_rows(None))
    sites: dict[tuple[str, str], list[str]] = {}
    for agent_id, agency, site in hosts:
        sites.setdefault((agency, site), []).append(agent_id)
    span = (now - start).total_seconds()
    # Per host, offline intervals (seconds from `start`): its own, and its site's.
    down: dict[str, list[tuple[float, float]]] = {h[0]: [] for h in hosts}
    for members in sites.values():
        for _ in range(rng.randint(0, int(SITE_OUTAGES_PER_MONTH * (days + 10) / 30) + 1)):
            at = rng.uniform(0, span - 7200)
            length = rng.uniform(600, 7200)
            for agent_id in members:  # the link drops: its hosts go within a few seconds
                lag = rng.uniform(0, 30)
                down[agent_id].append((at + lag, at + lag + length))
    for agent_id, _, _ in hosts:
        for _ in range(rng.randint(0, int(per_month * 2 * (days + 10) / 30))):
            at = rng.uniform(0, span - 14400)
            down[agent_id].append((at, at + rng.uniform(60, 14400)))
    rows = []
    for agent_id, intervals in down.items():
        rows.append((agent_id, iso(start), "online"))
        online_from = 0.0
        for a, b in sorted(intervals):
            if a < online_from:  # overlapping: merged into the one before
                continue
            rows.append((agent_id, iso(start + timedelta(seconds=a)), "offline"))
            rows.append((agent_id, iso(start + timedelta(seconds=b)), "online"))
            online_from = b
    with store._transaction():  # a benchmark's bulk seeding
        store.db.execute("UPDATE agents SET enrolled_at = ?",
                         (iso(start - timedelta(days=1)),))
        store.db.executemany("INSERT INTO presence (agent_id, at, state) VALUES (?, ?, ?)",
                             rows)
    # Evaluated against the hub's default policy, as a running hub evaluates each report it
    # stores: else the hub spends its first ten or so seconds evaluating all 20,000 hosts
    # (`_apply_policy`), on the same cores as the exports timed then.
    store.apply_policy(load_policy(), "bench")
    while store.reevaluate():
        pass
    store.close()
    return len(rows)


def export(hub: HubProcess, key: Path, fmt: str, since: str, out: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "estate.console.cli", "export", "--hub", f"bench@{hub.address}",
         "--key", str(key), "--hub-key", hub.fingerprint, "--report", "availability",
         "--since", since, "--format", fmt, "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"export availability {fmt} failed: {done.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--outages-per-month", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2,
                        help="times each format is exported (a shared machine varies)")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="estate-bench-availability-") as tmp:
        base = Path(tmp)
        data = base / "data"
        t = time.perf_counter()
        seed(data, args.hosts)
        presence = add_presence(data, args.days, args.outages_per_month)
        print(f"seeded {args.hosts} hosts and {presence} presence rows in "
              f"{time.perf_counter() - t:.0f} s")
        key = asyncssh.generate_private_key("ssh-ed25519")
        (base / "bench").write_bytes(key.export_private_key())
        (base / "bench").chmod(0o600)
        key.write_public_key(str(base / "bench.pub"))
        since = (utcnow() - timedelta(days=args.days)).strftime("%Y-%m-%d")
        hub = HubProcess(data).start()
        try:
            hub.admin("operator", "add", "bench", "--key", str(base / "bench.pub"), "--role",
                      "admin", "--agencies", "all")
            assert hub.proc is not None
            hub_process = psutil.Process(hub.proc.pid)
            for round_, (fmt, target) in itertools.product(range(args.rounds), CASES):
                out = base / f"availability-{round_}.{fmt}"
                cpu = sum(hub_process.cpu_times()[:2])
                seconds = export(hub, base / "bench", fmt, since, out)
                cpu = sum(hub_process.cpu_times()[:2]) - cpu
                manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
                ok = subprocess.run([sys.executable, "-m", "estate.console.cli", "verify",
                                     str(out), "--hub-key", hub.fingerprint],
                                    capture_output=True).returncode == 0
                tables = ", ".join(f"{n} {c}" for n, c in manifest.get("tables", {}).items())
                print(f"availability {fmt} since {since}: {seconds:.2f} s (target <= "
                      f"{target:g} s; hub CPU {cpu:.2f} s), rows: hosts {manifest['rows']}"
                      f"{', ' + tables if tables else ''}; "
                      f"{out.stat().st_size / 2**20:.1f} MB, verify {'OK' if ok else 'FAILED'}")
        finally:
            hub.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
