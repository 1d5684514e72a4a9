"""Compliance: the policy file's validation, every condition kind, unknown facts, per-agency
overrides, and the store's results (evaluated at ingest, kept as history, change events,
evaluated again under a new policy)."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from estate.inventory.compliance import (
    DEFAULT_POLICY,
    THEMES,
    PolicyError,
    evaluate,
    load_policy,
    parse_policy,
    summarise,
)
from estate.inventory.hub.cli import main as hub_main
from estate.inventory.store import HostQuery, Incoming, Store
from tests.stores import open_test_store

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
HEAD = '[policy]\nname = "test"\nversion = "7"\n'


def _control(ident: str, kind: str, extra: str = "", theme: str = "firewalls") -> str:
    return (f'[[control]]\nid = "{ident}"\ntitle = "{ident} title"\ntheme = "{theme}"\n'
            f'severity = "high"\nkind = "{kind}"\n{extra}\n')


def _policy(*controls: str, tail: str = ""):
    return parse_policy((HEAD + "".join(controls) + tail).encode(), "test.toml")


def security(**sections: dict) -> dict:
    """A complete `security` section of a compliant laptop, with sections replaced."""
    out = {
        "encryption": {"volumes": [{"mount": "/", "device": "dm-0", "encrypted": True,
                                    "method": "luks2", "protection": None, "percent": None}],
                       "reason": None},
        "firewall": {"enabled": True, "product": "nftables", "profiles": [], "reason": None},
        "malware": {"product": "clamav", "enabled": True, "realtime": True,
                    "signature_age_days": 0.5, "products": [], "gatekeeper": None,
                    "xprotect_version": None, "reason": None},
        "updates": {"last_success": "2026-11-25T08:00:00Z", "pending": 0,
                    "reboot_required": False, "checked_at": "2026-11-30T06:00:00Z",
                    "reason": None},
        "platform": {"firmware": "uefi", "secure_boot": True, "tpm_present": True,
                     "tpm_version": "2.0", "reason": None},
        "accounts": {"admins": ["root"], "auto_login": False, "reason": None},
    }
    for name, values in sections.items():
        out[name] = {**out[name], **values}
    return out


def host(report: dict, chassis: str = "laptop", **sections: dict) -> dict:
    r = copy.deepcopy(report)
    r["hardware"]["chassis"] = chassis
    r["system"]["os"].update(name="Debian GNU/Linux", version="12", product=None)
    r["security"] = security(**sections)
    return r


def outcomes(policy, report: dict, agency: str | None = None, now: datetime = NOW) -> dict:
    return {r.control.id: (r.outcome, r.fact, r.reason)
            for r in evaluate(policy.controls_for(agency), report, now)}


# --- the policy file -------------------------------------------------------------------------

def test_the_default_policy_loads_under_the_five_cyber_essentials_themes():
    policy = load_policy()
    assert load_policy(DEFAULT_POLICY).hash == policy.hash
    assert [c.id for c in policy.controls] == [
        "firewall_on", "disk_encryption", "secure_boot", "no_auto_login", "admin_accounts",
        "malware_protection", "os_supported", "updates_recent"]
    assert {c.theme for c in policy.controls} == set(THEMES)
    assert policy.version == "1" and len(policy.hash) == 64


def test_every_problem_names_its_control_and_key():
    bad = (HEAD.replace('version = "7"\n', "") + _control("a", "updated_within", "days = 0")
           + _control("a", "firewall_on", "colour = 1", theme="walls")
           + _control("Bad Id", "firewall_on")
           + _control("f", "fact", 'path = "security.nope"\nop = "near"\nvalue = [1]')
           + _control("g", "fact", 'path = "security.firewall.enabled"\nop = "in"\n'
                                   'value = true')
           + _control("u", "updated_within", "days = 14")
           + _control("m", "admins_only", "allowed = [" + '"a", ' * 65 + "]",
                      theme="user_access_control")
           + '[agency."North".zz]\nenabled = false\n[agency."North".u]\nsize = 3\n'
           + '[agency."North".a]\nenabled = false\n')  # "a" refused: its problems suffice
    with pytest.raises(PolicyError) as caught:
        parse_policy(bad.encode(), "p.toml")
    assert caught.value.problems == [
        "[policy]: version: required",
        "control a: days: expected a whole number from 1 to 3650",
        "control a: colour: unknown key for kind firewall_on",
        "control a: theme: expected one of firewalls, secure_configuration, "
        "user_access_control, malware_protection, security_update_management, got 'walls'",
        "control #3: id: required: 1 to 64 lower-case letters, digits or '_'",
        "control f: path: expected a report field under system, hardware or security that "
        "is one value, not a list (see docs/report.md), got 'security.nope'",
        "control f: op: expected one of eq, ne, lt, le, gt, ge, in, not_in",
        "control g: value: expected a list of 1 to 256 values for op in",
        "control m: allowed: expected a list of up to 64 names (1 to 256 characters each)",
        "agency 'North' control zz: no such control in this policy",
        "agency 'North' control u: size: cannot be overridden (expected days, enabled, "
        "severity)",
    ]
    assert str(caught.value).startswith("p.toml: [policy]: version: required; ")


@pytest.mark.parametrize("data, problem", [
    (b"not = [toml", "not valid TOML"),
    (b"\xff\xfe", "not UTF-8 text (byte 0)"),
    (HEAD.encode(), "policy file: control: expected one or more [[control]] tables"),
    (b"x = " + b"[" * 5000 + b"]" * 5000, "not valid TOML (nested too deeply)"),
    (b"x = " + b"{a=" * 3000 + b"1" + b"}" * 3000, "not valid TOML (nested too deeply)"),
])
def test_a_file_that_is_no_policy_is_refused_with_why(data, problem):
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, "p.toml")
    assert problem in str(caught.value)


def test_policy_check_lists_the_controls_or_the_problems(tmp_path, capsys):
    assert hub_main(["policy", "check", str(DEFAULT_POLICY)]) == 0
    out = capsys.readouterr().out
    assert "8 controls:" in out and "firewall_on" in out and load_policy().hash in out
    bad = tmp_path / "bad.toml"
    bad.write_text(HEAD + _control("x", "updated_within"))
    assert hub_main(["policy", "check", str(bad)]) == 2
    assert "control x: days: required for kind updated_within" in capsys.readouterr().err
    assert hub_main(["policy", "check", str(tmp_path / "missing.toml")]) == 2


def test_a_comparison_that_could_never_hold_is_refused_naming_control_and_key():
    """NaN compares false with everything (and inf is no fact's value); an override that
    turns `in` into `eq` would compare a fact with a list: each would fail or pass every host
    silently."""
    with pytest.raises(PolicyError) as caught:
        _policy(_control("mem", "fact", 'path = "hardware.memory.total_bytes"\nop = "gt"\n'
                                        'value = nan'),
                _control("big", "fact", 'path = "hardware.memory.total_bytes"\nop = "in"\n'
                                        'value = [1, inf]'),
                _control("os", "fact", 'path = "system.os.name"\nop = "in"\nvalue = ["a"]'),
                tail='[agency."A".os]\nop = "eq"\n')
    assert caught.value.problems == [
        "control mem: value: expected a string, number or true/false",
        "control big: value: expected a list of 1 to 256 values for op in",
        "agency 'A' control os: value: expected one value for op eq, not a list",
    ]


# --- each condition kind ---------------------------------------------------------------------

def test_a_compliant_laptop_passes_every_default_control(report):
    results = outcomes(load_policy(), host(report))
    assert {k: v[0] for k, v in results.items()} == dict.fromkeys(results, "pass")
    assert results["os_supported"][1] == "Debian GNU/Linux 12"


def test_each_default_control_fails_on_its_own_fact(report):
    policy = load_policy()
    cases = {
        "firewall_on": {"firewall": {"enabled": False}},
        "disk_encryption": {"encryption": {"volumes": [
            {"mount": "/", "encrypted": True}, {"mount": "/home", "encrypted": False}]}},
        "secure_boot": {"platform": {"secure_boot": False}},
        "no_auto_login": {"accounts": {"auto_login": True}},
        "admin_accounts": {"accounts": {"admins": ["root", "mallory"]}},
        "malware_protection": {"malware": {"signature_age_days": 9.0}},
        "updates_recent": {"updates": {"last_success": "2026-10-01T00:00:00Z"}},
    }
    for control, sections in cases.items():
        results = outcomes(policy, host(report, **sections))
        failing = {k for k, v in results.items() if v[0] == "fail"}
        assert failing == {control}, (control, results[control])
    assert outcomes(policy, host(report, accounts={"admins": ["root", "mallory"]}))[
        "admin_accounts"][1] == "unexpected: mallory"
    old = host(report)
    old["system"]["os"].update(name="Windows 7 Professional", version="6.1.7601")
    assert outcomes(policy, old)["os_supported"][0] == "fail"


def test_windows_facts_fail_on_an_off_profile_or_suspended_bitlocker(report):
    policy = load_policy()
    r = host(report, firewall={"enabled": True, "product": "windows", "profiles": [
        {"name": "Domain", "enabled": True}, {"name": "Public", "enabled": False}]},
        encryption={"volumes": [{"mount": "C:", "encrypted": True, "protection": "off"}]})
    results = outcomes(policy, r)
    assert results["firewall_on"][:2] == ("fail", "enabled=true (windows), profiles off: Public")
    assert results["disk_encryption"] == ("fail", "protection off: C:",
                                          "encrypted, but protection is suspended")


def test_unknown_facts_are_unknown_with_a_reason_never_a_pass(report):
    policy = load_policy()
    older_agent = host(report)
    del older_agent["security"]
    results = outcomes(policy, older_agent)
    assert results.pop("os_supported")[0] == "pass"  # read from system.os, not security
    assert {v[0] for v in results.values()} == {"unknown"}
    assert all(v[2] for v in results.values())
    nulls = host(report, firewall={"enabled": None, "reason": "nft not found"},
                 updates={"last_success": None, "reason": None},
                 platform={"secure_boot": None}, malware={"realtime": None})
    results = outcomes(policy, nulls)
    assert results["firewall_on"] == ("unknown", "enabled=unknown (nftables)", "nft not found")
    assert results["updates_recent"] == ("unknown", None,
                                         "the agent could not tell (security.updates)")
    assert results["secure_boot"][0] == results["malware_protection"][0] == "unknown"
    no_chassis = host(report, chassis="laptop")
    no_chassis["hardware"]["chassis"] = None
    assert outcomes(policy, no_chassis)["disk_encryption"][0] == "unknown"
    unknown_os = host(report)
    unknown_os["system"]["os"].update(name="PlanetOS", version="1")
    assert outcomes(policy, unknown_os)["os_supported"] == (
        "unknown", "PlanetOS 1", "not in Estate's end-of-support table")


def test_a_desktop_needs_no_encryption_and_a_future_update_time_is_not_believed(report):
    policy = load_policy()
    desktop = host(report, chassis="desktop", encryption={"volumes": []})
    assert outcomes(policy, desktop)["disk_encryption"] == (
        "pass", "chassis=desktop", "not required for this chassis")
    future = host(report, updates={"last_success": "2099-01-01T00:00:00Z"})
    assert outcomes(policy, future)["updates_recent"][0] == "unknown"


def test_the_generic_fact_comparison_and_its_operators(report):
    policy = _policy(
        _control("product", "fact", 'path = "security.firewall.product"\nop = "in"\n'
                                    'value = ["nftables", "firewalld"]'),
        _control("tpm", "fact", 'path = "security.platform.tpm_version"\nop = "eq"\n'
                                'value = "2.0"', theme="secure_configuration"),
        _control("pending", "fact", 'path = "security.updates.pending"\nop = "le"\nvalue = 5',
                 theme="security_update_management"),
        _control("cores", "fact", 'path = "hardware.cpu.cores"\nop = "gt"\nvalue = "x"',
                 theme="secure_configuration"))
    r = host(report, updates={"pending": 9})
    r["hardware"]["cpu"]["cores"] = 4
    results = outcomes(policy, r)
    assert results["product"][0] == "pass"
    assert results["tpm"] == ("pass", "security.platform.tpm_version=2.0", "eq '2.0' holds")
    assert results["pending"] == ("fail", "security.updates.pending=9", "expected le 5")
    assert results["cores"][0] == "unknown"  # 4 > "x" cannot be compared
    r["security"]["platform"]["tpm_version"] = None
    assert outcomes(policy, r)["tpm"][0] == "unknown"


def test_per_agency_overrides_change_parameters_severity_or_disable(report):
    policy = _policy(
        _control("updates", "updated_within", "days = 14",
                 theme="security_update_management"),
        _control("fw", "firewall_on"),
        tail='[agency."Schools".updates]\ndays = 90\nseverity = "low"\n'
             '[agency."Schools".fw]\nenabled = false\n')
    r = host(report, firewall={"enabled": False},
             updates={"last_success": "2026-10-01T00:00:00Z"})
    assert {k: v[0] for k, v in outcomes(policy, r).items()} == {"updates": "fail",
                                                                "fw": "fail"}
    assert {k: v[0] for k, v in outcomes(policy, r, "Schools").items()} == {"updates": "pass"}
    assert [c.severity for c in policy.controls_for("Schools")] == ["low"]


def test_the_summary_counts_and_names_the_worst_failure(report):
    policy = load_policy()
    r = host(report, firewall={"enabled": False}, malware={"enabled": False},
             platform={"secure_boot": None})
    s = summarise(evaluate(policy.controls, r, NOW))
    assert (s.passed, s.failed, s.unknown) == (5, 2, 1)
    assert s.share == 62.5
    assert (s.worst, s.worst_title) == ("malware_protection",
                                        "Malware protection on, signatures under 3 days old")
    assert s.failing == "firewall_on firewalls malware_protection"
    assert summarise([]).share is None


def test_hostile_text_is_bounded_in_facts(report):
    r = host(report, accounts={"admins": ["x" * 256] * 256})
    fact = outcomes(load_policy(), r)["admin_accounts"][1]
    assert len(fact) <= 400 and fact.endswith("…")


def test_evaluating_twenty_thousand_hosts_is_not_the_ingest_bottleneck(report):
    """A smoke figure only (the benchmark is bench/compliance.py): nothing here times out."""
    policy = load_policy()
    reports = [host(report) for _ in range(200)]
    assert all(len(evaluate(policy.controls, r, NOW)) == 8 for r in reports)


# --- the store: at ingest, history, events, a new policy ---------------------------------------

def _enrolled(store: Store, agency: str, site: str = "Main") -> str:
    token_id, secret, _ = store.create_token(agency, site, 1, timedelta(hours=1), "admin:test")
    key = f"ssh-ed25519 {agency}{site}"
    return store.enrol(token_id, secret, key, f"SHA256:{key}", "pc")["agent_id"]


def _store(store: Store, agent_id: str, r: dict, seq: int, at: datetime) -> None:
    r = copy.deepcopy(r)
    r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
    r["collected_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(), at)]) == \
        ["stored"]


def test_results_are_stored_at_ingest_with_history_and_change_events(tmp_path, report):
    store = open_test_store(tmp_path)
    assert store.apply_policy(load_policy()) is True
    assert store.apply_policy(load_policy()) is False  # the same policy: nothing new
    a = _enrolled(store, "Schools")
    b = _enrolled(store, "Council")
    t1 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
    t2, t3 = t1 + timedelta(hours=1), t1 + timedelta(hours=2)
    off = host(report, firewall={"enabled": False},
               updates={"last_success": (t1 - timedelta(days=1)).isoformat()})
    _store(store, a, off, 1, t1)
    _store(store, b, off, 1, t1)
    fixed = host(report, updates={"last_success": (t1 - timedelta(days=1)).isoformat()})
    _store(store, a, fixed, 2, t2)
    _store(store, a, fixed, 3, t3)  # nothing changed: nothing written

    (row,) = store.host_rows(["Schools"])
    assert row.compliance is not None and row.compliance.failed == 0
    assert [r.agent_id for r in store.host_rows(["Council"])] == [b]
    assert store.host_rows(["Council"])[0].compliance.worst == "firewall_on"
    detail = store.host_detail(a, ["Schools"])
    assert detail is not None and detail.compliance is not None
    firewall = detail.compliance["results"][0]
    assert firewall["control"] == "firewall_on" and firewall["outcome"] == "pass"
    assert firewall["since"].startswith(t2.strftime("%Y-%m-%dT%H:%M:%S"))
    assert detail.compliance["policy"]["hash"] == load_policy().hash
    assert store.host_detail(a, ["Council"]) is None

    events = [(c.agent_id, c.subject, c.old_value, c.new_value)
              for c in store.changes() if c.kind == "compliance_changed"]
    assert events == [(a, "firewall_on", "fail", "pass")]  # first results are no change

    summary = store.summary(["Schools", "Council"]).compliance
    assert summary["totals"]["hosts"] == 2 and summary["totals"]["compliant"] == 1
    assert summary["agencies"]["Council"]["sites"]["Main"]["failed"] == 1
    assert store.summary(["Schools"]).compliance["agencies"].keys() == {"Schools"}

    with store.reader() as reader:
        def firewall_at(when):
            return {(r.agent_id, r.outcome) for r in reader.compliance_rows(
                HostQuery(None), when) if r.control == "firewall_on"}
        assert firewall_at(t1 + timedelta(minutes=30)) == {(a, "fail"), (b, "fail")}
        assert firewall_at(t2 + timedelta(minutes=30)) == {(a, "pass"), (b, "fail")}
        assert firewall_at(None) == {(a, "pass"), (b, "fail")}
        assert firewall_at(t1 - timedelta(minutes=1)) == set()
        scoped = {r.agent_id for r in reader.compliance_rows(HostQuery(["Schools"]), None)}
        assert scoped == {a}
        assert reader.compliance_policy()["hash"] == load_policy().hash
    count = store.db.execute("SELECT COUNT(*) FROM compliance").fetchone()[0]
    assert count == 8 + 8 + 1  # each host's first results, and the firewall's new period
    # Past the history's horizon, ended periods go with the change events; current ones stay.
    store.prune_changes(t3)
    count = store.db.execute("SELECT COUNT(*) FROM compliance").fetchone()[0]
    assert count == 8 + 8


def test_a_host_that_reported_through_another_hub_meanwhile_is_read_afresh(tmp_path, report):
    """Two hubs on one store (two connections stand in for them): an agent reports through
    hub A, then through B (a fix undone), then through A again. A must not trust what it kept
    in memory of the host's results: the store's are B's."""
    hub_a = open_test_store(tmp_path)
    hub_a.apply_policy(load_policy())
    agent = _enrolled(hub_a, "Schools")
    hub_b = open_test_store(tmp_path)  # a second connection to the same store
    hub_b.apply_policy(load_policy())
    t1 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
    on, off = host(report), host(report, firewall={"enabled": False})
    hub_a.agent_connected("a", agent, t1)
    _store(hub_a, agent, on, 1, t1)
    hub_b.agent_connected("b", agent, t1 + timedelta(minutes=1))
    _store(hub_b, agent, off, 2, t1 + timedelta(minutes=1))
    hub_a.agent_connected("a", agent, t1 + timedelta(minutes=2))
    _store(hub_a, agent, on, 3, t1 + timedelta(minutes=2))
    (row,) = hub_a.host_rows(None)
    assert row.compliance is not None and row.compliance.failed == 0
    firewall = [(c.old_value, c.new_value) for c in hub_a.changes()
                if c.kind == "compliance_changed" and c.subject == "firewall_on"]
    assert firewall == [("pass", "fail"), ("fail", "pass")]
    open_rows = hub_a.db.execute("SELECT outcome FROM compliance WHERE agent_id = ? AND "
                                 "control = 'firewall_on' AND ended IS NULL",
                                 (agent,)).fetchall()
    assert [r[0] for r in open_rows] == ["pass"]
    hub_b.close()


def test_a_new_policy_is_audited_and_every_host_evaluated_again_once(tmp_path, report):
    store = open_test_store(tmp_path)
    store.apply_policy(load_policy())
    a = _enrolled(store, "Schools")
    t1 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    _store(store, a, host(report, firewall={"enabled": False}), 1, t1)
    assert store.hosts_to_reevaluate() == 0
    stricter = _policy(_control("fw", "firewall_on"),
                       _control("uefi", "fact", 'path = "security.platform.firmware"\n'
                                                'op = "eq"\nvalue = "bios"',
                                theme="secure_configuration"))
    assert store.apply_policy(stricter, "hub") is True
    audit = [r for r in store.audit_log() if r["action"] == "policy_changed"]
    detail = json.loads(audit[0]["detail"])  # newest first
    assert len(audit) == 2 and detail["to"]["hash"] == stricter.hash
    assert detail["from"]["hash"] == load_policy().hash and audit[0]["actor"] == "hub"
    assert store.hosts_to_reevaluate() == 1
    assert store.reevaluate() == 1 and store.reevaluate() == 0
    results = store.host_compliance(a)
    assert [(r["control"], r["outcome"]) for r in results["results"]] == [
        ("fw", "fail"), ("uefi", "fail")]
    assert results["policy"]["hash"] == stricter.hash
    # The default's controls ended: the host's current results are the new policy's only.
    current = store.db.execute("SELECT COUNT(*) FROM compliance WHERE ended IS NULL")
    assert current.fetchone()[0] == 2


def test_an_override_for_an_agency_the_store_does_not_know_is_warned_of(tmp_path, caplog):
    """A misspelt agency's override changes nothing: the admin hears of it at start."""
    store = open_test_store(tmp_path)
    _enrolled(store, "Schools")
    policy = _policy(_control("fw", "firewall_on"),
                     tail='[agency."Schools".fw]\nenabled = false\n'
                          '[agency."Schoools".fw]\nenabled = false\n')
    with caplog.at_level("WARNING", logger="estate.hub"):
        store.apply_policy(policy)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["compliance policy: overrides for agencies this store does not know "
                      '(yet): "Schoools"']


def test_the_api_sorts_by_compliance_and_keeps_filters_and_events_in_scope(tmp_path, report):
    """A host whose agency has every control disabled has a summary with no share: sorting
    by compliance must still answer. An operator of Council learns nothing of Health through
    `fail:` or `compliance<` filters (their totals included) or compliance change events."""
    from estate.inventory.hub._api import OperatorApi

    store = open_test_store(tmp_path)
    school, council = _enrolled(store, "Schools"), _enrolled(store, "Council")
    health = _enrolled(store, "Health")
    store.apply_policy(_policy(_control("fw", "firewall_on"),
                               tail='[agency."Schools".fw]\nenabled = false\n'))
    t1 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    for seq, (at, on) in enumerate(((t1, False), (t1 + timedelta(hours=1), True)), 1):
        for agent_id in (school, council):
            _store(store, agent_id, host(report, firewall={"enabled": on}), seq, at)
        _store(store, health, host(report, firewall={"enabled": not on}), seq, at)

    def ask(api, op, **params):
        answer = api.handle(json.dumps({"id": 1, "op": op, **params}).encode())
        assert answer["ok"], answer
        return answer["result"]

    admin = OperatorApi(store, {"name": "root", "role": "admin", "agencies": None})
    for reverse in (False, True):
        rows = ask(admin, "hosts", sort="compliance", reverse=reverse)["rows"]
        order = [health, council, school]  # 0 %, 100 %, no share (as None sorts elsewhere)
        assert [r[0] for r in rows] == (order[::-1] if reverse else order)
    council_op = OperatorApi(store, {"name": "c", "role": "auditor", "agencies": ["Council"]})
    for text, seen in (("fail:firewall", []), ("compliance<80", []),
                       ("compliance>=0", [council]), ("-fail:firewall", [council])):
        found = ask(council_op, "hosts", filter=text)
        assert [r[0] for r in found["rows"]] == seen and found["total"] == len(seen)
    events = [(e["agent_id"], e["kind"]) for e in ask(council_op, "changes")]
    assert (council, "compliance_changed") in events
    assert {a for a, _ in events} == {council}
    assert (health, "compliance_changed") in [(e["agent_id"], e["kind"])
                                              for e in ask(admin, "changes")]


def test_a_store_without_a_policy_evaluates_nothing(tmp_path, report):
    store = open_test_store(tmp_path)
    a = _enrolled(store, "Schools")
    _store(store, a, host(report), 1, datetime.now(timezone.utc) - timedelta(minutes=5))
    assert store.host_rows(None)[0].compliance is None
    assert store.host_detail(a, None).compliance is None
    store.apply_policy(load_policy())
    assert store.hosts_to_reevaluate() == 1 and store.reevaluate() == 1
    assert store.host_rows(None)[0].compliance.share == 100.0


def test_the_shipped_policy_is_packaged_beside_its_module():
    assert Path(DEFAULT_POLICY).name == "default_policy.toml" and DEFAULT_POLICY.exists()


def test_the_fast_xlsx_rows_are_byte_for_byte_what_xlsxwriter_writes(tmp_path, monkeypatch):
    """The compliance report's rows skip xlsxwriter's per-cell path (`_FastRows`); its sheet
    must be exactly what that path writes, hostile text included."""
    import zipfile

    from estate.inventory.export import _writers
    from estate.inventory.export._columns import COMPLIANCE

    meta = {"generated_at": "2026-11-30T12:00:00Z"}
    nasty = ["=cmd|' /C calc'!A0", "<r><t>rich</t></r>", " lead", "trail ", "a & b <c>",
             "_x0041_", "tab\there", "bell\x07", "é ü 漢字 🙂", "x" * 17_000, "line\nbreak",
             "not\ufffea\uffffchar"]  # XML 1.0 has no U+FFFE/U+FFFF: xlsxwriter escapes them
    rows = []
    for i, text in enumerate(nasty * 3):
        rows.append(["host", f"id-{i}", "Fire & Rescue", "Station 1", text, "firewall_on",
                     "Firewall on", "firewalls", "high", "fail", text, None,
                     "2026-11-30T10:00:00.123456Z", None, None, None, None, None, None])
    rows.append(["agency", None, "Fire", *[None] * 10, 3, 1, 20, 3, 1, 83.3])

    def sheet_xml(path):
        writer = _writers.XlsxWriter(path, "compliance", COMPLIANCE, meta)
        for row in rows:
            writer.row(row)
        writer.close({"report": "compliance"})
        with zipfile.ZipFile(path) as book:
            return book.read("xl/worksheets/sheet1.xml")

    fast = sheet_xml(tmp_path / "fast.xlsx")
    monkeypatch.setattr(_writers, "FAST_XLSX_REPORTS", frozenset())
    assert sheet_xml(tmp_path / "plain.xlsx") == fast
