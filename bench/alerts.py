"""Benchmark: from an incident committed to its webhook received (target <= 5 s).

A real hub (`estate-hub serve --alerts FILE`, SQLite, its correlator off so only the incidents
written here exist) with a webhook channel to an HTTP server in this process. Each round
commits one site-outage incident and its `opened` event to the store from this process, as the
correlator does (one transaction), notes the time just after the commit, and waits for the
POST: the figure is the dispatcher's wake-up (it polls every second), its pass and the
sender's HTTP POST. Rounds are spaced so each is measured alone; --hosts seeds that many hosts
first, so the store is not an empty one.

Usage: python bench/alerts.py [--rounds 20] [--hosts 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.alert_servers import WebhookServer
from tests.harness import HubProcess, wait_for

RULES = """
[channels.hook]
type = "webhook"
url = "{url}"

[[rules]]
name = "outages"
condition = "site_outage"
channels = ["hook"]
"""


def _seed(folder: Path, hosts: int) -> None:
    """Enrolled agents with a report each, through the store's own API."""
    import copy
    import json

    from estate.agent.collect import collect_report
    from estate.inventory.store import Incoming, Store

    report, _ = collect_report()
    store = Store.open(folder, durable=False)
    try:
        token_id, secret, _ = store.create_token("Fire", "Station 1", hosts,
                                                 timedelta(days=1), "admin:bench")
        now = datetime.now(timezone.utc)
        batch = []
        for n in range(hosts):
            agent = store.enrol(token_id, secret, f"ssh-ed25519 AAAAbench{n}",
                                f"SHA256:bench{n}", f"pc-{n}")["agent_id"]
            r = copy.deepcopy(report)
            r["agent"]["id"], r["report_id"] = agent, f"{agent}:1:1"
            r["system"]["hostname"] = f"pc-{n}"
            batch.append(Incoming(agent, r, json.dumps(r).encode(), now))
            if len(batch) == 500:
                store.store_reports(batch)
                batch = []
        if batch:
            store.store_reports(batch)
    finally:
        store.close()


def _commit_incident(folder: Path, n: int) -> float:
    """One open site outage and its `opened` event, committed; the time after the commit."""
    from estate.inventory.store import Store, iso

    store = Store.open(folder)
    try:
        at = iso(datetime.now(timezone.utc))
        with store._transaction():
            incident = store.db.execute(
                "INSERT INTO incidents (kind, subject, agency, site, title, state, opened_at, "
                "updated_at, hosts) VALUES ('site_outage', ?, 'Fire', ?, ?, 'open', ?, ?, 40) "
                "RETURNING id", (f"site:Fire/Bench {n}", f"Bench {n}", f"Site outage at Bench {n}",
                                 at, at)).fetchone()[0]
            store.db.execute("INSERT INTO incident_events (incident_id, at, event, detail) "
                             "VALUES (?, ?, 'opened', '{}')", (incident, at))
        return time.monotonic()
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--hosts", type=int, default=2000)
    args = parser.parse_args()
    server = WebhookServer()
    received: list[float] = []

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hub"
        folder.mkdir(mode=0o700)
        if args.hosts:
            started = time.monotonic()
            _seed(folder, args.hosts)
            print(f"seeded {args.hosts} hosts in {time.monotonic() - started:.1f} s")
        rules = Path(tmp) / "rules.toml"
        rules.write_text(RULES.format(url=server.url()))
        hub = HubProcess(folder, ("--alerts", str(rules), "--no-incidents")).start()
        try:
            # The dispatcher's first pass marks where it tells from: wait for it.
            wait_for(lambda: _cursors(folder), 60, 0.2, "the dispatcher running")
            for n in range(args.rounds):
                before = len(server.posts)
                committed = _commit_incident(folder, n)
                deadline = time.monotonic() + 30
                while len(server.posts) == before and time.monotonic() < deadline:
                    time.sleep(0.005)
                if len(server.posts) == before:
                    raise SystemExit(f"round {n}: no webhook within 30 s")
                received.append(time.monotonic() - committed)
                time.sleep(0.3)  # rounds apart: each measured on its own
        finally:
            hub.signal(15)
            server.close()
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    print(f"incident committed -> webhook received, {len(received)} rounds: "
          f"median {statistics.median(received):.2f} s, p90 "
          f"{sorted(received)[int(0.9 * (len(received) - 1))]:.2f} s, max "
          f"{max(received):.2f} s (target <= 5 s)")


def _cursors(folder: Path) -> bool:
    from estate.inventory.store import Store

    store = Store.open(folder)
    try:
        return "incident_events" in store.alert_cursors()
    finally:
        store.close()


if __name__ == "__main__":
    main()
