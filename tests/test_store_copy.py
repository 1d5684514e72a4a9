"""`estate-hub store copy`: a whole estate moved from SQLite to PostgreSQL (and back), resumed
after an interruption, refused onto another estate, and checked by its counts at the end."""

from __future__ import annotations

import copy
import itertools
import json
import re
import signal
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from estate.inventory.compliance import load_policy
from estate.inventory.errors import StoreCopyRefused
from estate.inventory.health._correlate import Open
from estate.inventory.probe_spec import ProbeSpec
from estate.inventory.store import (
    ChangeEvent,
    CopyProgress,
    Incoming,
    Store,
    StoreUrl,
    copy_store,
    iso,
)
from estate.inventory.store._copy import TABLES
from estate.inventory.store._migrations import MIGRATIONS
from tests.harness import Agent, HubProcess, make_report, run

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
_databases = itertools.count(1)


@pytest.fixture()
def pg_url(postgres) -> str:
    """An empty database of its own on the session's PostgreSQL cluster."""
    return postgres.create_database(f"copy{next(_databases)}")


@pytest.fixture()
def estate(tmp_path, report) -> Path:
    """An SQLite estate written through the store's own API: its data folder."""
    folder = tmp_path / "estate"
    store = Store.open(folder)
    try:
        _seed(store, report)
    finally:
        store.close()
    return folder


def _seed(store: Store, report: dict) -> None:
    """Something in every table: tokens (one revoked), agents (one revoked) with reports and
    changes, presence, a hub, operators, remote sessions (one ended, one live), audit rows."""
    admin, day = "admin:test", timedelta(days=1)
    schools = store.create_token("Écoles", "Saint-Jean", 2, day, admin)
    council = store.create_token("Council", "Town Hall", 1, day, admin)
    spare, _, _ = store.create_token("Council", "Depot", 1, day, admin)
    store.revoke_token(spare, admin)
    agents = [store.enrol(token_id, secret, f"ssh-ed25519 AAAAkey{n}", f"SHA256:key{n}",
                          f"pc-{n}")["agent_id"]
              for n, (token_id, secret, _) in enumerate((schools, schools, council))]
    store.apply_policy(load_policy(), admin)  # compliance results and the policy's record
    for n, agent_id in enumerate(agents):
        for seq in range(1, 5):
            r = copy.deepcopy(report)
            r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{seq}"
            at = T0 + timedelta(minutes=10 * seq, seconds=n)
            r["collected_at"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
            # A change with each of the first three reports; the fourth repeats the third
            # but for its volatile sections, kept beside the snapshot (`hosts.live`).
            r["system"]["hostname"] = f"pc-{n}-{min(seq, 3)}"
            r["health"]["cpu_percent"] = float(seq)
            r["hardware"]["serial"] = "SHARED-SERIAL"  # an identity conflict
            assert store.store_reports([Incoming(agent_id, r, json.dumps(r).encode(),
                                                 at)]) == ["stored"]
    # A hub killed while it held an agent's connection: its registry row stays behind.
    store.register_hub("hub-1", "192.0.2.9:2222", 30, "1.0", T0)
    store.set_presence(agents[0], True, T0)
    store.set_presence(agents[0], False, T0 + timedelta(minutes=5))
    store.agent_connected("hub-1", agents[1], T0 + timedelta(minutes=6))
    store.add_operator("olive", "ssh-ed25519 AAAAolive", "SHA256:olive", "admin", None, admin)
    store.add_operator("oscar", "ssh-ed25519 AAAAoscar", "SHA256:oscar", "viewer",
                       ["Council"], admin)
    store.set_remote_access(agents[0], True, admin)
    ended = store.session_started("olive", agents[0], "192.0.2.1:50000", T0)
    store.session_ended(ended, 1200, 34000, "closed", T0 + timedelta(minutes=3))
    store.session_started("olive", agents[0], "192.0.2.1:50001", T0 + timedelta(minutes=4))
    store.revoke_agent(agents[2], admin)
    store.audit(admin, "note", "x", {"text": 'ünïcode, "quotes", =1+1'})
    # Estate health: a probe policy; an incident with its hosts and timeline, acknowledged;
    # the correlator's lease; the alert queue, a read position and a firing host condition.
    store.set_probe_policy("Council", "", [ProbeSpec("dns-ext", "dns", "example.org",
                                                     interval_s=300, source="hub")], admin)
    assert store.take_lease("correlator", "hub-1", 30, T0)
    [incident] = store.apply_health([Open(
        "site_outage", "site:Écoles/Saint-Jean", "Écoles", "Saint-Jean", None, None,
        "Saint-Jean down", [(agents[0], iso(T0))], {"hosts": [agents[0]], "count": 1})],
        "hub-1", T0)
    store.ack_incident(incident, "operator:olive", None, T0 + timedelta(minutes=1))
    store.queue_alerts([("mail", "outages", f"incident:{incident}", '{"subject": "down"}')],
                       {"incident_events": 1}, [("disk", agents[1], "disk")], [], T0)


def _answers(store: Store) -> dict:
    """What the hub, the API and the admin verbs read, for comparing two stores."""
    agent_ids = [a.id for a in store.agents()]
    return {
        "hosts": store.hosts(),
        "details": [store.host_detail(a, None) for a in agent_ids],
        "reports": [store.recent_reports(a, None, 100) for a in agent_ids],
        "changes": store.changes(),
        "audit": store.audit_log(),
        "sessions": store.sessions(),
        "tokens": store.tokens(),
        "agents": store.agents(),
        "operators": store.operators(),
        "summary": store.summary(None),
        "probe_policies": store.probe_policies(),
        "incidents": [store.incident(i.id, None) for i in store.incidents(None, "all")],
        "notifications": store.notifications(["pending"]),
        "alert_cursors": store.alert_cursors(),
    }


def _sqlite(folder: Path) -> StoreUrl:
    return StoreUrl.parse(f"sqlite://{folder / 'estate.db'}")


def test_the_copy_covers_every_table_a_store_has(tmp_path, pg_url):
    """A migration that adds a table must add it to the copy too."""
    Store.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "estate.db")
    sqlite_tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = "
                                              "'table' AND name NOT LIKE 'sqlite_%'")}
    db.close()
    store = Store.connect(StoreUrl.parse(pg_url))
    pg_tables = {r[0] for r in store.db.execute(  # tables, not their day partitions
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
        "AND NOT c.relispartition")}
    store.close()
    migrated = {"schema_version", "access_changes"}  # migrating writes these
    copied = {table for table, _ in TABLES} | migrated
    assert sqlite_tables == copied == pg_tables


def test_an_estate_copied_to_postgresql_answers_as_it_did_and_grows_from_there(estate, pg_url,
                                                                               tmp_path):
    lines: list[CopyProgress] = []
    result = copy_store(_sqlite(estate), StoreUrl.parse(pg_url), progress=lines.append)
    assert result.differences == []
    assert {c.table for c in result.counts} == {t for t, _ in TABLES}
    assert all(c.source == c.destination > 0 for c in result.counts), result.counts
    assert [p.table for p in lines if p.done] == [t for t, _ in TABLES]
    assert result.source_audit_hash == result.destination_audit_hash is not None

    source, copied = Store.open(estate), Store.connect(StoreUrl.parse(pg_url))
    assert copied.dialect == "postgresql"
    try:
        want = _answers(source)
        assert _answers(copied) == want
        assert copied.verify_audit() == source.verify_audit()
        assert copied.verify_audit().bad_id is None
        assert copied.report_count() == source.report_count() == 12
        # Each host's last report only repeated its third: its volatile sections came along.
        assert copied.db.execute("SELECT COUNT(*) FROM hosts WHERE live IS NOT NULL"
                                 ).fetchone()[0] == 3
        # New rows take ids past the copied ones: the identity sequences moved.
        last_audit = want["audit"][0]["id"]
        copied.audit("admin:test", "after_copy", None)
        assert copied.audit_log(1)[0]["id"] == last_audit + 1
        assert copied.verify_audit().bad_id is None
        last_change = copied.last_change_id()
        copied.record_changes([ChangeEvent(iso(T0), want["agents"][0]["id"], "hostname",
                                           None, "a", "b")])
        assert copied.last_change_id() == last_change + 1 == source.last_change_id() + 1
        live = copied.session_started("olive", want["agents"][0]["id"], "192.0.2.9:1", T0)
        assert live == max(s["id"] for s in want["sessions"]) + 1
        copied.set_presence(want["agents"][1]["id"], False, T0)  # a presence id collided
    finally:
        source.close()
        copied.close()

    # And back: PostgreSQL to SQLite gives the same answers again.
    back = tmp_path / "back"
    result = copy_store(StoreUrl.parse(pg_url), _sqlite(back))
    assert result.differences == [] and result.rows > 0
    pg, again = Store.connect(StoreUrl.parse(pg_url)), Store.open(back)
    try:
        assert _answers(again) == _answers(pg)
        assert again.verify_audit().bad_id is None
    finally:
        pg.close()
        again.close()


def test_a_nul_an_agent_sent_does_not_stop_the_copy_to_postgresql(tmp_path, pg_url, report):
    """SQLite kept the NUL; PostgreSQL's text and JSONB refuse it: U+FFFD stands in for it,
    as when the hub stores such a report on PostgreSQL itself."""
    store = Store.open(tmp_path)
    token_id, secret, _ = store.create_token("Council", "Depot", 1, timedelta(days=1), "a:b")
    agent_id = store.enrol(token_id, secret, "ssh-ed25519 AAAAnul", "SHA256:nul", "pc")[
        "agent_id"]
    report["agent"]["id"], report["report_id"] = agent_id, f"{agent_id}:1:1"
    report["system"]["hostname"] = "nul\x00host"
    assert store.store_reports([Incoming(agent_id, report, json.dumps(report).encode(),
                                         T0)]) == ["stored"]
    assert "\\u0000" in store.db.execute("SELECT facts FROM hosts").fetchone()[0]
    store.close()
    assert copy_store(None, StoreUrl.parse(pg_url), tmp_path).differences == []
    copied = Store.connect(StoreUrl.parse(pg_url))
    try:
        (host,) = copied.hosts()
        assert host["hostname"] == "nul\ufffdhost"
        facts = json.loads(copied.db.execute("SELECT facts FROM hosts").fetchone()[0])
        assert "nul\ufffdhost" in json.dumps(facts, ensure_ascii=False)
    finally:
        copied.close()


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("stop_after", [1, 9])  # in the audit table's batches; later on
def test_an_interrupted_copy_goes_on_where_it_stopped(estate, pg_url, stop_after):
    source = Store.open(estate)
    counts = [int(source.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
              for t, _ in TABLES]
    source.close()
    # The batches of 3 rows the copy makes, table after table.
    batches = [min(3, n - start) for n in counts for start in range(0, n, 3)]
    assert len(batches) > stop_after and batches[0] == 3
    seen = itertools.count(1)

    def interrupt(step: CopyProgress) -> None:
        if not step.done and next(seen) == stop_after:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        copy_store(_sqlite(estate), StoreUrl.parse(pg_url), batch_rows=3, progress=interrupt)
    partial = Store.connect(StoreUrl.parse(pg_url))
    kept = sum(int(partial.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
               for t, _ in TABLES)
    partial.close()
    assert kept == sum(batches[:stop_after])  # whole batches, nothing more

    lines: list[CopyProgress] = []
    result = copy_store(_sqlite(estate), StoreUrl.parse(pg_url), batch_rows=3,
                        progress=lines.append)
    assert result.differences == []
    # The rerun copied only what was missing: the batches already there are skipped.
    assert len([p for p in lines if not p.done]) == len(batches) - stop_after
    source, copied = Store.open(estate), Store.connect(StoreUrl.parse(pg_url))
    try:
        assert _answers(copied) == _answers(source)
        assert copied.verify_audit().bad_id is None
    finally:
        source.close()
        copied.close()


def test_a_batch_the_destination_refuses_midway_leaves_none_of_its_rows(estate, pg_url):
    """A database error stops the copy with one line; the failed batch is rolled back whole,
    so a rerun (once the cause is gone) goes on from the last whole batch."""
    dest = Store.connect(StoreUrl.parse(pg_url))
    dest.db.execute("ALTER TABLE audit ADD CONSTRAINT refuse_row_5 CHECK (id <> 5)")
    with pytest.raises(StoreCopyRefused) as refused:
        copy_store(_sqlite(estate), StoreUrl.parse(pg_url), batch_rows=3)
    assert str(refused.value).startswith("the copy stopped in table audit: ")
    assert str(refused.value).endswith("(whole batches are kept: run the same command again "
                                       "to go on)")
    assert [r["id"] for r in dest.audit_log()] == [3, 2, 1]  # not row 4, its batch's first
    dest.db.execute("ALTER TABLE audit DROP CONSTRAINT refuse_row_5")
    dest.close()
    assert copy_store(_sqlite(estate), StoreUrl.parse(pg_url), batch_rows=3).differences == []


def test_a_destination_holding_another_estate_is_refused(estate, pg_url, tmp_path):
    other = Store.connect(StoreUrl.parse(pg_url))
    other.create_token("Elsewhere", "HQ", 1, timedelta(hours=1), "admin:other")
    before = _answers(other)
    other.close()
    with pytest.raises(StoreCopyRefused, match="holds another estate"):
        copy_store(_sqlite(estate), StoreUrl.parse(pg_url))
    done = run("-m", "estate.inventory.hub.cli", "store", "copy", "--data", str(estate),
               "--to", pg_url, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"estate-hub: {pg_url} holds another estate (its first audit row is not the "
        f"source's): copy into an empty store, or resume a copy of this source only"]
    other = Store.connect(StoreUrl.parse(pg_url))
    assert _answers(other) == before
    other.close()
    with pytest.raises(StoreCopyRefused, match="the same store"):
        copy_store(None, StoreUrl.parse(f"sqlite:{estate / 'estate.db'}"), estate)


def test_a_source_written_during_the_copy_is_named_by_the_end_check(estate, pg_url):
    """A hub still running on the source adds rows to tables already copied."""
    def hub_still_running(step: CopyProgress) -> None:
        if step.done and step.table == "agencies":
            source = Store.open(estate)
            source.audit("admin:test", "late", None)
            source.close()

    result = copy_store(_sqlite(estate), StoreUrl.parse(pg_url), progress=hub_still_running)
    (audit,) = [c for c in result.counts if c.table == "audit"]
    assert result.differences == [
        f"audit ({audit.source} rows in the source, {audit.source - 1} in the copy)"]


def test_the_cli_copies_and_exits_1_naming_the_tables_that_differ(estate, pg_url):
    cli = ("-m", "estate.inventory.hub.cli", "store", "copy", "--to", pg_url)
    done = run(*cli, "--from", f"sqlite:{estate / 'estate.db'}")
    rows = sum(int(n) for n in re.findall(r"/ (\d+) rows", done.stderr))
    assert done.stdout == (f"estate-hub: copied the store at sqlite:{estate / 'estate.db'} to "
                           f"{pg_url}: {rows} rows in {len(TABLES)} tables; the row counts "
                           f"and the last audit hash match\n")
    tables = [line.split(":")[1].strip() for line in done.stderr.splitlines()]
    assert tables == [t for t, _ in TABLES], done.stderr
    # Hubs went on writing to both (one started on the copy too early): a rerun names what
    # differs, even where the counts agree (each store's newest audit row is its own).
    copied, source = Store.connect(StoreUrl.parse(pg_url)), Store.open(estate)
    copied.set_presence(copied.agents()[0]["id"], True, T0)
    copied.audit("admin:copy", "late", None)
    source.audit("admin:source", "late", None)
    copied.close()
    source.close()
    again = run(*cli, "--data", str(estate), check=False)
    assert again.returncode == 1
    assert again.stderr.splitlines()[-1] == (
        "estate-hub: the copy differs from the source in: presence (3 rows in the source, 4 "
        "in the copy); audit (the last row's hash differs) (was either store written during "
        "the copy?)")


def test_stores_at_another_schema_version_are_refused_with_what_to_do(estate, tmp_path):
    older = tmp_path / "older.db"
    db = sqlite3.connect(older)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, steps in enumerate(MIGRATIONS[:3], start=1):
        for step in steps:
            assert isinstance(step, str)  # the first migrations are plain SQL
            db.execute(step)
        db.execute("INSERT INTO schema_version VALUES (?)", (version,))
    db.commit()
    db.close()
    cli = ("-m", "estate.inventory.hub.cli", "store", "copy")
    done = run(*cli, "--from", f"sqlite:{older}", "--to", f"sqlite:{tmp_path / 'new.db'}",
               check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"estate-hub: the source {older} has schema version 3, this Estate {len(MIGRATIONS)}: "
        f"run `estate-hub store migrate --store sqlite:{older}` first"]
    done = run(*cli, "--data", str(estate), "--to", f"sqlite:{older}", check=False)
    assert done.returncode == 1 and "the destination" in done.stderr
    assert "store migrate" in done.stderr
    newer = sqlite3.connect(estate / "estate.db")
    with newer:
        newer.execute("INSERT INTO schema_version VALUES (999)")
    newer.close()
    done = run(*cli, "--data", str(estate), "--to", f"sqlite:{tmp_path / 'new.db'}",
               check=False)
    assert done.returncode == 1
    assert "schema version 999, newer than this Estate" in done.stderr
    missing = run(*cli, "--from", f"sqlite:{tmp_path / 'none.db'}", "--to",
                  f"sqlite:{tmp_path / 'new.db'}", check=False)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [f"estate-hub: no store at {tmp_path / 'none.db'}"]
    assert not (tmp_path / "none.db").exists()


def test_a_hub_serves_the_copied_estate_and_its_agents_report_on(tmp_path, pg_url, report):
    """The move as an administrator makes it: stop the hub, copy, start it on PostgreSQL with
    the same data folder (its host key); an agent enrolled before reports on, unchanged."""
    hub = HubProcess(tmp_path / "hub").start()
    try:
        agent = Agent(hub, tmp_path / "agent")
        status, _ = agent.send(make_report(report, agent.agent_id))
        assert status == 0
    finally:
        assert hub.signal(signal.SIGTERM) == 0  # stopped, as the copy's --help asks
    run("-m", "estate.inventory.hub.cli", "store", "copy", "--data", str(hub.data),
        "--to", pg_url)
    moved = HubProcess(hub.data, ("--store", pg_url)).start()
    try:
        assert moved.fingerprint == hub.fingerprint  # the host key stayed in the data folder
        agent.hub = moved  # its new port
        status, answer = agent.send(make_report(report, agent.agent_id))
        assert status == 0, answer
        store = Store.connect(StoreUrl.parse(pg_url))
        try:  # acknowledged after its commit: there now
            assert store.report_count(agent.agent_id) == 2
            assert store.verify_audit().bad_id is None
        finally:
            store.close()
    finally:
        moved.kill()
