"""The hub's store: the only code that knows SQL, behind a typed interface.

`StoreInterface` and `ReaderInterface` (`_interface.py`) are the contract: typed methods
returning named records (`_records.py`); nothing outside this package sees SQL or a
connection. A second backend (PostgreSQL) implements both protocols, plus `open(data_dir)` and
`exists(data_dir)`, and keeps the rules `_interface.py`'s docstring lists: times as `iso()`
text, agency scope on every scoped read, one transaction per batch with its audit rows
hash-chained, one thread per store object, and a read-only handle per export thread.

`Store` runs one SQL dialect on either backend behind `_database.py`'s `Database`: SQLite
(`_sqlite.py`, WAL, the embedded default) or PostgreSQL (`_postgres.py`), chosen by a store
URL (`_url.py`). Its parts, one per concern on one connection:

- `_base.py`: opening (`Store.open(data_dir)`, `Store.connect(url)`), migrations
  (`_migrations.py`), transactions;
- `_hosts.py`: storing reports (change detection, identity conflicts) and reading hosts;
- `_changes.py`: the change history;
- `_enrolment.py`: tokens, agents, operators;
- `_presence.py`: the registry of running hubs, which hub holds each agent's connection, and
  presence history;
- `_remote.py`: remote access and relayed sessions;
- `_events.py`: the watch's events, every hub's, written with what they announce;
- `_audit.py`: the hash-chained audit log;
- `_probes.py`: the probe policies the hub hands its agents, per agency and site;
- `_incidents.py`: incidents (the correlator's reads and writes, operators' acks) and leases;
- `_overview.py`: the estate overview's figures per agency and site;
- `_notifications.py`: the alert dispatcher's reads, cursors and firing conditions, and the
  queue of notifications to send;
- `_reader.py`: the read-only handle export threads read through.

Beside them, `_copy.py` copies a whole store into another (`estate-hub store copy`).

One `Store` holds one connection and is used from one thread at a time: the hub runs all its
database work on a single thread (group commit for reports), and the admin verbs open their
own `Store` in their own process. WAL lets them read while the hub writes.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from estate.inventory.store._audit import audit_hash
from estate.inventory.store._base import database
from estate.inventory.store._common import iso, parse_time, utcnow
from estate.inventory.store._copy import CopyProgress, CopyResult, TableCount, copy_store
from estate.inventory.store._enrolment import EnrolError, EnrolmentRecords
from estate.inventory.store._hosts import DEFAULT_INTERVAL_S, HostRecords
from estate.inventory.store._incidents import Incident, IncidentEvent, IncidentRecords
from estate.inventory.store._interface import ReaderInterface, StoreInterface
from estate.inventory.store._notifications import (
    MAX_PENDING_PER_CHANNEL,
    NotificationRecords,
    Queueing,
    queue_full_episodes,
)
from estate.inventory.store._overview import OverviewRecords
from estate.inventory.store._presence import PresenceRecords
from estate.inventory.store._probes import ProbePolicyTooLarge, ProbeRecords
from estate.inventory.store._reader import Reader
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
    Event,
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
    Record,
    Released,
    RemoteTarget,
    Session,
    SessionEnd,
    Summary,
    Sweep,
    Token,
)
from estate.inventory.store._remote import RemoteRecords, remote_state
from estate.inventory.store._url import ENV_VAR, StoreUnavailable, StoreUrl, StoreUrlError

__all__ = [
    "DEFAULT_INTERVAL_S",
    "ENV_VAR",
    "MAX_PENDING_PER_CHANNEL",
    "Agent",
    "AlertHost",
    "AlertIncidentEvent",
    "AlertSession",
    "AuditCheck",
    "AuditRow",
    "AvailabilityHost",
    "Change",
    "ChangeEvent",
    "ChangeNotice",
    "ComplianceRow",
    "CopyProgress",
    "CopyResult",
    "EnrolError",
    "Enrolment",
    "Event",
    "EventPage",
    "Held",
    "HostDetail",
    "HostFacts",
    "HostName",
    "HostQuery",
    "HostRow",
    "HostStatus",
    "HubRow",
    "Incident",
    "IncidentEvent",
    "Incoming",
    "NewToken",
    "Notification",
    "OffHost",
    "Operator",
    "OperatorRow",
    "ProbePolicy",
    "ProbePolicyTooLarge",
    "Queueing",
    "Reader",
    "ReaderInterface",
    "RecentReport",
    "Record",
    "Released",
    "RemoteTarget",
    "Session",
    "SessionEnd",
    "Store",
    "StoreInterface",
    "StoreUnavailable",
    "StoreUrl",
    "StoreUrlError",
    "Summary",
    "Sweep",
    "TableCount",
    "Token",
    "audit_hash",
    "copy_store",
    "iso",
    "migrate_store",
    "open_store",
    "parse_time",
    "queue_full_episodes",
    "remote_state",
    "utcnow",
]


class Store(HostRecords, EnrolmentRecords, PresenceRecords, RemoteRecords, OverviewRecords,
            IncidentRecords, NotificationRecords, ProbeRecords):
    """The store: every part of `StoreInterface` on one connection (SQLite or PostgreSQL)."""

    def reader(self) -> Reader:
        """A read-only handle for an export thread; open it on that thread."""
        return Reader(self.db.read_only())

    def agent_connected(self, hub_id: str, agent_id: str, at: datetime) -> Held | None:
        held = super().agent_connected(hub_id, agent_id, at)
        # Between this agent's connections here it may have reported through another hub,
        # which wrote its compliance results and its host's row: what this process kept of
        # either is no longer current.
        self.forget_results(agent_id)
        self.forget_host(agent_id)
        return held


def open_store(url: StoreUrl | str | None, data_dir: Path | None = None, durable: bool = True,
               export_url: StoreUrl | str | None = None) -> Store:
    """The store a `--store` URL names, or without one the SQLite store in `data_dir`.

    Raises:
        StoreUrlError: the URL is not one this hub can use (the message says why).
        StoreUnavailable: the store cannot be reached or prepared (one line to show).
        SchemaTooNew: the store was written by a newer Estate.
    """
    if isinstance(url, str):
        url = StoreUrl.parse(url)
    if isinstance(export_url, str):
        export_url = StoreUrl.parse(export_url, "--export-store")
    if url is None:
        if data_dir is None:
            raise StoreUrlError("--store: no URL and no data folder to keep the store in")
        return Store.open(data_dir, durable)
    return Store.connect(url, durable, export_url)


def migrate_store(url: StoreUrl | None, data_dir: Path | None) -> tuple[int, int]:
    """Bring a store's schema to this code's version: (version before, version after)."""
    db = database(url, data_dir)
    try:
        # Read under the migration lock: of two at once, the second finds nothing to do.
        before = db.migrate()
        return before, db.schema_version()
    finally:
        db.close()


def _keeps_the_contract(store: Store, reader: Reader) -> tuple[StoreInterface, ReaderInterface]:
    return store, reader  # mypy checks here that the SQLite backend implements both protocols
