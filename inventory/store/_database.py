"""What the store's record classes need of a database, whichever it is: the seam between the
SQL they share and the two backends (`_sqlite.py`, `_postgres.py`).

The record classes write one dialect: `?` placeholders, ISO times as text, `ON CONFLICT`
upserts, `RETURNING id`. A backend runs that SQL on its connection, answers rows that read by
index and by column name (like `sqlite3.Row`), and owns what SQL alone cannot share:
transactions and their locks, migrations, the counter of other processes' commits, waking
other hubs when events are written, and opening a read-only handle for an export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    """A statement's result: `sqlite3.Cursor`'s shape (rows are `Row`s, or plain tuples when
    `row_factory` is set to None before `execute`)."""

    rowcount: int
    row_factory: Any

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Database(Protocol):
    """One connection, used by one thread at a time."""

    dialect: str  # "sqlite" or "postgresql"
    # PostgreSQL: the history tables' day partitions (`_partitions.py`); SQLite: None.
    history: Any
    name: str  # where it is, for messages and logs (a path, or a URL without secrets)
    IntegrityError: type[Exception]  # a unique or foreign key constraint refused a write
    Error: type[Exception]  # the driver's root error (a server gone, a refused statement)

    # execute(sql, params=()) -> Cursor; executemany(sql, rows); cursor() -> Cursor. Read-only
    # callables rather than methods: SQLite's are its connection's own bound methods.
    @property
    def execute(self) -> Callable[..., Any]: ...

    @property
    def executemany(self) -> Callable[..., Any]: ...

    @property
    def cursor(self) -> Callable[..., Any]: ...

    @property
    def in_transaction(self) -> bool: ...

    def transaction(self) -> Any:
        """A context manager: one write transaction, committed on success, rolled back on
        any exception; writers of every process are serialised (the audit chain needs it)."""
        ...

    def migrate(self) -> int:
        """Create or bring the schema to this code's version (`SchemaTooNew` when newer);
        the version found first (under the migration lock where there is one)."""
        ...

    def schema_version(self) -> int: ...

    def read_only(self) -> Database:
        """A new read-only connection to the same store, for an export thread."""
        ...

    def json_text(self, text: str) -> str:
        """JSON text as this backend can store it in a JSON column."""
        ...

    def notify_events(self) -> None:
        """Inside a write transaction: wake every hub's event reader once it commits (at most
        once per transaction, however often asked)."""
        ...

    def wait_for_events(self, timeout_s: float) -> bool:
        """Block until a transaction that called `notify_events` committed (True) or
        `timeout_s` passed (False). The one call made from another thread than the
        connection's: it listens on a connection of its own, opened at the first call."""
        ...

    def close(self) -> None: ...
