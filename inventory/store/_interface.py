"""The store's contract: what the hub, the operator API, watchers, exports and the admin verbs
may ask of a store, as typed methods returning the named records of `_records.py`.

`estate.inventory.store.Store` (SQLite) implements it; a second backend (PostgreSQL) implements the
same two protocols, `StoreInterface` and `ReaderInterface`, and nothing else is needed of it:
no caller sees SQL, a connection or a row. What a backend must keep:

- Times are stored and returned as `iso()` text (fixed width, UTC), so text order is time
  order; inputs are aware `datetime`s.
- `scope` is the operator's agencies: a list of names, or None for all agencies. A scoped read
  never returns, counts or names a host outside it (not even in `identity_conflict`).
- Writes are atomic: `store_reports` stores its whole batch in one transaction (group commit)
  and answers only after the commit; every write that audits appends its audit row in the same
  transaction, chained to the row before it (`audit_hash`), even with a second process (an
  admin verb) writing at the same time. The audit log is append-only in the database itself.
- One store object is used by one thread at a time (the hub's store thread; an admin verb's
  process). `reader()` may be called from any thread and gives a read-only handle of its own,
  used on the thread that made it (an export's), while the hub keeps writing; `pack_history()`
  may be called from any thread too, on a connection of its own.
- Reports: every report leaves a sample (time, skew, probe figures, its id: what sparklines
  and the resend check read); its body is kept only for a host's first report, a backlog one,
  one telling of dropped reports, a change (state digest or software hash), and the first of
  each UTC day (received time). As-of reads take a host's state from its last kept body.
- Opening: the class has `open(data_dir, durable=True)` (create or migrate, then open; a schema
  newer than the code raises `estate.inventory.errors.SchemaTooNew`) and `exists(data_dir)` (whether
  a hub has stored anything there). `durable=False` may trade crash safety for speed (seeding
  benchmarks).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from estate.inventory.store._records import (
    Agent,
    AlertHost,
    AlertIncidentEvent,
    AlertSession,
    AuditCheck,
    AuditRow,
    AvailabilityHost,
    Change,
    ChangeEvent,
    ChangeNotice,
    ComplianceRow,
    Enrolment,
    EventPage,
    Held,
    HostDetail,
    HostFacts,
    HostName,
    HostQuery,
    HostRow,
    HostStatus,
    HubRow,
    Incoming,
    NewToken,
    Notification,
    OffHost,
    Operator,
    OperatorRow,
    ProbePolicy,
    RecentReport,
    Released,
    RemoteTarget,
    Session,
    SessionEnd,
    Summary,
    Sweep,
    Token,
)

if TYPE_CHECKING:
    from estate.inventory.compliance import Policy
    from estate.inventory.health._correlate import Capped, HealthInputs, Open, Resolve, Update
    from estate.inventory.probe_spec import ProbeSpec
    from estate.inventory.store._incidents import Incident, IncidentEvent
    from estate.inventory.store._notifications import Queueing


class ReaderInterface(Protocol):
    """A read-only handle for one export thread; `close()` (or `with`) when done."""

    skipped_unreadable: int  # as-of hosts left out: their stored report could not be read

    def close(self) -> None: ...

    def __enter__(self) -> ReaderInterface: ...

    def __exit__(self, *exc: object) -> None: ...

    def hosts_now(self, query: HostQuery, now: datetime) -> Iterator[HostFacts]:
        """Hosts in the query as known now, ordered by agency, site, hostname, agent id."""
        ...

    def hosts_as_of(self, query: HostQuery, as_of: datetime) -> Iterator[HostFacts]:
        """Hosts as known at `as_of` (their last full report by then, last seen by their
        newest report of either kind, their presence then), in the same order; unreadable
        ones skipped and counted in `skipped_unreadable`."""
        ...

    def hosts_missing_history(self, query: HostQuery, as_of: datetime) -> int:
        """Hosts known at `as_of` with no full report kept from then (past the history)."""
        ...

    def host_names(self, query: HostQuery) -> Iterator[HostName]: ...

    def change_events(self, until: datetime | None = None,
                      since: datetime | None = None) -> Iterator[ChangeEvent]:
        """Every host's change events with `at` in [since, until], in the order recorded."""
        ...

    def host_count(self, scope: list[str] | None) -> int: ...

    def change_count(self, scope: list[str] | None) -> int: ...

    def compliance_rows(self, query: HostQuery, as_of: datetime | None
                        ) -> Iterator[ComplianceRow]:
        """Each host's result per control, now or as of a moment, by agency, site, hostname
        and the policy's order."""
        ...

    def compliance_policy(self, as_of: datetime | None = None) -> dict[str, str] | None:
        """The policy the store had (now, or at `as_of`): name, version, hash."""
        ...

    def availability_hosts(self, query: HostQuery, since: datetime,
                           until: datetime) -> list[AvailabilityHost]:
        """Hosts enrolled before `until` and not revoked by `since`, by agency, site,
        hostname, agent id; each with its presence state at `since`."""
        ...

    def presence_changes(self, agent_ids: list[str], since: datetime,
                         until: datetime) -> Iterator[tuple[str, str, str]]:
        """These agents' presence rows (agent id, time, state) strictly inside (since,
        until), by agent id, then time (a chunk of a few hundred agents at a time)."""
        ...


class StoreInterface(Protocol):
    """Everything the hub, the API, watchers, exports and the admin verbs ask of a store."""

    # --- the store itself ---------------------------------------------------------------

    def close(self) -> None: ...

    def schema_version(self) -> int: ...


    def reader(self) -> ReaderInterface:
        """A read-only handle of its own, for an export thread (see the module docstring)."""
        ...

    # --- hosts and reports --------------------------------------------------------------

    def store_reports(self, batch: list[Incoming]) -> list[str]:
        """Store a batch in one transaction; "stored" or "duplicate" for each, in order
        ("need_full": a report by package hash only that the store cannot complete)."""
        ...

    def prune_reports(self, compact_before: datetime, full_before: datetime,
                      chunk: int = 5000) -> int:
        """Delete one chunk (at most `chunk` rows, one short transaction) of the reports
        past their horizon: samples received before `compact_before`, kept bodies
        before `full_before`; the rows deleted. The caller calls again while it gets `chunk`,
        each call its own job, so ingest goes on in between."""
        ...

    def pack_history(self) -> int:
        """Rebuild what the history's growth left loose (PostgreSQL: each finished day's
        samples key index, once) on a connection of its own, opened and closed in the call:
        it takes seconds at 20,000 hosts, so the hub runs it off its store thread. The days
        packed (0 where there is nothing to pack)."""
        ...

    # --- compliance (`_compliance.py`) ----------------------------------------------------

    def apply_policy(self, policy: Policy, actor: str = "hub") -> bool:
        """Evaluate reports against `policy` from now on; True (audited) when it is new to
        the store."""

    def current_policy(self) -> dict[str, str] | None: ...

    def hosts_to_reevaluate(self) -> int: ...

    def reevaluate(self, batch: int = ...) -> int:
        """Evaluate a batch of hosts not yet evaluated against the current policy."""

    def host_compliance(self, agent_id: str) -> dict[str, Any] | None: ...

    def host_rows(self, scope: list[str] | None, agent_ids: list[str] | None = None,
                  page: tuple[str, int] | None = None) -> list[HostRow]:
        """Host-list rows by hostname, or a page (after agent id, limit) by agent id."""
        ...

    def host_count(self, scope: list[str] | None) -> int: ...

    def summary(self, scope: list[str] | None) -> Summary: ...

    def host_detail(self, agent_id: str, scope: list[str] | None) -> HostDetail | None: ...

    def host_detail_exists(self, agent_id: str, scope: list[str] | None) -> bool: ...

    def recent_reports(self, agent_id: str, scope: list[str] | None,
                       limit: int) -> list[RecentReport] | None:
        """A host's newest reports first; None when the host is not in scope."""
        ...

    def report_count(self, agent_id: str | None = None) -> int:
        """Stored reports, of one agent or of all: for health checks and benchmarks."""
        ...

    def hosts(self) -> list[HostStatus]:
        """Every host (all agencies) by agency, site, hostname: the admin's list."""
        ...

    def overview(self, scope: list[str] | None,
                 now: datetime | None = None) -> dict[str, Any]:
        """The estate overview (`_overview.py`): per agency and site, hosts, online share
        and its 24-hour sparkline, open incidents, stale, unsupported OS, full disks, worst
        connectivity; the `overview` API op's answer."""
        ...

    # --- changes ------------------------------------------------------------------------

    def last_change_id(self) -> int: ...

    def changes_after(self, change_id: int, limit: int = 10_000) -> list[ChangeNotice]: ...

    def scoped_changes(self, scope: list[str] | None, host: str | None = None,
                       since: datetime | None = None, limit: int = 1000,
                       max_bytes: int | None = None) -> list[Change]:
        """The newest `limit` (-1: all) oldest first; `estate.inventory.changes.TooLarge` once their
        text passes `max_bytes`."""
        ...

    def changes(self, host: str | None = None,
                since: datetime | None = None) -> list[Change]: ...

    def record_changes(self, events: Iterable[ChangeEvent]) -> None:
        """Write history directly (imports, benchmarks), in one transaction."""
        ...

    def prune_changes(self, older_than: datetime, chunk: int = 10_000) -> int: ...

    # --- enrolment: tokens, agents, operators ------------------------------------------

    def create_token(self, agency: str, site: str, uses: int, ttl: timedelta,
                     actor: str) -> NewToken: ...

    def tokens(self) -> list[Token]: ...

    def revoke_token(self, token_id: str, actor: str) -> bool: ...

    def enrol(self, token_id: str, secret: str, public_key: str, fingerprint: str,
              hostname: str | None, audit_refusal: bool = True) -> Enrolment:
        """Raises `EnrolError` (code, message) when the token or key is refused."""
        ...

    def agent_fingerprint(self, agent_id: str) -> str | None: ...

    def access_version(self) -> int:
        """A counter that moves with every change of who may log in, by any process."""
        ...

    def agent_access(self, agent_ids: list[str]) -> dict[str, tuple[str, str | None]]:
        """(key fingerprint, revoked_at) of each of these agents that exists."""
        ...

    def agents(self) -> list[Agent]: ...

    def revoke_agent(self, agent_id: str, actor: str) -> bool: ...

    def add_operator(self, name: str, public_key: str, fingerprint: str, role: str,
                     agencies: list[str] | None, actor: str) -> None:
        """Raises ValueError when the name or key is already registered."""
        ...

    def operators(self) -> list[OperatorRow]: ...

    def operator(self, name: str) -> Operator | None: ...

    def remove_operator(self, name: str, actor: str) -> bool: ...

    # --- presence: the hub registry, agents' connections --------------------------------

    def agent_connected(self, hub_id: str, agent_id: str, at: datetime) -> Held | None:
        """`hub_id` now holds the agent's connection: online, epoch + 1 (returned with the
        agency); None for an unknown agent."""
        ...

    def agent_disconnected(self, hub_id: str, agent_id: str, epoch: int,
                           at: datetime) -> str | None:
        """Offline only if `hub_id` still holds the agent under `epoch`: its agency, or None
        when another connection took the agent over since."""
        ...

    def set_presence(self, agent_id: str, connected: bool, at: datetime) -> str | None:
        """Record presence outside any hub's connection (tests, imports); the agency."""
        ...

    def register_hub(self, hub_id: str, address: str | None, timeout_s: float,
                     version: str | None, at: datetime) -> list[Released]:
        """A hub's start: its row; offline the agents it held before and orphaned ones."""
        ...

    def hub_heartbeat(self, hub_id: str, agents: int, reports_per_s: float,
                      at: datetime) -> bool:
        """False when the hub's row is gone (taken for dead): it must `rejoin_hub`."""
        ...

    def rejoin_hub(self, hub_id: str, address: str | None, timeout_s: float,
                   version: str | None, started_at: datetime, agent_ids: list[str],
                   at: datetime) -> list[Held]:
        """Register again and take back the agents no other hub holds now."""
        ...

    def sweep_hubs(self, hub_id: str, at: datetime) -> Sweep:
        """Remove the other hubs past their timeout; their agents offline."""
        ...

    def unregister_hub(self, hub_id: str, at: datetime) -> list[Released]:
        """A hub's clean stop: its agents offline, its row removed."""
        ...

    def hubs(self) -> list[HubRow]: ...

    # --- watch events across hubs (`_events.py`) ----------------------------------------

    def event_heads(self) -> dict[str, int]:
        """Each registered hub's newest event seq: where a hub starting reads from."""
        ...

    def events_after(self, cursors: Mapping[str, int], limit: int = 2000) -> EventPage:
        """Every hub's events after `cursors` (hub id -> last seq read), merged by time."""
        ...

    def report_changes(self, reports: list[tuple[str, str, str]]
                       ) -> dict[tuple[str, str], list[ChangeNotice]]:
        """The changes each (agent id, received at, report id) recorded, by (agent id,
        report id), oldest first."""
        ...

    def prune_events(self, older_than: datetime, chunk: int = 10_000) -> int: ...

    def wait_for_events(self, timeout_s: float) -> bool:
        """Block until another hub may have written events (True) or `timeout_s` passed.
        The one call made from another thread than the store's: the hub's listener thread,
        on a connection of its own."""
        ...

    # --- incidents and leases (`_incidents.py`) -------------------------------------------

    def take_lease(self, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
        """Take or renew the lease `name` for `ttl_s`: True when `holder` holds it."""
        ...

    def release_lease(self, name: str, holder: str) -> None: ...

    def health_inputs(self, net_after: str | None, hold: timedelta,
                      now: datetime) -> HealthInputs:
        """What one correlator pass reads (hosts per site, offline, net changes, incidents)."""
        ...

    def apply_health(self, actions: Iterable[Open | Update | Resolve | Capped], holder: str,
                     now: datetime) -> list[int]:
        """A correlator's plan, in one transaction while `holder` holds "correlator"."""
        ...

    def incidents(self, scope: list[str] | None, state: str = "open",
                  agency: str | None = None, site: str | None = None, limit: int = 1000,
                  now: datetime | None = None) -> list[Incident]: ...

    def incidents_by_ids(self, ids: list[int]) -> list[Incident]: ...

    def incident_exists(self, incident_id: int) -> bool: ...

    def incident(self, incident_id: int, scope: list[str] | None) -> dict[str, Any] | None:
        """An incident in scope with its hosts and timeline; None when not in scope."""
        ...

    def open_incident_counts(self, scope: list[str] | None) -> dict[tuple[str, str], int]: ...

    def ack_incident(self, incident_id: int, actor: str, scope: list[str] | None,
                     at: datetime) -> Incident | None: ...

    def silence_incident(self, incident_id: int, actor: str, until: datetime,
                         scope: list[str] | None, at: datetime) -> Incident | None: ...

    def last_incident_event_id(self) -> int: ...

    def incident_events_after(self, after_id: int,
                              limit: int = 1000) -> list[IncidentEvent]: ...

    def prune_incidents(self, older_than: datetime, chunk: int = 10_000) -> int: ...

    # --- alerts (`_notifications.py`) -----------------------------------------------------

    def alert_cursors(self) -> dict[str, int]:
        """The alert dispatcher's read positions by name."""
        ...

    def alert_heads(self) -> dict[str, int]:
        """Where a dispatcher that never ran starts: the newest incident event and remote
        session."""
        ...

    def alert_incident_events(self, after_id: int,
                              limit: int = 500) -> list[AlertIncidentEvent]: ...

    def alert_offline_hosts(self, opened_before: datetime, rule: str,
                            limit: int = 1000) -> list[OffHost]:
        """Open host incidents opened before then that `rule` has not told yet."""
        ...

    def alert_sessions(self, after_id: int, started_by: datetime,
                       limit: int = 1000) -> list[AlertSession]: ...

    def alert_hosts(self, agent_ids: list[str]) -> list[AlertHost]: ...

    def alert_firing(self, rule: str, condition: str, agent_ids: list[str]) -> set[str]: ...

    def queue_alerts(self, notifications: list[tuple[str, str, str, str]],
                     cursors: dict[str, int], fire: list[tuple[str, str, str]],
                     clear: list[tuple[str, str, str]], at: datetime,
                     max_pending: int = ...) -> Queueing:
        """A dispatcher pass's notifications, cursors and firing changes, in one
        transaction; none queued for a channel with `max_pending` pending."""
        ...

    def forget_alerts(self, rules: list[str], cursors: list[str]) -> None: ...

    def due_notifications(self, now: datetime, limit: int = 200,
                          skip: Sequence[str] = ()) -> list[Notification]: ...

    def notifications(self, states: list[str], limit: int = 1000) -> list[Notification]: ...

    def notification_sent(self, notification_id: int, at: datetime) -> None: ...

    def notification_retry(self, notification_id: int, error: str,
                           next_at: datetime) -> None: ...

    def notification_failed(self, notification_id: int, error: str, at: datetime) -> bool:
        """Give a notification up (audited); False when it was not pending."""
        ...

    # --- probe policies (`_probes.py`) ---------------------------------------------------

    def set_probe_policy(self, agency: str, site: str, probes: Sequence[ProbeSpec],
                         actor: str) -> str:
        """Set an agency's (site "") or a site's policy, audited; its hash. Raises
        `ProbePolicyTooLarge` when some (agency, site) would have over 16 probes."""
        ...

    def clear_probe_policy(self, agency: str, site: str, actor: str) -> bool: ...

    def probe_policies(self, agency: str | None = None) -> list[ProbePolicy]: ...

    def effective_probe_policies(self) -> dict[tuple[str, str], tuple[str, list[ProbeSpec]]]:
        """(hash, probes) of each (agency, site) with a policy and each (agency, "")."""
        ...

    def agent_place(self, agent_id: str) -> tuple[str, str] | None:
        """The agency and site of an agent."""
        ...

    # --- remote access ------------------------------------------------------------------

    def set_remote_access(self, agent_id: str, allowed: bool, actor: str) -> bool: ...

    def remote_allowed(self, agent_id: str) -> bool: ...

    def set_remote_offered(self, agent_id: str, offered: bool) -> None: ...

    def remote_targets(self, host: str, scope: list[str] | None) -> list[RemoteTarget]: ...

    def session_started(self, operator: str, agent_id: str, peer: str, at: datetime,
                        hub_id: str | None = None, agent_hub: str | None = None) -> int: ...

    def session_ended(self, session_id: int, to_host: int, from_host: int, reason: str,
                      at: datetime, agent_hub: str | None = None) -> None: ...

    def sessions(self, live_only: bool = False, limit: int = 100) -> list[Session]: ...

    def request_session_end(self, session_id: int, actor: str) -> bool: ...

    def sessions_to_end(self, session_ids: list[int]) -> list[SessionEnd]: ...

    # --- audit --------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str | None,
              detail: dict[str, Any] | None = None) -> None: ...

    def audit_many(self, rows: list[tuple[str, str, str | None,
                                          dict[str, Any] | None]]) -> None: ...

    def audit_log(self, limit: int = 1000, since: datetime | None = None,
                  until: datetime | None = None, actor: str | None = None,
                  action: str | None = None,
                  before_id: int | None = None) -> list[AuditRow]: ...

    def verify_audit(self) -> AuditCheck: ...
