"""The store on its own: migrations, tokens and the append-only audit log."""

from __future__ import annotations

import copy
import json
import sqlite3
from datetime import timedelta

import pytest

from estate.agent.enrol import EnrolFailed, parse_token
from estate.inventory.errors import SchemaTooNew
from estate.inventory.hub._tokens import make_token, split_token
from estate.inventory.store import EnrolError, Incoming, Store, iso, utcnow
from estate.inventory.store._migrations import MIGRATIONS
from tests.harness import run
from tests.stores import database_errors, open_test_store, store_env, trace_statements


def test_migrations_apply_once_and_record_the_version(tmp_path):
    store = open_test_store(tmp_path)
    assert store.schema_version() == len(MIGRATIONS)
    store.close()
    again = open_test_store(tmp_path)  # reopening applies nothing twice
    assert again.schema_version() == len(MIGRATIONS)
    if again.dialect == "sqlite":
        assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_newer_schema_is_refused(tmp_path):
    store = open_test_store(tmp_path)
    where = store.db.name
    store.db.execute("INSERT INTO schema_version VALUES (999)")
    store.close()
    with pytest.raises(SchemaTooNew, match="upgrade Estate"):
        open_test_store(tmp_path)
    # An admin verb says so in one line, not a traceback.
    done = run("-m", "estate.inventory.hub.cli", "token", "list", "--data", str(tmp_path),
               check=False, env=store_env(tmp_path))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"estate-hub: {where} has schema version 999, newer than this Estate "
        f"({len(MIGRATIONS)}): upgrade Estate"]


def test_audit_log_is_append_only(tmp_path):
    store = open_test_store(tmp_path)
    store.create_token("Schools", "St Mary's", 1, timedelta(hours=1), "admin:test")
    with pytest.raises(database_errors(), match="append-only"):
        store.db.execute("UPDATE audit SET actor = 'someone else'")
    with pytest.raises(database_errors(), match="append-only"):
        store.db.execute("DELETE FROM audit")
    assert store.audit_log()[0]["action"] == "token_create"
    store.close()


def test_enrol_is_idempotent_for_the_same_key_and_counts_uses(tmp_path):
    store = open_test_store(tmp_path)
    token_id, secret, _ = store.create_token("Schools", "École Nord", 1, timedelta(hours=1),
                                             "admin:test")
    first = store.enrol(token_id, secret, "ssh-ed25519 AAAA", "SHA256:k1", "pc1")
    again = store.enrol(token_id, secret, "ssh-ed25519 AAAA", "SHA256:k1", "pc1")
    assert first["new"] and not again["new"] and first["agent_id"] == again["agent_id"]
    with pytest.raises(EnrolError) as err:
        store.enrol(token_id, secret, "ssh-ed25519 BBBB", "SHA256:k2", "pc2")
    assert err.value.code == "token_used_up"
    assert [t["uses"] for t in store.tokens()] == [1]
    assert store.agent_fingerprint(first["agent_id"]) == "SHA256:k1"
    store.revoke_agent(first["agent_id"], "admin:test")
    assert store.agent_fingerprint(first["agent_id"]) is None


def test_token_format_is_shared_by_hub_and_agent():
    token = make_token("ab12cd34", "s3cr3t-_x", "SHA256:abc+/def", "hub.example:2222")
    assert split_token(token) == ("ab12cd34", "s3cr3t-_x", ("SHA256:abc+/def",))
    assert parse_token(token) == (("SHA256:abc+/def",), "hub.example:2222")
    assert parse_token(make_token("i", "s", "SHA256:f")) == (("SHA256:f",), None)
    # During a rotation of the hub key: the retiring key, then the next one.
    both = make_token("i", "s", ("SHA256:old", "SHA256:new"), "hub.example:2222")
    assert split_token(both) == ("i", "s", ("SHA256:old", "SHA256:new"))
    assert parse_token(both) == (("SHA256:old", "SHA256:new"), "hub.example:2222")
    for bad in ("EST2.a.b.c", "EST1.a.b.x,y,z", "EST1.a.b.x,", "EST1.a.b.x,x"):
        with pytest.raises(ValueError):
            split_token(bad)
        with pytest.raises(EnrolFailed):
            parse_token(bad)


def _enrolled(store: Store, agency: str = "Schools", site: str = "St Mary's") -> str:
    token_id, secret, _ = store.create_token(agency, site, 1, timedelta(hours=1), "admin:test")
    key = f"ssh-ed25519 {agency}{site}"
    return store.enrol(token_id, secret, key, f"SHA256:{key}", "pc")["agent_id"]


def test_a_report_id_is_stored_once_whatever_comes_again(tmp_path, report):
    """Idempotency by report_id: a resent report (after a lost ack) is answered `duplicate`
    and changes nothing, in a later batch or in the same one, even if its body differs."""
    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    report["agent"]["id"] = agent_id
    report["report_id"] = f"{agent_id}:1:1"

    def incoming(r):
        body = json.dumps(r).encode()
        return Incoming(agent_id, copy.deepcopy(r), body, utcnow())

    first = incoming(report)
    assert store.store_reports([first]) == ["stored"]
    changes_before = store.changes()
    assert store.store_reports([first]) == ["duplicate"]
    # Same id, other content (a buggy or replayed sender): still the first one counts.
    altered = copy.deepcopy(report)
    altered["system"]["hostname"] = "replayed-name"
    altered["hardware"]["memory"]["total_bytes"] = 12345
    assert store.store_reports([incoming(altered)]) == ["duplicate"]
    second = copy.deepcopy(report)
    second["report_id"] = f"{agent_id}:1:2"
    assert store.store_reports([incoming(second), incoming(second)]) == ["stored",
                                                                          "duplicate"]
    stored = sorted(r.report_id for r in store.recent_reports(agent_id, None, 10))
    assert stored == [f"{agent_id}:1:1", f"{agent_id}:1:2"]
    (host,) = store.hosts()
    assert host["hostname"] == report["system"]["hostname"]
    assert store.changes() == changes_before, "a duplicate made change events"
    store.close()


# inventory/store/_common.py: the time format and agency scoping every read shares.

@pytest.mark.parametrize("zone", ["Etc/GMT+5", "Etc/GMT-5"])  # POSIX sign: behind, ahead
def test_store_times_are_utc_whatever_the_local_zone(zone, monkeypatch):
    """On a machine whose local time is not UTC, the store's times are still UTC."""
    import time
    from datetime import datetime, timezone

    from estate.inventory.store import iso, parse_time

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        assert iso(datetime(2026, 1, 31, 12, tzinfo=timezone.utc)) == \
            "2026-01-31T12:00:00.000000Z"
        # 23:00 at UTC-5 is already year 10000 in UTC: refused here, not when iso() writes it;
        # 23:00 UTC is in range, whatever year it is where the hub runs.
        with pytest.raises(ValueError, match="out of range"):
            parse_time("9999-12-31T23:00:00-05:00")
        assert parse_time("9999-12-31T23:00:00Z").year == 9999
    finally:
        monkeypatch.undo()
        time.tzset()


def test_parse_time_reads_zones_and_names_the_input_it_refuses():
    from datetime import datetime, timezone

    from estate.inventory.store import parse_time

    utc = timezone.utc
    assert parse_time("2026-01-31T12:00:00+02:00") == datetime(2026, 1, 31, 10, tzinfo=utc)
    assert parse_time(" 2026-01-31T12:00:00Z ") == datetime(2026, 1, 31, 12, tzinfo=utc)
    assert parse_time("2026-01-31") == datetime(2026, 1, 31, tzinfo=utc)
    assert parse_time("2026-01-31Z") == datetime(2026, 1, 31, tzinfo=utc)
    with pytest.raises(ValueError):  # the zone is an upper-case Z, as the store writes it
        parse_time("2026-01-31T12:00:00z")
    # Out of range in UTC: the message quotes the input, cut at 40 characters.
    text = "0001-01-01T00:00:00.000000+01:00:00.000000"
    with pytest.raises(ValueError) as refused:
        parse_time(text)
    assert str(refused.value) == f"{text[:40]} is out of range (years 1 to 9999, in UTC)"


def test_a_scope_of_several_agencies_selects_each_of_them_and_none_selects_nothing():
    from estate.inventory.store._common import _scoped

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE agencies (name TEXT)")
    db.executemany("INSERT INTO agencies VALUES (?)", [("north",), ("south",), ("west",)])
    base = "SELECT a.name FROM agencies a WHERE 1 = 1"

    def names(scope):
        sql, args = _scoped(base, [], scope)
        return sorted(row[0] for row in db.execute(sql, args))

    assert names(None) == ["north", "south", "west"]
    assert names(["north", "west"]) == ["north", "west"]
    assert names([]) == []


def test_a_stored_report_fills_every_host_column_and_its_list_row(tmp_path, report):
    """What the store keeps of a report, column by column, and the compact row the console
    and the API list: status, OS, first address; a later report updates all but first_seen."""
    import gzip
    from datetime import datetime, timezone

    from estate.inventory.facts import facts_of
    from estate.inventory.hostlist import COLUMN_KEYS

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    received = datetime.now(timezone.utc).replace(microsecond=0)
    r = copy.deepcopy(report)
    r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:1"
    r["collected_at"] = (received - timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r["agent"]["interval_s"] = 900
    r["system"].update(hostname="pc-1", fqdn="pc-1.example")
    r["system"]["os"].update(family="linux", name="Debian", version="12")
    r["hardware"].update(vendor="Acme", model="M1", serial="S-1", uuid="U-1")
    r["connectivity"]["probes"] = [
        {"name": "hub", "kind": "hub", "target": "hub.example", "ok": True, "latency_ms": 23.5,
         "error": None, "source": "builtin"},
        {"name": "gateway", "kind": "gateway", "target": "10.0.0.1", "ok": False,
         "latency_ms": None, "error": "timed out", "source": "builtin"}]
    body = json.dumps(r).encode()
    assert store.store_reports([Incoming(agent_id, copy.deepcopy(r), body, received)]) == \
        ["stored"]
    host = dict(store.db.execute("SELECT * FROM hosts WHERE agent_id = ?", (agent_id,))
                .fetchone())
    facts = facts_of(r)
    when = received.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    expected = {
        "hostname": "pc-1", "fqdn": "pc-1.example", "os_family": "linux", "os_name": "Debian",
        "os_version": "12", "vendor": "Acme", "model": "M1", "serial": "S-1", "uuid": "U-1",
        "cpu_model": r["hardware"]["cpu"]["model"],
        "memory_bytes": r["hardware"]["memory"]["total_bytes"],
        "fullest_volume_percent": facts["disk_percent"],
        "ip_addresses": " ".join(facts["ips"]) or None, "first_seen": when, "last_seen": when,
        "last_report_id": f"{agent_id}:1:1", "collected_at": r["collected_at"],
        "clock_skew_s": -3.0, "software_hash": r["software"]["hash"], "interval_s": 900,
        "identity_conflict": None, "net_at": when,
    }
    assert {k: host[k] for k in expected} == expected
    assert json.loads(host["net"]) == {
        "state": "degraded", "rtt_ms": 23.5, "worst": "gateway", "at": r["collected_at"],
        "failing": [{"name": "gateway", "kind": "gateway", "target": "10.0.0.1",
                     "error": "timed out"}]}
    assert json.loads(host["snapshot"]) == {**r, "software": {**r["software"],
                                                              "packages": None}}
    assert json.loads(host["facts"]) == json.loads(json.dumps(facts))
    assert json.loads(host["packages"]) == r["software"]["packages"]
    assert "\\u" not in host["snapshot"] + host["facts"] + host["packages"]
    if store.dialect == "sqlite":  # PostgreSQL keeps facts as JSONB, not as the text sent
        assert " " not in host["facts"].replace("\\u0020", "") or ", " not in host["facts"]
    (row,) = store.db.execute("SELECT received_at, collected_at, clock_skew_s, body FROM "
                              "reports").fetchall()
    assert tuple(row)[:3] == (when, r["collected_at"], -3.0)
    assert gzip.decompress(row[3]) == body
    (listed,) = store.host_rows(None)
    assert dict(zip(COLUMN_KEYS, listed, strict=True)) == {
        "agent_id": agent_id, "hostname": "pc-1", "agency": "Schools", "site": "St Mary's",
        "status": "offline", "net": ("degraded", 23.5, "gateway"), "os": "Debian 12",
        "model": "M1", "serial": "S-1",
        "cpu": r["hardware"]["cpu"]["model"], "ram_bytes": r["hardware"]["memory"]["total_bytes"],
        "disk_percent": facts["disk_percent"],
        "ip": (facts["ips"] or [None])[0], "last_seen": when,
        "remote": listed[COLUMN_KEYS.index("remote")],
        "compliance": None}  # a store without a policy evaluates nothing

    # A later report: everything follows it but first_seen; an unchanged list is kept.
    later = received + timedelta(minutes=15)
    r2 = copy.deepcopy(r)
    r2["report_id"], r2["collected_at"] = f"{agent_id}:1:2", later.strftime("%Y-%m-%dT%H:%M:%SZ")
    r2["system"]["os"].update(name=None, version="13")
    r2["software"]["packages"] = None
    assert store.store_reports([Incoming(agent_id, r2, json.dumps(r2).encode(), later)]) == \
        ["stored"]
    host = dict(store.db.execute("SELECT * FROM hosts").fetchone())
    assert (host["first_seen"], host["last_seen"], host["os_version"], host["clock_skew_s"]) \
        == (when, later.strftime("%Y-%m-%dT%H:%M:%S.000000Z"), "13", 0.0)
    assert json.loads(host["packages"]) == r["software"]["packages"]
    assert store.host_rows(None)[0].os == "13"  # the OS: whichever parts there are
    store.close()


def test_the_connectivity_time_moves_when_the_state_or_failing_set_does(tmp_path, report):
    """`hosts.net_at` follows the state and the failing probes (name, kind, target), read back
    from the table by a new store object too; a round trip or an error's text does not move
    it, and a report without probes that ran makes the verdict unknown."""
    from datetime import datetime, timezone

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    start = datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc)
    seq = 0

    def send(at_minute, *probes):
        nonlocal seq
        seq += 1
        r = copy.deepcopy(report)
        at = start + timedelta(minutes=at_minute)
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
        r["collected_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        r["connectivity"]["probes"] = [
            {"name": name, "kind": kind, "target": target, "ok": ok, "latency_ms": rtt,
             "error": None if ok else f"failed at {at_minute}"}
            for name, kind, target, ok, rtt in probes]
        assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(), at)]) == \
            ["stored"]
        row = store.db.execute("SELECT net, net_at FROM hosts").fetchone()
        return (json.loads(row[0])["state"] if row[0] else None,
                row[1][11:16] if row[1] else None)

    hub = ("hub", "hub", "hub.example", True, 20.0)
    dns = ("dns-ext", "dns", "example.org", False, None)
    assert send(0) == (None, None)  # nothing to judge by yet
    assert send(1, hub) == ("ok", "08:01")
    assert send(2, ("hub", "hub", "hub.example", True, 40.0)) == ("ok", "08:01")
    assert send(3, hub, dns) == ("degraded", "08:03")
    assert send(4, hub, dns) == ("degraded", "08:03")  # another error text, same failure
    store.close()
    store = open_test_store(tmp_path)  # the last verdict read back from the table
    assert send(5, hub, dns) == ("degraded", "08:03")
    assert send(6, hub, ("dns-ext", "dns", "example.net", False, None)) == ("degraded", "08:06")
    assert send(7, ("hub", "hub", "hub.example", True, 900.0)) == ("degraded", "08:07")
    assert send(8, ("link", "link", "eth0", False, None), hub) == ("down", "08:08")
    assert send(9, ("gateway", "icmp", "10.0.0.1", None, None)) == (None, "08:09")
    store.close()


def test_hosts_that_share_a_serial_or_uuid_are_flagged_never_merged(tmp_path, report):
    store = open_test_store(tmp_path)
    ids = [_enrolled(store, site=f"Site {n}") for n in range(4)]

    def send(agent_id, seq, serial, uuid):
        r = copy.deepcopy(report)
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
        r["hardware"].update(serial=serial, uuid=uuid)
        assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(),
                                             utcnow())]) == ["stored"]

    def conflicts():
        return {h.agent_id: h.identity_conflict for h in store.hosts()}

    send(ids[0], 1, "S", "U0")
    send(ids[1], 1, "S", "U1")  # the same serial
    send(ids[2], 1, "S2", "U0")  # the same uuid as the first
    send(ids[3], 1, None, None)  # nothing to compare: never a conflict
    got = conflicts()
    assert got[ids[3]] is None
    assert got[ids[2]] == ids[0]
    assert got[ids[1]] == ids[0]
    assert got[ids[0]] == " ".join(sorted((ids[1], ids[2])))  # both clones, named once each
    send(ids[2], 2, "S2", "U2")  # no longer a clone of anyone: nor named by anyone
    got = conflicts()
    assert (got[ids[2]], got[ids[0]], got[ids[1]]) == (None, ids[1], ids[0])
    send(ids[3], 2, "S", "U2")  # the third clone of S, and the second of U2
    got = conflicts()
    assert got[ids[3]] == " ".join(sorted((ids[0], ids[1], ids[2])))
    assert got[ids[0]] == " ".join(sorted((ids[1], ids[3])))
    assert got[ids[2]] == ids[3]
    store.close()


def test_recent_reports_are_newest_first_with_their_probes_and_only_in_scope(tmp_path, report):
    """The sparkline data: each report's times and skew, and per probe only its name,
    result and latency; a body without probes, or one that cannot be read, has none."""
    from datetime import datetime, timezone

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    probes = [{"name": "dns", "target": "example.org", "ok": True, "latency_ms": 1.5,
               "error": None}, {"name": "gw", "ok": False}]
    for seq in range(1, 4):
        r = copy.deepcopy(report)
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
        r["collected_at"] = (base + timedelta(minutes=seq)).strftime("%Y-%m-%dT%H:%M:%SZ")
        r["connectivity"]["probes"] = probes if seq != 2 else []
        if seq == 3:
            del r["connectivity"]
        received = base + timedelta(minutes=seq, seconds=2)
        assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(),
                                             received)]) == ["stored"]
    got = store.recent_reports(agent_id, ["Schools"], 10)
    assert [g["report_id"] for g in got] == [f"{agent_id}:1:{n}" for n in (3, 2, 1)]
    assert got[2] == {"report_id": f"{agent_id}:1:1", "received_at": "2026-01-01T00:01:02.000000Z",
                      "collected_at": "2026-01-01T00:01:00Z", "clock_skew_s": -2.0,
                      "probes": [{"name": "dns", "ok": True, "latency_ms": 1.5},
                                 {"name": "gw", "ok": False, "latency_ms": None}]}
    assert got[0]["probes"] == got[1]["probes"] == []
    assert [g["report_id"] for g in store.recent_reports(agent_id, None, 2)] == \
        [f"{agent_id}:1:3", f"{agent_id}:1:2"]
    # A report stored before samples existed (a body, no probes beside it, no sample): read
    # from its body, after the samples.
    store.db.execute("UPDATE reports SET probes = NULL WHERE report_id = ?",
                     (f"{agent_id}:1:1",))
    store.db.execute("DELETE FROM samples WHERE report_id = ?", (":1:1",))  # kept so
    assert store.recent_reports(agent_id, None, 10)[2] == got[2]
    assert store.report_count(agent_id) == 3
    store.db.execute("UPDATE reports SET body = ? WHERE report_id = ?",
                     (b"not gzip", f"{agent_id}:1:1"))
    assert store.recent_reports(agent_id, None, 10)[2]["probes"] == []
    assert store.recent_reports(agent_id, ["Other"], 10) is None
    assert store.recent_reports(agent_id, [], 10) is None
    assert store.recent_reports("ag-nobody", None, 10) is None
    store.close()


def test_a_hosts_status_is_revoked_stale_online_or_offline_at_two_intervals(tmp_path, report):
    """Stale once no report came for two of the interval it claims (300 s without one);
    otherwise online while connected; revoked above all. The summary counts the same."""
    store = open_test_store(tmp_path)
    now = utcnow()

    def host(name, interval_s, seen_ago_s):
        agent_id = _enrolled(store, site=name)
        r = copy.deepcopy(report)
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:1"
        r["agent"]["interval_s"] = interval_s
        r["system"]["hostname"] = name
        at = now - timedelta(seconds=seen_ago_s)
        r["collected_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(), at)]) == \
            ["stored"]
        return agent_id

    fresh = host("a-fresh", 60, 100)  # within 2 x 60 s
    host("b-stale", 60, 140)  # past 2 x 60 s
    host("c-default-fresh", None, 500)  # within 2 x 300 s
    host("d-default-stale", None, 700)
    online = host("e-online", 60, 100)
    revoked = host("f-revoked", 60, 1000)
    store.set_presence(online, True, now)
    store.set_presence(fresh, True, now)
    store.set_presence(fresh, False, now)
    assert store.revoke_agent(revoked, "admin:test")
    assert [(r[1], r[4]) for r in store.host_rows(None)] == [
        ("a-fresh", "offline"), ("b-stale", "stale"), ("c-default-fresh", "offline"),
        ("d-default-stale", "stale"), ("e-online", "online"), ("f-revoked", "revoked")]
    assert store.summary(None)["totals"] == {"total": 6, "online": 1, "offline": 2,
                                             "stale": 2, "revoked": 1}
    assert store.host_detail(online, None)["status"] == "online"
    store.close()


def test_the_host_list_shows_the_os_parts_there_are_and_the_first_address(tmp_path, report):
    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    r = copy.deepcopy(report)
    r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:1"
    assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(), utcnow())]) == \
        ["stored"]
    shown = []
    for os_name, os_version, ips in (("Debian", "12", "10.0.0.1 10.0.0.2 fe80::1"),
                                     ("Debian", None, "10.0.0.3"), (None, "12", ""),
                                     ("", "", None)):
        store.db.execute("UPDATE hosts SET os_name = ?, os_version = ?, ip_addresses = ?",
                         (os_name, os_version, ips))
        (row,) = store.host_rows(None)
        shown.append((row.os, row.ip))
    assert shown == [("Debian 12", "10.0.0.1"), ("Debian", "10.0.0.3"), ("12", None),
                     (None, None)]
    store.close()


def test_each_report_records_its_changes_and_a_backlog_one_only_history(tmp_path, report):
    """What `_store_one` writes: the state and software changes of each newer report, with its
    time and id; an older (backlog) report is kept as history and moves only last_seen; a
    time far ahead orders by the time received."""
    from datetime import datetime, timezone

    from estate.inventory.changes import bounded, software_changes, state_changes
    from estate.inventory.store import iso

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)

    def send(seq, minutes, received_minutes=None, **edits):
        r = copy.deepcopy(report)
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
        r["collected_at"] = (t0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for path, value in edits.items():
            target = r
            *keys, last = path.split("__")
            for k in keys:
                target = target[k]
            target[last] = value
        at = t0 + timedelta(minutes=received_minutes if received_minutes is not None
                            else minutes, seconds=1)
        assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(), at)]) == \
            ["stored"]
        return r, at

    def rows():
        return [(c["at"], c["kind"], c["subject"], c["old_value"], c["new_value"],
                 c["report_id"]) for c in store.changes()]

    def expected(changes, at, seq):
        return [(iso(at), c.kind, c.subject, c.old_text(), c.new_text(), f"{agent_id}:1:{seq}")
                for c in bounded(changes)]

    r1, _ = send(1, 0)
    assert rows() == []  # the first report: nothing to compare with
    r2, at2 = send(2, 10, system__hostname="renamed-pc",
                   hardware__memory__total_bytes=r1["hardware"]["memory"]["total_bytes"] * 2)
    want = expected(state_changes(r1, r2), at2, 2)
    assert want and rows() == want
    packages = [*(r2["software"]["packages"] or []),
                {"name": "zz-new", "version": "1", "arch": None, "publisher": None}]
    r3, at3 = send(3, 20, software__hash="f" * 64, software__packages=packages,
                   system__hostname="renamed-pc",
                   hardware__memory__total_bytes=r2["hardware"]["memory"]["total_bytes"])
    soft = expected(software_changes(r2["software"]["hash"], "f" * 64,
                                     r2["software"]["packages"], packages), at3, 3)
    assert soft and rows() == want + soft
    # A backlog report, collected before the latest: history only.
    _, at0 = send(4, 15, received_minutes=30, system__hostname="old-name")
    host = dict(store.db.execute("SELECT hostname, last_seen, last_report_id, collected_at "
                                 "FROM hosts").fetchone())
    assert host == {"hostname": "renamed-pc", "last_seen": iso(at0),
                    "last_report_id": f"{agent_id}:1:3", "collected_at": r3["collected_at"]}
    assert rows() == want + soft
    # Collected more than a day ahead of its arrival: ordered by arrival.
    _, at5 = send(5, 60 * 24 * 3, received_minutes=40)
    assert store.db.execute("SELECT collected_at FROM hosts").fetchone()[0] == iso(at5)
    assert len(store.recent_reports(agent_id, None, 10)) == 5
    store.close()


def test_a_readers_view_of_a_clone_names_only_hosts_in_their_agencies(tmp_path, report):
    store = open_test_store(tmp_path)
    ids = {}
    for name, agency in (("a", "Fire"), ("b", "Fire"), ("c", "Health"), ("d", "Police")):
        ids[name] = _enrolled(store, agency=agency, site=name)
        r = copy.deepcopy(report)
        r["agent"]["id"], r["report_id"] = ids[name], f"{ids[name]}:1:1"
        r["hardware"].update(serial="CLONE", uuid=None)
        assert store.store_reports([Incoming(ids[name], r, json.dumps(r).encode(),
                                             utcnow())]) == ["stored"]

    def seen(name, scope):
        return store.host_detail(ids[name], scope)["identity_conflict"]

    everyone = sorted(ids.values())
    assert seen("a", None) == " ".join(i for i in everyone if i != ids["a"])
    assert seen("a", ["Fire"]) == ids["b"]
    assert seen("a", ["Fire", "Police"]) == " ".join(i for i in everyone
                                                      if i in (ids["b"], ids["d"]))
    assert seen("c", ["Health"]) is None  # its clones are all elsewhere: none to show
    assert store.host_detail(ids["c"], ["Fire"]) is None
    store.close()


def test_a_reopened_store_compares_with_what_the_table_kept(tmp_path, report):
    """After a restart the previous state comes from the hosts table, not the cache: the same
    software is no change, a new name is one, and stored JSON is compact UTF-8."""
    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    r1 = copy.deepcopy(report)
    r1["agent"]["id"], r1["report_id"] = agent_id, f"{agent_id}:1:1"
    r1["collected_at"] = "2026-03-01T00:00:00Z"
    r1["system"]["hostname"] = "pc-é"
    r1["software"]["packages"] = [{"name": "café", "version": "1", "arch": None,
                                   "publisher": None}]
    received = utcnow()
    assert store.store_reports([Incoming(agent_id, r1, json.dumps(r1).encode(), received)]) \
        == ["stored"]
    host = dict(store.db.execute("SELECT snapshot, packages FROM hosts").fetchone())
    compact = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))  # noqa: E731
    assert host["snapshot"] == compact({**r1, "software": {**r1["software"], "packages": None}})
    assert host["packages"] == compact(r1["software"]["packages"])
    store.close()

    store = open_test_store(tmp_path)
    r2 = copy.deepcopy(r1)
    r2["report_id"], r2["collected_at"] = f"{agent_id}:1:2", "2026-03-01T00:10:00Z"
    r2["system"]["hostname"] = "pc-2"
    assert store.store_reports([Incoming(agent_id, r2, json.dumps(r2).encode(), received)]) \
        == ["stored"]
    assert [(c["kind"], c["old_value"], c["new_value"]) for c in store.changes()] == \
        [("hostname_changed", "pc-é", "pc-2")]
    assert store.db.execute("SELECT hostname FROM hosts").fetchone()[0] == "pc-2"
    # A new list hash without its list: nothing stored, the agent is to send it in full
    # (`need_full`); the host keeps its last list and report.
    r3 = copy.deepcopy(r2)
    r3["report_id"], r3["collected_at"] = f"{agent_id}:1:3", "2026-03-01T00:20:00Z"
    r3["software"].update(hash="e" * 64, packages=None)
    assert store.store_reports([Incoming(agent_id, r3, json.dumps(r3).encode(), received)]) \
        == ["need_full"]
    assert tuple(store.db.execute("SELECT packages, last_report_id FROM hosts").fetchone()) \
        == (compact(r1["software"]["packages"]), f"{agent_id}:1:2")
    assert len(store.recent_reports(agent_id, None, 10) or []) == 2
    other = _enrolled(store, site="Other")
    r4 = copy.deepcopy(r1)
    r4["agent"]["id"], r4["report_id"] = other, f"{other}:1:1"
    store.store_reports([Incoming(other, r4, json.dumps(r4).encode(), received)])
    assert [r[0] for r in store.host_rows(None, agent_ids=[agent_id, other])] == \
        [r[0] for r in store.host_rows(None)] and len(store.host_rows(None)) == 2
    assert [r[0] for r in store.host_rows(None, agent_ids=[other])] == [other]
    assert store.host_rows(None, agent_ids=[]) == []
    store.close()


# --- what the store's reads show, and what storing a report compares it with ---------------

def _sent(store: Store, agent_id: str, base: dict, seq: int, received, collected=None, *,
          body: bytes | None = None, **edits: object) -> dict:
    """Store one report of `agent_id` (a copy of `base` with `edits`, dotted as `a__b`)."""
    r = copy.deepcopy(base)
    r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
    r["collected_at"] = (collected or received).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for path, value in edits.items():
        target = r
        *keys, last = path.split("__")
        for k in keys:
            target = target[k]
        target[last] = value
    assert store.store_reports([Incoming(agent_id, r, body or json.dumps(r).encode(),
                                         received)]) == ["stored"]
    return r


def _packages(version: str, n: int = 2) -> list[dict]:
    return [{"name": f"pkg{i}", "version": version, "arch": None, "publisher": None}
            for i in range(n)]


def test_a_hosts_remote_state_follows_the_hub_the_agent_and_its_connection(tmp_path, report):
    """The list row's last column: off, asked (the agent offers, the hub does not allow),
    ready (both, and connected), allowed (the hub allows; not offered or not connected);
    off again once revoked. A scope and a list of ids narrow it together."""
    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    now = utcnow()
    _sent(store, agent_id, report, 1, now)

    def remote():
        (row,) = store.host_rows(None)
        return row.remote

    seen = [remote()]
    store.set_presence(agent_id, True, now)
    store.set_remote_offered(agent_id, True)
    seen.append(remote())
    assert store.set_remote_access(agent_id, True, "admin:test")
    seen.append(remote())
    store.set_presence(agent_id, False, now)
    seen.append(remote())
    store.set_presence(agent_id, True, now)
    store.set_remote_offered(agent_id, False)
    seen.append(remote())
    store.set_remote_offered(agent_id, True)
    seen.append(remote())
    assert store.revoke_agent(agent_id, "admin:test")
    seen.append(remote())
    assert seen == ["off", "asked", "ready", "allowed", "allowed", "ready", "off"]
    assert [r[0] for r in store.host_rows(["Schools"], agent_ids=[agent_id])] == [agent_id]
    assert store.host_rows(["Other"], agent_ids=[agent_id]) == []
    store.close()


def test_host_detail_is_the_host_in_full_with_its_status_and_enrolment(tmp_path, report):
    """Every field of the API's `host` answer: times, skew, the last report without its
    package list and the list apart (None when unknown); the status counts the host's own
    interval, and revoked above all."""
    from datetime import timezone

    from estate.inventory.store import iso

    store = open_test_store(tmp_path)
    stale, revoked = _enrolled(store, site="North"), _enrolled(store, site="South")
    enrolled = {a["id"]: a["enrolled_at"] for a in store.agents()}
    received = utcnow().replace(microsecond=0) - timedelta(seconds=200)
    packages = _packages("1.0")
    r = _sent(store, stale, report, 1, received, received - timedelta(seconds=3),
              agent__interval_s=60, software__packages=packages)
    # 200 s since its last report: stale at 60 s intervals (not yet at the default 300 s).
    assert dict(store.host_detail(stale, ["Schools"])) == {
        "agent_id": stale, "agency": "Schools", "site": "North", "status": "stale",
        "first_seen": iso(received), "last_seen": iso(received),
        "enrolled_at": enrolled[stale], "clock_skew_s": -3.0, "identity_conflict": None,
        "report": {**r, "software": {**r["software"], "packages": None}},
        "packages": packages, "compliance": None}
    # No list collected (no hash either): the list is unknown.
    _sent(store, revoked, report, 1, utcnow().astimezone(timezone.utc),
          software__packages=None, software__hash=None)
    store.set_presence(revoked, True, utcnow())
    assert store.revoke_agent(revoked, "admin:test")
    detail = store.host_detail(revoked, None)
    assert (detail["status"], detail["site"], detail["packages"]) == ("revoked", "South", None)
    store.close()


def test_the_stale_threshold_is_each_hosts_own_and_passed_only_after_two_intervals(
        tmp_path, report, monkeypatch):
    """Hosts listed in name order, with and without an interval of their own: each is judged
    by its own (the threshold is computed once per interval value, never shared), and a host
    last seen exactly two intervals ago is not stale yet."""
    import sys
    from datetime import datetime, timezone

    store = open_test_store(tmp_path)
    now = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
    # The clock the store reads its "now" from, wherever host_rows lives.
    monkeypatch.setattr(sys.modules[Store.host_rows.__module__], "utcnow", lambda: now)
    for name, interval_s, seen_ago in (("a-default", None, timedelta(seconds=200)),
                                       ("b-60", 60, timedelta(seconds=200)),
                                       ("c-60-edge", 60, timedelta(seconds=120)),
                                       ("d-60-past", 60, timedelta(seconds=120, microseconds=1))):
        agent_id = _enrolled(store, site=name)
        _sent(store, agent_id, report, 1, now - seen_ago, system__hostname=name,
              agent__interval_s=interval_s)
    assert [(r[1], r[4]) for r in store.host_rows(None)] == [
        ("a-default", "offline"), ("b-60", "stale"), ("c-60-edge", "offline"),
        ("d-60-past", "stale")]
    store.close()


def test_a_report_exactly_a_day_ahead_of_its_arrival_keeps_its_own_time(tmp_path, report):
    """Only a time *more* than a day ahead is ordered as received: one exactly a day ahead
    stays the host's latest, so a report collected before it is backlog."""
    from datetime import datetime, timezone

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    received = datetime(2026, 3, 1, tzinfo=timezone.utc)
    _sent(store, agent_id, report, 1, received, received + timedelta(days=1),
          system__hostname="a-day-ahead")
    _sent(store, agent_id, report, 2, received + timedelta(hours=2),
          received + timedelta(hours=1), system__hostname="collected-before-it")
    assert store.host_detail(agent_id, None)["report"]["system"]["hostname"] == "a-day-ahead"
    assert store.changes() == []
    store.close()


def test_a_stored_time_the_store_cannot_read_does_not_freeze_its_host(tmp_path, report):
    """A host row whose time cannot be read (damaged, or from before times were validated)
    orders as now: the next report is the host's latest, not backlog behind that text."""
    from datetime import datetime, timezone

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    _sent(store, agent_id, report, 1, t0, system__hostname="before")
    # A row damaged outside the store's own writes; reopened, the store reads it back.
    store.db.execute("UPDATE hosts SET collected_at = ? WHERE agent_id = ?",
                     ("9999-12-31T23:00:00-05:00", agent_id))
    store.close()
    store = open_test_store(tmp_path)
    later = utcnow() + timedelta(minutes=1)
    _sent(store, agent_id, report, 2, later, later, system__hostname="after")
    assert store.host_detail(agent_id, None)["report"]["system"]["hostname"] == "after"
    store.close()


def test_a_report_sent_gzipped_is_kept_as_sent_and_read_back(tmp_path, report):
    import gzip

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    probes = [{"name": "dns", "ok": True, "latency_ms": 2.5}]
    r = copy.deepcopy(report)
    r["connectivity"]["probes"] = probes
    r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:1"
    body = gzip.compress(json.dumps(r).encode(), mtime=0)
    _sent(store, agent_id, r, 1, utcnow(), body=body)
    (recent,) = store.recent_reports(agent_id, None, 10)
    assert recent["probes"] == probes
    store.close()


def test_a_batch_compares_each_report_with_the_one_before_it_in_the_batch(tmp_path, report):
    """Two reports of one host in one batch: the second is compared with the first, not with
    what the last batch stored. The same list, not resent, is no change and stays known."""
    from datetime import datetime, timezone

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    _sent(store, agent_id, report, 1, t0, software__hash="a" * 64,
          software__packages=_packages("1.0"))
    batch = []
    for seq, packages in ((2, _packages("2.0")), (3, None)):
        r = copy.deepcopy(report)
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
        r["collected_at"] = f"2026-03-01T00:0{seq}:00Z"
        r["software"].update(hash="b" * 64, packages=packages)
        batch.append(Incoming(agent_id, r, json.dumps(r).encode(), t0 + timedelta(minutes=seq)))
    assert store.store_reports(batch) == ["stored", "stored"]
    assert [(c["kind"], c["subject"], c["report_id"]) for c in store.changes()] == [
        ("software_updated", f"pkg{i}", f"{agent_id}:1:2") for i in range(2)]
    assert store.host_detail(agent_id, None)["packages"] == _packages("2.0")
    store.close()


def test_a_report_changing_state_and_software_records_both(tmp_path, report):
    """Both kinds of change of one report are kept."""
    from datetime import datetime, timezone

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    _sent(store, agent_id, report, 1, t0, system__hostname="pc-old", software__hash="a" * 64,
          software__packages=_packages("0.9", 1))
    _sent(store, agent_id, report, 2, t0 + timedelta(minutes=5), system__hostname="pc-new",
          software__hash="b" * 64, software__packages=_packages("1.0"))
    assert sorted((c["kind"], c["subject"]) for c in store.changes()) == [
        ("hostname_changed", None), ("software_installed", "pkg1"),
        ("software_updated", "pkg0")]
    assert store.host_detail(agent_id, None)["packages"] == _packages("1.0")
    store.close()


def test_a_reopened_store_keeps_the_list_and_forgets_a_clone_that_changed(tmp_path, report):
    """After a restart, from what the table kept: the same software hash without its list
    is no change (the list stays); a serial that changed is no longer the clone of the host
    that shares the old one. Stored facts are compact UTF-8."""
    from datetime import datetime, timezone

    store = open_test_store(tmp_path)
    first, clone = _enrolled(store, site="A"), _enrolled(store, site="B")
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    _sent(store, first, report, 1, t0, system__hostname="pc-é", software__hash="a" * 64,
          software__packages=_packages("1.0"), hardware__serial="S-1", hardware__uuid="U-1")
    _sent(store, clone, report, 1, t0, hardware__serial="S-1", hardware__uuid="U-2")
    assert store.host_detail(clone, None)["identity_conflict"] == first
    facts = store.db.execute("SELECT facts FROM hosts WHERE agent_id = ?", (first,)).fetchone()
    assert json.loads(facts[0])["hostname"] == "pc-é"
    if store.dialect == "sqlite":  # PostgreSQL keeps facts as JSONB, not as the text sent
        assert '"hostname":"pc-é"' in facts[0]
    store.close()

    store = open_test_store(tmp_path)
    _sent(store, first, report, 2, t0 + timedelta(minutes=5), system__hostname="pc-é",
          software__hash="a" * 64, software__packages=None, hardware__serial="S-2",
          hardware__uuid="U-1")
    assert [(c["kind"], c["new_value"]) for c in store.changes()] == [("serial_changed",
                                                                       "S-2")]
    assert store.host_detail(first, None)["packages"] == _packages("1.0")
    assert store.host_detail(clone, None)["identity_conflict"] is None
    assert store.host_detail(first, None)["identity_conflict"] is None
    store.close()


def test_a_report_that_changes_nothing_reads_nothing_of_its_host_back(tmp_path, report):
    """What the last report showed is kept in memory, with a digest of its state, so the usual
    report (nothing changed) is stored without reading its host back; after a restart, one
    read of the host's last state, and not its snapshot."""
    import re
    from datetime import datetime, timezone

    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
    _sent(store, agent_id, report, 1, t0, software__hash="a" * 64,
          software__packages=_packages("1.0"))
    reads: list[str] = []

    def traced(sql: str) -> None:
        if re.search(r"\bfrom\s+hosts\b", sql, re.IGNORECASE):
            reads.append(sql)

    trace_statements(store, traced)
    _sent(store, agent_id, report, 2, t0 + timedelta(minutes=5), software__hash="a" * 64,
          software__packages=None)
    assert reads == []
    store.close()

    store = open_test_store(tmp_path)
    trace_statements(store, traced)
    _sent(store, agent_id, report, 3, t0 + timedelta(minutes=10), software__hash="a" * 64,
          software__packages=None)
    assert len(reads) == 1, reads
    assert store.changes() == []
    store.close()


def test_a_batch_of_usual_reports_is_written_together_and_still_refuses_resends(tmp_path,
                                                                              report):
    """Reports that repeat their host's last are written together (one statement for all
    their samples and one for their hosts on PostgreSQL), answered in the batch's order; one
    among them whose id was stored already, even sent again with a later time, is still a
    duplicate and changes nothing; a host's second report in the batch follows its first."""
    store = open_test_store(tmp_path)
    agents = [_enrolled(store, site=f"site {n}") for n in range(3)]
    t0 = utcnow() - timedelta(minutes=30)
    firsts = [_sent(store, a, report, 1, t0) for a in agents]

    def incoming(agent_id: str, seq: int, minutes: int, cpu: float) -> Incoming:
        r = copy.deepcopy(report)
        r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
        r["collected_at"] = (t0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
        r["health"]["cpu_percent"] = cpu
        return Incoming(agent_id, r, json.dumps(r).encode(), t0 + timedelta(minutes=minutes))

    replayed = incoming(agents[1], 1, 5, 55.0)  # the first report's id, a later time
    batch = [incoming(agents[0], 2, 5, 11.0), replayed, incoming(agents[2], 2, 5, 33.0),
             incoming(agents[0], 3, 6, 12.0)]
    assert store.store_reports(batch) == ["stored", "duplicate", "stored", "stored"]
    shown = [store.host_detail(a, None)["report"] for a in agents]
    assert [r["report_id"] for r in shown] == [f"{agents[0]}:1:3", f"{agents[1]}:1:1",
                                               f"{agents[2]}:1:2"]
    assert [r["health"]["cpu_percent"] for r in shown] == [
        12.0, firsts[1]["health"]["cpu_percent"], 33.0]
    assert [store.report_count(a) for a in agents] == [3, 1, 2]
    assert [h["last_seen"] for h in (store.host_detail(a, None) for a in agents)] == [
        iso(t0 + timedelta(minutes=6)), iso(t0), iso(t0 + timedelta(minutes=5))]
    # Sent again, the batch's reports are all duplicates now.
    assert store.store_reports(batch[:1] + batch[2:]) == ["duplicate"] * 3
    assert store.changes() == []
    store.close()


def test_a_host_that_reported_through_another_hub_is_read_back_once_it_reconnects(
        tmp_path, report):
    """A hub remembers each host's last report; when the agent connects to it again, what it
    remembers may be stale (another hub stored reports since), so the host is read back: a
    report that repeats what this hub saw last still rewrites what the other hub stored."""
    here, there = open_test_store(tmp_path), open_test_store(tmp_path)
    agent_id = _enrolled(here)
    t0 = utcnow() - timedelta(minutes=30)
    _sent(here, agent_id, report, 1, t0, system__users=["alice"])
    _sent(there, agent_id, report, 2, t0 + timedelta(minutes=5), system__users=["bob"])
    here.agent_connected("hub-here", agent_id, t0 + timedelta(minutes=9))
    r3 = _sent(here, agent_id, report, 3, t0 + timedelta(minutes=10), system__users=["alice"])
    assert here.host_detail(agent_id, None)["report"] == {
        **r3, "software": {**r3["software"], "packages": None}}
    there.close()
    here.close()


def test_a_report_that_changes_only_volatile_sections_leaves_the_snapshot_as_written(
        tmp_path, report):
    """A report whose only news is in its volatile sections (id, times, agent, health,
    probe results) writes those alone, not the snapshot again; the host's detail, its
    dropped-reports figure and a restarted store still show the newest report whole, in its
    keys' order. A change anywhere else writes the snapshot again."""
    store = open_test_store(tmp_path)
    agent_id = _enrolled(store)
    t0 = utcnow() - timedelta(minutes=30)
    without_list = lambda r: {**r, "software": {**r["software"], "packages": None}}  # noqa: E731
    compact = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))  # noqa: E731

    def stored() -> tuple[str, str | None]:
        row = store.db.execute("SELECT snapshot, live FROM hosts WHERE agent_id = ?",
                               (agent_id,)).fetchone()
        return row[0], row[1]

    def shown() -> dict:
        return store.host_detail(agent_id, None)["report"]

    r1 = _sent(store, agent_id, report, 1, t0)
    assert stored() == (compact(without_list(r1)), None)
    r2 = _sent(store, agent_id, report, 2, t0 + timedelta(minutes=5),
               health__cpu_percent=97.5, agent__dropped_reports=4,
               connectivity={"probes": [], "rates": {}})
    assert stored()[0] == compact(without_list(r1))  # not written again
    assert json.dumps(shown()) == json.dumps(without_list(r2))  # same keys, same order
    (host,) = store.alert_hosts([agent_id])
    assert host.dropped_reports == 4
    store.close()

    store = open_test_store(tmp_path)  # the digest comes from the table after a restart
    r3 = _sent(store, agent_id, report, 3, t0 + timedelta(minutes=10), health__cpu_percent=1.0)
    assert stored()[0] == compact(without_list(r1))
    assert json.dumps(shown()) == json.dumps(without_list(r3))
    r4 = _sent(store, agent_id, report, 4, t0 + timedelta(minutes=15),
               system__users=["someone-else"])
    assert stored() == (compact(without_list(r4)), None)
    assert json.dumps(shown()) == json.dumps(without_list(r4))
    assert store.changes() == []
    store.close()
