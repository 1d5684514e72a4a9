"""The store's compliance results: each host's result per control, evaluated as its reports
are stored (in the same transaction), kept as periods for `--as-of`, and read for lists,
host details, summaries and exports.

A result is written only when it differs from the host's current one: a new outcome ends the
current period and starts another (a `compliance_changed` change event), a new fact or reason
for the same outcome updates the current period in place.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from estate.inventory.compliance import (
    ComplianceSummary,
    Policy,
    Result,
    evaluate,
    summarise,
)
from estate.inventory.sanitise import quoted
from estate.inventory.store._audit import AuditLog
from estate.inventory.store._common import iso, utcnow
from estate.inventory.store._events import HOST, Announced
from estate.inventory.store._records import ChangeEvent
from estate.inventory.store._samples import SampleRecords
from estate.inventory.store._snapshot import current_report

log = logging.getLogger("estate.hub")

COMPLIANCE_CHANGED = "compliance_changed"  # the change event's kind
REEVALUATE_BATCH = 500  # hosts evaluated again per transaction after a policy change

# A host's current result per control: outcome, fact, reason, title, theme, severity, position.
_Current = tuple[str, "str | None", "str | None", str, str, str, int]


class ComplianceRecords(AuditLog, SampleRecords):
    def __init__(self, db: Any) -> None:
        self.policy: Policy | None = None  # None: reports are stored without evaluation
        # Per host, its current results (control id -> _Current), as committed; a batch's
        # go in `_pending_results` until its commit.
        self._results: dict[str, dict[str, _Current]] = {}
        self._pending_results: dict[str, dict[str, _Current]] = {}
        self._agency_names: dict[str, str] = {}  # an agent's agency never changes
        super().__init__(db)

    # --- the policy --------------------------------------------------------------------

    def apply_policy(self, policy: Policy, actor: str = "hub") -> bool:
        """Evaluate reports against `policy` from now on; record it (and audit it) when it
        is not the policy the store last had.

        Returns:
            Whether the policy is new to the store: hosts evaluated against another are then
            evaluated again by `reevaluate` (the hub does it, in batches, after starting).
        """
        with self._transaction():
            row = self.db.execute("SELECT hash, name, version FROM compliance_policies "
                                  "ORDER BY id DESC LIMIT 1").fetchone()
            changed = row is None or row[0] != policy.hash
            if changed:
                self.db.execute("INSERT INTO compliance_policies (hash, name, version, "
                                "loaded_at, hub_id) VALUES (?, ?, ?, ?, ?)",
                                (policy.hash, policy.name, policy.version, iso(utcnow()),
                                 actor))
                before = {"name": row[1], "version": row[2], "hash": row[0]} if row else None
                self._audit(actor, "policy_changed", policy.name[:255], {
                    "from": before, "to": policy.describe(),
                    "controls": [c.id for c in policy.controls],
                    "agencies_overriding": sorted(policy.overrides)})
            known = {r[0] for r in self.db.execute("SELECT name FROM agencies")}
        unknown = sorted(set(policy.overrides) - known)
        if unknown:  # a misspelt agency's overrides would change nothing, silently
            log.warning("compliance policy: overrides for agencies this store does not know "
                        "(yet): %s", ", ".join(quoted(a, 128) for a in unknown[:20]))
        self.policy = policy
        self._results.clear()
        return changed

    def current_policy(self) -> dict[str, str] | None:
        """The policy the store last recorded: name, version, hash."""
        row = self.db.execute("SELECT name, version, hash FROM compliance_policies "
                              "ORDER BY id DESC LIMIT 1").fetchone()
        return {"name": row[0], "version": row[1], "hash": row[2]} if row else None

    def hosts_to_reevaluate(self) -> int:
        """Hosts not yet evaluated against the current policy."""
        if self.policy is None:
            return 0
        return int(self.db.execute(
            "SELECT COUNT(*) FROM hosts WHERE compliance_policy IS NULL "
            "OR compliance_policy <> ?", (self.policy.hash,)).fetchone()[0])

    def reevaluate(self, batch: int = REEVALUATE_BATCH) -> int:
        """Evaluate up to `batch` hosts not yet evaluated against the current policy, from
        their stored snapshots (not a rescan of endpoints), in one transaction.

        Returns:
            The hosts evaluated; 0 once every host is.
        """
        policy = self.policy
        if policy is None:
            return 0
        self._pending_results = {}
        announced: list[Announced] = []
        try:
            with self._transaction():
                rows = self.db.execute(
                    "SELECT h.agent_id, h.snapshot, h.live, h.last_report_id, a.name FROM hosts h "
                    "JOIN agencies a ON a.id = h.agency_id "
                    "WHERE h.compliance_policy IS NULL OR h.compliance_policy <> ? "
                    "ORDER BY h.agent_id LIMIT ?", (policy.hash, batch)).fetchall()
                now = utcnow()
                at = iso(now)
                for agent_id, snapshot, live, report_id, agency in rows:
                    self._agency_names[agent_id] = agency
                    try:
                        report = current_report(snapshot, live)
                        summary, events = self._evaluate(agent_id, report, now, report_id)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        # A damaged snapshot: left unevaluated, and not tried again.
                        summary, events = None, 0
                    self.db.execute("UPDATE hosts SET compliance = ?, compliance_policy = ? "
                                    "WHERE agent_id = ?", (summary, policy.hash, agent_id))
                    # Results the new policy left as they were hold under it now.
                    self.db.execute("UPDATE compliance SET policy_hash = ? WHERE agent_id = ? "
                                    "AND ended IS NULL AND policy_hash <> ?",
                                    (policy.hash, agent_id, policy.hash))
                    announced.append((agent_id, at, report_id, events))
                self._announce(HOST, announced)
        except BaseException:
            self._pending_results = {}
            raise
        self._results.update(self._pending_results)
        self._pending_results = {}
        return len(rows)

    # --- evaluation at ingest (inside `store_reports`' transaction) ----------------------

    def _evaluate(self, agent_id: str, report: dict[str, Any], now: datetime,
                  report_id: str) -> tuple[str | None, int]:
        """Evaluate a host's report and write what changed.

        Returns:
            The host's summary line (JSON text for `hosts.compliance`; None without a
            policy) and the change events written.
        """
        policy = self.policy
        if policy is None:
            return None, 0
        agency = self._compliance_agency(agent_id) if policy.overrides else None
        results = evaluate(policy.controls_for(agency), report, now)
        events = self._write_results(agent_id, results, iso(now), report_id, policy.hash)
        return json.dumps(summarise(results), ensure_ascii=False,
                          separators=(",", ":")), events

    def _compliance_agency(self, agent_id: str) -> str | None:
        name = self._agency_names.get(agent_id)
        if name is None:
            row = self.db.execute("SELECT a.name FROM agents g JOIN agencies a "
                                  "ON a.id = g.agency_id WHERE g.id = ?",
                                  (agent_id,)).fetchone()
            if row is None:
                return None
            name = self._agency_names[agent_id] = row[0]
        return name

    def _current(self, agent_id: str) -> dict[str, _Current]:
        current = self._pending_results.get(agent_id)
        if current is None:
            current = self._results.get(agent_id)
        if current is None:
            current = {r[0]: (r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in self.db.execute(
                "SELECT control, outcome, fact, reason, title, theme, severity, position "
                "FROM compliance WHERE agent_id = ? AND ended IS NULL", (agent_id,))}
        return current

    def _write_results(self, agent_id: str, results: list[Result], at: str, report_id: str,
                       policy_hash: str) -> int:
        current = self._current(agent_id)
        new: dict[str, _Current] = {}
        events: list[ChangeEvent] = []
        for r in results:
            c = r.control
            value: _Current = (r.outcome, r.fact, r.reason, c.title, c.theme, c.severity,
                               c.position)
            new[c.id] = value
            old = current.get(c.id)
            if old == value:
                continue
            if old is not None and old[0] == r.outcome:
                self.db.execute(
                    "UPDATE compliance SET fact = ?, reason = ?, title = ?, theme = ?, "
                    "severity = ?, position = ?, policy_hash = ? WHERE agent_id = ? AND "
                    "control = ? AND ended IS NULL",
                    (r.fact, r.reason, c.title, c.theme, c.severity, c.position, policy_hash,
                     agent_id, c.id))
                continue
            if old is not None:
                self._end(agent_id, c.id, at)
                # A host's first results are no change; a new outcome is.
                events.append(ChangeEvent(at, agent_id, COMPLIANCE_CHANGED, c.id, old[0],
                                          r.outcome, report_id))
            self.db.execute(
                "INSERT INTO compliance (agent_id, control, position, title, theme, severity, "
                "outcome, fact, reason, since, policy_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (agent_id, c.id, c.position, c.title, c.theme, c.severity, r.outcome, r.fact,
                 r.reason, at, policy_hash))
        for control in current.keys() - new.keys():
            self._end(agent_id, control, at)  # left the policy, or disabled for the agency
        if events:
            self._insert_changes(events)
        self._pending_results[agent_id] = new
        return len(events)

    def _end(self, agent_id: str, control: str, at: str) -> None:
        self.db.execute("UPDATE compliance SET ended = ? WHERE agent_id = ? AND control = ? "
                        "AND ended IS NULL", (at, agent_id, control))

    def forget_results(self, agent_id: str) -> None:
        """Read this host's current results from the store next time, not from memory."""
        self._results.pop(agent_id, None)

    def _commit_results(self, committed: bool) -> None:
        """After a batch: keep its results as current (committed), or forget them."""
        if committed:
            self._results.update(self._pending_results)
        self._pending_results = {}

    def prune_changes(self, older_than: datetime, chunk: int = 10_000) -> int:
        """Change history past its horizon (`_changes.py`), and with it the compliance
        periods that ended before it (`--history-days`): `--as-of` reaches no further."""
        total = super().prune_changes(older_than, chunk)
        while True:
            with self._transaction():
                cur = self.db.execute(
                    "DELETE FROM compliance WHERE id IN (SELECT id FROM compliance "
                    "WHERE ended < ? ORDER BY ended LIMIT ?)", (iso(older_than), chunk))
            total += cur.rowcount
            if cur.rowcount < chunk:
                return total

    # --- reads ---------------------------------------------------------------------------

    def host_compliance(self, agent_id: str) -> dict[str, Any] | None:
        """A host's current results (the API's `host` answer carries them), or None when the
        host was never evaluated. Call only for a host in the reader's scope."""
        rows = self.db.execute(
            "SELECT control, title, theme, severity, outcome, fact, reason, since "
            "FROM compliance WHERE agent_id = ? AND ended IS NULL "
            "ORDER BY position, control", (agent_id,)).fetchall()
        if not rows:
            return None
        # The policy the host was last evaluated against.
        policy = self.db.execute(
            "SELECT p.name, p.version, p.hash FROM hosts h JOIN compliance_policies p "
            "ON p.hash = h.compliance_policy WHERE h.agent_id = ? ORDER BY p.id DESC LIMIT 1",
            (agent_id,)).fetchone()
        return {
            "policy": {"name": policy[0], "version": policy[1], "hash": policy[2]}
            if policy else None,
            "results": [{"control": r[0], "title": r[1], "theme": r[2], "severity": r[3],
                         "outcome": r[4], "fact": r[5], "reason": r[6], "since": r[7]}
                        for r in rows],
        }


def summary_of(text: str | None) -> ComplianceSummary | None:
    """A host's summary line as `hosts.compliance` keeps it (JSON), or None."""
    if not text:
        return None
    try:
        return ComplianceSummary(*json.loads(text))
    except (ValueError, TypeError):
        return None


def add_to_counts(counts: dict[str, Any], summary: ComplianceSummary | None) -> None:
    """Add a host's summary into a tree summary's counts (`Summary.compliance`)."""
    if summary is None:
        return
    counts["hosts"] += 1
    counts["passed"] += summary.passed
    counts["failed"] += summary.failed
    counts["unknown"] += summary.unknown
    if not summary.failed and not summary.unknown:
        counts["compliant"] += 1
    total = counts["passed"] + counts["failed"] + counts["unknown"]
    counts["share"] = round(100 * counts["passed"] / total, 1) if total else None


def empty_counts() -> dict[str, Any]:
    return {"hosts": 0, "compliant": 0, "passed": 0, "failed": 0, "unknown": 0,
            "share": None}
