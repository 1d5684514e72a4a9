"""The store's audit log: append-only rows, each hash-chained to the one before it."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from estate.inventory.store._base import Connection
from estate.inventory.store._common import iso, utcnow
from estate.inventory.store._records import AuditCheck, AuditRow

AUDIT_GENESIS = "0" * 64  # the prev_hash of the first audit row


class AuditLog(Connection):
    def _audit(self, actor: str, action: str, target: str | None,
               detail: dict[str, Any] | None = None, at: datetime | None = None) -> None:
        """Append one audit row, chained to the one before it.

        Must run inside `_transaction()`: BEGIN IMMEDIATE holds SQLite's write lock from the
        read of the last row to this insert, so the hub and an admin verb in another process
        cannot both chain to the same row.
        """
        assert self.db.in_transaction, "audit rows are chained inside a write transaction"
        last = self.db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        row_id, prev = (last[0] + 1, last[1] or "") if last else (1, AUDIT_GENESIS)
        # Hashed as stored: PostgreSQL's text holds no NUL (U+FFFD stands for it there), and
        # a NUL anyone can put in a target (a probed host id) must not break the chain.
        actor, action = actor.replace("\x00", "\ufffd"), action.replace("\x00", "\ufffd")
        target = target.replace("\x00", "\ufffd") if target else target
        values = (row_id, iso(at or utcnow()), actor, action, target,
                  json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else None)
        self.db.execute(
            "INSERT INTO audit (id, at, actor, action, target, detail, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*values, prev, audit_hash(prev, *values)))

    def audit(self, actor: str, action: str, target: str | None,
              detail: dict[str, Any] | None = None) -> None:
        with self._transaction():
            self._audit(actor, action, target, detail)

    def audit_many(self, rows: list[tuple[str, str, str | None,
                                          dict[str, Any] | None]]) -> None:
        """Several audit rows (actor, action, target, detail) in one transaction: the
        coalescer's flush at the end of a minute, one commit rather than one each."""
        with self._transaction():
            for actor, action, target, detail in rows:
                self._audit(actor, action, target, detail)

    def audit_log(self, limit: int = 1000, since: datetime | None = None,
                  until: datetime | None = None, actor: str | None = None,
                  action: str | None = None,
                  before_id: int | None = None) -> list[AuditRow]:
        """Audit rows, newest first: at most `limit`, keyset-paged by `before_id`.

        Args:
            since / until: `at` within [since, until).
            before_id: only rows older than this id (the last id of the previous page).
        """
        sql, args = ("SELECT id, at, actor, action, target, detail, prev_hash, hash FROM audit "
                     "WHERE 1 = 1", list[Any]())
        for cond, value in (("at >= ?", iso(since) if since else None),
                            ("at < ?", iso(until) if until else None),
                            ("actor = ?", actor), ("action = ?", action),
                            ("id < ?", before_id)):
            if value is not None:
                sql += f" AND {cond}"
                args.append(value)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [AuditRow(*r) for r in rows]

    def verify_audit(self) -> AuditCheck:
        """Walk the audit chain from the first row.

        Returns:
            (rows checked, first bad row id or None, what is wrong with it). A deleted row
            is named by its missing id; the newest rows deleted leave no trace in the chain.
        """
        prev, expected_id, count = AUDIT_GENESIS, 1, 0
        cursor = self.db.cursor()
        cursor.row_factory = None
        for row in cursor.execute("SELECT id, at, actor, action, target, detail, prev_hash, "
                                  "hash FROM audit ORDER BY id"):
            row_id = row[0]
            if row_id != expected_id:
                return AuditCheck(count, expected_id, "is missing (deleted)")
            if row[6] != prev:
                return AuditCheck(count, row_id, "does not chain to the row before it "
                                                 "(changed or inserted)")
            if row[7] != audit_hash(prev, *row[:6]):
                return AuditCheck(count, row_id, "its hash does not match its contents "
                                                 "(changed)")
            prev, expected_id, count = row[7], row_id + 1, count + 1
        return AuditCheck(count, None, None)


def audit_hash(prev_hash: str, row_id: int, at: str, actor: str, action: str,
               target: str | None, detail: str | None) -> str:
    """sha256 over the previous row's hash and this row's canonical fields."""
    canonical = json.dumps([row_id, at, actor, action, target, detail], ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()
