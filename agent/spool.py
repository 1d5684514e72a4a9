"""The agent's outbox: every report is written here before it is sent, deleted after the ack.

SQLite in WAL mode, bounded by count, bytes and age; when a bound is hit the oldest reports go
first and the count of dropped reports is kept, so the next report sent can tell the hub. A
spool that is corrupt is moved aside and a fresh one started: never a crash loop.

A report whose package list the hub already holds is kept as sent, by hash only
(`software.packages` null); the list itself is kept once per hash beside the outbox, so the
report can be rebuilt in full when the hub asks for it (`need_full`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from estate.inventory.errors import EstateError
from estate.inventory.private_files import private_dir, private_file

log = logging.getLogger("estate.agent")

__all__ = ["Spool", "SpoolFull", "SpoolLimits", "Spooled"]


class SpoolFull(EstateError):
    """The spool cannot take a report (disk full, read-only): send it directly instead."""


@dataclass(frozen=True)
class SpoolLimits:
    max_reports: int = 1000
    max_bytes: int = 50 * 1024 * 1024
    max_age_s: float = 7 * 86400


@dataclass(frozen=True)
class Spooled:
    seq: int
    report_id: str
    body: bytes
    software_hash: str | None = None  # the hash of the report's package list, if it has one
    by_hash: bool = False  # the body carries its package list by hash only


class Spool:
    def __init__(self, path: Path, limits: SpoolLimits | None = None) -> None:
        self.path = path
        self.limits = limits or SpoolLimits()
        self.db = self._open()

    # --- opening, and recovering from corruption ----------------------------------------

    def _open(self) -> sqlite3.Connection:
        private_dir(self.path.parent)  # reports name users, addresses and software
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("spool %s is unusable (%s); moved it to %s and started a new one",
                      self.path, exc, aside.name)
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(aside) + suffix))
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        # Created 0600 first: SQLite gives the -wal and -shm files the database's mode.
        private_file(self.path.parent, self.path.name)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, "
                       "report_id TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, "
                       "body BLOB NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, "
                       "value INTEGER NOT NULL)")
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            if "software_hash" not in columns:  # a spool from before reports by hash
                db.execute("ALTER TABLE outbox ADD COLUMN software_hash TEXT")
                db.execute("ALTER TABLE outbox ADD COLUMN by_hash INTEGER NOT NULL DEFAULT 0")
            # Package lists by their hash (JSON, gzip'd), for the reports sent by hash only.
            db.execute("CREATE TABLE IF NOT EXISTS package_lists (hash TEXT PRIMARY KEY, "
                       "packages BLOB NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, "
                       "value TEXT NOT NULL)")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    # --- counters -----------------------------------------------------------------------

    def _get(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _add(self, key: str, n: int) -> None:
        self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                        "DO UPDATE SET value = value + excluded.value", (key, n))

    def next_sequence(self) -> int:
        """A report sequence number that survives restarts (part of the report id)."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self._add("sequence", 1)
            value = self._get("sequence")
            self.db.execute("COMMIT")
            return value
        except sqlite3.OperationalError:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return time.time_ns() // 1_000_000  # still unique per boot; spool unusable

    def unreported_drops(self) -> int:
        """Reports dropped since the last report that told the hub about drops was acked."""
        return self._get("dropped") - self._get("dropped_reported")

    def drops_reported(self, n: int) -> None:
        if n:
            self.db.execute("BEGIN IMMEDIATE")
            self._add("dropped_reported", n)
            self.db.execute("COMMIT")

    # --- the outbox ---------------------------------------------------------------------

    def put(self, report_id: str, body: bytes, software_hash: str | None = None,
            by_hash: bool = False, packages: bytes | None = None) -> None:
        """Keep a report until it is acked; enforce the bounds by dropping the oldest.

        Args:
            software_hash: the hash of the report's package list, None when it has none.
            by_hash: `body` carries the package list by hash only.
            packages: the package list (`package_list` gives it back) when the spool does
                not hold it yet (`has_packages`); the spool keeps the list of this report and
                those of the reports waiting by hash only, no other.

        Raises:
            SpoolFull: the disk is full or read-only; the report was not kept.
        """
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO outbox (report_id, created_at, body, software_hash, "
                            "by_hash) VALUES (?, ?, ?, ?, ?) ON CONFLICT (report_id) DO NOTHING",
                            (report_id, time.time(), body, software_hash, int(by_hash)))
            if packages is not None and software_hash is not None:
                self.db.execute("INSERT INTO package_lists (hash, packages) VALUES (?, ?) "
                                "ON CONFLICT (hash) DO NOTHING", (software_hash, packages))
            dropped = self._enforce_bounds()
            self.db.execute("DELETE FROM package_lists WHERE hash IS NOT ? AND hash NOT IN "
                            "(SELECT software_hash FROM outbox WHERE by_hash = 1 "
                            "AND software_hash IS NOT NULL)", (software_hash,))
            if dropped:
                self._add("dropped", dropped)
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise SpoolFull(str(exc)) from None
        if dropped:
            log.warning("spool full: dropped the %d oldest report(s)", dropped)

    def _enforce_bounds(self) -> int:
        lim = self.limits
        cur = self.db.execute("DELETE FROM outbox WHERE created_at < ?",
                              (time.time() - lim.max_age_s,))
        dropped = cur.rowcount
        count, size = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM outbox").fetchone()
        while count > lim.max_reports or (size > lim.max_bytes and count > 1):
            seq, n = self.db.execute("SELECT seq, LENGTH(body) FROM outbox "
                                     "ORDER BY seq LIMIT 1").fetchone()
            self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            count, size, dropped = count - 1, size - n, dropped + 1
        return dropped

    def newest(self, excluding: Collection[int] = ()) -> Spooled | None:
        """The newest waiting report, but for those in `excluding`: after an outage the
        current state goes first."""
        row = self.db.execute("SELECT seq, report_id, body, software_hash, by_hash FROM outbox "
                              "WHERE seq NOT IN (SELECT value FROM json_each(?)) "
                              "ORDER BY seq DESC LIMIT 1",
                              (json.dumps(sorted(excluding)),)).fetchone()
        return Spooled(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

    def has_packages(self, software_hash: str) -> bool:
        return self.db.execute("SELECT 1 FROM package_lists WHERE hash = ?",
                               (software_hash,)).fetchone() is not None

    def package_list(self, software_hash: str) -> bytes | None:
        """A package list kept for reports waiting by hash only, as `put` was given it."""
        row = self.db.execute("SELECT packages FROM package_lists WHERE hash = ?",
                              (software_hash,)).fetchone()
        return bytes(row[0]) if row else None

    def acked_software(self) -> str | None:
        """The package list hash of the newest report the hub acked, as last saved."""
        row = self.db.execute("SELECT value FROM notes WHERE key = 'acked_software'").fetchone()
        return str(row[0]) if row else None

    def save_acked_software(self, software_hash: str | None) -> None:
        if software_hash is None:
            self.db.execute("DELETE FROM notes WHERE key = 'acked_software'")
        else:
            self.db.execute("INSERT INTO notes (key, value) VALUES ('acked_software', ?) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            (software_hash,))

    def ack(self, seq: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def depth(self) -> tuple[int, int]:
        """(reports waiting, their bytes)."""
        count, size = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM outbox").fetchone()
        return int(count), int(size)
