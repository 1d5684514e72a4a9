"""The store's hosts and their reports: storing a batch (change detection, identity
conflicts), pruning, and every read of hosts the hub, the API and the admin make."""

from __future__ import annotations

import functools
import gzip
import json
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from estate.inventory.changes import bounded, software_changes, state_changes, state_digest
from estate.inventory.compliance import evaluate, summarise
from estate.inventory.facts import facts_of
from estate.inventory.health.net import (
    from_text,
    net_verdict,
    row_of_text,
    to_text,
    transition_key,
)
from estate.inventory.store._common import _scoped, iso, parse_time, utcnow
from estate.inventory.store._compliance import (
    ComplianceRecords,
    add_to_counts,
    empty_counts,
    summary_of,
)
from estate.inventory.store._database import Database
from estate.inventory.store._events import HOST, INSERT_EVENTS, Announced, event_columns
from estate.inventory.store._records import (
    ChangeEvent,
    HostDetail,
    HostRow,
    HostStatus,
    Incoming,
    RecentReport,
    Summary,
)
from estate.inventory.store._remote import remote_state
from estate.inventory.store._samples import (
    _RESENT,
    INSERT_SAMPLES,
    RESEND_INDEXED_DAYS,
    _resend_since,
    _without_agent,
    compact_probes,
    sample_columns,
)
from estate.inventory.store._snapshot import current_report, live_text, stable_digest

# Pruning, a chunk at a time (SQLite): the oldest kept bodies, by the index on their time.
_EXPIRED_FULL = ("SELECT report_id FROM reports WHERE received_at < ? "
                 "ORDER BY received_at LIMIT ?")
# Rows stored before samples existed that the new rule would not have kept: not the
# first of their host's UTC day, and no change event came from them.
_UNNEEDED_OLD_BODIES = (
    "SELECT r.report_id, r.received_at FROM reports r WHERE r.probes IS NULL "
    "AND r.received_at >= ? AND r.received_at < ? "
    "AND EXISTS (SELECT 1 FROM reports e WHERE e.agent_id = r.agent_id "
    "AND e.received_at >= substr(r.received_at, 1, 10) AND e.received_at < r.received_at) "
    "AND NOT EXISTS (SELECT 1 FROM changes c WHERE c.agent_id = r.agent_id "
    "AND c.at = r.received_at AND c.report_id = r.report_id) "
    "ORDER BY r.received_at LIMIT ?")

# The types of the host columns every report writes that are not text (`_unchanged_sql`
# passes each column as an array of its type).
_COLUMN_TYPES = {"clock_skew_s": "DOUBLE PRECISION", "interval_s": "DOUBLE PRECISION"}
DEFAULT_INTERVAL_S = 300.0  # for hosts whose reports do not say their interval
CLOCK_SKEW_FLAG_S = 300.0  # an agent clock this far off the hub's is flagged
# A report "collected" further ahead of the hub's clock than this is ordered as if collected
# when received: one report dated 9999 would otherwise make every later one look like backlog.
FUTURE_TOLERANCE = timedelta(days=1)
# How far back a report's collection day may file it (`history_day`): an agent's spool
# resends its backlog within days.
HISTORY_DAY_SLACK = timedelta(days=7)


@dataclass(frozen=True)
class _Last:
    """What change detection needs of a host's last stored report: a few hundred bytes."""

    collected_at: str
    state_digest: str | None
    software_hash: str | None
    identity: tuple[str | None, str | None]
    full_day: str | None  # the UTC day (YYYY-MM-DD) of the host's last full body, if known
    # Its connectivity verdict's `transition_key` and when that last changed (`hosts.net_at`).
    net_key: int = transition_key(None)
    net_at: str | None = None
    # `hosts.snapshot_digest`: the snapshot beyond its volatile sections (`_snapshot.py`).
    snapshot_digest: str | None = None


@dataclass(frozen=True)
class _Unchanged:
    """A report that only repeats its host's last (`HostRecords._unchanged`): its sample's
    arguments (`_insert_sample`'s), its host's columns, and what the host shows after it."""

    item: Incoming
    sample: tuple[Any, ...]
    values: dict[str, Any]
    last: _Last


class HostRecords(ComplianceRecords):
    def __init__(self, db: Database) -> None:
        # Per host, what the last committed report showed; saves reading the table back.
        self._last: dict[str, _Last] = {}
        self._pending: dict[str, _Last] = {}
        self._stored: list[Announced] = []  # the batch's stored reports, for its events
        # Rows stored before samples existed, received before this time, have been
        # thinned by this process (what was kept stays kept): each prune goes on from here.
        self._thinned_to = ""
        super().__init__(db)

    # --- reports ------------------------------------------------------------------------

    def store_reports(self, batch: list[Incoming]) -> list[str]:
        """Store a batch in one transaction (group commit).

        Returns:
            "stored" or "duplicate" for each report, in order; only after the commit.
            "need_full" for one that sent its package list by hash only (`packages` null)
            when the host's stored hash is another (or there is none): nothing of it stored.
        """
        self._pending = {}
        if self.db.history is not None:  # partitioned: the days this batch files rows under
            self.db.history.ensure("reports", {history_day(i.report["collected_at"],
                                                           i.received_at) for i in batch})
            received_days = {iso(i.received_at)[:10] for i in batch}
            self.db.history.ensure("changes", received_days)
            self.db.history.ensure("samples", received_days)
        self._stored = []
        self._pending_results = {}
        try:
            with self._transaction():
                results = self._store_batch(batch)
                # One host event per stored report, with the batch: a watcher on any hub
                # hears of it once it is committed, and only then.
                self._announce(HOST, self._stored)
        except BaseException:
            self._pending = {}
            self._commit_results(False)
            raise
        self._last.update(self._pending)  # only what the commit made true
        self._pending = {}
        self._commit_results(True)
        return results

    def _store_batch(self, batch: list[Incoming]) -> list[str]:
        """Each report as `_store_one` stores it, except the usual one (`_unchanged`): those
        are written together after the others, a statement for all their samples and one
        for all their hosts on PostgreSQL. Results and events keep the batch's order."""
        results = [""] * len(batch)
        events: list[Announced | None] = [None] * len(batch)
        per_agent = Counter(item.agent_id for item in batch)
        unchanged: list[tuple[int, _Unchanged]] = []
        for n, item in enumerate(batch):
            # A host with two reports in the batch: the second compares with the first.
            found = self._unchanged(item) if per_agent[item.agent_id] == 1 else None
            if found is not None:
                unchanged.append((n, found))
            else:
                results[n], events[n] = self._stored_alone(item)
        quiet: list[tuple[int, _Unchanged, dict[str, Any] | None]] = []
        for n, u in unchanged:
            current = self._quiet_compliance(u)
            if isinstance(current, bool):
                # Its compliance results change: written by `_store_one`, which records them.
                results[n], events[n] = self._stored_alone(u.item)
            else:
                quiet.append((n, u, current))
        if quiet:
            written = self._write_unchanged([u for _, u, _ in quiet])
            for n, u, current in quiet:
                if u.item.agent_id not in written:
                    # A resend, or another report in the same microsecond: one at a time.
                    results[n], events[n] = self._stored_alone(u.item)
                    continue
                self._pending[u.item.agent_id] = u.last
                if current is not None:
                    self._pending_results[u.item.agent_id] = current
                results[n] = "stored"
                events[n] = written[u.item.agent_id]
        self._stored = [e for e in events if e is not None]
        return results

    def _quiet_compliance(self, u: _Unchanged) -> dict[str, Any] | bool | None:
        """Evaluate an unchanged report's compliance where it changes none of its host's
        stored results, which is the rule: its summary goes into `u.values`, and its results
        are returned to keep as current once written (None without a policy). False when it
        changes some: `_evaluate` writes them, so it is stored alone.

        The results compare as `_write_results` keeps them: a row it would write differs."""
        if self.policy is None:
            return None
        agent_id, report = u.item.agent_id, u.item.report
        agency = self._compliance_agency(agent_id) if self.policy.overrides else None
        results = evaluate(self.policy.controls_for(agency), report, u.item.received_at)
        current = {r.control.id: (r.outcome, r.fact, r.reason, r.control.title,
                                  r.control.theme, r.control.severity, r.control.position)
                   for r in results}
        if current != self._current(agent_id):
            return False
        u.values.update(self._compliance_values(json.dumps(
            summarise(results), ensure_ascii=False, separators=(",", ":"))))
        return current

    def _write_unchanged(self, unchanged: list[_Unchanged]) -> dict[str, Announced | None]:
        """The samples and host rows of reports of distinct hosts that only repeat their
        host's last, each unless a resend; on PostgreSQL with their events, in one statement
        for all (its executor starts once, and the batch waits on one answer).

        Returns:
            The agents whose report was written, with its event still to announce (None:
            announced already). The others are a resend, or a sample of the same
            microsecond as another: ask `_store_one`.
        """
        events = {u.item.agent_id: (u.item.agent_id, u.values["last_seen"],
                                    u.item.report["report_id"], 0) for u in unchanged}
        if self.db.dialect != "postgresql":
            inserted = self._insert_samples([u.sample for u in unchanged])
            self._update_hosts([u.values for u in unchanged if u.item.agent_id in inserted])
            return {agent_id: events[agent_id] for agent_id in inserted}
        columns = tuple(c for c in unchanged[0].values if c != "agent_id")
        # Numbered now, written with the samples that are: a resend's number is a gap.
        rows = self._event_rows(HOST, events.values())
        self.db.execute(_GENERIC_PLAN)
        written = {r[0] for r in self.db.execute(
            _unchanged_sql(columns),
            [*sample_columns([u.sample for u in unchanged]),
             *([u.values[c] for u in unchanged] for c in ("agent_id", *columns)),
             *event_columns(rows)]).fetchall()}
        if rows and written:
            self.db.notify_events()
        return dict.fromkeys(written)

    def _stored_alone(self, item: Incoming) -> tuple[str, Announced | None]:
        """`_store_one`, and the event it announces (None: nothing stored)."""
        before = len(self._stored)
        status = self._store_one(item)
        return status, self._stored[before] if len(self._stored) > before else None

    def _unchanged(self, item: Incoming) -> _Unchanged | None:
        """What to write for a report that only repeats what its host's last report said,
        as the cache knows it: not older than the last, the same day, nothing changed beyond its
        volatile sections (so no change event, no body, no identity or list to check).
        None for any other: `_store_one` stores it."""
        prev = self._pending.get(item.agent_id) or self._last.get(item.agent_id)
        report = item.report
        if prev is None or prev.snapshot_digest is None or \
                report["software"]["hash"] != prev.software_hash or \
                report["agent"].get("dropped_reports"):
            return None
        received = iso(item.received_at)
        collected = _ordering_time(report["collected_at"], item.received_at)
        # A backlog report is history only; a resend is found by its sample's insert.
        if collected < prev.collected_at or prev.full_day != received[:10]:
            return None
        snapshot = {**report, "software": {**report["software"], "packages": None}}
        if stable_digest(snapshot) != prev.snapshot_digest:
            return None
        collected_time = parse_time(report["collected_at"])
        skew = (collected_time - item.received_at).total_seconds()
        net = net_verdict(report)
        net_key = transition_key(net)
        net_at = prev.net_at if prev.net_key == net_key else received
        values = {"agent_id": item.agent_id,
                  **self._volatile_values(item, skew, collected, (net, net_at)),
                  "live": live_text(snapshot)}
        sample = (item.agent_id, report["report_id"], collected_time, item.received_at, skew,
                  report)
        # The state digest is the last one's: the state is within what `stable` covers.
        last = _Last(collected, prev.state_digest, prev.software_hash, prev.identity,
                     received[:10], net_key, net_at, prev.snapshot_digest)
        return _Unchanged(item, sample, values, last)

    def forget_host(self, agent_id: str) -> None:
        """Read the host's last report back from the table at its next report, not from
        this process's memory: another hub may have stored some since (`_unchanged` trusts
        the memory to tell which reports only repeat the last)."""
        self._last.pop(agent_id, None)

    def _previous(self, agent_id: str) -> _Last | None:
        """What the host showed before this report: this batch, the cache, else the table."""
        last = self._pending.get(agent_id) or self._last.get(agent_id)
        if last:
            return last
        row = self.db.execute("SELECT collected_at, state_digest, software_hash, serial, uuid, "
                              "full_day, net, net_at, snapshot_digest FROM hosts "
                              "WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            return None
        # A far-future time stored before times were bounded would freeze the host for good.
        return _Last(_ordering_time(row[0], utcnow()), row[1], row[2], (row[3], row[4]), row[5],
                     transition_key(from_text(row[6])), row[7], row[8])

    def _store_one(self, item: Incoming) -> str:
        report = item.report
        prev = self._previous(item.agent_id)
        software = report["software"]
        if software["packages"] is None and software["hash"] is not None and \
                (prev is None or prev.software_hash != software["hash"]):
            # Sent by hash only, and not the list the hub holds: keep nothing of it, the agent
            # sends the same report again in full (docs/protocol.md, "Report stream"). No hash
            # at all is no list collected, stored as ever. A resend of one stored before the
            # list moved on is still a duplicate.
            return "duplicate" if self._stored_already(item) else "need_full"
        received = iso(item.received_at)
        collected_time = parse_time(report["collected_at"])
        skew = (collected_time - item.received_at).total_seconds()
        collected = _ordering_time(report["collected_at"], item.received_at)
        backlog = prev is not None and collected < prev.collected_at
        digest = state_digest(report)
        new_hash = report["software"]["hash"]
        day = received[:10]
        full = _keeps_body(prev, backlog, digest, new_hash, day, report)
        report_id = report["report_id"]
        if not self._insert_sample(item.agent_id, report_id, collected_time, item.received_at,
                                   skew, report):
            return "duplicate"
        if full:
            cur = self.db.execute(
                "INSERT INTO reports (report_id, agent_id, received_at, collected_at, "
                "clock_skew_s, body, probes, day) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                # The report id is unique (with `day` on PostgreSQL, whose partitions need it):
                # a resend whose sample is gone is still refused if it kept a body.
                "ON CONFLICT DO NOTHING",
                (report_id, item.agent_id, received, report["collected_at"], skew,
                 _gzipped(item.body), compact_probes(report),
                 history_day(report["collected_at"], item.received_at)))
            if cur.rowcount == 0:
                return "duplicate"
        if backlog:
            # A backlog report older than what we show: keep it as history only.
            self.db.execute("UPDATE hosts SET last_seen = ? WHERE agent_id = ?",
                            (received, item.agent_id))
            self._stored.append((item.agent_id, received, report_id, 0))
            return "stored"
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
            self._insert_changes(ChangeEvent(received, item.agent_id, c.kind, c.subject,
                                             c.old_text(), c.new_text(), report["report_id"])
                                 for c in changes)
        # Compliance, in the same transaction: its change events count with the report's.
        compliance, compliance_events = self._evaluate(item.agent_id, report,
                                                       item.received_at, report_id)
        # Connectivity: its time moves only when the state or the failing set does.
        net = net_verdict(report)
        net_key = transition_key(net)
        net_at = prev.net_at if prev is not None and prev.net_key == net_key else \
            received if net is not None or prev is not None else None
        snapshot_digest = self._upsert_host(item, digest, skew, software_changed, collected,
                                             compliance, (net, net_at),
                                             prev.snapshot_digest if prev else None)
        identity = (report["hardware"]["serial"], report["hardware"]["uuid"])
        if prev is None or prev.identity != identity:
            self._refresh_identity_conflicts(item.agent_id, prev.identity if prev else
                                             (None, None))
        # Today's first report kept a body (`full`), so this is the day of the last one kept.
        self._pending[item.agent_id] = _Last(collected, digest, new_hash, identity, day,
                                             net_key, net_at, snapshot_digest)
        self._stored.append((item.agent_id, received, report_id,
                             len(changes) + compliance_events))
        return "stored"

    def _stored_already(self, item: Incoming) -> bool:
        """Whether this agent's report with this id has a sample (`_insert_sample`'s test,
        without its insert)."""
        since = _resend_since(parse_time(item.report["collected_at"]), item.received_at)
        return self.db.execute(_RESENT, (item.agent_id, since, _without_agent(
            item.report["report_id"], item.agent_id))).fetchone() is not None

    def _upsert_host(self, item: Incoming, digest: str, skew: float,
                     software_changed: bool, collected_at: str,
                     compliance: str | None = None,
                     net: tuple[dict[str, Any] | None, str | None] = (None, None),
                     stored_digest: str | None = None) -> str:
        """Write the host's row: only what a report changes every time, when the rest of its
        snapshot is what the row holds (`stored_digest`, `_snapshot.py`); else all of it.

        Returns:
            The snapshot's digest, as the row now holds it.
        """
        r = item.report
        received = iso(item.received_at)
        snapshot = {**r, "software": {**r["software"], "packages": None}}
        stable = stable_digest(snapshot)
        volatile = {**self._volatile_values(item, skew, collected_at, net),
                    **self._compliance_values(compliance)}
        if stable == stored_digest:
            # Nothing beyond the volatile sections changed: the snapshot, its facts and every
            # column taken from them stay as written (a changed hash would change `stable`).
            volatile["live"] = live_text(snapshot)
            self.db.execute(_host_update_sql(tuple(volatile)),
                            (*volatile.values(), item.agent_id))
            return stable
        system, hardware = r["system"], r["hardware"]
        facts = facts_of(r)
        values = {
            "agent_id": item.agent_id,
            "hostname": system["hostname"], "fqdn": system["fqdn"],
            "os_family": system["os"]["family"], "os_name": system["os"]["name"],
            "os_version": system["os"]["version"], "vendor": hardware["vendor"],
            "model": hardware["model"], "serial": hardware["serial"], "uuid": hardware["uuid"],
            "cpu_model": hardware["cpu"]["model"],
            "memory_bytes": hardware["memory"]["total_bytes"],
            "fullest_volume_percent": facts["disk_percent"],
            "ip_addresses": " ".join(facts["ips"]) or None,
            "first_seen": received, **volatile,
            "software_hash": r["software"]["hash"], "state_digest": digest,
            "snapshot": json.dumps(snapshot, ensure_ascii=False, separators=(",", ":")),
            "facts": self.db.json_text(json.dumps(facts, ensure_ascii=False,
                                                  separators=(",", ":"))),
            "snapshot_digest": stable, "live": None,
        }
        if software_changed:
            # Unchanged lists are not resent, and not rewritten either. A changed hash with
            # no list leaves the list unknown (NULL) rather than stale.
            packages = r["software"]["packages"]
            values["packages"] = (json.dumps(packages, ensure_ascii=False,
                                             separators=(",", ":"))
                                  if packages is not None else None)
        # The agency and site come from the agent's row in the same statement: one round
        # trip less per report on a database server.
        self.db.execute(_host_upsert_sql(tuple(values)), (*values.values(), item.agent_id))
        return stable

    def _volatile_values(self, item: Incoming, skew: float, collected_at: str,
                         net: tuple[dict[str, Any] | None, str | None]) -> dict[str, Any]:
        """The host's columns every report writes."""
        r = item.report
        received = iso(item.received_at)
        return {
            "last_seen": received,
            # The ordering time (clamped); the snapshot keeps what the agent said.
            "last_report_id": r["report_id"], "collected_at": collected_at,
            "clock_skew_s": skew, "interval_s": r["agent"]["interval_s"],
            "full_day": received[:10],  # as in `_Last`: the day of the last body kept
            "net": to_text(net[0]), "net_at": net[1],
        }

    def _compliance_values(self, compliance: str | None) -> dict[str, Any]:
        if self.policy is None:
            return {}
        # Evaluated: its summary line, against this policy.
        return {"compliance": compliance, "compliance_policy": self.policy.hash}

    def _update_hosts(self, rows: list[dict[str, Any]]) -> None:
        """Write these columns of these hosts (each row's `agent_id`, same keys in all), on
        SQLite (PostgreSQL writes them in `_unchanged_sql`'s statement)."""
        if not rows:
            return
        columns = tuple(c for c in rows[0] if c != "agent_id")
        self.db.executemany(_host_update_sql(columns),
                            ([*(r[c] for c in columns), r["agent_id"]] for r in rows))

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

    def pack_history(self) -> int:
        """PostgreSQL: each day of samples that is over gets its key's index rebuilt packed,
        once, on a connection of its own, so this may run on a thread other than the store's
        while it stores reports (`_partitions.py`). SQLite: nothing to do. The days packed."""
        return self.db.history.pack_apart() if self.db.history is not None else 0

    def prune_reports(self, compact_before: datetime, full_before: datetime,
                      chunk: int = 5000) -> int:
        """Delete about a chunk of expired history in one short transaction; call again while
        it returns `chunk` or more, so reports waiting on the store thread go in between.

        Samples go once received before `compact_before`, kept bodies once received before
        `full_before`. Bodies stored before samples existed (one a report) are thinned past
        `compact_before` to what would have been kept: the first of its host's UTC day, and
        any a change event came from. On PostgreSQL whole days' partitions are dropped
        instead, and the days of samples the resend check no longer reaches lose their
        resend index (`_partitions.py`); `pack_history` packs the days that are over.

        Returns:
            The rows deleted.
        """
        if self.db.history is not None:
            dropped = (self.db.history.drop_before("samples", iso(compact_before)[:10])
                       + self.db.history.drop_before("reports", iso(full_before)[:10]))
            self.db.history.drop_resend_indexes(RESEND_INDEXED_DAYS)
            return dropped
        thin_bound = iso(compact_before)
        with self._transaction():
            deleted = self._prune_samples(compact_before, chunk)
            ids: list[str] = []
            if deleted < chunk:
                ids += [r[0] for r in self.db.execute(_EXPIRED_FULL,
                                                      (iso(full_before), chunk - deleted))]
            thinned_to = self._thinned_to
            if deleted + len(ids) < chunk and thinned_to < thin_bound:
                room = chunk - deleted - len(ids)
                rows = self.db.execute(_UNNEEDED_OLD_BODIES,
                                       (thinned_to, thin_bound, room)).fetchall()
                ids += [r[0] for r in rows]
                # Every old row up to here is judged (kept ones stay kept); a full chunk may
                # stop short of the bound.
                thinned_to = rows[-1][1] if len(rows) == room and rows else thin_bound
            self.db.executemany("DELETE FROM reports WHERE report_id = ?",
                                ((i,) for i in ids))
        self._thinned_to = thinned_to
        return deleted + len(ids)

    # --- reads: the operator API's scoped to agencies (None: all), then the admin's ---

    def host_rows(self, scope: list[str] | None, agent_ids: list[str] | None = None,
                  page: tuple[str, int] | None = None) -> list[HostRow]:
        """Compact rows in `estate.inventory.hostlist.COLUMN_KEYS` order.

        Args:
            page: (after agent id, limit): a page in agent id order, keyset-paged in SQL so
                every page costs the same.
        """
        sql = ("SELECT h.agent_id, h.hostname, a.name, s.name, g.connected, g.revoked_at, "
               "h.last_seen, h.interval_s, h.os_name, h.os_version, h.model, h.serial, "
               "h.cpu_model, h.memory_bytes, h.fullest_volume_percent, h.ip_addresses, "
               "g.remote_access, g.remote_offered, h.compliance, h.net "
               "FROM hosts h JOIN agents g ON g.id = h.agent_id "
               "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
               "WHERE 1 = 1")
        args: list[Any] = []
        sql, args = _scoped(sql, args, scope)
        if agent_ids is not None:
            # IN (NULL) for no ids: PostgreSQL refuses SQLite's empty IN ().
            sql += f" AND h.agent_id IN ({', '.join('?' for _ in agent_ids) or 'NULL'})"
            args += agent_ids
        if page is not None:
            sql += " AND h.agent_id > ? ORDER BY h.agent_id LIMIT ?"
            args += [page[0], page[1]]
        else:
            sql += " ORDER BY h.hostname"
        status_of = _StatusClock(utcnow())
        rows = []
        # Thousands of hosts share a compliance line (same results, same worst failure):
        # parsed once each (the summary is a named tuple, so rows may share it).
        summaries: dict[str | None, Any] = {}
        cursor = self.db.cursor()
        cursor.row_factory = None  # plain tuples: this runs for every host
        for r in cursor.execute(sql, args):
            status = status_of(r[5], r[6], r[4], r[7])
            os_name, os_version = r[8], r[9]
            os_text = (f"{os_name} {os_version}" if os_name and os_version
                       else os_name or os_version or None)
            ip = (r[15] or "").split(" ", 1)[0] or None
            compliance = summaries.get(r[18], summaries)
            if compliance is summaries:
                compliance = summaries[r[18]] = summary_of(r[18])
            rows.append(HostRow(r[0], r[1], r[2], r[3], status, row_of_text(r[19]), os_text,
                                r[10], r[11], r[12], r[13], r[14], ip, r[6],
                                remote_state(r[16], r[17], r[4], r[5]), compliance))
        return rows

    def host_count(self, scope: list[str] | None) -> int:
        if scope is None:  # every agency: no join (SQLite counts the smallest index)
            return int(self.db.execute("SELECT COUNT(*) FROM hosts").fetchone()[0])
        sql, args = _scoped("SELECT COUNT(*) FROM hosts h JOIN agencies a "
                            "ON a.id = h.agency_id WHERE 1 = 1", [], scope)
        return int(self.db.execute(sql, args).fetchone()[0])

    def summary(self, scope: list[str] | None) -> Summary:
        """Counts per agency and site: total, online, offline, stale (and revoked); and
        compliance per agency and site (`Summary.compliance`)."""
        totals: dict[str, int] = {"total": 0, "online": 0, "offline": 0, "stale": 0,
                                  "revoked": 0}
        agencies: dict[str, Any] = {}
        compliance: dict[str, Any] = {"totals": empty_counts(), "agencies": {}}
        for row in self.host_rows(scope):
            agency, site, status = row.agency, row.site, row.status
            a = agencies.setdefault(agency, {"counts": dict.fromkeys(totals, 0), "sites": {}})
            site_counts = a["sites"].setdefault(site, dict.fromkeys(totals, 0))
            for counts in (totals, a["counts"], site_counts):
                counts["total"] += 1
                counts[status] += 1
            ca = compliance["agencies"].setdefault(agency, {"counts": empty_counts(),
                                                            "sites": {}})
            site_compliance = ca["sites"].setdefault(site, empty_counts())
            for counts in (compliance["totals"], ca["counts"], site_compliance):
                add_to_counts(counts, row.compliance)
        return Summary(totals, agencies, compliance)

    def host_detail(self, agent_id: str, scope: list[str] | None) -> HostDetail | None:
        sql = ("SELECT h.*, a.name AS agency, s.name AS site, g.connected, g.revoked_at, "
               "g.enrolled_at FROM hosts h JOIN agents g ON g.id = h.agent_id "
               "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
               "WHERE h.agent_id = ?")
        sql, args = _scoped(sql, [agent_id], scope)
        row = self.db.execute(sql, args).fetchone()
        if row is None:
            return None
        d = dict(row)
        return HostDetail(
            agent_id=d["agent_id"], agency=d["agency"], site=d["site"],
            status=_StatusClock(utcnow())(d["revoked_at"], d["last_seen"], d["connected"],
                                          d["interval_s"]),
            first_seen=d["first_seen"], last_seen=d["last_seen"],
            enrolled_at=d["enrolled_at"], clock_skew_s=d["clock_skew_s"],
            identity_conflict=self._conflicts_in_scope(d["identity_conflict"], scope),
            report=current_report(d["snapshot"], d["live"]),
            packages=json.loads(d["packages"]) if d["packages"] else None,
            compliance=self.host_compliance(agent_id),
        )

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
                       limit: int) -> list[RecentReport] | None:
        """A host's recent reports, newest first, with their probe results (sparklines):
        its samples, then reports stored before samples existed."""
        if self.host_detail_exists(agent_id, scope) is False:
            return None
        out = self._recent_samples(agent_id, limit)
        if len(out) == limit:
            return out
        before = out[-1].received_at if out else "9999"
        rows = self.db.execute(
            "SELECT report_id, received_at, collected_at, clock_skew_s, body FROM reports "
            "WHERE agent_id = ? AND probes IS NULL AND received_at < ? "
            "ORDER BY received_at DESC LIMIT ?", (agent_id, before, limit - len(out)))
        for r in rows:
            try:
                probes = (json.loads(gzip.decompress(r[4])).get("connectivity") or {}).get(
                    "probes") or []
                figures = [{k: p.get(k) for k in ("name", "ok", "latency_ms")} for p in probes]
            except (OSError, EOFError, ValueError, AttributeError):
                figures = []
            out.append(RecentReport(r[0], r[1], r[2], r[3], figures))
        return out

    def report_count(self, agent_id: str | None = None) -> int:
        """Stored reports (their samples, and reports stored before samples existed), of one
        agent or of all."""
        sql, args = "SELECT COUNT(*) FROM reports WHERE probes IS NULL", []
        if agent_id is not None:
            sql, args = sql + " AND agent_id = ?", [agent_id]
        return self._sample_count(agent_id) + int(self.db.execute(sql, args).fetchone()[0])

    def host_detail_exists(self, agent_id: str, scope: list[str] | None) -> bool:
        sql = ("SELECT 1 FROM hosts h JOIN agencies a ON a.id = h.agency_id "
               "WHERE h.agent_id = ?")
        sql, args = _scoped(sql, [agent_id], scope)
        return self.db.execute(sql, args).fetchone() is not None

    def hosts(self) -> list[HostStatus]:
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
            status = status_of(d.pop("revoked_at"), d["last_seen"], d.pop("connected"),
                               d["interval_s"])
            out.append(HostStatus(**d, status=status,
                                  clock_skewed=abs(d["clock_skew_s"] or 0) > CLOCK_SKEW_FLAG_S))
        return out


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


@functools.lru_cache(maxsize=8)
def _host_upsert_sql(columns: tuple[str, ...]) -> str:
    """INSERT ... ON CONFLICT DO UPDATE for these columns, plus the agency and site of the
    agent (the last parameter); first_seen is set once."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in (*columns, "agency_id", "site_id")
                        if c not in ("agent_id", "first_seen"))
    # The WHERE also keeps SQLite's parser from reading ON CONFLICT as a join's ON.
    return (f"INSERT INTO hosts ({', '.join(columns)}, agency_id, site_id) "  # noqa: S608 - column names are literals in _upsert_host
            f"SELECT {', '.join('?' for _ in columns)}, agency_id, site_id FROM agents "
            f"WHERE id = ? ON CONFLICT (agent_id) DO UPDATE SET {updates}")


# For the rest of the transaction, a prepared statement runs its generic plan. Left to choose,
# the server plans `_unchanged_sql` anew at every run for a batch of one report (as a quiet
# hub's are), judging the plan for one row cheaper than the generic one: ~0.3 ms of its CPU a
# report, twice what the rest of the write costs.
_GENERIC_PLAN = "SELECT set_config('plan_cache_mode', 'force_generic_plan', true)"


@functools.lru_cache(maxsize=8)
def _unchanged_sql(columns: tuple[str, ...]) -> str:
    """`_write_unchanged`'s one statement (PostgreSQL): the samples' insert (`_samples.py`),
    then, of the agents whose sample it wrote, these columns of their hosts and their
    events. Its parameters are arrays: the samples' columns, the agent ids' and each host
    column's, the events' columns; the same text for any batch, so prepared once.
    Data-modifying parts of one statement see one snapshot: they meet only through the
    samples' RETURNING."""
    arrays = ", ".join(f"?::{_COLUMN_TYPES.get(c, 'TEXT')}[]" for c in ("agent_id", *columns))
    sets = ", ".join(f"{c} = v.{c}" for c in columns)
    return (f"WITH written AS ({INSERT_SAMPLES}), "  # noqa: S608 - names are literals in _volatile_values
            f"host_rows AS (UPDATE hosts SET {sets} FROM unnest({arrays}) "
            f"AS v (agent_id, {', '.join(columns)}) WHERE hosts.agent_id = v.agent_id "
            "AND v.agent_id IN (SELECT agent_id FROM written)), "
            f"host_events AS ({INSERT_EVENTS} WHERE v.agent_id IN (SELECT agent_id FROM written)) "
            "SELECT agent_id FROM written")


@functools.lru_cache(maxsize=8)
def _host_update_sql(columns: tuple[str, ...]) -> str:
    """UPDATE of these columns of a host's row (the agent id is the last parameter)."""
    sets = ", ".join(f"{c} = ?" for c in columns)
    return f"UPDATE hosts SET {sets} WHERE agent_id = ?"  # noqa: S608 - names are literals in _upsert_host


def _ordering_time(collected_at: str, now: datetime) -> str:
    """The time a report sorts by: as collected, unless implausibly far ahead of `now`."""
    try:
        ahead = parse_time(collected_at) - now > FUTURE_TOLERANCE
    except (ValueError, OverflowError):
        # Only a stored time can fail here (a damaged row, or one written before times were
        # validated): kept as text it could sort after every real time and freeze the host.
        ahead = True
    return iso(now) if ahead else collected_at


def history_day(collected_at: str, received_at: datetime) -> str:
    """The day (YYYY-MM-DD) a report is filed under: the day it was collected, within the
    week before it was received. A resent report (its ack was lost) is filed under the same
    day again, so its id's unique key (report id, day) refuses it; a day the agent's clock
    made up cannot reach a partition that does not exist."""
    received = received_at.date()
    try:
        collected = date.fromisoformat(collected_at[:10])
    except ValueError:
        collected = received
    return min(max(collected, received - HISTORY_DAY_SLACK), received).isoformat()


def _keeps_body(prev: _Last | None, backlog: bool, digest: str, software_hash: str, day: str,
                report: dict[str, Any]) -> bool:
    """Whether a report keeps its full body, or only its sample.

    The body is what `--as-of` reads, so one is kept whenever what it shows may differ from
    the last one kept (a host's first report, a backlog one, a change of state or software),
    and once a host's UTC day, so no day's history hangs on a body from long before. A report
    telling of dropped reports keeps the evidence of the gap.
    """
    return (prev is None or backlog or prev.state_digest != digest
            or prev.software_hash != software_hash or prev.full_day != day
            or bool(report["agent"].get("dropped_reports")))


def _gzipped(body: bytes) -> bytes:
    """Raw reports are kept gzip-compressed: as the agent sent them, or compressed here."""
    if body.startswith(b"\x1f\x8b"):
        return body
    return gzip.compress(body, 1, mtime=0)


