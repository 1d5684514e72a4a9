"""The PostgreSQL backend: the store on a database server, for estates past one machine.

The record classes' SQL runs unchanged: `?` placeholders become `%s`, rows read by index and
by name like `sqlite3.Row`, and the schema is SQLite's migrations with PostgreSQL's types
(`_pg_ddl`): 64-bit integers, double precision, bytea, `facts` as JSONB, and text in the "C"
collation so that every order (hostnames, agent ids, ISO times) is byte order, as on SQLite.

What SQL does not share lives here: a write transaction takes an advisory lock, so writers in
every process are serialised as SQLite's BEGIN IMMEDIATE serialises them (the audit chain reads
its last row and appends to it); migrations run under another advisory lock, so two hubs
starting at once do not both migrate; a transaction that writes watch events NOTIFYs, and
each hub LISTENs on one connection of its own (`wait_for_events`), so every hub's watchers hear
of every hub's events without polling fast.

A write transaction runs in pipeline mode: statements whose results nobody reads (BEGIN, the
lock, a host's upsert, COMMIT) travel with the next one whose answer is
read, so a batch of reports waits on the server only where the store reads an answer (once per
unchanged report: its sample's insert, which says whether it was a resend) rather than once
per statement. When the server restarts, the statement that finds out fails (its batch is told
to retry) and the next one reconnects.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from estate.inventory.store._common import first_line
from estate.inventory.store._migrations import MIGRATIONS, apply_migrations
from estate.inventory.store._partitions import PartitionedHistory
from estate.inventory.store._url import StoreUnavailable, StoreUrl

try:
    import psycopg
    from psycopg import pq
    from psycopg.rows import tuple_row
    from psycopg.types.string import TextLoader
except ImportError:  # pragma: no cover - depends on the installation
    psycopg = None  # type: ignore[assignment]

# Advisory lock keys (any two constants no other application on the database uses).
_WRITE_LOCK = 0x45535441_5445_0001 & 0x7FFFFFFFFFFFFFFF
_MIGRATE_LOCK = 0x45535441_5445_0002 & 0x7FFFFFFFFFFFFFFF
_PACK_LOCK = 0x45535441_5445_0003 & 0x7FFFFFFFFFFFFFFF  # held by the one hub packing
_CONNECT_TIMEOUT_S = 10
_STREAM_ROWS = 2000  # rows an export's server-side cursor fetches at a time
_EVENTS_CHANNEL = "estate_events"  # NOTIFY/LISTEN: a hub wrote watch events

_AUDIT_GUARD = (
    """CREATE OR REPLACE FUNCTION estate_audit_append_only() RETURNS trigger
       LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
       FOR EACH ROW EXECUTE FUNCTION estate_audit_append_only()""",
    """CREATE OR REPLACE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
       FOR EACH STATEMENT EXECUTE FUNCTION estate_audit_append_only()""",
)


class PostgresDatabase:
    """One psycopg connection in autocommit mode (a write is a `transaction()`), or a
    read-only one in a single repeatable-read transaction (an export's consistent view)."""

    dialect = "postgresql"

    def __init__(self, url: StoreUrl, durable: bool = True,
                 export_url: StoreUrl | None = None, read_only: bool = False) -> None:
        if psycopg is None:
            raise StoreUnavailable("a PostgreSQL store needs psycopg: install Estate with the "
                                   "postgresql extra (pip install 'estate-inventory[postgresql]')")
        self.url, self.export_url, self.durable = url, export_url, durable
        self.name = str(url)
        self.IntegrityError: type[Exception] = psycopg.IntegrityError
        self.Error: type[Exception] = psycopg.Error
        self._read_only = read_only
        self._pipeline: Any = None  # psycopg's Pipeline while a write transaction runs
        self._listener: Any = None  # the connection `wait_for_events` listens on
        self._notified = False  # this write transaction has asked for its NOTIFY
        # The server process of `conn`: its own NOTIFYs are not news to this hub's reader.
        self._writer_pid = 0
        self.conn = self._connect()
        self.history = _History(self)

    def _connect(self) -> Any:
        try:
            conn = psycopg.connect(str(self.url), autocommit=not self._read_only,
                                   connect_timeout=_CONNECT_TIMEOUT_S,
                                   application_name="estate-hub")
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot open the store at {self.url}: "
                                   f"{first_line(exc)}") from None
        conn.row_factory = _row_factory
        self._writer_pid = conn.info.backend_pid
        # JSON columns come back as the text they hold, as on SQLite.
        conn.adapters.register_loader("jsonb", TextLoader)
        if self._read_only:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        elif not self.durable:
            # Seeding benchmarks only: a crash may lose the last commits, never corrupt.
            conn.execute("SET synchronous_commit = off")
        return conn

    def _reconnect_if_lost(self) -> None:
        """After the server restarted or a failover, the hub's connection is broken: a
        transaction that found out failed (its batch told to retry), the next statement
        reconnects. An export's read-only connection is not renewed: its snapshot is gone
        with it."""
        if self.conn.broken and not self._read_only and self._pipeline is None:
            self.conn.close()
            self.conn = self._connect()

    # --- statements -----------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        self._reconnect_if_lost()
        try:
            return _Cursor(self.conn, read_only=self._read_only,
                           pipeline=self._pipeline).execute(sql, params)
        except StoreUnavailable:
            # A statement on its own (an agent's login, the access check) that found the
            # connection lost runs once more on a new one: failed, the login would be
            # refused, and its agent would wait minutes before trying again.
            if self._pipeline is not None or self._read_only or not self.conn.broken:
                raise
            self._reconnect_if_lost()
            return _Cursor(self.conn, pipeline=self._pipeline).execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._reconnect_if_lost()
        with self.conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), (_pg_params(r) for r in rows))

    def cursor(self) -> _Cursor:
        # An export streams through a server-side cursor: a million rows never sit in memory.
        return _Cursor(self.conn, stream=self._read_only, read_only=self._read_only,
                       pipeline=self._pipeline)

    @property
    def in_transaction(self) -> bool:
        # In pipeline mode BEGIN may still wait to be sent: the server's status lags.
        return (self._pipeline is not None
                or self.conn.info.transaction_status != pq.TransactionStatus.IDLE)

    # --- transactions, schema, commits of others ------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # An error surfaces at the next result read, at the latest when the pipeline ends:
        # still inside this block, so the transaction is rolled back all the same.
        self._reconnect_if_lost()
        try:
            with self._pipelined_transaction():
                yield
        except psycopg.OperationalError as exc:  # found out at COMMIT, or at the sync
            raise StoreUnavailable(f"the store failed: {first_line(exc)}") from None

    @contextmanager
    def _pipelined_transaction(self) -> Iterator[None]:
        outer = self._pipeline
        with self.conn.pipeline() as pipeline:
            self._pipeline, self._notified = pipeline, False
            try:
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                    yield
            finally:
                self._pipeline = outer

    def migrate(self) -> int:
        """Apply what is missing in one transaction, under a lock that a second hub starting
        at the same moment waits on (and then finds nothing left to do)."""
        if self._read_only:
            return self.schema_version()
        try:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                                  "(version BIGINT NOT NULL)")
                current = self.schema_version()
                apply_migrations(self, current, self._run_ddl)
                if current < len(MIGRATIONS) or not self._has_audit_guard():
                    for sql in _AUDIT_GUARD:
                        self.conn.execute(sql)  # type: ignore[arg-type]
            return current
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot prepare the store at {self.name}: "
                                   f"{first_line(exc)}") from None

    def _run_ddl(self, sql: str) -> None:
        if (ddl := _pg_ddl(sql)) is not None:
            self.conn.execute(ddl)  # type: ignore[arg-type]  # our own literals

    def _has_audit_guard(self) -> bool:
        return self.conn.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'audit_append_only'"
                                 ).fetchone() is not None

    def schema_version(self) -> int:
        """0 for a new store (no schema yet)."""
        found: Any = self.conn.execute("SELECT to_regclass('schema_version')").fetchone()
        if found[0] is None:
            return 0
        row: Any = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def read_only(self) -> PostgresDatabase:
        """A connection for an export: to the standby `--export-store` names, if any."""
        return PostgresDatabase(self.export_url or self.url, read_only=True)

    @contextmanager
    def outside_a_transaction(self) -> Iterator[Any]:
        """The connection for work between transactions (the history's partitions): renewed
        after a lost server, as for a statement; losing it is `StoreUnavailable`."""
        self._reconnect_if_lost()
        try:
            yield self.conn
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the store failed: {first_line(exc)}") from None

    def json_text(self, text: str) -> str:
        # JSONB refuses the NUL character; U+FFFD stands for it, as on every screen.
        return text.replace("\\u0000", "\\ufffd")

    # --- waking other hubs' event readers -----------------------------------------------

    def notify_events(self) -> None:
        # Delivered at COMMIT, and folded: one notification per transaction, never one per
        # report. A wake-up only: readers read the events table, so a lost one costs a poll.
        # Asked once: the server would fold a second, but would still run its statement.
        if self._notified and self._pipeline is not None:
            return
        self._notified = True
        self.conn.execute(f"NOTIFY {_EVENTS_CHANNEL}")  # type: ignore[arg-type]  # a literal

    def wait_for_events(self, timeout_s: float) -> bool:
        """On the hub's listener thread, with its one dedicated connection: LISTEN, and
        wait. True too after (re)connecting, and after the connection failed (once its
        wait is over): notifications may have been missed meanwhile.

        A notification from this store's own writer is passed over: the hub wakes its
        reader itself after each of its commits (`Watch.wake`), and a second read for the
        same commit would cost the server as much as the first."""
        try:
            if self._listener is None or self._listener.broken:
                self._close_listener()
                self._listener = psycopg.connect(
                    str(self.url), autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S,
                    application_name="estate-hub listener")
                self._listener.execute(f"LISTEN {_EVENTS_CHANNEL}")  # type: ignore[arg-type]
                return True
            deadline = time.monotonic() + timeout_s
            # Bounded: each turn takes a notification or waits out the rest of the time.
            while (left := deadline - time.monotonic()) > 0:
                heard = list(self._listener.notifies(timeout=left, stop_after=1))
                if not heard:
                    return False
                if any(n.pid != self._writer_pid for n in heard):
                    return True
            return False
        except psycopg.Error:
            self._close_listener()
            time.sleep(timeout_s)  # the server is away: try again after a poll's wait
            return True

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self._close_listener()
        self.conn.close()


class _History(PartitionedHistory):
    """The partitions, on the store's connection as it is at each call (`_partitions.py`)."""

    def __init__(self, db: PostgresDatabase) -> None:
        super().__init__(db.conn, _WRITE_LOCK, _PACK_LOCK)
        self.db = db

    def ensure(self, table: str, days: Iterable[str]) -> None:
        with self.db.outside_a_transaction() as self.conn:
            super().ensure(table, days)

    def drop_before(self, table: str, day: str) -> int:
        with self.db.outside_a_transaction() as self.conn:
            return super().drop_before(table, day)

    def pack_finished_days(self) -> int:
        with self.db.outside_a_transaction() as self.conn:
            return super().pack_finished_days()

    def pack_apart(self) -> int:
        """`pack_finished_days` on a connection of its own, opened and closed here: for a
        thread other than the store's, whose reports go on meanwhile (a day's rebuild at
        20,000 hosts takes seconds)."""
        db = PostgresDatabase(self.db.url)
        try:
            return db.history.pack_finished_days()
        finally:
            db.close()

    def drop_resend_indexes(self, keep_days: int) -> int:
        with self.db.outside_a_transaction() as self.conn:
            return super().drop_resend_indexes(keep_days)


class _Cursor:
    """`sqlite3.Cursor`'s shape over a psycopg cursor: `row_factory = None` for tuples.

    A lost server (restarted, a standby stopped, or one cancelling an export's read for a
    replay conflict) is `StoreUnavailable`: one line, not a driver's traceback.
    """

    def __init__(self, conn: Any, stream: bool = False, read_only: bool = False,
                 pipeline: Any = None) -> None:
        self.conn, self.stream, self.read_only = conn, stream, read_only
        self.pipeline = pipeline
        self.row_factory: Any = _row_factory
        self.cur: Any = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        rows = self.row_factory or tuple_row
        if self.stream:
            self.cur = self.conn.cursor(name=f"estate_{id(self):x}", row_factory=rows)
            self.cur.itersize = _STREAM_ROWS
        else:
            self.cur = self.conn.cursor(row_factory=rows)
        try:
            self.cur.execute(_pg_sql(sql), _pg_params(params))
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None
        return self

    @property
    def rowcount(self) -> int:
        if self.cur is None:
            return -1
        if self.pipeline is not None and self.cur.pgresult is None:
            self.pipeline.sync()  # in pipeline mode the count comes with the result
        return int(self.cur.rowcount)

    def fetchone(self) -> Any:
        try:
            return self.cur.fetchone()
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None

    def fetchall(self) -> list[Any]:
        try:
            return list(self.cur.fetchall())
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None

    def __iter__(self) -> Iterator[Any]:
        # A client-side cursor holds every row already: only a stream reads on.
        return self._streamed() if self.stream else iter(self.cur)

    def _streamed(self) -> Iterator[Any]:
        try:
            yield from self.cur
            self.cur.close()  # read to the end: the server's cursor is done with too
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: Exception) -> Exception:
        """What the caller sees: one line naming which store, not a driver's traceback."""
        which = "the export store" if self.read_only else "the store"
        return StoreUnavailable(f"{which} failed: {first_line(exc)}")


@functools.lru_cache(maxsize=2048)
def _pg_sql(sql: str) -> str:
    """The shared dialect's placeholders in psycopg's: `?` -> `%s`, a literal `%` doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


def _pg_params(params: Sequence[Any]) -> list[Any]:
    """SQLite's values as PostgreSQL takes them: flags as integers (the columns are), and no
    NUL in text (PostgreSQL refuses it; a hostile agent must not fail a whole batch)."""
    out = []
    for p in params:
        if p.__class__ is bool:
            p = int(p)
        elif p.__class__ is str and "\x00" in p:
            p = p.replace("\x00", "\ufffd")
        elif p.__class__ is list:  # an array: a column of many rows' values
            p = _pg_params(p)
        out.append(p)
    return out


_TYPES = (
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bfacts TEXT\b"), "facts JSONB"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'),
)


def _pg_ddl(sql: str) -> str | None:
    """A migration statement as PostgreSQL runs it; None for SQLite's triggers (the audit
    guard is `_AUDIT_GUARD` here)."""
    head = sql.lstrip().upper()
    if head.startswith(("CREATE TRIGGER", "DROP TRIGGER")):
        return None
    if head.startswith(("CREATE TABLE", "ALTER TABLE")):
        for pattern, replacement in _TYPES:
            sql = pattern.sub(replacement, sql)
        sql = re.sub(r"\)\s*WITHOUT ROWID\s*$", ")", sql)  # SQLite's clustered tables
    return sql


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[tuple[Any, ...]]:
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)  # the first of a repeated name, as sqlite3.Row

    class Row(tuple):  # type: ignore[type-arg]
        """A row by index or by column name, like `sqlite3.Row`."""

        __slots__ = ()

        def __getitem__(self, key: Any) -> Any:
            if key.__class__ is str:
                return tuple.__getitem__(self, index[key])
            return tuple.__getitem__(self, key)

        def keys(self) -> list[str]:
            return list(names)

    return Row


def _row_factory(cursor: Any) -> Any:
    if cursor.description is None:
        return tuple
    return _row_class(tuple(c.name for c in cursor.description))
