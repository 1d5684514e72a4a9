"""Seeding a hub's store for benchmarks: enrolled agents with realistic reports, fast."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from estate.inventory import simulate
from estate.inventory.store import Incoming, open_store, utcnow


def seed(data: Path, n: int, url: str | None = None) -> None:
    """N enrolled agents with one report each, written through the store (fast, no SSH):
    the SQLite store in `data`, or the store `url` names."""
    store = open_store(url, data, durable=False)  # seeding only; the hub runs durable
    places = simulate.placements(n)
    tokens = {}
    for agency, site in sorted(set(places)):
        tokens[(agency, site)] = store.create_token(agency, site, n, timedelta(hours=1),
                                                    "bench")
    batch = []
    for i, (agency, site) in enumerate(places):
        token_id, secret, _ = tokens[(agency, site)]
        enrolled = store.enrol(token_id, secret, f"ssh-ed25519 bench{i}", f"SHA256:bench{i}",
                               None)
        ident = simulate.Identity(i, enrolled["agent_id"], None, agency, site)  # type: ignore[arg-type]
        report = simulate.fake_report(ident, 1, 300.0)
        batch.append(Incoming(ident.agent_id, report, b"{}", utcnow()))
        if len(batch) == 500:
            store.store_reports(batch)
            batch = []
    if batch:
        store.store_reports(batch)
    store.close()
