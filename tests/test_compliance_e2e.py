"""Compliance end to end: reports through the real SSH path into a real hub, evaluated at
ingest, read back through the operator API and `estate export --report compliance`, as of a
moment before a fix and after it, in the operator's scope; a hub restarted with another policy
audits it and evaluates every host again. Runs on PostgreSQL too (Makefile POSTGRES_PASS)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from estate.console._client import ApiFailure, HubConnection
from estate.inventory.compliance import DEFAULT_POLICY, load_policy
from tests.harness import Agent, HubProcess, add_operator, make_report, run, wait_for
from tests.test_compliance import security


def _second() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _next_second() -> str:
    """A second of the hub's clock strictly after every report sent so far, and before any
    sent after this returns."""
    now = _second()
    later = wait_for(lambda: _second() > now and _second(), timeout=5, interval=0.02,
                     what="the next second")
    wait_for(lambda: _second() > later, timeout=5, interval=0.02, what="the next second")
    return later


@pytest.fixture(scope="module")
def estate(tmp_path_factory, live_report):
    """A hub started with `--policy` (the default's copy); a Fire laptop whose firewall is
    off, then on; a Health laptop; operators scoped to Fire and to everything."""
    base = tmp_path_factory.mktemp("compliance")
    policy = base / "policy.toml"
    policy.write_bytes(DEFAULT_POLICY.read_bytes())
    hub = HubProcess(base / "hub", ("--report-burst", "0", "--policy", str(policy))).start()
    fire = Agent(hub, base / "fire", hub.token("Fire & Rescue", "Station 1"))
    health = Agent(hub, base / "health", hub.token("Health Trust", "Ward 9"))

    def report(agent: Agent, name: str, firewall_on: bool) -> dict:
        return make_report(live_report, agent.agent_id, system__hostname=name,
                           hardware__chassis="laptop",
                           security=security(firewall={"enabled": firewall_on,
                                                       "product": "<b>nftables</b>"}))

    assert fire.send(report(fire, "fire-pc", False))[0] == 0
    assert health.send(report(health, "health-pc", False))[0] == 0
    before = _next_second()
    assert fire.send(report(fire, "fire-pc", True))[0] == 0
    after = _next_second()
    keys = {}
    for name, agencies, role in (("fire.auditor", "Fire & Rescue", "auditor"),
                                 ("chief", "all", "admin")):
        add_operator(hub, base, name, role, agencies)
        keys[name] = base / name
    yield {"base": base, "hub": hub, "fire": fire, "health": health, "before": before,
           "after": after, "keys": keys, "policy": policy}
    hub.kill()


def _export(env, operator: str, out: Path, *args: str) -> dict:
    hub = env["hub"]
    run("-m", "estate.console.cli", "export", "--hub", f"{operator}@{hub.address}", "--key",
        str(env["keys"][operator]), "--hub-key", hub.fingerprint, "--report", "compliance",
        "-o", str(out), *args)
    return json.loads(out.read_text()) if out.suffix == ".json" else {}


def _firewall(doc: dict) -> dict:
    return {r["hostname"]: r["outcome"] for r in doc["rows"]
            if r["level"] == "host" and r["control"] == "firewall_on"}


def test_the_export_as_of_before_the_fix_shows_fail_and_after_it_pass(estate, tmp_path):
    then = _export(estate, "chief", tmp_path / "then.json", "--as-of", estate["before"])
    later = _export(estate, "chief", tmp_path / "later.json", "--as-of", estate["after"])
    now = _export(estate, "chief", tmp_path / "now.json")
    assert _firewall(then) == {"fire-pc": "fail", "health-pc": "fail"}
    assert _firewall(later) == _firewall(now) == {"fire-pc": "pass", "health-pc": "fail"}
    policy = load_policy(estate["policy"])
    manifest = json.loads((tmp_path / "now.json.manifest.json").read_text())
    assert manifest["policy"] == {"name": policy.name, "version": "1", "hash": policy.hash}
    assert policy.hash in now["about"]["policy"]
    fact = next(r["fact"] for r in now["rows"] if r["hostname"] == "fire-pc"
                and r["control"] == "firewall_on")
    assert fact == "enabled=true (<b>nftables</b>)"  # the agent's text, as data
    summaries = {(r["level"], r["agency"], r["site"]): r for r in now["rows"]
                 if r["level"] != "host"}
    fire = summaries[("agency", "Fire & Rescue", None)]
    assert fire["hosts"] == 1 and fire["failed"] == 0 and fire["share"] == 100.0
    assert summaries[("site", "Health Trust", "Ward 9")]["failed"] >= 1
    assert run("-m", "estate.console.cli", "verify", str(tmp_path / "now.json"), "--hub-key",
               estate["hub"].fingerprint, check=False).returncode == 0


def test_the_filter_picks_hosts_by_their_results_now_or_as_of_then(estate, tmp_path):
    """`fail:firewall` picks the hosts failing it at the moment the export describes."""
    def hosts(doc: dict) -> set[str]:
        return {r["hostname"] for r in doc["rows"] if r["level"] == "host"}

    now = _export(estate, "chief", tmp_path / "now.json", "--filter", "fail:firewall")
    then = _export(estate, "chief", tmp_path / "then.json", "--filter", "fail:firewall",
                   "--as-of", estate["before"])
    assert hosts(now) == {"health-pc"}
    assert hosts(then) == {"fire-pc", "health-pc"}
    passing = _export(estate, "chief", tmp_path / "all.json", "--filter", "compliance>=0",
                      "--as-of", estate["after"])
    assert hosts(passing) == {"fire-pc", "health-pc"}


def test_the_change_of_result_is_a_change_event(estate):
    changes = estate["hub"].admin_json("changes")
    found = [(c["agent_id"], c["subject"], c["old_value"], c["new_value"]) for c in changes
             if c["kind"] == "compliance_changed"]
    assert found == [(estate["fire"].agent_id, "firewall_on", "fail", "pass")]


def test_an_operator_of_one_agency_never_sees_anothers_results(estate, tmp_path):
    doc = _export(estate, "fire.auditor", tmp_path / "fire.json")
    assert {r["agency"] for r in doc["rows"]} == {"Fire & Rescue"}
    assert estate["health"].agent_id not in (tmp_path / "fire.json").read_text()
    as_of = _export(estate, "fire.auditor", tmp_path / "fire-then.json", "--as-of",
                    estate["before"])
    assert {r["agency"] for r in as_of["rows"]} == {"Fire & Rescue"}
    hub = estate["hub"]

    async def body():
        conn = HubConnection(hub.address, "fire.auditor", estate["keys"]["fire.auditor"],
                             hub.fingerprint)
        await conn.connect()
        try:
            hosts = await conn.request("hosts")
            detail = await conn.request("host", agent_id=estate["fire"].agent_id)
            summary = await conn.request("summary")
            with pytest.raises(ApiFailure) as refused:
                await conn.request("host", agent_id=estate["health"].agent_id)
            return hosts, detail, summary, refused.value.code
        finally:
            await conn.close()

    hosts, detail, summary, code = asyncio.run(body())
    assert code == "not_found"
    column = hosts["columns"].index("compliance")
    assert [r[column][1:4] for r in hosts["rows"]] == [[8, 0, 0]]
    results = {r["control"]: r for r in detail["compliance"]["results"]}
    assert results["firewall_on"]["outcome"] == "pass"
    assert results["firewall_on"]["theme"] == "firewalls"
    assert set(summary["compliance"]["agencies"]) == {"Fire & Rescue"}


def test_the_xlsx_export_carries_the_policy_in_its_about_sheet(estate, tmp_path):
    out = tmp_path / "c.xlsx"
    _export(estate, "chief", out)
    manifest = json.loads((tmp_path / "c.xlsx.manifest.json").read_text())
    assert manifest["report"] == "compliance" and manifest["policy"]["version"] == "1"
    import zipfile

    with zipfile.ZipFile(out) as book:  # constant-memory sheets keep their strings inline
        sheets = "".join(book.read(n).decode() for n in book.namelist()
                         if n.startswith("xl/worksheets/"))
    assert manifest["policy"]["hash"] in sheets


def test_a_hub_restarted_with_another_policy_audits_it_and_evaluates_every_host(estate):
    hub = estate["hub"]
    policy = estate["policy"]
    text = DEFAULT_POLICY.read_text().replace('version = "1"', 'version = "2"')
    policy.write_text(text + '\n[agency."Health Trust".firewall_on]\nenabled = false\n')
    hub.kill()
    hub.start()
    new = load_policy(policy)
    assert any(a["action"] == "policy_changed" and new.hash in json.dumps(a)
               for a in hub.admin_json("audit"))  # before the hub listened
    with hub.store() as store:
        store.policy = new  # only to count the hosts not yet evaluated against it
        wait_for(lambda: store.hosts_to_reevaluate() == 0, timeout=30,
                 what="every host evaluated again")
        health = store.host_compliance(estate["health"].agent_id)
    assert health["policy"]["hash"] == new.hash
    assert "firewall_on" not in {r["control"] for r in health["results"]}
    assert "compliance: " in hub.log()


def test_a_hostile_agents_security_facts_stay_data_everywhere(estate, live_report, tmp_path):
    """Markup, terminal escapes, formulas and characters XML has no place for, at the
    schema's limits, from an enrolled agent: stored, answered as data, neutralised in CSV,
    a readable XLSX; a far-future update time is not believed."""
    import csv
    import xml.etree.ElementTree as ET
    import zipfile

    hub = estate["hub"]
    evil = '=HYPERLINK("http://x")\x1b[31m[bold]\ufffe\uffff'
    agent = Agent(hub, estate["base"] / "hostile", hub.token("Hostile", "Lair"))
    facts = security(
        firewall={"enabled": None, "product": None, "reason": evil},
        accounts={"admins": [f"{i}{evil}" for i in range(256)]},
        encryption={"volumes": [{"mount": f"/{i}{evil}", "device": evil, "encrypted": False,
                                 "method": None, "protection": None, "percent": None}
                                for i in range(64)]},
        updates={"last_success": "9999-12-31T23:59:59Z"})
    assert agent.send(make_report(live_report, agent.agent_id, system__hostname=evil,
                                  hardware__chassis="laptop", security=facts))[0] == 0
    with hub.store() as store:
        results = wait_for(lambda: store.host_compliance(agent.agent_id), timeout=30,
                           what="the hostile host evaluated")["results"]
    got = {r["control"]: r for r in results}
    assert got["firewall_on"]["outcome"] == "unknown" and got["firewall_on"]["reason"] == evil
    assert got["updates_recent"]["outcome"] == "unknown"  # year 9999: not believed
    assert got["admin_accounts"]["outcome"] == got["disk_encryption"]["outcome"] == "fail"
    assert len(got["admin_accounts"]["fact"]) <= 400
    _export(estate, "chief", tmp_path / "c.csv", "--filter", "agency:Hostile")
    with open(tmp_path / "c.csv", encoding="utf-8-sig", newline="") as f:
        cells = [c for row in csv.reader(f) for c in row]
    assert "'" + evil in cells and evil not in cells  # hostname and reason: never formulas
    _export(estate, "chief", tmp_path / "c.xlsx")
    with zipfile.ZipFile(tmp_path / "c.xlsx") as book:
        for name in book.namelist():
            if name.endswith(".xml"):
                ET.fromstring(book.read(name))  # well-formed: a spreadsheet can open it


def test_a_bad_policy_refuses_the_start_naming_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT_POLICY.read_text().replace("days = 14", "days = -1"))
    done = run("-m", "estate.inventory.hub.cli", "serve", "--listen", "127.0.0.1:0", "--data",
               str(tmp_path / "data"), "--policy", str(bad), check=False)
    assert done.returncode == 2
    assert "control updates_recent: days: expected a whole number from 1 to 3650" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was written
