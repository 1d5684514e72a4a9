"""The estate overview's figures from the store (`Store.overview`): exact hourly shares from
presence history, hosts enrolled inside the window, revoked hosts left out, open incidents,
full disks, unsupported OS, the worst connectivity of online hosts, and scope."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest

from estate.inventory import simulate
from estate.inventory.health._correlate import Open
from estate.inventory.store import Incoming, Store, utcnow
from tests.stores import open_test_store

NOW = utcnow().replace(minute=0, second=0, microsecond=0)
H = timedelta(hours=1)


@pytest.fixture
def store(tmp_path):
    store = open_test_store(tmp_path)
    yield store
    store.close()


def _host(store: Store, agency: str, site: str, n: int, **os: str | None) -> str:
    token_id, secret, _ = store.create_token(agency, site, 1, timedelta(hours=1), "admin:test")
    agent_id = store.enrol(token_id, secret, f"ssh-ed25519 K{n}", f"SHA256:k{n}",
                           f"pc{n}")["agent_id"]
    report = simulate.fake_report(simulate.Identity(n, agent_id, None, agency, site),  # type: ignore[arg-type]
                                  1, 300.0, random.Random(n))
    report["system"]["os"].update({"product": None, **os})
    store.store_reports([Incoming(agent_id, report, b"{}", utcnow())])
    return agent_id


def _net(store: Store, agent_id: str, state: str) -> None:
    """A connectivity verdict as the hub's ingest writes it (`hosts.net`)."""
    store.db.execute("UPDATE hosts SET net = ? WHERE agent_id = ?",
                     (json.dumps({"state": state, "rtt_ms": 12.0, "worst": None,
                                  "failing": [], "at": "2026-01-01T00:00:00Z"}), agent_id))


def test_hourly_shares_counts_and_scope(store):
    a = _host(store, "Fire", "Station 1", 1, name="Ubuntu", version="22.04")
    b = _host(store, "Fire", "Station 1", 2, name="Windows 7 Professional", version="6.1")
    new = _host(store, "Fire", "Station 1", 3, name="Ubuntu", version="22.04")
    gone = _host(store, "Fire", "Station 1", 4, name="Windows 7", version="6.1")
    other = _host(store, "Schools", "Nord", 5, name="Ubuntu", version="22.04")
    for agent in (a, b, gone, other):
        store.set_presence(agent, True, NOW - 30 * H)
    # b: offline for the second half of hour 12 (the 13th point), back online after.
    store.set_presence(b, False, NOW - 12 * H + timedelta(minutes=30))
    store.set_presence(b, True, NOW - 11 * H)
    # new: enrolled 2 hours ago, online since: unknown before its first record.
    store.set_presence(new, True, NOW - 2 * H)
    # other: offline since 6 hours ago (and now).
    store.set_presence(other, False, NOW - 6 * H)
    store.revoke_agent(gone, "admin:test")
    store.db.execute("UPDATE hosts SET fullest_volume_percent = 95.5 WHERE agent_id = ?", (a,))
    store.db.execute("UPDATE hosts SET fullest_volume_percent = 90.0 WHERE agent_id = ?", (b,))
    _net(store, a, "degraded")
    _net(store, other, "down")  # offline: its last verdict does not count
    assert store.take_lease("correlator", "test", 60, utcnow())
    store.apply_health([Open("site_outage", "site:Fire/Station 1", "Fire", "Station 1", None,
                             None, "Station 1 offline", [(a, "2026-01-01")], {})],
                       "test", utcnow())

    answer = store.overview(None, NOW)
    (fire, schools) = answer["agencies"]
    assert [fire["agency"], schools["agency"]] == ["Fire", "Schools"]
    (station,) = fire["sites"]
    assert station["site"] == "Station 1"
    assert {k: station[k] for k in ("hosts", "online", "stale", "unsupported_os",
                                    "disks_over_90", "open_incidents", "worst_net")} == {
        "hosts": 3, "online": 3, "stale": 0, "unsupported_os": 1, "disks_over_90": 1,
        "open_incidents": 1, "worst_net": "degraded"}
    assert station["online_share"] == 1.0
    spark = station["sparkline"]
    assert len(spark) == 24
    # Two hosts known for 22 hours, all online but for b's half hour; new joins for the last 2.
    assert spark[:12] == [1.0] * 12
    assert spark[12] == 0.75  # (1 h + 0.5 h) of 2 h
    assert spark[13:22] == [1.0] * 9 and spark[22:] == [1.0, 1.0]
    assert schools["sparkline"] == [1.0] * 18 + [0.0] * 6
    assert schools["online_share"] == 0.0 and schools["worst_net"] is None
    assert {k: v for k, v in fire.items() if k not in ("agency", "sites")} == \
        {k: v for k, v in station.items() if k != "site"}
    estate = answer["estate"]
    assert (estate["hosts"], estate["online"], estate["open_incidents"]) == (4, 3, 1)
    assert estate["sparkline"][12] == round(2.5 / 3, 3)
    assert estate["sparkline"][-1] == round(3 / 4, 3)
    # Scope: Schools' operator sees Schools only.
    scoped = store.overview(["Schools"], NOW)
    assert [x["agency"] for x in scoped["agencies"]] == ["Schools"]
    assert scoped["estate"]["open_incidents"] == 0 and scoped["estate"]["hosts"] == 1
    assert store.overview([], NOW)["agencies"] == []
