"""The running hub: builds its parts, starts and stops them in order, and prunes old data."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import asyncssh

from estate.inventory.compliance import load_policy
from estate.inventory.hub import _known_sources, _metrics
from estate.inventory.hub._access import AccessGuard
from estate.inventory.hub._alerts import Alerts, describe
from estate.inventory.hub._audit import AuditCoalescer, Row
from estate.inventory.hub._budget import (
    EXPORT_REQUESTS_PER_HOLDER,
    INPUT_PER_HOLDER,
    Budget,
    ExportSlots,
)
from estate.inventory.hub._context import Budgets, Services
from estate.inventory.hub._door import Door
from estate.inventory.hub._health import IncidentTask
from estate.inventory.hub._ingest import Ingest, ReportRate
from estate.inventory.hub._keys import fingerprint, load_or_create_host_key
from estate.inventory.hub._links import Links, reachable_address
from estate.inventory.hub._presence import Presence
from estate.inventory.hub._probe_policy import ProbePolicies
from estate.inventory.hub._remote import Limits, RemoteAccess
from estate.inventory.hub._rotation import NextKeyAnnouncer
from estate.inventory.hub._server import listen
from estate.inventory.hub._settings import HubSettings, default_hub_id
from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import Tasks, log_failure
from estate.inventory.hub._watch import Watch
from estate.inventory.hub._writer import Writer
from estate.inventory.sanitise import quoted
from estate.inventory.store import StoreInterface, open_store, utcnow

log = logging.getLogger("estate.hub")

# Reports deleted per transaction: ~0.1 s of the store thread on 2 shared vCPUs (measured),
# the longest a report waits on pruning.
PRUNE_CHUNK = 5000
# Watch events are kept this long: ample for a hub's reader, which is seconds behind at most.
WATCH_EVENTS_KEPT = timedelta(hours=1)


class Hub:
    """The running hub: store thread, writer, SSH listener."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.host_key, self.host_key_created = load_or_create_host_key(settings.data_dir)
        self.fingerprint = fingerprint(self.host_key)
        self.db = StoreThread()
        # The backend is named only where it is opened; every part sees the interface.
        self.store: StoreInterface = open_store(settings.store_url, settings.data_dir,
                                                export_url=settings.export_store_url)
        self.store_name = str(settings.store_url or settings.data_dir / "estate.db")
        self.tasks = Tasks()
        # This hub in the store's registry, and the agents' connections it holds.
        self.presence = Presence(self.db, self.store, settings.heartbeat_s,
                                 settings.hub_timeout_s)
        self.watch = Watch(self.db, self.store, self.tasks, self.presence)
        # The incident correlator, run while this hub holds its lease; woken by presence
        # events the watch reads (every hub's), never per report. None: `--no-incidents`.
        self.incidents = None if settings.incidents is None else IncidentTask(
            self.db, self.store, self.tasks, settings.incidents, on_change=self.watch.wake)
        if self.incidents is not None:
            self.watch.on_presence = self.incidents.wake
        self.writer = Writer(self.db, self.store, on_commit=self._committed,
                             commit_delay_s=settings.commit_delay_ms / 1000)
        # Each report body is charged to its agent before it is parsed, and parsed off the loop.
        self.ingest = Ingest(ReportRate(settings.report_burst, settings.reports_per_interval,
                                        settings.min_report_interval_s,
                                        settings.agent_bytes_per_day))
        self.remote = RemoteAccess(self.db, self.store, self.tasks, self.watch,
                                   Limits(settings.sessions_per_operator,
                                          settings.sessions_per_host),
                                   Links(self.host_key))  # to the other hubs, on demand
        # Refusals are audited through the coalescer, so a flood writes a few rows.
        self.audit = AuditCoalescer(self._write_audit)
        # Input every channel buffers, bounded in total (a channel's own limit is not enough).
        budgets = Budgets(input=Budget(settings.max_buffered_input, INPUT_PER_HOLDER),
                          export=Budget(settings.max_export_requests,
                                        EXPORT_REQUESTS_PER_HOLDER),
                          answer=Budget(settings.max_answer_bytes))
        # Ends open connections whose access was withdrawn.
        self.access = AccessGuard(self.db, self.store, self.tasks, self.remote)
        # `--alerts FILE`: rules routed to channels, dispatched and sent while this hub
        # holds the "alerts" lease (one hub of the store at a time).
        self.alerts = None if settings.alerts is None else Alerts(
            self.db, self.store, self.tasks, self.audit, settings.alerts)
        self.door = Door(replace(settings.door, full=settings.max_unauthenticated))
        self.services = Services(
            settings=settings, store=self.store, db=self.db, tasks=self.tasks,
            audit=self.audit, door=self.door, access=self.access, remote=self.remote,
            watch=self.watch, budgets=budgets, ingest=self.ingest, writer=self.writer,
            exports=ExportSlots(),  # exports queued or running, per operator and in all
            host_key=self.host_key, fingerprint=self.fingerprint,
            next_key=NextKeyAnnouncer(settings.data_dir, self.host_key),
            probe_policies=ProbePolicies(self.db, self.store))
        self._server: asyncssh.SSHAcceptor | None = None
        # `serve --workers`: this worker's own port, which other hubs' links reach it at (on
        # the shared one the kernel would hand a link to any worker, maybe not the agent's).
        self._link_server: asyncssh.SSHAcceptor | None = None
        _metrics.track(watchers=lambda: len(self.watch.watchers),
                       remote_sessions=lambda: len(self.remote.live))

    async def start(self) -> None:
        await self.watch.start()
        self.writer.start()
        self.tasks.spawn(self._prune_loop())
        self.tasks.spawn(self.remote.supervise())
        self.tasks.spawn(self.audit.run())
        self.tasks.spawn(self.access.run())
        self.tasks.spawn(self.services.probe_policies.run())
        if n := _known_sources.load(self.settings.data_dir, self.door, self.settings.worker):
            log.info("%d known sources kept from the last run", n)
        self.tasks.spawn(_known_sources.keep(self.settings.data_dir, self.door,
                                             self.settings.worker))
        await self._apply_policy()
        self._server = await listen(self.services)
        # Registered once the port is known (the default name has it). Store calls run in
        # the order made, so this runs before any agent's login is even checked.
        self.settings.hub_id = self.settings.hub_id or default_hub_id(self.port)
        if self.settings.worker:
            self._link_server = await listen(self.services, port=0)
        link_port = self.port if self._link_server is None else \
            int(self._link_server.sockets[0].getsockname()[1])
        # Ends the remote sessions this hub's previous run relayed, too.
        await self.presence.start(self.settings.hub_id,
                                  reachable_address(self.settings.host, link_port))
        self.remote.hub_id = self.remote.links.hub_id = self.settings.hub_id
        self.tasks.spawn(self.presence.run(self.watch.presence_changed))
        if self.incidents is not None:
            self.tasks.spawn(self.incidents.run(self.settings.hub_id))
        if self.alerts is not None:
            log.info("%s", describe(self.alerts.rules))
            self.tasks.spawn(self.alerts.run(self.settings.hub_id))

    async def _apply_policy(self) -> None:
        """Evaluate reports against the policy from now on; hosts evaluated against another
        (or none) are evaluated again from their stored snapshots, in batches, while the hub
        serves."""
        policy = self.settings.policy or load_policy()
        changed = await self.db(self.store.apply_policy, policy, "hub")
        pending = await self.db(self.store.hosts_to_reevaluate)
        log.info("compliance policy %s version %s (sha256 %s)%s", quoted(policy.name, 128),
                 quoted(policy.version, 64), policy.hash[:16],
                 ": new to this store (audited)" if changed else "")
        if changed:
            # Hubs already running keep the policy they started with: hosts would flip
            # between the two as their agents move between hubs.
            others = [h.id for h in await self.db(self.store.hubs)
                      if h.id != self.settings.hub_id]
            if others:
                log.warning("compliance: %d other hubs of this estate run (%s) and keep the "
                            "policy they started with: restart each with this same --policy",
                            len(others), ", ".join(quoted(h, 64) for h in others[:10]))
        if pending:
            self.tasks.spawn(self._reevaluate(pending))

    async def _reevaluate(self, pending: int) -> None:
        done = 0
        log.info("compliance: evaluating %d hosts against the policy", pending)
        while not self.tasks.stopping:
            try:
                n = await self.db(self.store.reevaluate)
            except Exception:
                log_failure(log, "evaluating hosts against the compliance policy failed")
                return
            if not n:
                break
            done += n
            log.info("compliance: %d of %d hosts evaluated", done, pending)
            await asyncio.sleep(0)  # reports queued meanwhile go in between batches

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.tasks.stopping = True
        if self._link_server:
            self._link_server.close()
        if self._server:
            self._server.close()
            try:  # don't wait on clients that keep their connections open
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except asyncio.TimeoutError:
                log.warning("stopping with client connections still open")
        await self.remote.close_all("hub stopping")
        await self.writer.stop()
        self.ingest.close()
        self.tasks.cancel_all()
        if self.incidents is not None:
            await self.incidents.stop()
        if self.alerts is not None:
            await self.alerts.stop()
        await self.watch.stop()
        await self.audit.close()
        try:
            _known_sources.save(self.settings.data_dir, self.door, self.settings.worker)
        except OSError as exc:
            log.warning("could not save the known sources: %s", exc)
        await self.presence.stop()
        await self.db(self.store.close)
        self.db.shutdown()

    async def _committed(self, agent_ids: list[str]) -> None:
        """After a batch commit: counted for the registry, told to watchers."""
        self.presence.reports_stored(len(agent_ids))
        await self.watch.committed(agent_ids)

    async def _write_audit(self, rows: list[Row]) -> None:
        await self.db(self.store.audit_many, rows)

    async def _prune_loop(self) -> None:
        while True:
            try:
                n = await self.prune_reports()
                if n:
                    log.info("pruned %d reports (samples older than %s, kept bodies older "
                             "than %s)", n, self.settings.retention, self.settings.history)
                # Off the store thread: a day's index rebuilt takes seconds at 20,000 hosts,
                # which the reports waiting there must not.
                n = await asyncio.to_thread(self.store.pack_history)
                if n:
                    log.info("packed the samples' index of %d finished days", n)
                n = await self.db(self.store.prune_changes,
                                  _cutoff(utcnow(), self.settings.history))
                if n:
                    log.info("pruned %d change events older than %s", n,
                             self.settings.history)
                # Incidents are history, kept as long as changes (resolved ones only).
                n = await self.db(self.store.prune_incidents,
                                  _cutoff(utcnow(), self.settings.history))
                if n:
                    log.info("pruned %d incidents resolved before %s ago", n,
                             self.settings.history)
                # Watch events are a wake-up's worth of news, not history (`_watch.py`).
                await self.db(self.store.prune_events, utcnow() - WATCH_EVENTS_KEPT)
            except Exception:
                log_failure(log, "pruning reports or change history failed")
            await asyncio.sleep(3600)

    async def prune_reports(self, chunk: int = PRUNE_CHUNK) -> int:
        """Delete the reports past their horizons, one chunk per store-thread job: reports
        queued meanwhile are stored between chunks, not after the whole prune."""
        now = utcnow()
        compact_before = _cutoff(now, self.settings.retention)
        full_before = _cutoff(now, self.settings.history)
        total = 0
        while not self.tasks.stopping:
            n = await self.db(self.store.prune_reports, compact_before, full_before, chunk)
            total += n
            if n < chunk:
                break
        return total


def _cutoff(now: datetime, keep: timedelta) -> datetime:
    """What is older than this goes; a horizon past year 1 (the flags allow a million days)
    keeps everything."""
    try:
        return now - keep
    except OverflowError:
        return datetime.min.replace(tzinfo=timezone.utc)
