"""The store's base: a migrated database (SQLite or PostgreSQL, see `_database.py`) that
every part of the store shares, and the ways to open one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from estate.inventory.private_files import private_file
from estate.inventory.store._database import Database
from estate.inventory.store._sqlite import SqliteDatabase
from estate.inventory.store._url import StoreUrl

DB_NAME = "estate.db"

_Opened = TypeVar("_Opened", bound="Connection")


class Connection:
    """One database connection, migrated to the current schema; the base of every part."""

    def __init__(self, db: Database) -> None:
        self.db = db
        try:
            db.migrate()
        except BaseException:
            db.close()  # a store refused (newer schema, server gone) keeps no connection
            raise

    @classmethod
    def open(cls: type[_Opened], data_dir: Path, durable: bool = True) -> _Opened:
        """The SQLite store in a hub's data folder, created there if new."""
        return cls(database(None, data_dir, durable))

    @classmethod
    def connect(cls: type[_Opened], url: StoreUrl, durable: bool = True,
                export_url: StoreUrl | None = None) -> _Opened:
        """The store a `--store` URL names (see `_url.py`); raises `StoreUnavailable` with
        one line to show when it cannot be reached."""
        return cls(database(url, None, durable, export_url))

    @staticmethod
    def exists(data_dir: Path) -> bool:
        """Whether `data_dir` holds a store (a hub has run there)."""
        return (data_dir / DB_NAME).exists()

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        self.db.close()

    def schema_version(self) -> int:
        return self.db.schema_version()

    def _transaction(self) -> Any:
        return self.db.transaction()


def database(url: StoreUrl | None, data_dir: Path | None, durable: bool = True,
             export_url: StoreUrl | None = None) -> Database:
    """A connection to the store a URL names (without one: `estate.db` in `data_dir`), not
    yet migrated: `estate-hub store migrate` reads its version first."""
    if url is None or url.dialect == "sqlite":
        path = url.path if url is not None else data_dir / DB_NAME if data_dir else None
        assert path is not None, "an SQLite store needs a URL or a data folder"
        # 0700 folder, 0600 file: the token table and audit log are no one else's to read.
        return SqliteDatabase(private_file(path.parent, path.name), durable)
    from estate.inventory.store._postgres import PostgresDatabase  # only with the extra

    return PostgresDatabase(url, durable, export_url)
