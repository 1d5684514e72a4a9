"""The hub's alert tasks (`serve --alerts FILE`): the dispatcher, which turns what happened
into queued notifications, and the sender, which works the queue through each channel with
retries; both on the one hub of the store holding the "alerts" lease.

Sending never blocks ingest: the dispatcher's pass is one short store job a second, and each
send runs on a thread of its own, bounded by its channel's timeout. A channel that fails is
tried again with exponential backoff (BACKOFF_FIRST_S doubling up to BACKOFF_CAP_S), its
other notifications waiting behind the one that failed so that they stay in order (an
incident's "resolved" never overtakes its "opened"); a notification still unsent GIVE_UP_AFTER
after it was queued is given up (state failed, audited). Every send and every failed try is
audited through the coalescer, so a channel down for a day writes a few rows, not thousands.
Each channel's queue is bounded (`MAX_PENDING_PER_CHANNEL`, enforced by the dispatcher's
`queue_alerts`): a channel down through an incident flood stops queuing, not the hub.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from estate.inventory.health.alerts import Dispatcher, Message, Rules, SendError, send
from estate.inventory.hub._audit import AuditCoalescer
from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import Tasks, log_failure
from estate.inventory.sanitise import quoted
from estate.inventory.store import Notification, StoreInterface, parse_time, utcnow

log = logging.getLogger("estate.hub.alerts")

LEASE = "alerts"
LEASE_TTL_S = 15.0  # another hub takes over this long after this one stops renewing
POLL_S = 1.0  # a dispatcher pass this often: an incident is queued within a second or so
BACKOFF_FIRST_S = 5.0
BACKOFF_CAP_S = 600.0
GIVE_UP_AFTER = timedelta(hours=24)
DUE_AT_ONCE = 200  # notifications read per sender pass


class Alerts:
    """The dispatcher and the sender of one hub; `run` on its event loop."""

    def __init__(self, db: StoreThread, store: StoreInterface, tasks: Tasks,
                 audit: AuditCoalescer, rules: Rules, poll_s: float = POLL_S,
                 backoff_first_s: float = BACKOFF_FIRST_S,
                 backoff_cap_s: float = BACKOFF_CAP_S,
                 give_up_after: timedelta = GIVE_UP_AFTER) -> None:
        self.db, self.store, self.tasks, self.audit = db, store, tasks, audit
        self.rules = rules
        self.dispatcher = Dispatcher(rules)
        self.poll_s = poll_s
        self.backoff_first_s, self.backoff_cap_s = backoff_first_s, backoff_cap_s
        self.give_up_after = give_up_after
        self.hub_id = ""
        self.held = False  # this hub holds the lease: it dispatches and sends
        self._wake: asyncio.Event | None = None
        self._busy: set[str] = set()  # channels with a send in progress
        self._blocked: dict[str, float] = {}  # channel -> monotonic time it may try again
        # Sends run on threads of their own, a channel at a time: a peer that holds one until
        # its deadline ties up a thread of this pool, never the loop's default executor
        # (which the watch and the known-sources writer use).
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(rules.channels)),
                                        thread_name_prefix="alerts")
        self.sent = self.failed = 0  # counters, for logs and tests

    def wake(self) -> None:
        """Something may be due (a notification queued): the sender looks now."""
        if self._wake is not None:
            self._wake.set()

    async def run(self, hub_id: str) -> None:
        """Hold (or wait for) the lease; while held, a dispatcher pass every `poll_s`."""
        self.hub_id = hub_id
        self._wake = asyncio.Event()
        self.tasks.spawn(self._send_loop())
        renewed = float("-inf")
        while not self.tasks.stopping:
            try:
                if time.monotonic() - renewed >= LEASE_TTL_S / 3:
                    held = await self.db(self.store.take_lease, LEASE, hub_id, LEASE_TTL_S,
                                         utcnow())
                    renewed = time.monotonic()
                    if held != self.held:
                        log.info("alerts: %s", "this hub dispatches and sends them" if held
                                 else "another hub of the store holds the lease")
                    self.held = held
                if self.held:
                    if await self.db(self.dispatcher.run_pass, self.store, utcnow()):
                        self.wake()
            except Exception:
                log_failure(log, "alerts: a dispatcher pass failed")
            await asyncio.sleep(self.poll_s)

    async def stop(self) -> None:
        """At hub stop: let another hub take the lease at once."""
        if self.held and self.hub_id:
            self.held = False
            try:
                await self.db(self.store.release_lease, LEASE, self.hub_id)
            except Exception:
                log_failure(log, "alerts: releasing the lease failed")
        # A send in flight ends by its own deadline; queued ones are dropped (still pending).
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the sender ---------------------------------------------------------------------

    async def _send_loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if not self.held or self.tasks.stopping:
                continue
            now = time.monotonic()
            # Channels that cannot send now are left out of the read: a failing channel's
            # backlog would otherwise fill every page and starve the others.
            waiting = sorted(self._busy | {c for c, at in self._blocked.items() if at > now})
            try:
                due = await self.db(self.store.due_notifications, utcnow(), DUE_AT_ONCE,
                                    waiting)
            except Exception:
                log_failure(log, "alerts: reading the queue failed")
                continue
            by_channel: dict[str, list[Notification]] = {}
            for n in due:
                by_channel.setdefault(n.channel, []).append(n)
            now = time.monotonic()
            for channel, rows in by_channel.items():
                if channel in self._busy or self._blocked.get(channel, 0) > now:
                    continue
                self._busy.add(channel)
                self.tasks.spawn(self._send_channel(channel, rows))

    async def _send_channel(self, name: str, rows: list[Notification]) -> None:
        """Send a channel's due notifications in order; stop at the first failure (the
        rest wait with it)."""
        try:
            for n in rows:
                if not self.held or self.tasks.stopping:
                    return
                if not await self._send_one(name, n):
                    return
        except Exception:
            log_failure(log, "alerts: sending through channel %s failed", quoted(name, 64))
        finally:
            self._busy.discard(name)
            self.wake()  # more may have come due meanwhile

    async def _send_one(self, name: str, n: Notification) -> bool:
        """One notification; False when the channel should wait (it failed)."""
        channel = self.rules.channels.get(name)
        if channel is None:
            await self._give_up(n, f"channel {name} is not in the rules file any more")
            return True
        try:
            message = Message.from_json(n.payload)
        except (ValueError, TypeError, KeyError):
            await self._give_up(n, "the queued message cannot be read")
            return True
        queued_at = parse_time(n.created_at)
        if utcnow() - queued_at > self.give_up_after:
            await self._give_up(n, f"not sent within {self.give_up_after} "
                                   f"(last error: {n.last_error or 'none'})")
            return True
        # Past the channel's own timeouts (connect, each read), the thread is left to finish
        # on its own: the notification counts as failed and is tried again.
        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                self._pool, send, channel, message, n.id), channel.timeout_s * 3 + 5)
        except (SendError, asyncio.TimeoutError) as exc:
            error = str(exc) or "timed out"
            delay = min(self.backoff_cap_s, self.backoff_first_s * 2 ** min(n.attempts, 30))
            next_at = utcnow() + timedelta(seconds=delay)
            if next_at - queued_at > self.give_up_after:
                await self._give_up(n, error)
                return True
            await self.db(self.store.notification_retry, n.id, error, next_at)
            self._blocked[name] = time.monotonic() + delay
            self.audit.record(f"alerts:{name}", "hub", "alert_send_failed", name,
                              {"notification": n.id, "rule": n.rule, "thread": n.thread,
                               "error": error[:300], "attempt": n.attempts + 1})
            log.warning("alerts: channel %s: notification %d not sent (%s); trying again "
                        "in %.0f s", quoted(name, 64), n.id, quoted(error, 300), delay)
            return False
        await self.db(self.store.notification_sent, n.id, utcnow())
        self.sent += 1
        self._blocked.pop(name, None)
        self.audit.record(f"alerts:{name}", "hub", "alert_sent", name,
                          {"notification": n.id, "rule": n.rule, "thread": n.thread,
                           "event": f"{message.condition} {message.event}"})
        return True

    async def _give_up(self, n: Notification, error: str) -> None:
        if await self.db(self.store.notification_failed, n.id, error, utcnow()):
            self.failed += 1
            log.error("alerts: channel %s: notification %d given up: %s",
                      quoted(n.channel, 64), n.id, quoted(error, 300))


def describe(rules: Rules) -> str:
    """One line for the hub's log at start."""
    def kinds(of_type: str) -> int:
        return sum(1 for c in rules.channels.values() if c.type == of_type)

    return (f"alerts: {len(rules.rules)} rules, {len(rules.channels)} channels "
            f"({kinds('email')} email, {kinds('webhook')} webhook, {kinds('syslog')} syslog) "
            f"from {quoted(rules.source, 200)} (sha256 {rules.hash[:16]})")
