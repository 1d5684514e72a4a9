"""The SQLite store's connection: opening (WAL, migrations), transactions, closing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TypeVar

from estate.inventory.errors import SchemaTooNew
from estate.inventory.private_files import private_file
from estate.inventory.store._migrations import MIGRATIONS

DB_NAME = "estate.db"

# SQLite only: PostgreSQL gets the same guarantee from REVOKE UPDATE, DELETE on the table.
_SQLITE_AUDIT_GUARDS = (
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)

_Opened = TypeVar("_Opened", bound="Connection")


class Connection:
    """One SQLite connection, migrated to the current schema; the base of every part."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                  timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged report survives a power cut, not only a killed process.
        # OFF only for seeding benchmarks and fuzzing, where speed is all that matters.
        self.db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    @classmethod
    def open(cls: type[_Opened], data_dir: Path, durable: bool = True) -> _Opened:
        # 0700 folder, 0600 file: the token table and audit log are no one else's to read.
        return cls(private_file(data_dir, DB_NAME), durable)

    @staticmethod
    def exists(data_dir: Path) -> bool:
        """Whether `data_dir` holds a store (a hub has run there)."""
        return (data_dir / DB_NAME).exists()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        if current > len(MIGRATIONS):
            raise SchemaTooNew(f"{self.path} has schema version {current}, newer than this "
                               f"Estate ({len(MIGRATIONS)}): upgrade Estate")
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            with self._transaction():
                for step in statements:
                    # A step is SQL, or a function of the connection for what SQL cannot do
                    # portably (hashing existing rows).
                    if callable(step):
                        step(self.db)
                    else:
                        self.db.execute(step)
                self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        for sql in _SQLITE_AUDIT_GUARDS:
            self.db.execute(sql)

    def schema_version(self) -> int:
        return int(self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    def outside_writes(self) -> int:
        """A counter that moves when another connection (an admin verb) commits; compare two
        readings to learn whether records may have changed under this process."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def _transaction(self) -> _Tx:
        return _Tx(self.db)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
