"""The hub's store: SQLite (WAL) behind a small interface whose SQL stays portable.

One `Store` holds one connection and is used from one thread at a time: the hub runs all its
database work on a single thread (group commit for reports), and the admin verbs open their
own `Store` in their own process. WAL lets them read while the hub writes.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import hmac
import json
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from inventory.changes import TooLarge, bounded, software_changes, state_changes, state_digest
from inventory.facts import facts_of
from inventory.private_files import private_file
from inventory.store._common import _scoped, iso, parse_time, utcnow
from inventory.store._migrations import MIGRATIONS
from inventory.store._remote import RemoteRecords, remote_state

__all__ = ["DB_NAME", "EnrolError", "Incoming", "Store", "iso", "parse_time", "utcnow"]

DB_NAME = "estate.db"
DEFAULT_INTERVAL_S = 300.0  # for hosts whose reports do not say their interval
CLOCK_SKEW_FLAG_S = 300.0  # an agent clock this far off the hub's is flagged
# A report "collected" further ahead of the hub's clock than this is ordered as if collected
# when received: one report dated 9999 would otherwise make every later one look like backlog.
FUTURE_TOLERANCE = timedelta(days=1)
AUDIT_GENESIS = "0" * 64  # the prev_hash of the first audit row

# SQLite only: PostgreSQL gets the same guarantee from REVOKE UPDATE, DELETE on the table.
_SQLITE_AUDIT_GUARDS = (
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)


class EnrolError(Exception):
    """Enrolment refused; `code` is stable for clients, `message` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Incoming:
    """A validated report waiting to be stored, with what enrolment says about its sender."""

    agent_id: str
    report: dict[str, Any]
    body: bytes  # as received: gzip or plain JSON
    received_at: datetime


@dataclass(frozen=True)
class _Last:
    """What change detection needs of a host's last stored report: a few hundred bytes."""

    collected_at: str
    state_digest: str | None
    software_hash: str | None
    identity: tuple[str | None, str | None]


class Store(RemoteRecords):
    def __init__(self, path: Path) -> None:
        self.path = path
        # Per host, what the last committed report showed; saves reading the table back.
        self._last: dict[str, _Last] = {}
        self._pending: dict[str, _Last] = {}
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                  timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged report survives a power cut, not only a killed process.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        # 0700 folder, 0600 file: the token table and audit log are no one else's to read.
        return cls(private_file(data_dir, DB_NAME))

    def close(self) -> None:
        self.db.close()

    # --- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        if current > len(MIGRATIONS):
            raise RuntimeError(f"{self.path} has schema version {current}, newer than this "
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

    # --- agencies, sites, audit ---------------------------------------------------------

    def _agency_site(self, agency: str, site: str) -> tuple[int, int]:
        self.db.execute("INSERT INTO agencies (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
                        (agency,))
        agency_id = self.db.execute("SELECT id FROM agencies WHERE name = ?",
                                    (agency,)).fetchone()[0]
        self.db.execute("INSERT INTO sites (agency_id, name) VALUES (?, ?) "
                        "ON CONFLICT (agency_id, name) DO NOTHING", (agency_id, site))
        site_id = self.db.execute("SELECT id FROM sites WHERE agency_id = ? AND name = ?",
                                  (agency_id, site)).fetchone()[0]
        return agency_id, site_id

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
                  before_id: int | None = None) -> list[dict[str, Any]]:
        """Audit rows, newest first: at most `limit`, keyset-paged by `before_id`.

        Args:
            since / until: `at` within [since, until).
            before_id: only rows older than this id (the last id of the previous page).
        """
        sql, args = "SELECT * FROM audit WHERE 1 = 1", list[Any]()
        for cond, value in (("at >= ?", iso(since) if since else None),
                            ("at < ?", iso(until) if until else None),
                            ("actor = ?", actor), ("action = ?", action),
                            ("id < ?", before_id)):
            if value is not None:
                sql += f" AND {cond}"
                args.append(value)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [dict(r) for r in rows]

    def verify_audit(self) -> tuple[int, int | None, str | None]:
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
                return count, expected_id, "is missing (deleted)"
            if row[6] != prev:
                return count, row_id, "does not chain to the row before it (changed or " \
                                      "inserted)"
            if row[7] != audit_hash(prev, *row[:6]):
                return count, row_id, "its hash does not match its contents (changed)"
            prev, expected_id, count = row[7], row_id + 1, count + 1
        return count, None, None

    # --- tokens -------------------------------------------------------------------------

    def create_token(self, agency: str, site: str, uses: int, ttl: timedelta,
                     actor: str) -> tuple[str, str, datetime]:
        """Create an enrolment token.

        Returns:
            (token id, secret, expiry). The secret is shown once; only its hash is kept.
        """
        token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(24)
        now = utcnow()
        expires = now + ttl
        with self._transaction():
            agency_id, site_id = self._agency_site(agency, site)
            self.db.execute(
                "INSERT INTO tokens (id, secret_sha256, agency_id, site_id, max_uses, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_id, _sha256(secret), agency_id, site_id, uses, iso(now), iso(expires)))
            self._audit(actor, "token_create", token_id,
                        {"agency": agency, "site": site, "uses": uses, "expires": iso(expires)})
        return token_id, secret, expires

    def tokens(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT t.id, a.name AS agency, s.name AS site, t.uses, t.max_uses, t.created_at, "
            "t.expires_at, t.revoked_at FROM tokens t JOIN agencies a ON a.id = t.agency_id "
            "JOIN sites s ON s.id = t.site_id ORDER BY t.created_at")
        now = iso(utcnow())
        out = []
        for r in rows:
            d = dict(r)
            d["state"] = ("revoked" if d["revoked_at"] else "expired" if d["expires_at"] < now
                          else "used up" if d["uses"] >= d["max_uses"] else "active")
            out.append(d)
        return out

    def revoke_token(self, token_id: str, actor: str) -> bool:
        return self._revoke("tokens", token_id, "token_revoke", actor)

    def _revoke(self, table: str, key: str, action: str, actor: str) -> bool:
        """Mark a token or agent revoked (once) and audit it; False if there was none."""
        with self._transaction():
            cur = self.db.execute(f"UPDATE {table} SET revoked_at = ? WHERE id = ? "  # noqa: S608 - table is a literal of the callers
                                  "AND revoked_at IS NULL", (iso(utcnow()), key))
            if cur.rowcount:
                self._audit(actor, action, key)
        return cur.rowcount > 0

    # --- agents -------------------------------------------------------------------------

    def enrol(self, token_id: str, secret: str, public_key: str, fingerprint: str,
              hostname: str | None, audit_refusal: bool = True) -> dict[str, Any]:
        """Register an agent's key with a token, or return its existing registration.

        Args:
            audit_refusal: write an `enrol_refused` row here; the hub passes False and
                audits refusals through its coalescer (one row per source per minute).

        Raises:
            EnrolError: the token is unknown, wrong, expired, revoked or used up, or the key
                was revoked.
        """
        now = utcnow()
        refusal: EnrolError | None = None
        with self._transaction():
            existing = self.db.execute(
                "SELECT g.id, g.revoked_at, a.name AS agency, s.name AS site FROM agents g "
                "JOIN agencies a ON a.id = g.agency_id JOIN sites s ON s.id = g.site_id "
                "WHERE g.key_fingerprint = ?", (fingerprint,)).fetchone()
            token = self.db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
            refusal = _token_problem(token, secret, now)
            if existing and existing["revoked_at"]:
                refusal = EnrolError("key_revoked", "this agent key was revoked; generate a "
                                                    "new key to enrol again")
            elif existing and (refusal is None or refusal.code == "token_used_up"):
                # Enrolling again with the same key (a re-run) is not a new use of the token.
                return {"agent_id": existing["id"], "agency": existing["agency"],
                        "site": existing["site"], "new": False}
            if refusal:
                # Committed with the transaction, then raised: refusals are audited too.
                if audit_refusal:
                    self._audit("enrol", "enrol_refused", token_id,
                                {"code": refusal.code, "key": fingerprint,
                                 "hostname": hostname})
            else:
                agent_id = f"ag-{secrets.token_hex(6)}"
                self.db.execute(
                    "INSERT INTO agents (id, key_fingerprint, public_key, agency_id, site_id, "
                    "token_id, enrolled_at, enrolled_hostname) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (agent_id, fingerprint, public_key, token["agency_id"], token["site_id"],
                     token_id, iso(now), hostname))
                self.db.execute("UPDATE tokens SET uses = uses + 1 WHERE id = ?", (token_id,))
                names = self.db.execute(
                    "SELECT a.name, s.name FROM agencies a JOIN sites s ON s.agency_id = a.id "
                    "WHERE s.id = ?", (token["site_id"],)).fetchone()
                self._audit("enrol", "enrol", agent_id,
                            {"token": token_id, "key": fingerprint, "hostname": hostname,
                             "agency": names[0], "site": names[1]}, at=now)
        if refusal:
            raise refusal
        return {"agent_id": agent_id, "agency": names[0], "site": names[1], "new": True}

    def agent_fingerprint(self, agent_id: str) -> str | None:
        """The key fingerprint an agent may log in with; None if unknown or revoked."""
        row = self.db.execute("SELECT key_fingerprint FROM agents WHERE id = ? "
                              "AND revoked_at IS NULL", (agent_id,)).fetchone()
        return row[0] if row else None

    def agents(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT g.id, a.name AS agency, s.name AS site, g.key_fingerprint, g.enrolled_at, "
            "g.enrolled_hostname, g.revoked_at, g.connected, g.remote_access, g.remote_offered "
            "FROM agents g "
            "JOIN agencies a ON a.id = g.agency_id JOIN sites s ON s.id = g.site_id "
            "ORDER BY g.enrolled_at")
        return [dict(r) for r in rows]

    def revoke_agent(self, agent_id: str, actor: str) -> bool:
        return self._revoke("agents", agent_id, "agent_revoke", actor)

    def set_presence(self, agent_id: str, connected: bool, at: datetime) -> str | None:
        """Record a connection going up or down: current state and history.

        Returns:
            The agent's agency, so the event can be scoped.
        """
        column = "connected_at" if connected else "disconnected_at"
        with self._transaction():
            self.db.execute(f"UPDATE agents SET connected = ?, {column} = ? WHERE id = ?",  # noqa: S608 - column is one of two literals
                            (1 if connected else 0, iso(at), agent_id))
            self.db.execute("INSERT INTO presence (agent_id, at, state) VALUES (?, ?, ?)",
                            (agent_id, iso(at), "online" if connected else "offline"))
            row = self.db.execute("SELECT a.name FROM agents g JOIN agencies a "
                                  "ON a.id = g.agency_id WHERE g.id = ?", (agent_id,)).fetchone()
        return row[0] if row else None

    def last_change_id(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM changes").fetchone()[0])

    def changes_after(self, change_id: int, limit: int = 10_000) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT c.id, c.at, c.agent_id, h.hostname, a.name AS agency, c.kind, c.subject, "
            "c.old_value, c.new_value FROM changes c JOIN hosts h ON h.agent_id = c.agent_id "
            "JOIN agencies a ON a.id = h.agency_id WHERE c.id > ? ORDER BY c.id LIMIT ?",
            (change_id, limit))
        return [dict(r) for r in rows]

    def reset_presence(self) -> None:
        """At hub start nobody is connected, whatever the last run (maybe killed) recorded."""
        now = iso(utcnow())
        with self._transaction():
            self.db.execute("INSERT INTO presence (agent_id, at, state) "
                            "SELECT id, ?, 'offline' FROM agents WHERE connected = 1", (now,))
            self.db.execute("UPDATE agents SET connected = 0, disconnected_at = ? "
                            "WHERE connected = 1", (now,))

    # --- operators ----------------------------------------------------------------------

    def add_operator(self, name: str, public_key: str, fingerprint: str, role: str,
                     agencies: list[str] | None, actor: str) -> None:
        """Register an operator; `agencies` None means all agencies.

        Raises:
            ValueError: the name or key is already registered.
        """
        scope = json.dumps(agencies, ensure_ascii=False) if agencies is not None else "all"
        try:
            with self._transaction():
                self.db.execute(
                    "INSERT INTO operators (name, public_key, key_fingerprint, role, agencies, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, public_key, fingerprint, role, scope, iso(utcnow())))
                self._audit(actor, "operator_add", name,
                            {"role": role, "agencies": agencies or "all", "key": fingerprint})
        except sqlite3.IntegrityError:
            raise ValueError(f"operator {name!r} or key {fingerprint} is already "
                             f"registered") from None

    def operators(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT name, role, agencies, key_fingerprint, created_at "
                               "FROM operators ORDER BY name")
        return [dict(r) for r in rows]

    def operator(self, name: str) -> dict[str, Any] | None:
        """An operator's record with `agencies` as a list, or None for all agencies."""
        row = self.db.execute("SELECT name, role, agencies, key_fingerprint FROM operators "
                              "WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["agencies"] = None if d["agencies"] == "all" else json.loads(d["agencies"])
        return d

    def remove_operator(self, name: str, actor: str) -> bool:
        with self._transaction():
            cur = self.db.execute("DELETE FROM operators WHERE name = ?", (name,))
            if cur.rowcount:
                self._audit(actor, "operator_remove", name)
        return cur.rowcount > 0

    # --- reports ------------------------------------------------------------------------

    def store_reports(self, batch: list[Incoming]) -> list[str]:
        """Store a batch in one transaction (group commit).

        Returns:
            "stored" or "duplicate" for each report, in order; only after the commit.
        """
        self._pending = {}
        try:
            with self._transaction():
                results = [self._store_one(item) for item in batch]
        except BaseException:
            self._pending = {}
            raise
        self._last.update(self._pending)  # only what the commit made true
        self._pending = {}
        return results

    def _previous(self, agent_id: str) -> _Last | None:
        """What the host showed before this report: this batch, the cache, else the table."""
        last = self._pending.get(agent_id) or self._last.get(agent_id)
        if last:
            return last
        row = self.db.execute("SELECT collected_at, state_digest, software_hash, serial, uuid "
                              "FROM hosts WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            return None
        # A far-future time stored before times were bounded would freeze the host for good.
        return _Last(_ordering_time(row[0], utcnow()), row[1], row[2], (row[3], row[4]))

    def _store_one(self, item: Incoming) -> str:
        report = item.report
        received = iso(item.received_at)
        skew = (parse_time(report["collected_at"]) - item.received_at).total_seconds()
        cur = self.db.execute(
            "INSERT INTO reports (report_id, agent_id, received_at, collected_at, "
            "clock_skew_s, body) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (report_id) DO NOTHING",
            (report["report_id"], item.agent_id, received, report["collected_at"], skew,
             _gzipped(item.body)))
        if cur.rowcount == 0:
            return "duplicate"
        prev = self._previous(item.agent_id)
        collected = _ordering_time(report["collected_at"], item.received_at)
        if prev and collected < prev.collected_at:
            # A backlog report older than what we show: keep it as history only.
            self.db.execute("UPDATE hosts SET last_seen = ? WHERE agent_id = ?",
                            (received, item.agent_id))
            return "stored"
        digest = state_digest(report)
        new_hash = report["software"]["hash"]
        packages = report["software"]["packages"]
        changes = []
        if prev and prev.state_digest != digest:
            old = self.db.execute("SELECT snapshot FROM hosts WHERE agent_id = ?",
                                  (item.agent_id,)).fetchone()[0]
            changes += state_changes(json.loads(old), report)
        software_changed = prev is None or prev.software_hash != new_hash
        if prev and software_changed:
            old = self.db.execute("SELECT packages FROM hosts WHERE agent_id = ?",
                                  (item.agent_id,)).fetchone()[0]
            changes += software_changes(prev.software_hash, new_hash,
                                        json.loads(old) if old else None, packages)
        changes = bounded(changes)
        if changes:
            self.db.executemany(
                "INSERT INTO changes (agent_id, at, kind, subject, old_value, new_value, "
                "report_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(item.agent_id, received, c.kind, c.subject, c.old_text(), c.new_text(),
                  report["report_id"]) for c in changes])
        self._upsert_host(item, digest, skew, software_changed, collected)
        identity = (report["hardware"]["serial"], report["hardware"]["uuid"])
        if prev is None or prev.identity != identity:
            self._refresh_identity_conflicts(item.agent_id, prev.identity if prev else
                                             (None, None))
        self._pending[item.agent_id] = _Last(collected, digest, new_hash, identity)
        return "stored"

    def _upsert_host(self, item: Incoming, digest: str, skew: float,
                     software_changed: bool, collected_at: str) -> None:
        r = item.report
        system, hardware = r["system"], r["hardware"]
        facts = facts_of(r)
        received = iso(item.received_at)
        agency_site = self.db.execute("SELECT agency_id, site_id FROM agents WHERE id = ?",
                                      (item.agent_id,)).fetchone()
        snapshot = {**r, "software": {**r["software"], "packages": None}}
        values = {
            "agent_id": item.agent_id, "agency_id": agency_site[0], "site_id": agency_site[1],
            "hostname": system["hostname"], "fqdn": system["fqdn"],
            "os_family": system["os"]["family"], "os_name": system["os"]["name"],
            "os_version": system["os"]["version"], "vendor": hardware["vendor"],
            "model": hardware["model"], "serial": hardware["serial"], "uuid": hardware["uuid"],
            "cpu_model": hardware["cpu"]["model"],
            "memory_bytes": hardware["memory"]["total_bytes"],
            "fullest_volume_percent": facts["disk_percent"],
            "ip_addresses": " ".join(facts["ips"]) or None,
            "first_seen": received, "last_seen": received,
            # The ordering time (clamped); the snapshot keeps what the agent said.
            "last_report_id": r["report_id"], "collected_at": collected_at,
            "clock_skew_s": skew, "software_hash": r["software"]["hash"],
            "state_digest": digest, "interval_s": r["agent"]["interval_s"],
            "snapshot": json.dumps(snapshot, ensure_ascii=False, separators=(",", ":")),
            "facts": json.dumps(facts, ensure_ascii=False, separators=(",", ":")),
        }
        if software_changed:
            # Unchanged lists are not resent, and not rewritten either. A changed hash with
            # no list leaves the list unknown (NULL) rather than stale.
            packages = r["software"]["packages"]
            values["packages"] = (json.dumps(packages, ensure_ascii=False,
                                             separators=(",", ":"))
                                  if packages is not None else None)
        self.db.execute(_host_upsert_sql(tuple(values)), tuple(values.values()))

    def _refresh_identity_conflicts(self, agent_id: str,
                                    previous: tuple[Any, Any] = (None, None)) -> None:
        """Flag hosts that report the same serial or UUID (cloned VMs); never merge them.

        Each host lists every other host sharing its serial or its UUID: one can share its
        serial with a host and its UUID with another, and names both. The hosts that shared
        its `previous` (serial, uuid) get their lists again too, so none names it after it
        changed. Indexed lookups only: this runs for every host's first report.
        """
        affected = {agent_id} | self._sharing(*self._identity(agent_id)) | \
            self._sharing(*previous)
        for member in affected:
            others = sorted(self._sharing(*self._identity(member)) - {member})
            self.db.execute("UPDATE hosts SET identity_conflict = ? WHERE agent_id = ?",
                            (" ".join(others) or None, member))

    def _identity(self, agent_id: str) -> tuple[Any, Any]:
        row = self.db.execute("SELECT serial, uuid FROM hosts WHERE agent_id = ?",
                              (agent_id,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def _sharing(self, serial: Any, uuid: Any) -> set[str]:
        """The hosts reporting this serial or this UUID (an unknown one, None or empty,
        matches none)."""
        return {r[0] for r in self.db.execute(
            "SELECT agent_id FROM hosts WHERE serial = ? OR uuid = ?",
            (serial or None, uuid or None))}

    def prune_reports(self, older_than: datetime) -> int:
        with self._transaction():
            cur = self.db.execute("DELETE FROM reports WHERE received_at < ?",
                                  (iso(older_than),))
        return cur.rowcount

    def prune_changes(self, older_than: datetime, chunk: int = 10_000) -> int:
        """Delete change history recorded before `older_than`, a chunk per transaction so
        reports waiting on the store thread are not held up by one long delete."""
        total = 0
        while True:
            with self._transaction():
                cur = self.db.execute(
                    "DELETE FROM changes WHERE id IN (SELECT id FROM changes WHERE at < ? "
                    "ORDER BY id LIMIT ?)", (iso(older_than), chunk))
            total += cur.rowcount
            if cur.rowcount < chunk:
                return total

    # --- reading ------------------------------------------------------------------------

    # --- the operator API's reads, scoped to agencies (None: all) ------------------------

    def host_rows(self, scope: list[str] | None, agent_ids: list[str] | None = None,
                  page: tuple[str, int] | None = None) -> list[list[Any]]:
        """Compact rows in `inventory.hostlist.COLUMN_KEYS` order.

        Args:
            page: (after agent id, limit): a page in agent id order, keyset-paged in SQL so
                every page costs the same.
        """
        sql = ("SELECT h.agent_id, h.hostname, a.name, s.name, g.connected, g.revoked_at, "
               "h.last_seen, h.interval_s, h.os_name, h.os_version, h.model, h.serial, "
               "h.cpu_model, h.memory_bytes, h.fullest_volume_percent, h.ip_addresses, "
               "g.remote_access, g.remote_offered "
               "FROM hosts h JOIN agents g ON g.id = h.agent_id "
               "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
               "WHERE 1 = 1")
        args: list[Any] = []
        sql, args = _scoped(sql, args, scope)
        if agent_ids is not None:
            sql += f" AND h.agent_id IN ({', '.join('?' for _ in agent_ids)})"
            args += agent_ids
        if page is not None:
            sql += " AND h.agent_id > ? ORDER BY h.agent_id LIMIT ?"
            args += [page[0], page[1]]
        else:
            sql += " ORDER BY h.hostname"
        status_of = _StatusClock(utcnow())
        rows = []
        cursor = self.db.cursor()
        cursor.row_factory = None  # plain tuples: this runs for every host
        for r in cursor.execute(sql, args):
            status = status_of(r[5], r[6], r[4], r[7])
            os_text = " ".join(x for x in (r[8], r[9]) if x) or None
            ip = (r[15] or "").split(" ", 1)[0] or None
            rows.append([r[0], r[1], r[2], r[3], status, os_text, r[10], r[11], r[12], r[13],
                         r[14], ip, r[6], remote_state(r[16], r[17], r[4], r[5])])
        return rows

    def host_count(self, scope: list[str] | None) -> int:
        sql, args = _scoped("SELECT COUNT(*) FROM hosts h JOIN agencies a "
                            "ON a.id = h.agency_id WHERE 1 = 1", [], scope)
        return int(self.db.execute(sql, args).fetchone()[0])

    def summary(self, scope: list[str] | None) -> dict[str, Any]:
        """Counts per agency and site: total, online, offline, stale (and revoked)."""
        totals: dict[str, int] = {"total": 0, "online": 0, "offline": 0, "stale": 0,
                                  "revoked": 0}
        agencies: dict[str, Any] = {}
        for row in self.host_rows(scope):
            agency, site, status = row[2], row[3], row[4]
            a = agencies.setdefault(agency, {"counts": dict.fromkeys(totals, 0), "sites": {}})
            site_counts = a["sites"].setdefault(site, dict.fromkeys(totals, 0))
            for counts in (totals, a["counts"], site_counts):
                counts["total"] += 1
                counts[status] += 1
        return {"totals": totals, "agencies": agencies}

    def host_detail(self, agent_id: str, scope: list[str] | None) -> dict[str, Any] | None:
        sql = ("SELECT h.*, a.name AS agency, s.name AS site, g.connected, g.revoked_at, "
               "g.enrolled_at FROM hosts h JOIN agents g ON g.id = h.agent_id "
               "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
               "WHERE h.agent_id = ?")
        sql, args = _scoped(sql, [agent_id], scope)
        row = self.db.execute(sql, args).fetchone()
        if row is None:
            return None
        d = dict(row)
        return {
            "agent_id": d["agent_id"], "agency": d["agency"], "site": d["site"],
            "status": _StatusClock(utcnow())(d["revoked_at"], d["last_seen"],
                                             d["connected"], d["interval_s"]),
            "first_seen": d["first_seen"], "last_seen": d["last_seen"],
            "enrolled_at": d["enrolled_at"], "clock_skew_s": d["clock_skew_s"],
            "identity_conflict": self._conflicts_in_scope(d["identity_conflict"], scope),
            "report": json.loads(d["snapshot"]),
            "packages": json.loads(d["packages"]) if d["packages"] else None,
        }

    def _conflicts_in_scope(self, conflict: str | None,
                            scope: list[str] | None) -> str | None:
        """The hosts sharing this one's serial or UUID that the reader may see.

        Another agency's agent id must not leak through a serial reported in this agency
        (anyone enrolled can report any serial), so out-of-scope members are left out, and
        a conflict only with hosts out of scope reads as none.
        """
        if not conflict or scope is None:
            return conflict
        ids = conflict.split()
        marks = ", ".join("?" for _ in ids)
        sql, args = _scoped("SELECT h.agent_id FROM hosts h JOIN agencies a "  # noqa: S608 - placeholders only
                            f"ON a.id = h.agency_id WHERE h.agent_id IN ({marks})",
                            list(ids), scope)
        visible = {r[0] for r in self.db.execute(sql, args)}
        return " ".join(i for i in ids if i in visible) or None

    def recent_reports(self, agent_id: str, scope: list[str] | None,
                       limit: int) -> list[dict[str, Any]] | None:
        """A host's recent reports, newest first, with their probe results (sparklines)."""
        if self.host_detail_exists(agent_id, scope) is False:
            return None
        rows = self.db.execute(
            "SELECT report_id, received_at, collected_at, clock_skew_s, body FROM reports "
            "WHERE agent_id = ? ORDER BY received_at DESC LIMIT ?", (agent_id, limit))
        out = []
        for r in rows:
            try:
                probes = json.loads(gzip.decompress(r[4]))["connectivity"]["probes"]
            except (OSError, ValueError, KeyError):
                probes = []
            out.append({"report_id": r[0], "received_at": r[1], "collected_at": r[2],
                        "clock_skew_s": r[3],
                        "probes": [{k: p.get(k) for k in ("name", "ok", "latency_ms")}
                                   for p in probes]})
        return out

    def host_detail_exists(self, agent_id: str, scope: list[str] | None) -> bool:
        sql = ("SELECT 1 FROM hosts h JOIN agencies a ON a.id = h.agency_id "
               "WHERE h.agent_id = ?")
        sql, args = _scoped(sql, [agent_id], scope)
        return self.db.execute(sql, args).fetchone() is not None

    def scoped_changes(self, scope: list[str] | None, host: str | None = None,
                       since: datetime | None = None,
                       limit: int = 1000,
                       max_bytes: int | None = None) -> list[dict[str, Any]]:
        """The newest `limit` changes, oldest first; `TooLarge` once their text passes
        `max_bytes`, so an API answer is never built past its budget."""
        sql = ("SELECT c.id, c.at, c.agent_id, h.hostname, a.name AS agency, c.kind, "
               "c.subject, c.old_value, c.new_value, c.report_id FROM changes c "
               "JOIN hosts h ON h.agent_id = c.agent_id "
               "JOIN agencies a ON a.id = h.agency_id WHERE 1 = 1")
        args: list[Any] = []
        sql, args = _scoped(sql, args, scope)
        if host:
            sql += " AND (c.agent_id = ? OR h.hostname = ?)"
            args += [host, host]
        if since:
            sql += " AND c.at >= ?"
            args.append(iso(since))
        # The newest `limit` (-1: all), returned oldest first.
        rows = self.db.execute(sql + " ORDER BY c.id DESC LIMIT ?", [*args, limit])
        if max_bytes is None:
            return [dict(r) for r in reversed(rows.fetchall())]
        out, size = [], 0
        for r in rows:
            out.append(dict(r))
            size += 200 + sum(len(v) for v in r if isinstance(v, str))  # ~ its JSON
            if size > max_bytes:
                raise TooLarge(f"more than {max_bytes} bytes of changes")
        out.reverse()
        return out

    def hosts(self) -> list[dict[str, Any]]:
        """Every host with its status: online while its agent's connection is up, offline
        when it is not, stale when no report came for two of its intervals."""
        rows = self.db.execute(
            "SELECT h.agent_id, h.hostname, a.name AS agency, s.name AS site, h.os_name, "
            "h.os_version, h.vendor, h.model, h.serial, h.ip_addresses, h.first_seen, "
            "h.last_seen, h.clock_skew_s, h.interval_s, h.identity_conflict, g.connected, "
            "g.revoked_at FROM hosts h JOIN agents g ON g.id = h.agent_id "
            "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
            "ORDER BY a.name, s.name, h.hostname")
        status_of = _StatusClock(utcnow())
        out = []
        for r in rows:
            d = dict(r)
            d["status"] = status_of(d.pop("revoked_at"), d["last_seen"], d.pop("connected"),
                                    d["interval_s"])
            d["clock_skewed"] = abs(d["clock_skew_s"] or 0) > CLOCK_SKEW_FLAG_S
            out.append(d)
        return out

    def changes(self, host: str | None = None,
                since: datetime | None = None) -> list[dict[str, Any]]:
        """Every change (all agencies), oldest first: the admin verb's view."""
        return self.scoped_changes(None, host, since, limit=-1)



class _StatusClock:
    """A host's status at one moment: revoked; stale when no report came for two of its
    intervals; else online while its agent is connected, offline when not. The stale
    threshold is computed once per interval value, since this runs for every host."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.before: dict[float | None, str] = {}

    def __call__(self, revoked_at: str | None, last_seen: str, connected: int,
                 interval_s: float | None) -> str:
        if revoked_at:
            return "revoked"
        before = self.before.get(interval_s)
        if before is None:
            before = self.before[interval_s] = iso(
                self.now - 2 * timedelta(seconds=interval_s or DEFAULT_INTERVAL_S))
        if last_seen < before:
            return "stale"
        return "online" if connected else "offline"


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


@functools.lru_cache(maxsize=4)
def _host_upsert_sql(columns: tuple[str, ...]) -> str:
    """INSERT ... ON CONFLICT DO UPDATE for these columns; first_seen is set once."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns
                        if c not in ("agent_id", "first_seen"))
    return (f"INSERT INTO hosts ({', '.join(columns)}) "  # noqa: S608 - column names are literals in _upsert_host
            f"VALUES ({', '.join('?' for _ in columns)}) "
            f"ON CONFLICT (agent_id) DO UPDATE SET {updates}")


def audit_hash(prev_hash: str, row_id: int, at: str, actor: str, action: str,
               target: str | None, detail: str | None) -> str:
    """sha256 over the previous row's hash and this row's canonical fields."""
    canonical = json.dumps([row_id, at, actor, action, target, detail], ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _ordering_time(collected_at: str, now: datetime) -> str:
    """The time a report sorts by: as collected, unless implausibly far ahead of `now`."""
    try:
        ahead = parse_time(collected_at) - now > FUTURE_TOLERANCE
    except (ValueError, OverflowError):
        ahead = False
    return iso(now) if ahead else collected_at


def _gzipped(body: bytes) -> bytes:
    """Raw reports are kept gzip-compressed: as the agent sent them, or compressed here."""
    if body.startswith(b"\x1f\x8b"):
        return body
    return gzip.compress(body, 1, mtime=0)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _token_problem(token: sqlite3.Row | None, secret: str, now: datetime) -> EnrolError | None:
    # Unknown id and wrong secret get the same answer: nothing to learn by probing.
    if token is None or not hmac.compare_digest(token["secret_sha256"], _sha256(secret)):
        return EnrolError("token_invalid", "the enrolment token is not valid")
    if token["revoked_at"]:
        return EnrolError("token_revoked", "the enrolment token was revoked")
    if token["expires_at"] < iso(now):
        return EnrolError("token_expired", f"the enrolment token expired at "
                                           f"{token['expires_at']}")
    if token["uses"] >= token["max_uses"]:
        return EnrolError("token_used_up", f"the enrolment token was already used "
                                           f"{token['uses']} times, its limit")
    return None
