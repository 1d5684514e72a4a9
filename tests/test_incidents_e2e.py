"""Incidents end to end: a real hub, simulated agents over SSH on loopback at three sites,
operators on the API and the watch. A site's agents killed make exactly one site outage
listing them and no host incidents; restored, it resolves after the hold; a flapping site is
one incident; a lone host is a host incident; a probe failing on several hosts of one site is
one shared-service incident; scope holds on every op and on the watch; an auditor cannot
acknowledge; an acknowledgement is audited and reaches another operator's watch live; a site
going down while the store is held up for longer than the outage window is still one outage.
On PostgreSQL, two hubs on one store run one correlator and a watch on either hears of it."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from estate.console._client import ApiFailure, HubConnection
from tests.harness import HubProcess, add_operator, run, wait_for
from tests.health_sites import (
    BOUND_S,
    FLAGS,
    PER_SITE,
    SITES,
    SimThread,
    incidents,
    of,
    online,
    start_agents,
    wait_for_outage,
)
from tests.multihub import WatchThread
from tests.stores import ON_POSTGRES, test_store_url


class Api:
    """Operators' API calls, each on a connection of its own, from the test's thread."""

    def __init__(self, hub: HubProcess, keys: Path) -> None:
        self.hub, self.keys = hub, keys

    def __call__(self, operator: str, op: str, **params: Any) -> Any:
        async def call() -> Any:
            conn = HubConnection(self.hub.address, operator, self.keys / operator,
                                 self.hub.fingerprint)
            await conn.connect()
            try:
                return await conn.request(op, **params)
            finally:
                await conn.close()
        return asyncio.run(call())

    def refused(self, operator: str, op: str, **params: Any) -> str:
        with pytest.raises(ApiFailure) as err:
            self(operator, op, **params)
        return err.value.code


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("incidents")
    hub = HubProcess(folder / "hub", FLAGS).start()
    sim = None
    watches: list[WatchThread] = []
    try:
        for name, role, agencies in (("ops", "admin", "all"), ("fiona", "staff", "Fire"),
                                     ("audrey", "auditor", "Fire"),
                                     ("hugh", "staff", "Health")):
            add_operator(hub, folder, name, role, agencies)
        watch = {name: WatchThread(hub, name, folder / name) for name in ("ops", "hugh")}
        watches = list(watch.values())
        for w in watches:
            w.start()
        sim = start_agents(hub, [s for s in SITES for _ in range(PER_SITE)])
        wait_for(lambda: online(hub.data, [i.agent_id for i in sim.idents]), BOUND_S, 0.2,
                 "every simulated agent online")
        yield {"hub": hub, "sim": sim, "api": Api(hub, folder), "watch": watch}
    finally:
        if sim is not None:
            sim.stop()
        hub.kill()


def _incident_events(watch: WatchThread) -> list[dict[str, Any]]:
    return [e["incident"] for e in list(watch.events) if e.get("type") == "incident"]


def test_a_killed_site_is_one_outage_scoped_acked_and_resolved(estate):
    hub, sim, api, watch = estate["hub"], estate["sim"], estate["api"], estate["watch"]
    agents = sim.at("Fire", "Station 1")
    sim.call(sim.sim.take_down, agents)
    wait_for_outage(hub, "site:Fire/Station 1")
    wait_for(lambda: of(hub.data, "site:Fire/Station 1")[0]["hosts"] == PER_SITE, BOUND_S,
             0.2, "every host of the site listed")
    [outage] = api("ops", "incidents")
    assert (outage["kind"], outage["site"], outage["state"]) == \
        ("site_outage", "Station 1", "open")
    detail = api("fiona", "incident", incident_id=outage["id"])
    assert sorted(h["agent_id"] for h in detail["hosts"]) == sorted(agents)
    assert detail["timeline"][0]["event"] == "opened"
    # Past the host grace (3 s) the site's hosts have no incidents of their own.
    time.sleep(5)
    assert [i["subject"] for i in incidents(hub.data)] == ["site:Fire/Station 1"]

    # Scope: Health's operator sees none of it, on any op or on the watch.
    assert api("hugh", "incidents", state="all") == []
    assert api.refused("hugh", "incident", incident_id=outage["id"]) == "not_found"
    assert api.refused("hugh", "incident_ack", incident_id=outage["id"]) == "not_found"
    assert api.refused("hugh", "incident_silence", incident_id=outage["id"],
                       minutes=5) == "not_found"
    # An auditor reads but does not act.
    assert [i["id"] for i in api("audrey", "incidents")] == [outage["id"]]
    assert api.refused("audrey", "incident_ack", incident_id=outage["id"]) == "forbidden"
    assert api.refused("fiona", "incident_silence", incident_id=outage["id"],
                       minutes=0) == "bad_request"
    # Staff acknowledge and silence: audited, and told live to another operator's watch.
    acked = api("fiona", "incident_ack", incident_id=outage["id"])
    assert acked["acked_by"] == "operator:fiona"
    silenced = api("fiona", "incident_silence", incident_id=outage["id"], minutes=60)
    assert silenced["silenced_by"] == "operator:fiona" and silenced["silenced_until"]
    wait_for(lambda: any(i["id"] == outage["id"] and i["silenced_by"] == "operator:fiona"
                         for i in _incident_events(watch["ops"])), BOUND_S, 0.2,
             "the silence on the admin's watch")
    with hub.store() as store:
        audit = [(r.action, r.actor, r.target) for r in store.audit_log(limit=200)
                 if r.action.startswith("incident_")]
    assert audit[:2] == [("incident_silence", "operator:fiona", f"incident:{outage['id']}"),
                         ("incident_ack", "operator:fiona", f"incident:{outage['id']}")]

    # Back on the air: the incident resolves after the hold, and stays one incident.
    sim.call(sim.sim.bring_up, agents)
    wait_for(lambda: of(hub.data, "site:Fire/Station 1")[0]["state"] == "resolved",
             BOUND_S, 0.2, "the outage resolved")
    assert len(of(hub.data, "site:Fire/Station 1")) == 1
    timeline = api("ops", "incident", incident_id=outage["id"])["timeline"]
    events = [e["event"] for e in timeline]
    assert events[0] == "opened" and events[-1] == "resolved"
    assert {"acknowledged", "silenced", "hosts_changed"} <= set(events)
    assert not [i for i in _incident_events(watch["hugh"]) if i["agency"] != "Health"]


def test_a_flapping_site_opens_one_incident(estate):
    hub, sim = estate["hub"], estate["sim"]
    agents = sim.at("Fire", "Station 12")
    subject = "site:Fire/Station 12"

    def affected() -> set[str | None]:
        """The untils of the incident's hosts, once the correlator listed them all."""
        found = of(hub.data, subject)
        if not found:
            return set()
        with hub.store() as store:
            detail = store.incident(found[0]["id"], None)
        hosts = detail["hosts"] if detail else []
        return {h["until"] is None for h in hosts} if len(hosts) == PER_SITE else set()

    # Down and back three times, each seen by the correlator, within the hold (6 s).
    for _ in range(3):
        sim.call(sim.sim.take_down, agents)
        wait_for(lambda: affected() == {True}, BOUND_S, 0.1, "the site down")
        sim.call(sim.sim.bring_up, agents)
        wait_for(lambda: affected() == {False}, BOUND_S, 0.1, "the site back")
    wait_for(lambda: of(hub.data, subject)[0]["state"] == "resolved", BOUND_S, 0.2,
             "the flapping site's incident resolved")
    assert len(of(hub.data, subject)) == 1
    with hub.store() as store:
        detail = store.incident(of(hub.data, subject)[0]["id"], None)
    events = [e["event"] for e in detail["timeline"]]
    assert events.count("opened") == 1 and events[-1] == "resolved"
    assert events.count("hosts_changed") + events.count("reopened") >= 2


def test_a_lone_host_is_a_host_incident_and_a_failing_probe_a_shared_service_one(estate):
    hub, sim, api, watch = estate["hub"], estate["sim"], estate["api"], estate["watch"]
    lone, *others = sim.at("Health", "Clinic")
    sim.call(sim.sim.take_down, [lone])
    wait_for(lambda: of(hub.data, f"host:{lone}"), BOUND_S, 0.2, "a host incident")
    [host] = of(hub.data, f"host:{lone}")
    assert (host["kind"], host["agent_id"], host["agency"]) == ("host_offline", lone, "Health")
    assert not of(hub.data, "site:Health/Clinic")

    sim.call(sim.sim.fail_probes, others, {"gateway"})
    subject = "service:Health/Clinic/gateway"
    wait_for(lambda: of(hub.data, subject), BOUND_S, 0.2, "a shared-service incident")
    [service] = of(hub.data, subject)
    assert service["title"] == "gateway (gateway 10.0.0.1) failing at Clinic"
    assert service["hosts"] == 3 and service["probe"] == "gateway"
    assert [i["id"] for i in api("hugh", "incidents", site="Clinic")] == \
        sorted([host["id"], service["id"]], reverse=True)
    wait_for(lambda: {i["id"] for i in _incident_events(watch["hugh"])} >=
             {host["id"], service["id"]}, BOUND_S, 0.2, "both on Health's watch")
    sim.call(sim.sim.fail_probes, others, set())
    sim.call(sim.sim.bring_up, [lone])
    wait_for(lambda: of(hub.data, subject)[0]["state"] == "resolved"
             and of(hub.data, f"host:{lone}")[0]["state"] == "resolved", BOUND_S, 0.2,
             "both resolved")


@contextmanager
def _presence_writes_held(hub: HubProcess) -> Iterator[None]:
    """The hub's writes of who is online, and its correlator's, held up from the test as a
    slow disk or another hub's long transaction would: on SQLite every write (the test holds
    the write lock), on PostgreSQL those to `agents` and `leases` (the test locks them)."""
    url = test_store_url(hub.data)
    if url is None:
        lite = sqlite3.connect(hub.data / "estate.db", timeout=30, isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            lite.execute("ROLLBACK")
            lite.close()
        return
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as pg:
        pg.execute("LOCK TABLE agents, leases IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            pg.rollback()


def test_a_site_going_down_while_the_store_is_held_up_is_still_one_outage(tmp_path):
    """Held up for longer than the outage window, the store records the site's agents
    offline, at the time they went, only once their window is over: the correlator still
    takes them for one site outage, not for a host incident each."""
    hub = HubProcess(tmp_path / "hub", FLAGS).start()
    sim = None
    try:
        sim = start_agents(hub, [SITES[1]] * PER_SITE)
        agents = sim.at(*SITES[1])
        wait_for(lambda: online(hub.data, agents), BOUND_S, 0.2, "every agent online")
        window_s = float(FLAGS[FLAGS.index("--outage-window") + 1])
        time.sleep(window_s)  # the correlator past its first window, in which none opens
        with _presence_writes_held(hub):
            time.sleep(1.5)  # a correlator pass waiting, from before the site went down
            sim.call(sim.sim.take_down, agents)
            time.sleep(window_s + 2)
        [outage] = wait_for_outage(hub, f"site:{SITES[1][0]}/{SITES[1][1]}")
        wait_for(lambda: of(hub.data, outage["subject"])[0]["hosts"] == PER_SITE, BOUND_S,
                 0.2, "every host of the site listed")
        time.sleep(2 * window_s)  # past every host's grace: none has an incident of its own
        assert [i["kind"] for i in incidents(hub.data)] == ["site_outage"]
    finally:
        if sim is not None:
            sim.stop()
        hub.kill()


@pytest.mark.skipif(not ON_POSTGRES, reason="several hubs share a PostgreSQL store (run "
                                            "with ESTATE_TEST_STORE=postgresql)")
def test_two_hubs_on_one_store_run_one_correlator(tmp_path):
    url = test_store_url(tmp_path / "a")
    assert url is not None
    extra = (*FLAGS, "--store", url, "--heartbeat", "0.5", "--hub-timeout", "3")
    hub_a = HubProcess(tmp_path / "a", (*extra, "--hub-name", "hub-a")).start()
    key = tmp_path / "hub-key"
    run("-m", "estate.inventory.hub.cli", "key", "export", "--out", str(key), "--data",
        str(tmp_path / "a"))
    run("-m", "estate.inventory.hub.cli", "key", "import", str(key), "--data",
        str(tmp_path / "b"))
    hub_b = HubProcess(tmp_path / "b", (*extra, "--hub-name", "hub-b")).start()
    sims: list[SimThread] = []
    watch = None
    try:
        hubs = {"hub-a": hub_a, "hub-b": hub_b}
        wait_for(lambda: [n for n, h in hubs.items() if "correlator running" in h.log()],
                 BOUND_S, 0.2, "a hub running the correlator")
        [leader] = [n for n, h in hubs.items() if "correlator running" in h.log()]
        other = hubs["hub-b" if leader == "hub-a" else "hub-a"]
        # The site's agents are on the hub that does not correlate; an operator watches there.
        add_operator(hub_a, tmp_path, "ops")
        watch = WatchThread(other, "ops", tmp_path / "ops")
        watch.start()
        sims.append(start_agents(other, [SITES[0]] * PER_SITE, admin=hub_a))
        agents = sims[0].at(*SITES[0])
        wait_for(lambda: online(tmp_path / "a", agents), BOUND_S, 0.2, "agents online")
        sims[0].call(sims[0].sim.take_down, agents)
        wait_for(lambda: of(tmp_path / "a", "site:Fire/Station 1"), BOUND_S, 0.2,
                 "the outage, correlated on the other hub")
        wait_for(lambda: _incident_events(watch), BOUND_S, 0.2, "the incident on the watch")
        assert len(incidents(tmp_path / "a")) == 1
        assert "correlator running" not in other.log()
        # The leader stops: it hands the lease over at once.
        hubs[leader].signal(15)
        wait_for(lambda: re.search("correlator running", other.log()), BOUND_S, 0.2,
                 "the other hub taking the correlator over")
    finally:
        for sim in sims:
            sim.stop()
        hub_a.kill()
        hub_b.kill()
