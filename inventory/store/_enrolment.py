"""The store's enrolment records: tokens, the agents they enrolled, and the operators who may
log in. (Agents' presence: `_presence.py`.)"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import datetime, timedelta
from typing import Any

from estate.inventory.errors import CodedError
from estate.inventory.store._audit import AuditLog
from estate.inventory.store._common import iso, utcnow
from estate.inventory.store._records import Agent, Enrolment, NewToken, Operator, OperatorRow, Token


class EnrolError(CodedError):
    """Enrolment refused; `code` is stable for clients, `message` is for people."""


class EnrolmentRecords(AuditLog):
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

    # --- tokens -------------------------------------------------------------------------

    def create_token(self, agency: str, site: str, uses: int, ttl: timedelta,
                     actor: str) -> NewToken:
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
        return NewToken(token_id, secret, expires)

    def tokens(self) -> list[Token]:
        rows = self.db.execute(
            "SELECT t.id, a.name AS agency, s.name AS site, t.uses, t.max_uses, t.created_at, "
            "t.expires_at, t.revoked_at FROM tokens t JOIN agencies a ON a.id = t.agency_id "
            "JOIN sites s ON s.id = t.site_id ORDER BY t.created_at")
        now = iso(utcnow())
        out = []
        for r in rows:
            state = ("revoked" if r["revoked_at"] else "expired" if r["expires_at"] < now
                     else "used up" if r["uses"] >= r["max_uses"] else "active")
            out.append(Token(**dict(r), state=state))
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
                if table == "agents":
                    self._access_changed()
        return cur.rowcount > 0

    # --- agents -------------------------------------------------------------------------

    def enrol(self, token_id: str, secret: str, public_key: str, fingerprint: str,
              hostname: str | None, audit_refusal: bool = True) -> Enrolment:
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
                return Enrolment(existing["id"], existing["agency"], existing["site"], False)
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
        return Enrolment(agent_id, names[0], names[1], True)

    def agent_fingerprint(self, agent_id: str) -> str | None:
        """The key fingerprint an agent may log in with; None if unknown or revoked."""
        row = self.db.execute("SELECT key_fingerprint FROM agents WHERE id = ? "
                              "AND revoked_at IS NULL", (agent_id,)).fetchone()
        return row[0] if row else None

    def access_version(self) -> int:
        """A counter that moves with every change of who may log in (an agent revoked, an
        operator added or removed), made by any process: a hub re-checks its connections
        when it moves."""
        return int(self.db.execute("SELECT version FROM access_changes").fetchone()[0])

    def _access_changed(self) -> None:
        self.db.execute("UPDATE access_changes SET version = version + 1")

    def agent_access(self, agent_ids: list[str]) -> dict[str, tuple[str, str | None]]:
        """Key fingerprint and revocation time of each of these agents that exists."""
        out: dict[str, tuple[str, str | None]] = {}
        for i in range(0, len(agent_ids), 500):
            chunk = agent_ids[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            rows = self.db.execute("SELECT id, key_fingerprint, revoked_at FROM agents "  # noqa: S608 - placeholders only
                                   f"WHERE id IN ({marks})", chunk)
            out.update((r[0], (r[1], r[2])) for r in rows)
        return out

    def agents(self) -> list[Agent]:
        rows = self.db.execute(
            "SELECT g.id, a.name AS agency, s.name AS site, g.key_fingerprint, g.enrolled_at, "
            "g.enrolled_hostname, g.revoked_at, g.connected, g.remote_access, g.remote_offered "
            "FROM agents g "
            "JOIN agencies a ON a.id = g.agency_id JOIN sites s ON s.id = g.site_id "
            "ORDER BY g.enrolled_at")
        return [Agent(*r) for r in rows]

    def revoke_agent(self, agent_id: str, actor: str) -> bool:
        return self._revoke("agents", agent_id, "agent_revoke", actor)

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
                self._access_changed()
        except self.db.IntegrityError:
            raise ValueError(f"operator {name!r} or key {fingerprint} is already "
                             f"registered") from None

    def operators(self) -> list[OperatorRow]:
        rows = self.db.execute("SELECT name, role, agencies, key_fingerprint, created_at "
                               "FROM operators ORDER BY name")
        return [OperatorRow(*r) for r in rows]

    def operator(self, name: str) -> Operator | None:
        """An operator's record with `agencies` as a list, or None for all agencies."""
        row = self.db.execute("SELECT name, role, agencies, key_fingerprint FROM operators "
                              "WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        agencies = None if row["agencies"] == "all" else json.loads(row["agencies"])
        return Operator(row["name"], row["role"], agencies, row["key_fingerprint"])

    def remove_operator(self, name: str, actor: str) -> bool:
        with self._transaction():
            cur = self.db.execute("DELETE FROM operators WHERE name = ?", (name,))
            if cur.rowcount:
                self._audit(actor, "operator_remove", name)
                self._access_changed()
        return cur.rowcount > 0


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _token_problem(token: Any, secret: str, now: datetime) -> EnrolError | None:
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
