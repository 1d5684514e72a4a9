"""Hub probe policies and the connectivity verdict: `estate-hub probes`, the report ack that
hands agents their policy, `hosts.net`, and the host list's `net` column and filters."""

from __future__ import annotations

import asyncio
import json

import pytest

from estate.inventory.health.net import RTT_DEGRADED_MS, net_verdict
from estate.inventory.probe_spec import parse_probes
from tests.harness import Agent, HubProcess, add_operator, make_report, wait_for
from tests.stores import open_test_store


def _probe(name, kind, ok, latency_ms=None, target="t", error=None):
    return {"name": name, "kind": kind, "target": target, "ok": ok, "latency_ms": latency_ms,
            "answers": [], "error": error if error or ok is not False else "failed",
            "source": "builtin"}


def _verdict(*probes):
    return net_verdict({"collected_at": "2026-12-02T08:00:00Z",
                        "connectivity": {"probes": list(probes)}})


HUB_OK = _probe("hub", "hub", True, 23.0)


# --- the verdict ---------------------------------------------------------------------------

def test_the_verdict_is_ok_degraded_or_down_with_the_worst_probe_first():
    ok = _verdict(HUB_OK, _probe("gateway", "gateway", True, 1.0))
    assert ok == {"state": "ok", "rtt_ms": 23.0, "worst": None, "failing": [],
                  "at": "2026-12-02T08:00:00Z"}
    # Any failure degrades; the built-ins come first by severity, then the others by name.
    degraded = _verdict(HUB_OK, _probe("zz-app", "tcp", False), _probe("hub-dns", "dns", False),
                        _probe("crm", "tcp", False), _probe("gateway", "gateway", True))
    assert degraded["state"] == "degraded" and degraded["worst"] == "hub-dns"
    assert [f["name"] for f in degraded["failing"]] == ["hub-dns", "crm", "zz-app"]
    assert degraded["failing"][0] == {"name": "hub-dns", "kind": "dns", "target": "t",
                                      "error": "failed"}
    # A link down is down whatever else answers; so is every probe that ran failing.
    down = _verdict(HUB_OK, _probe("link", "link", False), _probe("gateway", "gateway", False))
    assert (down["state"], down["worst"]) == ("down", "link")
    assert _verdict(_probe("gateway", "gateway", False), _probe("dns", "dns", False),
                    _probe("icmp", "icmp", None))["state"] == "down"
    # A probe that could not run (ok null) is neither: ICMP refused here leaves the host ok.
    assert _verdict(HUB_OK, _probe("gateway", "gateway", None, error="ICMP not permitted")
                    )["state"] == "ok"
    # Nothing that ran: nothing to judge by.
    assert _verdict(_probe("gateway", "gateway", None)) is None and _verdict() is None
    assert net_verdict({"collected_at": "x", "connectivity": {"probes": []}}) is None


def test_a_slow_hub_round_trip_degrades_and_failing_is_bounded():
    slow = _verdict(_probe("hub", "hub", True, RTT_DEGRADED_MS + 1))
    assert (slow["state"], slow["worst"], slow["failing"]) == ("degraded", "hub", [])
    assert _verdict(_probe("hub", "hub", True, RTT_DEGRADED_MS))["state"] == "ok"
    # A local probe named "hub" of another kind is not the hub round trip.
    assert _verdict(_probe("hub", "tcp", True, 900.0), HUB_OK)["rtt_ms"] == 23.0
    many = _verdict(HUB_OK, *[_probe(f"p{i:02}", "tcp", False) for i in range(40)])
    assert len(many["failing"]) == 16 and many["failing"][0]["name"] == "p00"


# --- the store -----------------------------------------------------------------------------

def _specs(*names, interval=None):
    return parse_probes([{"name": n, "kind": "dns", "target": f"{n}.example",
                          **({"interval": interval} if interval else {})} for n in names],
                        hub=True)


def test_policies_merge_per_site_are_bounded_and_audited(tmp_path):
    from estate.inventory.probe_spec import canonical_hash
    from estate.inventory.store import ProbePolicyTooLarge

    store = open_test_store(tmp_path)
    agency_probes = _specs("a", "b", "c")
    h = store.set_probe_policy("Fire", "", agency_probes, "admin:test")
    assert h == canonical_hash(agency_probes)
    site_probes = _specs("b", "d", interval=300)
    store.set_probe_policy("Fire", "Station 12", site_probes, "admin:test")
    effective = store.effective_probe_policies()
    # The site's "b" replaces the agency's in place; its others follow.
    digest, probes = effective[("Fire", "Station 12")]
    assert [(p.name, p.interval_s) for p in probes] == [("a", None), ("b", 300.0), ("c", None),
                                                        ("d", 300.0)]
    assert digest == canonical_hash(probes)
    assert effective[("Fire", "")] == (h, agency_probes)
    # 16 at most per (agency, site), either way round; nothing changes when refused.
    with pytest.raises(ProbePolicyTooLarge, match=r"'Station 12'.*make 17.*limit of 16"):
        store.set_probe_policy("Fire", "", _specs(*[f"x{i}" for i in range(15)]), "admin:test")
    with pytest.raises(ProbePolicyTooLarge, match="make 17"):
        store.set_probe_policy("Fire", "Station 12", _specs(*[f"y{i}" for i in range(14)]),
                               "admin:test")
    assert store.effective_probe_policies() == effective
    # Overlapping names do not count twice: 15 of the agency's and the site's "b" and "d".
    store.set_probe_policy("Fire", "", _specs("b", *[f"x{i}" for i in range(14)]), "admin:t")
    assert store.clear_probe_policy("Fire", "Station 12", "admin:test") is True
    assert store.clear_probe_policy("Fire", "Station 12", "admin:test") is False
    assert store.agent_place("ag-000000000000") is None
    actions = [(r.action, r.target, json.loads(r.detail)) for r in reversed(store.audit_log())]
    assert actions == [
        ("probe_policy_set", "Fire", {"agency": "Fire", "site": "", "hash": h, "count": 3}),
        ("probe_policy_set", "Fire/Station 12",
         {"agency": "Fire", "site": "Station 12", "hash": canonical_hash(site_probes),
          "count": 2}),
        ("probe_policy_set", "Fire", {"agency": "Fire", "site": "", "count": 15,
                                      "hash": store.probe_policies("Fire")[0].hash}),
        ("probe_policy_cleared", "Fire/Station 12",
         {"agency": "Fire", "site": "Station 12", "hash": canonical_hash(site_probes),
          "count": 2})]
    store.close()


# --- over real SSH -------------------------------------------------------------------------

POLICY = """
[[probes]]
name = "intranet"
kind = "tcp"
target = "intranet.example:443"
interval = 300

[[probes]]
name = "dns-ext"
kind = "dns"
target = "example.org"
"""

SITE_POLICY = """
[[probes]]
name = "dns-ext"
kind = "dns"
target = "example.net"
timeout = 5
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = HubProcess(tmp_path_factory.mktemp("probes") / "data", ("--report-burst", "0"))
    yield hub.start()
    hub.kill()


@pytest.fixture(scope="module")
def agents(hub, tmp_path_factory):
    folder = tmp_path_factory.mktemp("agents")
    return {name: Agent(hub, folder / name, hub.token(agency, site))
            for name, agency, site in (("a1", "Fire", "Station 1"), ("a12", "Fire", "Station 12"),
                                       ("b", "Health", "Ward 9"))}


def _send(agent, live_report, held=None, probes=None, **changes):
    r = make_report(live_report, agent.agent_id, **changes)
    if held is not None:
        r["agent"]["probe_policy"] = held
    else:
        r["agent"].pop("probe_policy", None)
    if probes is not None:
        r["connectivity"]["probes"] = probes
    status, doc = agent.send(r)
    assert status == 0 and doc["status"] == "stored", doc
    return r, doc


def _policy_of(agent, live_report, held, until):
    """The ack's probe_policy once `until(it)` holds: hubs re-read policies every few
    seconds, so a change made by the admin verb shows within a bounded wait."""
    def ack():
        got = _send(agent, live_report, held)[1].get("probe_policy")
        return (got,) if until(got) else None
    return wait_for(ack, timeout=60, interval=0.5, what="the policy in the ack")[0]


def test_a_policy_reaches_its_agencys_agents_a_site_policy_overrides_a_clear_clears(
        hub, agents, live_report, tmp_path):
    from estate.inventory.probe_spec import canonical_hash, sift_hub_probes

    (tmp_path / "fire.toml").write_text(POLICY)
    (tmp_path / "site.toml").write_text(SITE_POLICY)
    done = hub.admin("probes", "set", "--agency", "Fire", str(tmp_path / "fire.toml"))
    assert "2 probe(s) (intranet, dns-ext)" in done.stdout
    fire = _policy_of(agents["a1"], live_report, "", lambda p: p is not None)
    kept, dropped = sift_hub_probes(fire["probes"])
    assert dropped == [] and fire["hash"] == canonical_hash(kept)  # what the agent checks
    assert fire["probes"] == [
        {"name": "intranet", "kind": "tcp", "target": "intranet.example:443", "timeout": 2.0,
         "interval": 300.0},
        {"name": "dns-ext", "kind": "dns", "target": "example.org", "timeout": 2.0}]
    # Holding it: nothing more. The other agency's agents: nothing at all.
    assert "probe_policy" not in _send(agents["a1"], live_report, fire["hash"])[1]
    assert "probe_policy" not in _send(agents["b"], live_report, "")[1]
    # A site policy: its probe of the same name replaces the agency's, for that site only.
    hub.admin("probes", "set", "--agency", "Fire", "--site", "Station 12",
              str(tmp_path / "site.toml"))
    site = _policy_of(agents["a12"], live_report, fire["hash"],
                      lambda p: p is not None and p["hash"] != fire["hash"])
    assert [(p["name"], p["target"]) for p in site["probes"]] == [
        ("intranet", "intranet.example:443"), ("dns-ext", "example.net")]
    assert "probe_policy" not in _send(agents["a1"], live_report, fire["hash"])[1]
    # Cleared: agents holding the agency's are told to drop it (the site keeps its own).
    hub.admin("probes", "clear", "--agency", "Fire")
    cleared = _policy_of(agents["a1"], live_report, fire["hash"], lambda p: p is not None)
    assert cleared == {"hash": "", "probes": []}
    assert "probe_policy" not in _send(agents["a1"], live_report, "")[1]
    only_site = _send(agents["a12"], live_report, site["hash"])[1]["probe_policy"]
    assert [p["target"] for p in only_site["probes"]] == ["example.net"]
    hub.admin("probes", "clear", "--agency", "Fire", "--site", "Station 12")
    # Every change audited, by the admin who made it.
    audit = [r for r in hub.admin_json("audit") if r["action"].startswith("probe_policy")]
    assert [(r["action"], r["target"]) for r in reversed(audit)] == [
        ("probe_policy_set", "Fire"), ("probe_policy_set", "Fire/Station 12"),
        ("probe_policy_cleared", "Fire"), ("probe_policy_cleared", "Fire/Station 12")]
    assert all(r["actor"].startswith("admin:") for r in audit)
    assert json.loads(audit[-1]["detail"]) == {"agency": "Fire", "site": "", "count": 2,
                                               "hash": fire["hash"]}


def test_a_report_without_probe_policy_gets_todays_ack_byte_for_byte(hub, agents, live_report):
    r, doc = _send(agents["a1"], live_report)
    assert json.dumps(doc, ensure_ascii=False) == \
        json.dumps({"status": "stored", "report_id": r["report_id"]})


@pytest.mark.parametrize(("body", "named"), [
    ("".join(f'[[probes]]\nname = "p{i}"\nkind = "dns"\ntarget = "h{i}.example"\n'
             for i in range(100)), "probes: 100 probes, over the hub limit of 16"),
    ('[[probes]]\nname = "scan"\nkind = "tcp"\ntarget = "10.0.0.1:1-1024"\n',
     'probes[0] ("scan").target: a hub probe connects to one port: no ranges or lists'),
    ('[[probes]]\nname = "ok"\nkind = "dns"\ntarget = "a.example"\n[[probes]]\n'
     'name = "dns-fast"\nkind = "dns"\ntarget = "example.org"\ninterval = 1\n',
     'probes[1] ("dns-fast").interval: 1 s is faster than the 60 s floor'),
    ('[[probes]]\nname = "gw"\nkind = "gateway"\n',
     'probes[0] ("gw").kind: expected one of tcp, dns, icmp'),
    ('[[probes]]\nname = "slow-dc"\nkind = "tcp"\ntarget = "dc01.example:389"\ntimeout = 30\n',
     'probes[0] ("slow-dc").timeout: 30 s is longer than the 10 s a hub probe may wait'),
    ('probes = 1\n', "probes: expected a list of tables"),
    ('[agent]\nid = "x"\n', "agent: unknown key"),
    ('[[probes]\n', "not valid TOML"),
    ('', "no [[probes]] tables"),
])
def test_probes_set_refuses_what_breaks_the_hubs_limits_naming_file_probe_and_key(
        hub, tmp_path, body, named):
    path = tmp_path / "policy.toml"
    path.write_text(body)
    before = len(hub.admin_json("audit"))
    done = hub.admin("probes", "set", "--agency", "Fire", str(path), check=False)
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"estate-hub: probes set: {path}: ")
    assert named in done.stderr, done.stderr
    assert len(hub.admin_json("audit")) == before and hub.admin_json("probes", "list") == []


def test_probes_set_refuses_a_site_that_would_run_more_than_16(hub, tmp_path):
    many = "".join(f'[[probes]]\nname = "p{i}"\nkind = "dns"\ntarget = "h{i}.example"\n'
                   for i in range(10))
    (tmp_path / "agency.toml").write_text(many)
    (tmp_path / "site.toml").write_text(many.replace('"p', '"q'))
    hub.admin("probes", "set", "--agency", "Police", str(tmp_path / "agency.toml"))
    done = hub.admin("probes", "set", "--agency", "Police", "--site", "HQ",
                     str(tmp_path / "site.toml"), check=False)
    assert done.returncode == 1 and "make 20" in done.stderr and "limit of 16" in done.stderr
    bad_name = hub.admin("probes", "set", "--agency", "Bad\x01", str(tmp_path / "agency.toml"),
                         check=False)
    assert bad_name.returncode == 2 and "--agency" in bad_name.stderr
    listed = hub.admin_json("probes", "list", "--agency", "Police")
    assert [(p["site"], len(p["probes"])) for p in listed] == [("", 10)]
    assert hub.admin("probes", "clear", "--agency", "Police", "--site", "HQ",
                     check=False).returncode == 1
    hub.admin("probes", "clear", "--agency", "Police")


def test_the_net_column_and_its_filters_through_the_api(hub, agents, live_report, tmp_path):
    from estate.console._client import ApiFailure, HubConnection
    from estate.inventory.hostlist import COLUMN_KEYS

    gateway_down = _probe("gateway", "gateway", False, target="10.0.0.1", error="timed out")
    _send(agents["a1"], live_report, probes=[_probe("hub", "hub", True, 812.0),
                                             gateway_down])
    _send(agents["a12"], live_report, probes=[HUB_OK])
    _send(agents["b"], live_report, probes=[_probe("link", "link", False, target="eth0"),
                                            _probe("hub", "hub", True, 40.0)])
    add_operator(hub, tmp_path, "netty", "staff", "Fire")
    add_operator(hub, tmp_path, "allnet", "admin", "all")

    async def ask(name, **params):
        conn = HubConnection(hub.address, name, tmp_path / name, hub.fingerprint)
        await conn.connect()
        try:
            return await conn.request("hosts", **params)
        finally:
            await conn.close()

    def net_of(answer):
        at = answer["columns"].index("net")
        return {r[0]: r[at] for r in answer["rows"]}

    a1, a12, b = (agents[n].agent_id for n in ("a1", "a12", "b"))
    everyone = asyncio.run(ask("allnet"))
    assert everyone["columns"] == list(COLUMN_KEYS) and COLUMN_KEYS.index("net") == \
        COLUMN_KEYS.index("status") + 1
    assert net_of(everyone) == {a1: ["degraded", 812.0, "gateway"], a12: ["ok", 23.0, None],
                                b: ["down", 40.0, "link"]}
    assert set(net_of(asyncio.run(ask("allnet", filter="net:degraded")))) == {a1}
    assert set(net_of(asyncio.run(ask("allnet", filter="-net:ok")))) == {a1, b}
    assert set(net_of(asyncio.run(ask("allnet", filter="rtt>200")))) == {a1}
    assert set(net_of(asyncio.run(ask("allnet", filter="rtt<=40")))) == {a12, b}
    # Scoped as every read: Fire's operator sees no Health host, whatever the filter.
    assert set(net_of(asyncio.run(ask("netty", filter="net:down")))) == set()
    assert set(net_of(asyncio.run(ask("netty", sort="net")))) == {a1, a12}
    with pytest.raises(ApiFailure, match="net takes a state"):
        asyncio.run(ask("allnet", filter="net:slow"))


def test_estate_agent_run_takes_the_policy_and_reports_the_hubs_probes(hub, live_report,
                                                                        tmp_path):
    """End to end: the running agent is handed the policy in an ack, keeps it, and its
    next reports carry the hub's probe (source "hub") beside the built-in ones."""
    from tests.harness import AgentService

    (tmp_path / "policy.toml").write_text(
        f'[[probes]]\nname = "hub-port"\nkind = "tcp"\ntarget = "127.0.0.1:{hub.port}"\n')
    agent = Agent(hub, tmp_path / "agent", hub.token("Ambulance", "Depot"))
    hub.admin("probes", "set", "--agency", "Ambulance", str(tmp_path / "policy.toml"))
    service = AgentService(agent).start()
    try:
        def hub_probe():
            with hub.store() as store:
                detail = store.host_detail(agent.agent_id, None)
            probes = detail.report["connectivity"]["probes"] if detail else []
            return next((p for p in probes if p["name"] == "hub-port"), None), probes

        probe, probes = wait_for(lambda: hub_probe()[0] and hub_probe(), timeout=90,
                                 what="a report with the hub's probe")
        assert probe["source"] == "hub" and probe["kind"] == "tcp" and probe["ok"] is True
        assert {p["name"] for p in probes if p.get("source") == "builtin"} >= {"hub", "link"}
        saved = json.loads((tmp_path / "agent" / "probe_policy.json").read_text())
        assert "hub-port" in json.dumps(saved)
        with hub.store() as store:
            (row,) = store.host_rows(None, [agent.agent_id])
        assert row.net is not None and row.net[0] in ("ok", "degraded", "down")
    finally:
        service.stop()
        hub.admin("probes", "clear", "--agency", "Ambulance")


def test_the_stored_verdict_reads_back_as_the_host_lists_cell():
    from estate.inventory.health.net import from_text, row_of_text, row_value, to_text

    for net in (_verdict(HUB_OK), _verdict(_probe("hub", "hub", True, 1.5e-05)),
                _verdict(_probe("gateway", "gateway", True, 2.0)),  # no round trip
                _verdict(HUB_OK, _probe("link", "link", False)),
                _verdict(_probe("hub", "hub", True, 900.0)),
                _verdict(HUB_OK, _probe('dns "x"\u202e', "dns", False))):
        text = to_text(net)
        assert from_text(text) == net
        assert row_of_text(text) == row_value(net) is not None, text
    assert row_of_text(to_text(_verdict(HUB_OK))) == ("ok", 23.0, None)
    for damaged in (None, "", "{", "[1]", '{"state": 7}', '{"state":"ok","rtt_ms":"x"}'):
        assert from_text(damaged) is None or row_of_text(damaged) in (None, ("ok", None, None))
        assert row_of_text(damaged) in (None, ("ok", None, None))
