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


def enrol_identities(url: str, n: int) -> list[simulate.Identity]:
    """N simulated agents, each with its own ed25519 key, enrolled through the store `url`
    (fast, no SSH: what the hub's enrol command stores), spread over the partnership."""
    import asyncssh

    store = open_store(url, None, durable=False)  # seeding only; the hub runs durable
    try:
        places = simulate.placements(n)
        tokens = {where: store.create_token(*where, n, timedelta(hours=6), "bench")
                  for where in sorted(set(places))}
        idents = []
        for i, where in enumerate(places):
            key = asyncssh.generate_private_key("ssh-ed25519")
            token_id, secret, _ = tokens[where]
            enrolled = store.enrol(token_id, secret,
                                   key.export_public_key("openssh").decode().strip(),
                                   key.get_fingerprint("sha256"), f"sim-{i:06d}")
            idents.append(simulate.Identity(i, enrolled["agent_id"], key, *where))
        return idents
    finally:
        store.close()
