"""The SQLite backend: one file in the hub's data folder (WAL), the embedded default."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from estate.inventory.store._migrations import apply_migrations

# SQLite only: PostgreSQL gets the same guarantee from a trigger of its own (`_postgres.py`).
_AUDIT_GUARDS = (
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)


class SqliteDatabase:
    """One SQLite connection in autocommit mode; `transaction()` is BEGIN IMMEDIATE, which
    takes the file's write lock at once, so writers in other processes queue behind it."""

    dialect = "sqlite"
    history = None  # no partitions: pruning deletes in chunks
    IntegrityError: type[Exception] = sqlite3.IntegrityError
    Error: type[Exception] = sqlite3.Error

    def __init__(self, path: Path, durable: bool = True, read_only: bool = False) -> None:
        self.path = path
        self.name = str(path)
        if read_only:
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                        check_same_thread=False)
        else:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                        timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged report survives a power cut, not only a killed process.
            # OFF only for seeding benchmarks and fuzzing, where speed is all that matters.
            self.conn.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
            self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.row_factory = sqlite3.Row
        # The connection's own methods, not wrappers: these run for every statement.
        self.execute = self.conn.execute
        self.executemany = self.conn.executemany
        self.cursor = self.conn.cursor

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def migrate(self) -> int:
        # One BEGIN IMMEDIATE for the reading and the whole upgrade: a second process opening
        # a new store at the same moment waits, then finds nothing left to do.
        with self.transaction():
            self.conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                              "(version INTEGER NOT NULL)")
            current = self.schema_version()
            apply_migrations(self, current, self.conn.execute)
            for sql in _AUDIT_GUARDS:
                self.conn.execute(sql)
        return current

    def schema_version(self) -> int:
        """0 for a new store (no schema yet)."""
        try:
            row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        except sqlite3.OperationalError:  # no such table: nothing was ever created
            return 0
        return int(row[0] or 0)

    def read_only(self) -> SqliteDatabase:
        return SqliteDatabase(self.path, read_only=True)

    def json_text(self, text: str) -> str:
        return text  # SQLite keeps JSON as the text it was given

    def notify_events(self) -> None:
        pass  # one hub per file: its own commits wake its reader (`Watch.wake`)

    def wait_for_events(self, timeout_s: float) -> bool:
        # Nothing else writes events to this file: the listener only paces the polling.
        time.sleep(timeout_s)
        return False

    def close(self) -> None:
        self.conn.close()
