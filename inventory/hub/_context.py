"""What the hub hands its SSH connections (`Services`) and each command handler (`Context`):
typed, explicit parts, never the `Hub` itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import asyncssh

from estate.inventory.hub._access import AccessGuard
from estate.inventory.hub._audit import AuditCoalescer
from estate.inventory.hub._budget import Budget, ExportSlots
from estate.inventory.hub._door import Door
from estate.inventory.hub._ingest import Ingest
from estate.inventory.hub._peer import Peer
from estate.inventory.hub._probe_policy import ProbePolicies
from estate.inventory.hub._remote import RemoteAccess
from estate.inventory.hub._rotation import NextKeyAnnouncer
from estate.inventory.hub._settings import HubSettings
from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import Tasks
from estate.inventory.hub._watch import Watch
from estate.inventory.hub._writer import Writer
from estate.inventory.store import StoreInterface


@dataclass(frozen=True)
class Budgets:
    """Bytes every channel together may hold (`_budget.py`)."""

    input: Budget  # report and enrol bodies
    export: Budget  # export request bodies
    answer: Budget  # API answers not yet written


@dataclass(frozen=True)
class Context:
    """One command handler's world: the peer it serves and the parts of the hub it uses."""

    peer: Peer
    settings: HubSettings
    store: StoreInterface
    db: StoreThread
    tasks: Tasks
    audit: AuditCoalescer
    door: Door  # folds repeated refusal log lines (`refusal_to_log`)
    budgets: Budgets
    ingest: Ingest
    writer: Writer
    exports: ExportSlots
    watch: Watch
    host_key: asyncssh.SSHKey  # signs export manifests
    fingerprint: str  # the host key's; enrolment tokens name it
    next_key: NextKeyAnnouncer  # told to agents in report acks during a rotation
    probe_policies: ProbePolicies  # handed to agents in report acks
    access_ended: Callable[[], str | None]  # why this peer's access ended, or None


@dataclass(frozen=True)
class Services:
    """The hub's running parts its SSH connections use; built once by `Hub`."""

    settings: HubSettings
    store: StoreInterface
    db: StoreThread
    tasks: Tasks
    audit: AuditCoalescer
    door: Door
    access: AccessGuard
    remote: RemoteAccess
    watch: Watch
    budgets: Budgets
    ingest: Ingest
    writer: Writer
    exports: ExportSlots
    host_key: asyncssh.SSHKey
    fingerprint: str
    next_key: NextKeyAnnouncer
    probe_policies: ProbePolicies

    def context(self, peer: Peer, access_ended: Callable[[], str | None]) -> Context:
        """What a command handler serving `peer` gets (no access guard, no relay)."""
        # Every part a Context names is one of these, under the same name.
        shared = {f.name: getattr(self, f.name) for f in fields(Context)
                  if f.name not in ("peer", "access_ended")}
        return Context(peer=peer, access_ended=access_ended, **shared)
