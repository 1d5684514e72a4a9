"""The incident correlator on a real store, pass by pass at chosen times: site outages told
apart from lone hosts, shared services, hysteresis (a flap is one incident, a recurrence
soon after resolution reopens it), the lease, scope, acks and pruning."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from estate.inventory import simulate
from estate.inventory.health._correlate import Correlator, Thresholds
from estate.inventory.store import Incoming, Store
from tests.stores import open_test_store

T0 = datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc)
HUB = "hub-a"
SITES = [("Fire", "Station 1"), ("Fire", "Station 12"), ("Health", "Clinic")]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Estate:
    """A store with four hosts at each of three sites, and a correlator run pass by pass."""

    def __init__(self, store: Store, thresholds: Thresholds | None = None) -> None:
        self.store = store
        self.t = thresholds or Thresholds()
        self.correlator = Correlator(self.t)
        self.sites: dict[tuple[str, str], list[str]] = {}
        for agency, site in SITES:
            token_id, secret, _ = store.create_token(agency, site, 4, timedelta(hours=1),
                                                     "admin:test")
            ids = []
            for n in range(4):
                key = f"ssh-ed25519 {agency}{site}{n}"
                ids.append(store.enrol(token_id, secret, key, f"SHA256:{key}",
                                       f"pc-{n}")["agent_id"])
            self.sites[(agency, site)] = ids
        for ids in self.sites.values():
            for agent_id in ids:
                store.set_presence(agent_id, True, at(0))
        self.seq = 0

    def site(self, i: int) -> list[str]:
        return self.sites[SITES[i]]

    def presence(self, agent_ids: list[str], online: bool, seconds: float) -> None:
        for agent_id in agent_ids:
            self.store.set_presence(agent_id, online, at(seconds))

    def probes(self, agent_ids: list[str], failing: set[str], seconds: float) -> None:
        for agent_id in agent_ids:
            agency, site = next(k for k, v in self.sites.items() if agent_id in v)
            self.seq += 1
            ident = simulate.Identity(self.seq, agent_id, None, agency, site)  # type: ignore[arg-type]
            report = simulate.fake_report(ident, self.seq, 300.0, failing=failing)
            report["report_id"] = f"{agent_id}:1:{self.seq}"
            report["collected_at"] = at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert self.store.store_reports([Incoming(agent_id, report,
                                                      json.dumps(report).encode(),
                                                      at(seconds))]) == ["stored"]

    def fail_invented(self, agent_ids: list[str], names: list[str], seconds: float) -> None:
        """Reports whose only probes are `names`, all failing (tcp, a target each)."""
        for agent_id in agent_ids:
            agency, site = next(k for k, v in self.sites.items() if agent_id in v)
            self.seq += 1
            ident = simulate.Identity(self.seq, agent_id, None, agency, site)  # type: ignore[arg-type]
            report = simulate.fake_report(ident, self.seq, 300.0, failing=set())
            report["connectivity"]["probes"] = [
                {"name": name, "kind": "tcp", "target": f"{name}.example:445", "ok": False,
                 "latency_ms": None, "answers": [], "error": "refused", "source": "local"}
                for name in names]
            report["report_id"] = f"{agent_id}:1:{self.seq}"
            report["collected_at"] = at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert self.store.store_reports([Incoming(agent_id, report,
                                                      json.dumps(report).encode(),
                                                      at(seconds))]) == ["stored"]

    def run(self, seconds: float, holder: str = HUB) -> list[int]:
        """One correlator pass at T0 + seconds."""
        now = at(seconds)
        if not self.store.take_lease("correlator", holder, 3 * self.t.tick_s, now):
            self.correlator.reset()
            return []
        inputs = self.store.health_inputs(self.correlator.net_position,
                                          timedelta(seconds=self.t.hold_s), now)
        return self.store.apply_health(self.correlator.plan(inputs, now), holder, now)

    def incidents(self, state: str = "all") -> list[dict]:
        return [i.as_dict() for i in self.store.incidents(None, state, now=at(10**6))]

    def timeline(self, incident_id: int) -> list[str]:
        detail = self.store.incident(incident_id, None)
        assert detail is not None
        return [e["event"] for e in detail["timeline"]]


@pytest.fixture()
def estate(tmp_path):
    store = open_test_store(tmp_path)
    yield Estate(store)
    store.close()


def test_a_site_going_offline_is_one_outage_listing_its_hosts_and_no_host_incidents(estate):
    estate.run(0)  # the correlator starts: no incident opens within its first window
    down = estate.site(0)
    estate.presence(down, False, 300)
    estate.run(301)
    [outage] = estate.incidents()
    assert (outage["kind"], outage["subject"], outage["state"], outage["hosts"]) == \
        ("site_outage", "site:Fire/Station 1", "open", 4)
    assert outage["title"] == "Site outage at Station 1"
    detail = estate.store.incident(outage["id"], None)
    assert sorted(h["agent_id"] for h in detail["hosts"]) == sorted(down)
    assert {h["until"] for h in detail["hosts"]} == {None}
    # Long past the host grace: its hosts get no incidents of their own.
    estate.run(600)
    assert [i["kind"] for i in estate.incidents()] == ["site_outage"]
    # Back; resolved only once clear for the hold (300 s), timed from the last return.
    estate.presence(down[:2], True, 700)
    estate.run(701)
    estate.presence(down[2:], True, 750)
    estate.run(751)
    estate.run(1049)
    assert estate.incidents()[0]["state"] == "open"
    estate.run(1051)
    [outage] = estate.incidents()
    assert outage["state"] == "resolved" and outage["resolved_at"] is not None
    assert estate.timeline(outage["id"]) == ["opened", "hosts_changed", "hosts_changed",
                                             "resolved"]


def test_a_pass_that_comes_late_still_sees_a_site_go_down_together(estate):
    """The store thread busy for longer than the window (a slow disk): the first pass to
    read the hosts offline comes after their window is over. Still one outage, not a host
    incident each."""
    estate.run(0)
    down = estate.site(0)
    estate.presence(down, False, 300)
    estate.run(300 + 2 * estate.t.window_s)
    [outage] = estate.incidents()
    assert (outage["kind"], outage["subject"], outage["hosts"]) == \
        ("site_outage", "site:Fire/Station 1", 4)
    estate.run(300 + 4 * estate.t.window_s)
    assert [i["kind"] for i in estate.incidents()] == ["site_outage"]
    # Read late too, and further apart than the window: lone hosts, each after its grace.
    estate.presence(estate.site(1)[:2], False, 1000)
    estate.presence(estate.site(1)[2:], False, 1000 + 2 * estate.t.window_s)
    estate.run(1000 + 2 * estate.t.window_s + 1)
    assert sorted(i["kind"] for i in estate.incidents()) == ["host_offline"] * 2 + \
        ["site_outage"]
    # What a pass first read offline long after it went is news for a window only.
    estate.run(1000 + 5 * estate.t.window_s)
    assert sorted(i["kind"] for i in estate.incidents()) == \
        ["host_offline"] * 4 + ["site_outage"]


def test_a_site_gone_in_the_correlators_first_window_is_an_outage_once_one_may_open(estate):
    """Nothing opens in the correlator's first window (agents still reconnecting after a
    restart); a site that went down then and stays down is an outage after it, even when
    the first pass allowed to open comes more than a window after the site went."""
    estate.run(0)
    down = estate.site(2)
    estate.presence(down, False, 1)
    estate.run(2)
    assert estate.incidents() == []
    estate.run(estate.t.window_s + 5)
    assert [(i["kind"], i["hosts"]) for i in estate.incidents()] == [("site_outage", 4)]


def test_a_site_whose_agents_do_not_come_back_after_a_hub_restart_is_an_outage(tmp_path):
    """A restarted hub marks the agents its last run held offline as it starts, before its
    correlator's first (whole) read: those that stay offline past the first window are
    their site's outage; a host offline since long before is a host incident."""
    store = open_test_store(tmp_path)
    try:
        estate = Estate(store)
        estate.presence(estate.site(0)[:1], False, 100)
        estate.presence(estate.site(1), False, 1000)  # marked offline at the restart
        estate.run(1001)  # the restarted hub's correlator: its first pass
        estate.presence(estate.site(1)[3:], True, 1010)  # one of them came back
        estate.run(1011)
        estate.run(1001 + estate.t.window_s + 5)
        assert sorted((i["kind"], i["subject"], i["hosts"]) for i in estate.incidents()) == [
            ("host_offline", f"host:{estate.site(0)[0]}", 1),
            ("site_outage", "site:Fire/Station 12", 3)]
    finally:
        store.close()


def test_a_flapping_site_is_one_incident_and_a_recurrence_soon_after_reopens_it(estate):
    estate.run(0)
    down = estate.site(1)
    for start in (300, 400, 500):  # down, back within the hold, down again...
        estate.presence(down, False, start)
        estate.run(start + 1)
        estate.presence(down, True, start + 50)
        estate.run(start + 51)
    [flap] = estate.incidents()
    assert flap["state"] == "open"
    events = estate.timeline(flap["id"])
    assert events[0] == "opened" and set(events[1:]) == {"hosts_changed"}
    estate.run(551 + 300)
    assert estate.incidents()[0]["state"] == "resolved"
    # Down again within the hold of the resolution: the same incident, reopened.
    estate.presence(down, False, 900)
    estate.run(901)
    [again] = estate.incidents()
    assert (again["id"], again["state"]) == (flap["id"], "open")
    assert estate.timeline(flap["id"])[-2:] == ["resolved", "reopened"]
    # Resolved again, and down long after: a new incident.
    estate.presence(down, True, 950)
    estate.run(951)
    estate.run(1300)
    estate.presence(down, False, 2000)
    estate.run(2001)
    assert [(i["id"] == flap["id"], i["state"]) for i in estate.incidents()] == \
        [(False, "open"), (True, "resolved")]


def test_a_lone_host_offline_past_the_grace_is_a_host_incident(estate):
    estate.run(0)
    lone = estate.site(2)[0]
    estate.presence([lone], False, 300)
    estate.run(301)
    assert estate.incidents() == []  # maybe the start of a site outage: wait the grace
    estate.run(419)
    assert estate.incidents() == []
    estate.run(421)
    [host] = estate.incidents()
    assert (host["kind"], host["subject"], host["agent_id"], host["title"]) == \
        ("host_offline", f"host:{lone}", lone, f"{lone} offline")
    estate.presence([lone], True, 500)
    estate.run(501)
    estate.run(801)
    assert estate.incidents()[0]["state"] == "resolved"


def test_too_few_hosts_or_too_small_a_share_is_no_site_outage(tmp_path):
    store = open_test_store(tmp_path)
    estate = Estate(store, Thresholds(min_hosts=3, share=0.8))
    estate.run(0)
    estate.presence(estate.site(0)[:3], False, 300)  # 3 of 4 = 0.75 < 0.8
    estate.run(301)
    assert estate.incidents() == []
    estate.presence(estate.site(0)[3:], False, 310)
    estate.run(311)
    assert [i["kind"] for i in estate.incidents()] == ["site_outage"]
    # Hosts gone at different times, further apart than the window: lone hosts.
    estate.presence(estate.site(1)[:2], False, 400)
    estate.presence(estate.site(1)[2:], False, 600)
    estate.run(601)
    estate.run(721)
    kinds = sorted(i["kind"] for i in estate.incidents())
    assert kinds == ["host_offline"] * 4 + ["site_outage"]


def test_hosts_of_one_site_failing_the_same_probe_are_one_shared_service_incident(estate):
    estate.run(0)
    hosts = estate.site(1)
    estate.probes(hosts, set(), 10)
    estate.probes(hosts[:2], {"file-server"}, 300)
    estate.probes(estate.site(0)[:1], {"file-server"}, 300)  # another site's host
    estate.run(301)
    assert estate.incidents() == []  # two hosts: fewer than --shared-min-hosts
    estate.probes(hosts[2:3], {"file-server"}, 310)
    estate.run(311)
    [service] = estate.incidents()
    assert (service["kind"], service["subject"], service["probe"], service["hosts"]) == \
        ("shared_service", "service:Fire/Station 12/file-server", "file-server", 3)
    assert service["title"] == "file-server (tcp fs01:445) failing at Station 12"
    # The probe passes again on one: below the threshold, resolved after the hold.
    estate.probes(hosts[:1], set(), 400)
    estate.run(401)
    assert estate.incidents()[0]["state"] == "open"
    estate.run(702)
    assert estate.incidents()[0]["state"] == "resolved"


def test_invented_probe_names_open_at_most_the_cap_of_shared_services_per_site(tmp_path,
                                                                              caplog):
    """Hostile agents of a site reporting new failing probe names every report: at most
    --shared-max-per-site incidents open there (the probes failing on the most hosts first),
    the episode logged and audited once; other sites keep their own room."""
    assert Thresholds().shared_max_per_site == 8
    store = open_test_store(tmp_path)
    estate = Estate(store, Thresholds(shared_max_per_site=2))
    caplog.set_level("WARNING", logger="estate.hub")
    estate.run(0)
    hostile = estate.site(1)
    estate.fail_invented(hostile[:3], ["svc-a", "svc-b", "svc-c", "svc-d"], 300)
    estate.fail_invented(hostile[3:], ["svc-c"], 300)  # svc-c fails on all four
    estate.fail_invented(estate.site(0)[:3], ["printer"], 300)
    estate.run(301)

    def open_services(site: str) -> list[str]:
        return sorted(i["probe"] for i in estate.incidents("open") if i["site"] == site)

    assert open_services("Station 12") == ["svc-a", "svc-c"]
    assert open_services("Station 1") == ["printer"]

    def capped() -> list[tuple]:
        return [(r.actor, r.target, json.loads(r.detail)) for r in
                store.audit_log(1000, action="incidents_capped")]

    assert capped() == [("hub", "site:Fire/Station 12",
                         {"open": 2, "held_back": 2, "probes": ["svc-b", "svc-d"]})]
    # New names every report: nothing more opens, nothing more is logged or audited.
    for n, second in enumerate(range(310, 400, 10)):
        estate.fail_invented(hostile[:3], [f"x{n}-{k}" for k in range(16)], second)
        estate.run(second + 1)
    assert open_services("Station 12") == ["svc-a", "svc-c"]
    assert len(capped()) == 1
    warnings = [r.getMessage() for r in caplog.records if "shared-service" in r.getMessage()]
    assert len(warnings) == 1 and '"Station 12"' in warnings[0] and '"Fire"' in warnings[0]
    # All pass again: resolved after the hold; the next flood is a new episode.
    estate.fail_invented(estate.site(1), [], 400)
    estate.run(401)
    estate.run(702)
    assert open_services("Station 12") == []
    estate.fail_invented(hostile[:3], ["y1", "y2", "y3"], 2000)
    estate.run(2001)
    assert open_services("Station 12") == ["y1", "y2"]
    assert [d["probes"] for _, _, d in capped()] == [["y3"], ["svc-b", "svc-d"]]
    store.close()


def test_only_the_lease_holder_correlates_and_a_lapsed_lease_passes_on(estate):
    store = estate.store
    assert store.take_lease("correlator", "hub-a", 15, at(0))
    assert not store.take_lease("correlator", "hub-b", 15, at(10))
    assert store.take_lease("correlator", "hub-a", 15, at(10))  # renewed to 25
    assert not store.take_lease("correlator", "hub-b", 15, at(24))
    assert store.take_lease("correlator", "hub-b", 15, at(26))  # lapsed: taken
    store.release_lease("correlator", "hub-a")  # not its own: nothing happens
    assert not store.take_lease("correlator", "hub-a", 15, at(27))
    store.release_lease("correlator", "hub-b")
    assert store.take_lease("correlator", "hub-a", 15, at(28))
    # A plan from a hub that no longer holds the lease writes nothing.
    estate.run(30)
    estate.presence(estate.site(0), False, 300)
    correlator = Correlator(estate.t)
    correlator.leading_since = at(0)
    plan = correlator.plan(store.health_inputs(None, timedelta(seconds=300), at(301)), at(301))
    assert plan and store.apply_health(plan, "hub-b", at(301)) == []
    assert estate.incidents() == []


def test_an_auditor_acking_or_silencing_is_refused_and_the_refusal_audited(estate):
    import json as json_module

    from estate.inventory.hub._api import OperatorApi

    estate.run(0)
    estate.presence(estate.site(0), False, 300)
    estate.run(301)
    (fire,) = estate.incidents()
    audited: list[tuple] = []

    class Audit:
        def record(self, *args):
            audited.append(args)

    audrey = OperatorApi(estate.store, {"name": "audrey", "role": "auditor",
                                        "agencies": ["Fire"]}, Audit(), "10.0.0.9")
    for op, extra in (("incident_ack", {}), ("incident_silence", {"minutes": 5})):
        answer = audrey.handle(json_module.dumps({"id": 1, "op": op, "incident_id": fire["id"],
                                                  **extra}).encode())
        assert answer["error"]["code"] == "forbidden"
    assert [a[1:] for a in audited] == [
        ("operator:audrey", "role_denied", f"incident:{fire['id']}", {"op": op})
        for op in ("incident_ack", "incident_silence")]
    assert estate.incidents()[0]["acked_by"] is None


def test_incidents_are_scoped_acked_silenced_audited_and_pruned(estate):
    store = estate.store
    estate.run(0)
    estate.presence(estate.site(0), False, 300)
    estate.presence(estate.site(2), False, 300)
    estate.run(301)
    fire, health = sorted(estate.incidents(), key=lambda i: i["agency"])
    assert [i.agency for i in store.incidents(["Health"], "open")] == ["Health"]
    assert store.incident(fire["id"], ["Health"]) is None
    assert store.ack_incident(fire["id"], "operator:h", ["Health"], at(310)) is None
    acked = store.ack_incident(fire["id"], "operator:f", ["Fire"], at(310))
    assert (acked.acked_by, acked.acked_at) == ("operator:f", "2026-12-02T08:05:10.000000Z")
    silenced = store.silence_incident(health["id"], "operator:h", at(3910), None, at(310))
    assert silenced.silenced_until == "2026-12-02T09:05:10.000000Z"
    audit = [(r.action, r.target) for r in store.audit_log(action=None)[:2]]
    assert audit == [("incident_silence", f"incident:{health['id']}"),
                     ("incident_ack", f"incident:{fire['id']}")]
    assert store.open_incident_counts(["Fire"]) == {("Fire", "Station 1"): 1}
    events = store.incident_events_after(0)
    assert [(e.incident_id, e.event) for e in events][-2:] == \
        [(fire["id"], "acknowledged"), (health["id"], "silenced")]
    assert events[-1].incident.silenced_by == "operator:h"
    # Resolved ones go with the history; open ones stay.
    estate.presence(estate.site(0), True, 400)
    estate.run(401)
    estate.run(800)
    assert store.prune_incidents(at(799)) == 0
    assert store.prune_incidents(at(801)) == 1
    assert [i["id"] for i in estate.incidents()] == [health["id"]]
    assert store.incident_events_after(0)[0].incident_id == health["id"]
