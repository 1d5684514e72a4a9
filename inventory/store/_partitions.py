"""PostgreSQL's history tables, range-partitioned by day: created as days come and dropped
whole, never deleted row by row.

A partition holds one UTC day. `reports` (full bodies) is partitioned by its `day` (the day a
report is filed under, `_hosts.history_day`), `changes` by `at` (ISO text in the "C"
collation, so `[YYYY-MM-DD, next day)` in text order is the day), and `samples` by
`received_us` (microseconds since 1970). Past `--retention-days` a day of samples is dropped,
past `--history-days` a day of reports and of changes; each drop is one short transaction
under the store's write lock, so ingest waits for milliseconds, not for a delete.

A day of samples is also indexed by (agent, report id) while the resend check can reach it
(`_samples.py`): made with the day's partition, dropped a few days on (`drop_resend_indexes`),
so the check is one probe and the index's bytes are not kept for the whole retention. Once a
day is over, its key's index is rebuilt packed (`pack_finished_days`), on a connection and a
thread of its own: it takes seconds at 20,000 hosts.

SQLite has no partitions: its store deletes in small chunks (`_hosts.py`) instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Any

from estate.inventory.store._common import from_us, to_us

PARTITIONED = {"reports": "day", "changes": "at", "samples": "received_us"}
_KEYS = {"reports": "report_id, day", "changes": "id, at", "samples": "agent_id, received_us"}
_NAME = re.compile(r"^(reports|changes|samples)_d(\d{4})(\d{2})(\d{2})$")
_DAY_US = 86_400_000_000
_PACKED = "index packed: the day is over"  # the comment a packed samples partition carries
_LOCK_WAIT_MS = 1000  # how long dropping a day waits for a reader's lock before leaving it
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
_LONG_TRANSACTION_S = 1.0  # a transaction open longer is not a hub's batch (`pack_finished_days`)


def partition_name(table: str, day: str) -> str:
    return f"{table}_d{day.replace('-', '')}"


def day_us(day: str) -> int:
    """Microseconds since 1970 at the start of a UTC day (YYYY-MM-DD)."""
    return to_us(datetime.fromisoformat(day).replace(tzinfo=timezone.utc))


def _bounds(table: str, day: str) -> str:
    """FROM (...) TO (...) of the partition holding `day`."""
    following = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    if table == "samples":
        return f"FROM ({day_us(day)}) TO ({day_us(following)})"
    return f"FROM ('{day}') TO ('{following}')"


def resend_index_name(day: str) -> str:
    return f"{partition_name('samples', day)}_resend"


def create_resend_index(conn: Any, day: str) -> None:
    """The resend check's index on a day of samples (`_samples.py`), unless it has one."""
    conn.execute(f"CREATE INDEX IF NOT EXISTS {resend_index_name(day)} "
                 f"ON {partition_name('samples', day)} (agent_id, report_id)")


def create_partitions(conn: Any, table: str, days: Iterable[str]) -> None:
    """Create the partitions for these days (`YYYY-MM-DD`) that do not exist yet; a day of
    samples with its resend index."""
    for day in sorted(set(days)):
        date.fromisoformat(day)  # a bad day would be a bad table name: refuse it here
        name = partition_name(table, day)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {name} "
                     f"PARTITION OF {table} FOR VALUES {_bounds(table, day)}")
        if table == "samples":
            create_resend_index(conn, day)


def existing_days(conn: Any, table: str) -> list[str]:
    """The days `table` has a partition for, oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass", (table,)).fetchall()
    return sorted(f"{m[2]}-{m[3]}-{m[4]}" for (name,) in rows if (m := _NAME.match(name)))


def _long_transactions_open(conn: Any) -> bool:
    """Whether another session of this database (of this role: pg_stat_activity shows no
    more) has been inside a transaction for over `_LONG_TRANSACTION_S`: an export's snapshot
    or a backup's, not a hub's batch of reports."""
    return bool(conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND xact_start < now() - make_interval(secs => %s))",
        (_LONG_TRANSACTION_S,)).fetchone()[0])


def _count(conn: Any, name: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])  # noqa: S608 - our partition names


def _days_in(conn: Any, table: str, column: str) -> list[str]:
    """The UTC days of a table's rows, by the column it is to be partitioned by."""
    if column == "received_us":
        rows = conn.execute(f"SELECT DISTINCT received_us / {_DAY_US} FROM {table}")  # noqa: S608
        return [from_us(int(r[0]) * _DAY_US).date().isoformat() for r in rows]
    return [r[0] for r in conn.execute(f"SELECT DISTINCT substr({column}, 1, 10) FROM {table}")]  # noqa: S608


def partition_history(db: Any) -> None:
    """Migration step: turn the history tables into tables partitioned by day, rows,
    indexes, keys and identity kept. PostgreSQL only (SQLite keeps one table each)."""
    if db.dialect != "postgresql":
        return
    conn = db.conn
    for table, column in PARTITIONED.items():
        old = f"{table}_unpartitioned"
        conn.execute(f"ALTER TABLE {table} RENAME TO {old}")
        # Its key's index would take the new table's key's name.
        conn.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {table}_pkey TO {old}_pkey")
        indexes = [r[0] for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
            (old, old)).fetchall()]
        conn.execute(f"ALTER TABLE {old} ALTER COLUMN {column} SET NOT NULL")
        conn.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING IDENTITY, "
                     f"PRIMARY KEY ({_KEYS[table]}), "
                     f"FOREIGN KEY (agent_id) REFERENCES agents(id)) "
                     f"PARTITION BY RANGE ({column})")
        create_partitions(conn, table, _days_in(conn, old, column))
        conn.execute(f"INSERT INTO {table} SELECT * FROM {old}")  # noqa: S608 - our names
        conn.execute(f"DROP TABLE {old}")
        for definition in indexes:
            conn.execute(definition.replace(f" ON public.{old} ", f" ON public.{table} "))
        if table == "changes":  # the identity LIKE copied starts again at 1
            conn.execute("SELECT setval(pg_get_serial_sequence('changes', 'id'), "
                         "COALESCE((SELECT MAX(id) FROM changes), 0) + 1, false)")


class PartitionedHistory:
    """The history tables' partitions on one connection: what a PostgreSQL store does where
    SQLite's deletes rows (`Database.history`)."""

    def __init__(self, conn: Any, write_lock: int, pack_lock: int) -> None:
        self.conn, self.write_lock, self.pack_lock = conn, write_lock, pack_lock
        self.known: dict[str, set[str]] = {table: set() for table in PARTITIONED}

    def ensure(self, table: str, days: Iterable[str]) -> None:
        """Make sure rows of these days have a partition to go to (outside any transaction:
        the batch that needs them must not fail on a missing day)."""
        missing = set(days) - self.known[table]
        if not missing:
            return
        self.known[table] = set(existing_days(self.conn, table))
        missing -= self.known[table]
        if missing:
            with self._locked():  # as any write: a second hub waits, then finds the day
                create_partitions(self.conn, table, missing)
            self.known[table] |= missing

    def drop_before(self, table: str, day: str) -> int:
        """Drop `table`'s partitions of the days before `day`, one transaction each; the
        rows they held. A day an export still reads stays for the next prune: waiting for
        its lock would hold up the hub's store thread, and every report with it."""
        dropped = 0
        for old in existing_days(self.conn, table):
            if old >= day:
                break
            name = partition_name(table, old)
            # Counted before the lock, not under it: a past day takes no more rows.
            rows = _count(self.conn, name)
            if not self._drop_unless_busy(f"DROP TABLE {name}"):
                break
            dropped += rows
            self.known[table].discard(old)
        return dropped

    def drop_resend_indexes(self, keep_days: int) -> int:
        """Drop the resend index of the days of samples before the newest `keep_days`
        (samples are filed by the hub's own clock, so the newest is today), which the
        resend check no longer reaches (a check that did would read the day's key range
        instead); one short transaction each, and a day an export reads keeps it until the
        next prune, as in `drop_before`. The indexes dropped."""
        past = [resend_index_name(day) for day in existing_days(self.conn, "samples")[:-keep_days]]
        # One catalog query for the days that still have it (most lost it at earlier prunes).
        left = {r[0] for r in self.conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'i' AND relname = ANY(%s)",
            (past,)).fetchall()}
        dropped = 0
        for index in (i for i in past if i in left):
            if not self._drop_unless_busy(f"DROP INDEX IF EXISTS {index}"):
                break
            dropped += 1
        return dropped

    def _drop_unless_busy(self, drop: str) -> bool:
        """Run a DROP in a transaction of its own under the write lock, waiting at most
        `_LOCK_WAIT_MS` for a reader's lock on what it drops; False if it waited in vain."""
        try:
            with self._locked():
                self.conn.execute(f"SET LOCAL lock_timeout = {_LOCK_WAIT_MS}")
                self.conn.execute(drop)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            return False
        return True

    def pack_finished_days(self) -> int:
        """Rebuild the key index of each day of samples that is over, once: a day's samples
        arrive host after host, each into the middle of the index, whose pages split and
        stay about two thirds full; rebuilt, they are full (58 bytes a sample -> ~40).
        CONCURRENTLY: ingest goes on meanwhile, provided this runs on a connection and a
        thread of its own (`_postgres.py`, `pack_apart`). Every partition but the newest is
        a day over (samples are filed by the hub's own clock). The key alone: the day's
        resend index is dropped days later. One hub packs at a time: another finds the lock
        taken and leaves it. The days packed."""
        if _long_transactions_open(self.conn):
            # An export's snapshot: REINDEX CONCURRENTLY would wait for it to end, holding
            # its lock on the day meanwhile. The next prune packs.
            return 0
        if not self.conn.execute("SELECT pg_try_advisory_lock(%s)",
                                 (self.pack_lock,)).fetchone()[0]:
            return 0
        try:
            return self._pack()
        finally:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.pack_lock,))

    def _pack(self) -> int:
        packed = 0
        for day in existing_days(self.conn, "samples")[:-1]:
            name = partition_name("samples", day)
            comment = self.conn.execute("SELECT obj_description(%s::regclass, 'pg_class')",
                                        (name,)).fetchone()[0]
            if comment != _PACKED:
                indexes = self.conn.execute(
                    "SELECT indexrelid::regclass::text, indisprimary, indisvalid FROM pg_index "
                    "WHERE indrelid = %s::regclass", (name,)).fetchall()
                # A rebuild cut short (its hub killed, the server restarted) left its new
                # index behind, invalid but kept up: gone before the day is rebuilt again.
                for index, _, valid in indexes:
                    if not valid:
                        self.conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
                key = next(index for index, primary, valid in indexes if primary and valid)
                self.conn.execute(f"REINDEX INDEX CONCURRENTLY {key}")
                self.conn.execute(f"COMMENT ON TABLE {name} IS '{_PACKED}'")
                packed += 1
        return packed

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """A transaction holding the store's write lock (`_postgres.py`)."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.write_lock,))
            yield
