"""Benchmark: how many bytes a day of reports adds to the store.

Simulates one UTC day of N hosts (default 1,000) reporting every 5 minutes (288 reports each)
through the store's own `store_reports`, in batches, `received_at` stepping through the day:
no SSH, this measures bytes. Bodies are the simulator's (`estate.inventory.simulate`),
gzip-compressed as the agent sends them, with the package list only in a host's first report;
probe latencies and health figures vary from report to report, and a few percent of hosts
change during the day (half their state, half a package). Each host's first report, with
its package list, is stored the evening before and not counted: the day measured is a day
of a hub that has been running.

Prints the store's growth per 1,000 hosts for each simulated day (SQLite: the file and its
WAL after a checkpoint; PostgreSQL: `pg_database_size` before and after, with a plain VACUUM
every simulated hour standing in for autovacuum) and reports/s of the store calls. The first
day also grows what every report updates (the hosts table, and on PostgreSQL the room its
old row versions take until vacuumed) to its working size; the last day (`--days`, default 2)
is the steady state the target is for. With `--old`, the same on a fresh store with every
report keeping its full body (the behaviour before samples), for comparison.

Usage: python bench/store_growth.py [--hosts 1000] [--days 2] [--store URL] [--old]
       (URL: sqlite:///PATH, or postgresql://... for an empty database; default: a temporary
       SQLite store)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from estate.inventory import simulate
from estate.inventory.report import make_report_id
from estate.inventory.store import Incoming, Store, StoreUrl, open_store

DAY = datetime(2026, 12, 1, tzinfo=timezone.utc)
INTERVAL_S = 300
TARGET_BYTES = 50 * 10**6  # per 1,000 hosts per day (issue 13)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--store", metavar="URL", help="sqlite:///PATH or postgresql://...")
    parser.add_argument("--changing", type=float, default=0.04,
                        help="share of hosts that change during the day (default 0.04)")
    parser.add_argument("--batch", type=int, default=100, help="reports per store call")
    parser.add_argument("--days", type=int, default=2,
                        help="simulated days; the last is the steady state (default 2)")
    parser.add_argument("--old", action="store_true",
                        help="also measure every report keeping its body (before compact rows)")
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory(prefix="estate-growth-") as tmp:
        url = args.store or f"sqlite://{tmp}/compact.db"
        runs = [("samples, one body a host a day", url, False)]
        if args.old:
            old_url = url if url.startswith("postgresql") else f"sqlite://{tmp}/old.db"
            runs.append(("every report keeps its body (before)", old_url, True))
        for label, store_url, every_body in runs:
            grown, reports, seconds = measure(store_url, args.hosts, args.changing, args.batch,
                                              every_body, args.days)
            per_day = reports // args.days
            for day, size in enumerate(grown, start=1):
                per_1000 = size * 1000 / args.hosts
                verdict = "" if every_body or day < args.days else \
                    f" (target <= {TARGET_BYTES / 1e6:.0f} MB: " \
                    f"{'met' if per_1000 <= TARGET_BYTES else 'NOT met'})"
                print(f"{label}, day {day}: {per_1000 / 1e6:.1f} MB per 1,000 hosts per "
                      f"day{verdict}, {size / per_day:.0f} bytes/report")
            print(f"{label}: {reports / seconds:.0f} reports/s ({reports} reports)")


def measure(url: str, hosts: int, changing: float, batch: int, every_body: bool,
            days: int = 2) -> tuple[list[int], int, float]:
    """Simulated days on the store at `url`: (bytes grown each day, reports, seconds
    storing). The first day also grows the tables every report updates (hosts) to their
    working size; the second is a day of a store in its steady state."""
    if every_body:
        # Every report keeps its body, as before compact rows: the store's one decision,
        # replaced for this run only.
        from estate.inventory.store import _hosts

        _hosts._keeps_body = lambda *_: True  # type: ignore[assignment]
    store = open_store(url, durable=False)  # bytes do not depend on fsync; speed does
    rng = random.Random(13)  # a repeatable day
    templates = _enrol(store, hosts, "old" if every_body else "new")
    offsets = sorted((rng.uniform(0, INTERVAL_S), i) for i in range(hosts))
    # The evening before: each host's first report, with its package list.
    evening = DAY - timedelta(seconds=INTERVAL_S)
    _store(store, [_incoming(templates[i], 0, evening + timedelta(seconds=o), rng)
                   for o, i in offsets], batch)
    store.close()
    grown: list[int] = []
    ticks = 86400 // INTERVAL_S
    seconds, reports = 0.0, 0
    for day in range(days):
        before = _size(url)
        store = open_store(url, durable=False)
        changes = {i: (rng.randrange(ticks), rng.random() < 0.5)
                   for i in rng.sample(range(hosts), round(hosts * changing))}
        pending: list[Incoming] = []
        for tick in range(ticks):
            if url.startswith("postgresql") and tick % (3600 // INTERVAL_S) == 0:
                _vacuum(url)
            for offset, i in offsets:
                if changes.get(i, (None,))[0] == tick:
                    _change(templates[i], changes[i][1], rng)
                received = DAY + timedelta(days=day, seconds=tick * INTERVAL_S + offset)
                pending.append(_incoming(templates[i], day * ticks + tick + 1, received, rng))
                if len(pending) == batch:
                    seconds += _store(store, pending, batch)
                    reports += len(pending)
                    pending = []
        if pending:
            seconds += _store(store, pending, batch)
            reports += len(pending)
        # The hub's hourly prune and pack, once the day is over (nothing has expired yet):
        # on PostgreSQL the finished day's samples index is packed.
        store.prune_reports(DAY - timedelta(days=30), DAY - timedelta(days=400))
        store.pack_history()
        store.close()
        grown.append(_size(url) - before)
    return grown, reports, seconds


def _enrol(store: Store, n: int, run: str) -> list[dict[str, Any]]:
    """N enrolled hosts, each with the report it sends (its package list still unsent);
    `run` keeps their keys apart from another run's in the same database."""
    places = simulate.placements(n)
    tokens = {place: store.create_token(*place, n, timedelta(hours=1), "bench")
              for place in sorted(set(places))}
    templates = []
    for i, place in enumerate(places):
        token_id, secret, _ = tokens[place]
        key = f"growth-{run}-{i}"
        agent_id = store.enrol(token_id, secret, f"ssh-ed25519 {key}", f"SHA256:{key}",
                               None)["agent_id"]
        ident = simulate.Identity(i, agent_id, None, *place)  # type: ignore[arg-type]
        templates.append(simulate.fake_report(ident, 0, float(INTERVAL_S), random.Random(i)))
    return templates


def _incoming(template: dict[str, Any], seq: int, received: datetime,
              rng: random.Random) -> Incoming:
    """The template's next report, received at `received`: new id and times, new figures."""
    agent_id = template["agent"]["id"]
    probe = template["connectivity"]["probes"][0]
    boot = int((DAY - timedelta(days=3)).timestamp())  # as long as the agent's id is
    report = {
        **template, "report_id": make_report_id(agent_id, boot, seq),
        "collected_at": (received - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "connectivity": {**template["connectivity"],
                         "probes": [{**probe, "ok": rng.random() > 0.03,
                                     "latency_ms": round(rng.uniform(1, 40), 2)}]},
        "health": {**template["health"], "cpu_percent": round(rng.uniform(0, 60), 1),
                   "memory_percent": round(rng.uniform(20, 90), 1)},
    }
    # Like the agent: the package list only until the hub has it.
    template["software"] = {**template["software"], "packages": None}
    body = gzip.compress(json.dumps(report, separators=(",", ":")).encode(), 6)
    return Incoming(agent_id, report, body, received)


def _change(template: dict[str, Any], software: bool, rng: random.Random) -> None:
    """A host changes: a package updated (its new list sent once), or more memory."""
    if software:
        packages = [{"name": "estate-bench-update", "version": "2.0", "arch": None,
                     "publisher": None}]
        template["software"] = {**template["software"], "hash": f"{rng.getrandbits(256):064x}",
                                "packages": packages, "count": 1}
    else:
        hardware = template["hardware"]
        memory = {**hardware["memory"], "total_bytes": hardware["memory"]["total_bytes"] * 2}
        template["hardware"] = {**hardware, "memory": memory}


def _store(store: Store, batch: list[Incoming], size: int) -> float:
    """Store in batches of `size`; the seconds the store calls took."""
    started = time.perf_counter()
    for at in range(0, len(batch), size):
        results = store.store_reports(batch[at:at + size])
        assert all(r == "stored" for r in results), results
    return time.perf_counter() - started


def _vacuum(url: str) -> None:
    """What autovacuum does on a real day, and cannot on one squeezed into minutes: free the
    host rows each report's update left behind, for the next updates to reuse."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM")


def _size(url: str) -> int:
    """The store's bytes on disk: SQLite's file and WAL after a checkpoint, or PostgreSQL's
    database size."""
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url) as conn:
            return int(conn.execute("SELECT pg_database_size(current_database())")
                       .fetchone()[0])
    path = StoreUrl.parse(url).path
    assert path is not None
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


if __name__ == "__main__":
    sys.exit(main())
