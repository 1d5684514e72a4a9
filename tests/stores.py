"""Which store backend the tests run on: SQLite, or PostgreSQL with ESTATE_TEST_STORE=postgresql.

The store contract and the hub's end-to-end tests open their stores here, never with
`Store.open` directly, so one test body checks both backends (`make test` runs the chosen
modules a second time on PostgreSQL). On SQLite a store lives in its folder, as in production;
on PostgreSQL the folder names a database of one throwaway cluster per test process (started
on first use, stopped at exit), created on first use and the same one on every reopen.
Tests about SQLite itself (its file, WAL, PRAGMAs) carry the `sqlite_only` marker.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from estate.inventory.store import ENV_VAR, Store, StoreUrl
from tests.postgres import PostgresCluster, skip_or_fail_without_postgres

BACKENDS = ("sqlite", "postgresql")
BACKEND = os.environ.get("ESTATE_TEST_STORE", "sqlite") or "sqlite"
if BACKEND not in BACKENDS:
    raise RuntimeError(f"ESTATE_TEST_STORE={BACKEND!r}: use one of {', '.join(BACKENDS)}")
ON_POSTGRES = BACKEND == "postgresql"

_cluster: PostgresCluster | None = None
_created: set[str] = set()
_opened: list[Store] = []  # closed after each test (tests/conftest.py), even a failed one


def cluster() -> PostgresCluster:
    """The test process's PostgreSQL cluster, started on first use and stopped at exit."""
    global _cluster
    if _cluster is None:
        skip_or_fail_without_postgres()
        _cluster = PostgresCluster().start()
        atexit.register(_cluster.stop)
    return _cluster


def database_name(folder: Path) -> str:
    """A database name of at most 63 bytes that only this folder maps to."""
    digest = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:24]
    return f"t_{digest}"


def test_store_url(folder: Path) -> str | None:
    """The `--store` URL of the store kept for `folder`: None on SQLite (the folder's own
    estate.db); on PostgreSQL its database, created empty the first time."""
    if not ON_POSTGRES:
        return None
    import psycopg

    server, name = cluster(), database_name(folder)
    if name not in _created:
        with psycopg.connect(server.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # hex name
        _created.add(name)
    return server.url_for(name)


test_store_url.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def open_test_store(folder: Path, durable: bool = True) -> Store:
    """`Store.open(folder)` on the backend under test."""
    url = test_store_url(folder)
    if url is None:
        return Store.open(folder, durable)
    store = Store.connect(StoreUrl.parse(url), durable)
    _opened.append(store)
    return store


def close_stores() -> None:
    """Close the PostgreSQL stores a test left open: psycopg warns of each connection
    collected open, and the suite makes every warning an error."""
    while _opened:
        _opened.pop().close()


def store_env(folder: Path) -> dict[str, str]:
    """The environment that points an admin verb run with `--data folder` at its store."""
    url = test_store_url(folder)
    return {ENV_VAR: url} if url else {}


def database_errors() -> tuple[type[Exception], ...]:
    """What the backend under test raises when a statement is refused (a trigger, a type)."""
    if ON_POSTGRES:
        import psycopg

        return (psycopg.Error,)
    return (sqlite3.DatabaseError,)


def tamper(folder: Path, sql: str, args: tuple[Any, ...] = ()) -> None:
    """Change a store behind Estate's back, as someone with its file or its database could:
    past the audit log's append-only guard, on a connection of its own (`?` placeholders)."""
    url = test_store_url(folder)
    if url is None:
        db = sqlite3.connect(folder / "estate.db")
        db.execute("DROP TRIGGER IF EXISTS audit_no_update")
        db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        db.execute(sql, args)
        db.commit()
        db.close()
        return
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        # A superuser's session in replica mode fires no ordinary trigger: the guard sleeps.
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql.replace("?", "%s"), args)  # type: ignore[arg-type]  # test literals


def trace_statements(store: Store, traced: Callable[[str], None]) -> None:
    """Call `traced` with the SQL of every statement `store` runs from now on."""
    if store.dialect == "sqlite":
        store.db.conn.set_trace_callback(traced)  # type: ignore[attr-defined]
        return
    db: Any = store.db
    execute, cursor = db.execute, db.cursor

    def traced_execute(sql: str, *args: Any) -> Any:
        traced(sql)
        return execute(sql, *args)

    def traced_cursor() -> Any:
        made = cursor()
        run = made.execute

        def traced_run(sql: str, *args: Any) -> Any:
            traced(sql)
            return run(sql, *args)

        made.execute = traced_run
        return made

    db.execute, db.cursor = traced_execute, traced_cursor


def table_names(store: Store) -> list[str]:
    """The store's tables, sorted (on PostgreSQL, a partitioned table without its parts)."""
    if store.dialect == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = ("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
               "AND relkind IN ('r', 'p') AND NOT relispartition")
    return sorted(row[0] for row in store.db.execute(sql))
