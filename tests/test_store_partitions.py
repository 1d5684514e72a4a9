"""PostgreSQL's history by day: reports and change events in day partitions, created as days
come, thinned past `--retention-days` and dropped past `--history-days` a whole day at a time;
a resent report refused by its unique key days later; an older store's history moved into
partitions by the migration; a finished day's index packed on a connection of its own, once,
while reports are stored. A real PostgreSQL cluster (tests/postgres.py)."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest

from estate.inventory.store import HostQuery, Store, StoreUrl, _migrations, _postgres, iso
from estate.inventory.store import _partitions as partitioning
from estate.inventory.store._migrations import MIGRATIONS
from tests.harness import wait_for
from tests.test_retention import (
    HISTORY,
    NOW,
    RETENTION,
    _a_year_of_reports,
    _Host,
    _incoming,
    _stored_rows,
)


@pytest.fixture
def pg_store(postgres, request):
    name = "p_" + request.node.name.lower()[:50].replace("[", "_").replace("]", "_")
    store = Store.connect(StoreUrl.parse(postgres.create_database(name)), durable=False)
    yield store
    store.close()


def _partitions(store: Store, table: str) -> dict[str, str | None]:
    """{partition name: its comment} of a partitioned table."""
    rows = store.db.conn.execute(
        "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass "
        "ORDER BY c.relname", (table,)).fetchall()
    return {r[0]: r[1] for r in rows}


def test_reports_and_changes_go_to_a_partition_of_their_day(pg_store, report):
    host = _Host(pg_store, report)
    day0 = NOW - timedelta(days=2)
    host.send(day0)
    host.send(day0 + timedelta(days=1), system__hostname="renamed")
    host.send(day0 + timedelta(days=2))
    days = [f"{(day0 + timedelta(days=n)):%Y%m%d}" for n in range(3)]
    assert set(_partitions(pg_store, "reports")) == {f"reports_d{d}" for d in days}
    assert set(_partitions(pg_store, "samples")) == {f"samples_d{d}" for d in days}
    assert set(_partitions(pg_store, "changes")) >= {f"changes_d{days[0]}",
                                                     f"changes_d{days[1]}"}
    assert [c.new_value for c in pg_store.changes()] == ["renamed"]  # in its day's partition
    kinds = pg_store.db.conn.execute("SELECT relkind FROM pg_class WHERE relname IN "
                                     "('reports', 'changes', 'samples')").fetchall()
    assert sorted(k[0] for k in kinds) == ["p", "p", "p"]  # partitioned tables


def test_a_report_resent_days_later_is_still_a_duplicate(pg_store, report):
    """Its ack was lost and the agent resends it from its spool after a weekend: the same
    collection day files it under the same partition, where its key refuses it."""
    host = _Host(pg_store, report)
    r = host.report(NOW - timedelta(days=3))
    assert pg_store.store_reports([_incoming(r, NOW - timedelta(days=3))]) == ["stored"]
    assert pg_store.store_reports([_incoming(r, NOW)]) == ["duplicate"]
    assert pg_store.report_count(host.agent_id) == 1


def test_a_made_up_collection_day_cannot_reach_a_missing_partition(pg_store, report):
    """A clock far off files the report within the week before it was received."""
    host = _Host(pg_store, report)
    assert host.send(NOW, collected=NOW - timedelta(days=900))
    assert host.send(NOW + timedelta(minutes=5), collected=NOW + timedelta(days=900))
    days = sorted(_partitions(pg_store, "reports"))
    assert days == [f"reports_d{(NOW - timedelta(days=7)):%Y%m%d}", f"reports_d{NOW:%Y%m%d}"]


def test_retention_and_history_drop_whole_days(pg_store, report):
    """Past the retention a day's samples go, past the history its kept bodies (one a day,
    and a change's) and its change events; within the retention every sample stays. Nothing
    is deleted row by row: whole days' partitions are dropped."""
    host = _Host(pg_store, report)
    renamed_at = NOW - timedelta(days=200)
    _a_year_of_reports(pg_store, host, (NOW - timedelta(days=410)).replace(hour=0),
                       timedelta(hours=6), {renamed_at: {"system__hostname": "renamed"}})
    pg_store.record_changes([])  # nothing to write: must not fail
    before, stored_before = host.rows(), _stored_rows(pg_store)
    removed = pg_store.prune_reports(NOW - RETENTION, NOW - HISTORY)
    after = host.rows()
    assert removed == stored_before - _stored_rows(pg_store) > 0
    horizon_day, retention_day = iso(NOW - HISTORY)[:10], iso(NOW - RETENTION)[:10]
    # Whole days: bodies by the day each report is filed under (when it was collected, a
    # second before it came), samples by the day they came.
    assert min(after)[0] >= horizon_day
    old = [(at, kept) for at, kept in after if at[:10] < retention_day]
    assert all(kept for _, kept in old)
    assert [at for at, _ in old if not at.endswith("T00:00:00.000000Z")] == [iso(renamed_at)]
    assert [r for r in before if r[0][:10] >= retention_day] == \
        [r for r in after if r[0][:10] >= retention_day]
    assert min(_partitions(pg_store, "samples")) == f"samples_d{retention_day.replace('-', '')}"
    assert min(_partitions(pg_store, "reports")) == f"reports_d{horizon_day.replace('-', '')}"
    # Pruning again removes nothing; the change history keeps the rename.
    assert pg_store.prune_reports(NOW - RETENTION, NOW - HISTORY) == 0
    assert pg_store.prune_changes(NOW - HISTORY) == 0
    assert any(c.new_value == "renamed" for c in pg_store.changes())
    assert pg_store.prune_changes(renamed_at + timedelta(days=1)) >= 1
    assert not any(c.new_value == "renamed" for c in pg_store.changes())
    # A year back still answers, from the day's kept report.
    year_ago = NOW - timedelta(days=365)
    with pg_store.reader() as reader:
        got = {h.agent_id: h.last_seen for h in reader.hosts_as_of(HostQuery(None), year_ago)}
    assert got == {host.agent_id: iso(year_ago.replace(hour=0))}


def test_a_finished_day_is_packed_apart_while_reports_are_stored(pg_store, report,
                                                                 monkeypatch):
    """Rebuilding a finished day's index takes seconds at 20,000 hosts (7 s measured): the
    hub runs `pack_history` off its store thread, on a connection of its own, so a report
    that comes meanwhile is stored and answered. Each day is packed once."""
    host = _Host(pg_store, report)
    host.send(NOW - timedelta(days=1))
    host.send(NOW)
    yesterday = partitioning.partition_name("samples", iso(NOW - timedelta(days=1))[:10])
    # Whatever holds the day's lock is taken for a batch of reports, not an export's long
    # snapshot, however long it is held here: the rebuild waits for it.
    monkeypatch.setattr(partitioning, "_LONG_TRANSACTION_S", 3600)
    url = str(pg_store.db.url)
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watcher:
        holder.execute(f"LOCK TABLE {yesterday} IN SHARE UPDATE EXCLUSIVE MODE")
        packed: list[int] = []
        packing = threading.Thread(target=lambda: packed.append(pg_store.pack_history()))
        packing.start()
        wait_for(lambda: watcher.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'REINDEX%' AND wait_event_type = 'Lock'").fetchone()[0] == 1,
            30, 0.05, "the rebuild waiting")
        # The store's own connection is free: a report is stored while the rebuild waits.
        sending = threading.Thread(target=host.send, args=(NOW + timedelta(minutes=5),))
        sending.start()
        sending.join(30)
        stored_meanwhile, still_packing = not sending.is_alive(), packed == []
        holder.rollback()
        sending.join(60)
        assert stored_meanwhile and still_packing
    packing.join(60)
    assert packed == [1]
    assert _partitions(pg_store, "samples")[yesterday] is not None  # marked: not again
    assert pg_store.pack_history() == 0


def test_one_hub_packs_at_a_time_and_the_others_leave_it(pg_store, report):
    host = _Host(pg_store, report)
    host.send(NOW - timedelta(days=1))
    host.send(NOW)
    with psycopg.connect(str(pg_store.db.url), autocommit=True) as other_hub:
        other_hub.execute("SELECT pg_advisory_lock(%s)", (_postgres._PACK_LOCK,))
        assert pg_store.pack_history() == 0  # at once, not after the other's
    assert pg_store.pack_history() == 1


def test_a_rebuild_cut_short_leaves_nothing_behind_once_the_day_is_packed(pg_store, report):
    """A hub killed during a rebuild leaves the new index, invalid (PostgreSQL's REINDEX
    CONCURRENTLY keeps it, and keeps writing it); the next pack drops it."""
    host = _Host(pg_store, report)
    host.send(NOW - timedelta(days=1, minutes=10))
    host.send(NOW - timedelta(days=1, minutes=5))  # two samples of one clock skew
    host.send(NOW)
    yesterday = partitioning.partition_name("samples", iso(NOW - timedelta(days=1))[:10])
    with psycopg.connect(str(pg_store.db.url), autocommit=True) as admin:
        with pytest.raises(psycopg.errors.UniqueViolation):  # as a rebuild fails half way
            admin.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {yesterday}_pkey_ccnew "
                          f"ON {yesterday} (clock_skew_s)")

        def indexes() -> list[tuple[str, bool]]:
            return sorted(admin.execute(
                "SELECT indexrelid::regclass::text, indisvalid FROM pg_index "
                "WHERE indrelid = %s::regclass", (yesterday,)).fetchall())

        assert (f"{yesterday}_pkey_ccnew", False) in indexes()
        assert pg_store.pack_history() == 1
        assert indexes() == [(f"{yesterday}_pkey", True), (f"{yesterday}_resend", True)]


def test_the_migration_moves_an_older_stores_history_into_partitions(postgres, report,
                                                                     monkeypatch):
    url = StoreUrl.parse(postgres.create_database("p_migration_8"))
    for module in (_postgres, _migrations):  # a store as an Estate of schema 7 made it
        monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS[:7])
    old = Store.connect(url)
    host = _Host(old, report)  # enrols: tokens, agents, audit rows at version 7
    old.db.execute("INSERT INTO reports (report_id, agent_id, received_at, collected_at, "
                   "clock_skew_s, body, probes) VALUES ('r1', ?, '2026-01-02T03:04:05Z', "
                   "'2026-01-02T03:04:04Z', 0, ?, NULL)", (host.agent_id, b"\x1f\x8b"))
    old.db.execute("INSERT INTO changes (agent_id, at, kind, subject, old_value, new_value, "
                   "report_id) VALUES (?, '2026-01-02T03:04:05Z', 'k', 's', 'a', 'b', 'r1')",
                   (host.agent_id,))
    assert old.schema_version() == 7
    old.close()
    for module in (_postgres, _migrations):
        monkeypatch.setattr(module, "MIGRATIONS", MIGRATIONS)
    store = Store.connect(url)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        assert set(_partitions(store, "reports")) == {"reports_d20260102"}
        assert set(_partitions(store, "changes")) == {"changes_d20260102"}
        assert _partitions(store, "samples") == {}
        row = store.db.execute("SELECT report_id, day FROM reports").fetchone()
        assert tuple(row) == ("r1", "2026-01-02")
        first = store.last_change_id()
        again = _Host(store, report, agent_id=host.agent_id)
        again.send(NOW)
        again.send(NOW + timedelta(minutes=5), system__hostname="moved")
        assert store.last_change_id() > first  # the identity goes on past the moved ids
        assert store.verify_audit().problem is None
    finally:
        store.close()


NAMES = ("one", "two", "three")


def test_watchers_are_sent_every_change_after_the_last_one_they_saw(pg_store, report):
    """`changes_after` bounds its search by the time of the last change it returned (a day's
    partition, not a year of them) and still misses none."""
    host = _Host(pg_store, report)
    host.send(NOW - timedelta(days=3))
    host.send(NOW - timedelta(days=2), system__hostname="one")
    first = pg_store.changes_after(0)
    assert [c.new_value for c in first if c.new_value in NAMES] == ["one"]
    host.send(NOW - timedelta(days=1), system__hostname="two")
    host.send(NOW, system__hostname="three")
    later = pg_store.changes_after(first[-1].id)
    assert [c.new_value for c in later if c.new_value in NAMES] == ["two", "three"]
    assert pg_store.changes_after(later[-1].id) == []
