"""Copying a whole store into another (`estate-hub store copy`): SQLite to PostgreSQL, or any
way between the two backends, resumably, with the counts checked at the end.

Both stores are at this Estate's schema version (a new destination is created). Each table is
read in its primary key's order, in batches that are one transaction each at the destination,
so an interrupted copy leaves whole batches behind: run again, it goes on after the highest key
each table holds there. Rows keep their ids and the audit rows their hashes, so the audit
chain still verifies. The source must not change meanwhile (stop its hub): the end check
compares every table's row count and the last audit hash, and names what differs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from estate.inventory.errors import StoreCopyRefused
from estate.inventory.store._base import DB_NAME, database
from estate.inventory.store._common import first_line, from_us, iso
from estate.inventory.store._database import Database
from estate.inventory.store._migrations import MIGRATIONS
from estate.inventory.store._partitions import PARTITIONED
from estate.inventory.store._sqlite import SqliteDatabase
from estate.inventory.store._url import StoreUnavailable, StoreUrl

BATCH_ROWS = 2000

# Every table and its primary key (its columns), each after the tables its foreign keys
# name. `audit` first: from the first batch on, a partial copy is known by its first audit
# row. Not here:
# `schema_version`, which migrating the destination writes (both stores must agree on it);
# `access_changes`, a counter that migrating writes too, read only for changes after the copy.
TABLES: tuple[tuple[str, str], ...] = (
    ("audit", "id"),
    ("agencies", "id"),
    ("sites", "id"),
    ("tokens", "id"),
    ("agents", "id"),
    ("hosts", "agent_id"),
    ("reports", "report_id"),
    ("samples", "agent_id, received_us"),
    ("changes", "id"),
    ("presence", "id"),
    ("operators", "name"),
    ("remote_sessions", "id"),
    # Rows a killed hub left (a clean stop leaves none): the agents' rows still name them,
    # and the destination's first hub removes them once past their timeout.
    ("hubs", "id"),
    # Each hub's newest event at least (pruning keeps it): its next run numbers on from it.
    ("events", "hub_id, seq"),
    # Compliance results and the policies hubs started with (`estate.inventory.compliance`).
    ("compliance", "id"),
    ("compliance_policies", "id"),
    # Estate health: probe policies, incidents and their timelines, the alert queue and the
    # dispatcher's positions. Leases name the hub holding them; they lapse within seconds.
    ("probe_policies", "agency, site"),
    ("incidents", "id"),
    ("incident_hosts", "incident_id, agent_id"),
    ("incident_events", "id"),
    ("notifications", "id"),
    ("alert_cursors", "name"),
    ("alert_firing", "rule, agent_id, condition"),
    ("leases", "name"),
)
# Columns a backend keeps as JSON: PostgreSQL's JSONB takes some text SQLite kept (`json_text`).
_JSON_COLUMNS = {"hosts": ("facts",)}


@dataclass(frozen=True)
class CopyProgress:
    """Where the copy of one table stands, after each batch committed at the destination."""

    table: str
    copied: int  # rows the destination holds now
    total: int  # rows the source holds
    rows_per_s: float  # this run's pace on this table (0 when it copied nothing)
    done: bool


@dataclass(frozen=True)
class TableCount:
    table: str
    source: int
    destination: int


@dataclass(frozen=True)
class CopyResult:
    """The end check: every table's rows on both sides, and the last audit row's hash."""

    counts: tuple[TableCount, ...]
    source_audit_hash: str | None
    destination_audit_hash: str | None

    @property
    def rows(self) -> int:
        return sum(c.destination for c in self.counts)

    @property
    def differences(self) -> list[str]:
        """One phrase for each table that differs (none: the copy is whole)."""
        found = [f"{c.table} ({c.source} rows in the source, {c.destination} in the copy)"
                 for c in self.counts if c.source != c.destination]
        if self.source_audit_hash != self.destination_audit_hash and not any(
                c.table == "audit" and c.source != c.destination for c in self.counts):
            found.append("audit (the last row's hash differs)")
        return found


def copy_store(source: StoreUrl | None, destination: StoreUrl, data_dir: Path | None = None,
               batch_rows: int = BATCH_ROWS,
               progress: Callable[[CopyProgress], None] | None = None) -> CopyResult:
    """Copy every row of `source` (None: the SQLite store in `data_dir`) into `destination`.

    Args:
        batch_rows: rows per batch, each one transaction at the destination.
        progress: told after every batch, and once for each table already copied.

    Returns:
        The end check; its `differences` are empty when the copy is whole.

    Raises:
        StoreCopyRefused: a store at another schema version, a destination holding another
            estate, the same store twice, or a database error that stopped the copy (whole
            batches are kept: running again goes on from there).
        StoreUnavailable: a store cannot be opened.
    """
    src = _open_source(source, data_dir)
    try:
        _check_version(src, "source")
        dst = database(destination, None)
        try:
            if dst.schema_version() == 0:
                dst.migrate()  # a new store: created here
            _check_version(dst, "destination")
            return _copy(src, dst, batch_rows, progress or (lambda _: None))
        finally:
            dst.close()
    except (sqlite3.Error, src.Error) as exc:  # before the copy began (`_copy` names its table)
        raise StoreUnavailable(f"cannot read the stores to copy: {first_line(exc)}") from None
    finally:
        src.close()


def _open_source(url: StoreUrl | None, data_dir: Path | None) -> Database:
    """The source, opened so that nothing is written to it: a file that is not there is not
    created, and a PostgreSQL session refuses writes."""
    if url is None or url.dialect == "sqlite":
        path = url.path if url is not None else data_dir / DB_NAME if data_dir else None
        assert path is not None, "an SQLite store needs a URL or a data folder"
        if not path.is_file():
            raise StoreUnavailable(f"no store at {path}")
        return SqliteDatabase(path, read_only=True)
    db = database(url, None)
    db.execute("SET default_transaction_read_only = on")
    return db


def _copy(src: Database, dst: Database, batch_rows: int,
          progress: Callable[[CopyProgress], None]) -> CopyResult:
    if _same_store(src, dst):
        raise StoreCopyRefused(f"the source and the destination are the same store "
                               f"({src.name})")
    if _holds_rows(dst) and _first_audit_hash(src) != _first_audit_hash(dst):
        raise StoreCopyRefused(
            f"{dst.name} holds another estate (its first audit row is not the source's): "
            f"copy into an empty store, or resume a copy of this source only")
    table = ""
    try:
        for table, key in TABLES:
            _copy_table(src, dst, table, key, batch_rows, progress)
        if dst.dialect == "postgresql":
            _move_identities_past_copied_ids(dst)
    except (src.Error, dst.Error, StoreUnavailable) as exc:
        raise StoreCopyRefused(f"the copy stopped in table {table}: {first_line(exc)} (whole "
                               f"batches are kept: run the same command again to go on)"
                               ) from None
    source_counts, copied = _counts(src), _counts(dst)
    return CopyResult(tuple(TableCount(t, source_counts[t], copied[t]) for t, _ in TABLES),
                      _last_audit_hash(src), _last_audit_hash(dst))


def _same_store(src: Database, dst: Database) -> bool:
    paths = [Path(db.name).resolve() if db.dialect == "sqlite" else db.name for db in (src, dst)]
    return paths[0] == paths[1]


def _check_version(db: Database, role: str) -> None:
    """A store to copy from or into must be at this Estate's schema version."""
    version, current = db.schema_version(), len(MIGRATIONS)
    if version == 0:
        raise StoreCopyRefused(f"the {role} {db.name} holds no estate (no schema)")
    if version > current:
        raise StoreCopyRefused(f"the {role} {db.name} has schema version {version}, newer "
                               f"than this Estate ({current}): copy with a newer Estate")
    if version < current:
        url = db.name if db.dialect == "postgresql" else f"sqlite:{db.name}"
        raise StoreCopyRefused(f"the {role} {db.name} has schema version {version}, this "
                               f"Estate {current}: run `estate-hub store migrate --store "
                               f"{url}` first")


def _copy_table(src: Database, dst: Database, table: str, key: str, batch_rows: int,
                progress: Callable[[CopyProgress], None]) -> None:
    """Keyset-page `table` from past the destination's highest key, one transaction a batch.

    The key's order is the same on both backends (SQLite's binary collation, PostgreSQL's
    "C"), so the destination's highest key is where the last whole batch ended.
    """
    total = _count(src, table)
    copied = _count(dst, table)
    key_columns = [c.strip() for c in key.split(",")]
    descending = ", ".join(f"{c} DESC" for c in key_columns)
    last = dst.execute(f"SELECT {key} FROM {table} ORDER BY {descending} LIMIT 1").fetchone()  # noqa: S608 - names from TABLES
    after = tuple(last) if last else None
    marks = ", ".join("?" for _ in key_columns)
    started, this_run, insert, json_at = time.monotonic(), 0, "", set[int]()
    partitioned_by = _partition_column(dst, table)
    while True:
        if after is None:
            rows = src.execute(f"SELECT * FROM {table} ORDER BY {key} LIMIT ?",  # noqa: S608
                               (batch_rows,)).fetchall()
        else:
            rows = src.execute(f"SELECT * FROM {table} WHERE ({key}) > ({marks}) "  # noqa: S608
                               f"ORDER BY {key} LIMIT ?", (*after, batch_rows)).fetchall()
        if not rows:
            break
        if not insert:
            # Columns by name from the source's rows: the backends' column orders may differ.
            columns = list(rows[0].keys())
            insert = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608 - the stores' own column names
                      f"({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING")
            json_at = {i for i, c in enumerate(columns) if c in _JSON_COLUMNS.get(table, ())}
        values = [tuple(r) for r in rows]
        if json_at:
            values = [tuple(dst.json_text(v) if i in json_at and isinstance(v, str) else v
                            for i, v in enumerate(row)) for row in values]
        if partitioned_by:
            # Outside the batch's transaction, as the hub does it: the days' partitions first.
            dst.history.ensure(table, {_day(r[partitioned_by]) for r in rows})
        with dst.transaction():
            dst.executemany(insert, values)
        after = tuple(rows[-1][c] for c in key_columns)
        copied += len(rows)
        this_run += len(rows)
        progress(CopyProgress(table, copied, total,
                              this_run / max(time.monotonic() - started, 1e-6), False))
    pace = this_run / max(time.monotonic() - started, 1e-6) if this_run else 0.0
    progress(CopyProgress(table, _count(dst, table), total, pace, True))


def _day(value: str | int) -> str:
    """The UTC day a partition key names: ISO text, or microseconds since 1970 (samples)."""
    return iso(from_us(value))[:10] if isinstance(value, int) else value[:10]


def _partition_column(dst: Database, table: str) -> str | None:
    """The column a PostgreSQL destination partitions `table` by by day, if it does: each
    batch's rows need their days' partitions before they go in."""
    if dst.history is None or table not in PARTITIONED:
        return None
    partitioned = dst.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = "
                              "to_regclass(?)", (table,)).fetchone()
    return PARTITIONED[table] if partitioned else None


def _move_identities_past_copied_ids(dst: Database) -> None:
    """PostgreSQL's identity columns draw from sequences that rows with explicit ids did not
    move: set each past its table's highest id, or the next new row would collide."""
    tables = {t for t, _ in TABLES}
    identities = dst.execute("SELECT table_name, column_name FROM information_schema.columns "
                             "WHERE table_schema = current_schema() AND is_identity = 'YES'"
                             ).fetchall()
    with dst.transaction():
        for table, column in identities:
            if table in tables:  # names the copy knows, never interpolated otherwise
                dst.execute(f"SELECT setval(pg_get_serial_sequence(?, ?), MAX({column})) "  # noqa: S608
                            f"FROM {table} HAVING MAX({column}) IS NOT NULL", (table, column))


def _count(db: Database, table: str) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608


def _holds_rows(db: Database) -> bool:
    return any(db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()  # noqa: S608
               for table, _ in TABLES)


def _counts(db: Database) -> dict[str, int]:
    return {table: _count(db, table) for table, _ in TABLES}


def _first_audit_hash(db: Database) -> str | None:
    row = db.execute("SELECT hash FROM audit ORDER BY id LIMIT 1").fetchone()
    return row[0] if row else None


def _last_audit_hash(db: Database) -> str | None:
    row = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    return row[0] if row else None
