"""The hub's store: the only code that knows SQL, behind a typed interface.

`StoreInterface` and `ReaderInterface` (`_interface.py`) are the contract: typed methods
returning named records (`_records.py`); nothing outside this package sees SQL or a
connection. A second backend (PostgreSQL) implements both protocols, plus `open(data_dir)` and
`exists(data_dir)`, and keeps the rules `_interface.py`'s docstring lists: times as `iso()`
text, agency scope on every scoped read, one transaction per batch with its audit rows
hash-chained, one thread per store object, and a read-only handle per export thread.

`Store` is the SQLite backend (WAL; SQL kept to what PostgreSQL also runs), one part per
concern on one connection:

- `_base.py`: opening, migrating (`_migrations.py`), transactions;
- `_hosts.py`: storing reports (change detection, identity conflicts) and reading hosts;
- `_changes.py`: the change history;
- `_enrolment.py`: tokens, agents and their presence, operators;
- `_remote.py`: remote access and relayed sessions;
- `_audit.py`: the hash-chained audit log;
- `_reader.py`: the read-only handle export threads read through.

One `Store` holds one connection and is used from one thread at a time: the hub runs all its
database work on a single thread (group commit for reports), and the admin verbs open their
own `Store` in their own process. WAL lets them read while the hub writes.
"""

from __future__ import annotations

from estate.inventory.store._audit import audit_hash
from estate.inventory.store._common import iso, parse_time, utcnow
from estate.inventory.store._enrolment import EnrolError, EnrolmentRecords
from estate.inventory.store._hosts import DEFAULT_INTERVAL_S, HostRecords
from estate.inventory.store._interface import ReaderInterface, StoreInterface
from estate.inventory.store._reader import Reader
from estate.inventory.store._records import (
    Agent,
    AuditCheck,
    AuditRow,
    Change,
    ChangeEvent,
    ChangeNotice,
    Enrolment,
    HostDetail,
    HostFacts,
    HostName,
    HostQuery,
    HostRow,
    HostStatus,
    Incoming,
    NewToken,
    Operator,
    OperatorRow,
    RecentReport,
    Record,
    RemoteTarget,
    Session,
    SessionEnd,
    Summary,
    Token,
)
from estate.inventory.store._remote import RemoteRecords, remote_state

__all__ = [
    "DEFAULT_INTERVAL_S", "Agent", "AuditCheck", "AuditRow", "Change", "ChangeEvent",
    "ChangeNotice", "EnrolError", "Enrolment", "HostDetail", "HostFacts", "HostName",
    "HostQuery", "HostRow", "HostStatus",
    "Incoming", "NewToken", "Operator", "OperatorRow", "Reader", "ReaderInterface",
    "RecentReport", "Record", "RemoteTarget", "Session", "SessionEnd", "Store",
    "StoreInterface", "Summary", "Token", "audit_hash", "iso", "parse_time", "remote_state",
    "utcnow",
]


class Store(HostRecords, EnrolmentRecords, RemoteRecords):
    """The SQLite store: every part of `StoreInterface` on one connection."""

    def reader(self) -> Reader:
        """A read-only handle for an export thread; open it on that thread."""
        return Reader(self.path)


def _keeps_the_contract(store: Store, reader: Reader) -> tuple[StoreInterface, ReaderInterface]:
    return store, reader  # mypy checks here that the SQLite backend implements both protocols
