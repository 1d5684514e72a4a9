"""The hub's SSH gateway: public-key logins, one allow-listed command per session channel.

Users on the wire: `enrol` (any key; may only run `estate-enrol v1` with a valid token), an
agent id (its enrolled key; may only run `estate-report v1`, and offer its own sshd for remote
access) and an operator name (the API, the watch, and remote sessions to hosts in scope).
Shells, ptys, subsystems and every other kind of forwarding are refused; `_remote` decides
the two forwards remote access uses.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from inventory.hub import _known_sources, _tokens
from inventory.hub._access import AccessGuard, refused
from inventory.hub._api import MAX_LINE_BYTES, OperatorApi
from inventory.hub._audit import AuditCoalescer, Row
from inventory.hub._budget import (
    ANSWER_CHUNK,
    ANSWER_WRITE_TIMEOUT_S,
    EXPORT_REQUESTS_PER_HOLDER,
    INPUT_PER_HOLDER,
    MAX_ANSWER,
    MAX_ANSWER_BYTES,
    MAX_BUFFERED_INPUT,
    MAX_EXPORT_REQUESTS,
    RETRY_AFTER_S,
    Budget,
    ExportSlots,
)
from inventory.hub._door import MESSAGES, PENALISED, Door, DoorLimits, source_of
from inventory.hub._ingest import MAX_RECEIVED_BYTES, Ingest, OverBudget, ReportRate
from inventory.hub._keys import fingerprint, load_or_create_host_key
from inventory.hub._lines import TOO_LONG, LineReader
from inventory.hub._remote import Limits, RemoteAccess
from inventory.hub._writer import Busy, StoreUnavailable, Writer
from inventory.report import ReportError
from inventory.sanitise import quoted
from inventory.store import EnrolError, Incoming, Store, utcnow

log = logging.getLogger("estate.hub")
T = TypeVar("T")

# What an SSH server audit (ssh-audit) passes, post-quantum notes aside: no NIST-curve ECDH
# (fail), no 2048-bit group14 and no encrypt-and-MAC hmac-sha2-* (warn); no CBC, 3DES, SHA-1
# or MD5 anywhere. Every client we ship or document still connects (tests/test_ssh_audit.py):
# paramiko >= 3.4 (curve25519-sha256@libssh.org, aes-ctr with the -etm MACs), asyncssh and
# OpenSSH. The host key is ed25519 only. group16/18 stay for older clients; the front door's
# per-source connection rate limit keeps their cost from being a DoS (DHEat, CVE-2002-20001).
KEX_ALGS = ["mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org",
            "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512"]
ENCRYPTION_ALGS = ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com",
                   "aes128-gcm@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr"]
MAC_ALGS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]

ENROL_USER = "enrol"
REPORT_COMMAND = "estate-report v1"
ENROL_COMMAND = "estate-enrol v1"
API_COMMAND = "estate-api v1"
WATCH_COMMAND = "estate-watch v1"
EXPORT_COMMAND = "estate-export v1"
COMMANDS = {REPORT_COMMAND: "agent", ENROL_COMMAND: "enrol", API_COMMAND: "operator",
            WATCH_COMMAND: "operator", EXPORT_COMMAND: "operator"}
# Bytes a slow watcher's channel may hold unsent before it is told to resync (then nothing
# more until it has caught up), and for all watchers together: with --max-watchers of them
# stalled, the hub holds at most the total, not 1,000 x the per-watcher backlog.
WATCH_BACKLOG_BYTES = 256 * 1024
WATCH_BACKLOG_TOTAL = 64 * 1024 * 1024
MAX_ENROL_BYTES = 16 * 1024
MAX_EXPORT_REQUEST_BYTES = 16 * 1024 * 1024  # a reconcile request carries the register
BODY_TIMEOUT_S = 60.0
# Open session channels per connection: the console uses a few (API, watch, exports); an agent
# one at a time; `enrol` runs one command and is then disconnected.
CHANNELS_PER_CONNECTION = {"operator": 8, "agent": 4, "enrol": 1}
AGENT_CONNECTIONS = 2  # logged-in connections one agent may hold; the oldest go past it
_LOGIN_ORDER = itertools.count(1)
# API answers that mean "this line is not a request"; many a second and the channel is cut.
INVALID_LINE_CODES = frozenset({"bad_json", "bad_request", "unknown_op", "line_too_long"})
# Public keys one connection may have refused (queries count) before it is cut off, as
# OpenSSH's MaxAuthTries: each is a store lookup, and a client may offer thousands.
MAX_AUTH_TRIES = 6

# Exit statuses: the client tells "fix your data" from "retry later" without parsing text.
EXIT_OK, EXIT_USAGE, EXIT_DATA, EXIT_TEMPFAIL, EXIT_NOPERM = 0, 64, 65, 75, 77

_AGENT_ID = re.compile(r"^ag-[0-9a-f]{12}$")
OPERATOR_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,31}$")


@dataclass
class HubSettings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 2222
    login_timeout_s: float = 20.0
    max_unauthenticated: int = 200
    handshake_timeout_s: float = 10.0  # until the first login attempt: banner and key exchange
    door: DoorLimits = field(default_factory=DoorLimits)  # its `full` is max_unauthenticated
    keepalive_interval_s: float = 30.0
    keepalive_count_max: int = 3
    retention: timedelta = timedelta(days=30)
    sessions_per_operator: int = 4
    sessions_per_host: int = 2
    change_retention: timedelta = timedelta(days=400)  # auditors want a year of history
    report_burst: int = 10  # reports one agent may send back to back; 0: no limit
    reports_per_interval: float = 4  # then this many per max(floor, the agent's interval)
    min_report_interval_s: float = 60.0  # that floor: no agent claim raises its budget
    agent_bytes_per_day: int = 64 * 1024 * 1024  # report bodies one agent may send; 0: off
    max_buffered_input: int = MAX_BUFFERED_INPUT  # report/enrol bodies, all channels
    max_export_requests: int = MAX_EXPORT_REQUESTS  # export request bodies, all channels
    max_answer_bytes: int = MAX_ANSWER_BYTES  # API answers held, all channels
    max_answer_size: int = MAX_ANSWER  # one API answer
    watchers_per_operator: int = 4  # watch channels per operator name, all connections
    max_watchers: int = 1000  # watch channels on the hub


class Hub:
    """The running hub: store thread, writer, SSH listener."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.host_key, self.host_key_created = load_or_create_host_key(settings.data_dir)
        self.fingerprint = fingerprint(self.host_key)
        # One thread owns the database connection; every store call goes through it.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.store = Store.open(settings.data_dir)
        self.writer = Writer(self.db, self.store, on_commit=self._committed)
        # Each report body is charged to its agent before it is parsed, and parsed off the loop.
        self.ingest = Ingest(ReportRate(settings.report_burst, settings.reports_per_interval,
                                        settings.min_report_interval_s,
                                        settings.agent_bytes_per_day))
        self.watchers: set[_Watcher] = set()
        self.remote = RemoteAccess(self, Limits(settings.sessions_per_operator,
                                                settings.sessions_per_host))
        # Refusals are audited through the coalescer, so a flood writes a few rows.
        self.audit = AuditCoalescer(self._write_audit)
        # Input every channel buffers, bounded in total (a channel's own limit is not enough).
        self.input_budget = Budget(settings.max_buffered_input, INPUT_PER_HOLDER)
        self.export_budget = Budget(settings.max_export_requests, EXPORT_REQUESTS_PER_HOLDER)
        self.answer_budget = Budget(settings.max_answer_bytes)
        self.access = AccessGuard(self)  # ends open connections whose access was withdrawn
        self.exports = ExportSlots()  # exports queued or running, per operator and in all
        self.last_change_id = 0
        self.door = Door(replace(settings.door, full=settings.max_unauthenticated))
        self.stopping = False
        self._server: asyncssh.SSHAcceptor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    async def start(self) -> None:
        await self.db(self.store.reset_presence)
        await self.db(self.store.end_orphan_sessions, utcnow())
        self.last_change_id = await self.db(self.store.last_change_id)
        self.writer.start()
        self.spawn(self._prune_loop())
        self.spawn(self.remote.supervise())
        self.spawn(self.audit.run())
        self.spawn(self.access.run())
        if n := _known_sources.load(self.settings.data_dir, self.door):
            log.info("%d known sources kept from the last run", n)
        self.spawn(_known_sources.keep(self.settings.data_dir, self.door))
        self._server = await asyncssh.create_server(
            lambda: _Connection(self), self.settings.host, self.settings.port,
            server_host_keys=[self.host_key],
            login_timeout=self.settings.login_timeout_s,
            keepalive_interval=self.settings.keepalive_interval_s,
            keepalive_count_max=self.settings.keepalive_count_max,
            kex_algs=KEX_ALGS, encryption_algs=ENCRYPTION_ALGS, mac_algs=MAC_ALGS,
            # ptys reach _Session.pty_requested, which refuses and logs them.
            compression_algs=["none"], agent_forwarding=False,
            x11_forwarding=False, password_auth=False, kbdint_auth=False,
            gss_host=None, host_based_auth=False, allow_scp=False,
            server_version="Estate",
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.stopping = True
        if self._server:
            self._server.close()
            try:  # don't wait on clients that keep their connections open
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except asyncio.TimeoutError:
                log.warning("stopping with client connections still open")
        await self.remote.close_all("hub stopping")
        await self.writer.stop()
        self.ingest.close()
        for task in list(self._tasks):
            task.cancel()
        await self.audit.close()
        try:
            _known_sources.save(self.settings.data_dir, self.door)
        except OSError as exc:
            log.warning("could not save the known sources: %s", exc)
        await self.db(self.store.reset_presence)
        await self.db(self.store.close)
        self._db_thread.shutdown(wait=True)

    async def _write_audit(self, rows: list[Row]) -> None:
        await self.db(self.store.audit_many, rows)

    # --- events for estate-watch -------------------------------------------------------

    def publish(self, event: dict[str, Any], agency: str | None) -> None:
        watchers = [w for w in self.watchers if w.scope is None or agency in w.scope]
        if not watchers:
            return
        # Encoded once for every watcher (80 watchers each encoding 200 changes a report took
        # the event loop for seconds); the hub-wide backlog summed once per event.
        line = (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        over = sum(w.backlog() for w in self.watchers) > WATCH_BACKLOG_TOTAL
        for watcher in watchers:
            watcher.offer(line, over)

    async def presence(self, agent_id: str, connected: bool) -> None:
        if self.stopping:
            return  # stop() marks everyone offline itself
        agency = await self.db(self.store.set_presence, agent_id, connected, utcnow())
        if self.watchers:
            rows = await self.db(self.store.host_rows, None, [agent_id])
            self.publish({"type": "presence", "agent_id": agent_id,
                          "status": rows[0][4] if rows else
                          ("online" if connected else "offline"),
                          "row": rows[0] if rows else None}, agency)

    async def refresh_host(self, agent_id: str) -> None:
        """Send watchers a host's current row (after something not in a report changed)."""
        if self.watchers:
            for row in await self.db(self.store.host_rows, None, [agent_id]):
                self.publish({"type": "host", "row": row}, row[2])

    async def _committed(self, agent_ids: list[str]) -> None:
        """After a batch commit: tell watchers about updated hosts and new changes."""
        if not self.watchers:
            self.last_change_id = await self.db(self.store.last_change_id)
            return
        rows = await self.db(self.store.host_rows, None, sorted(set(agent_ids)))
        for row in rows:
            self.publish({"type": "host", "row": row}, row[2])
        changes = await self.db(self.store.changes_after, self.last_change_id)
        for change in changes:
            self.last_change_id = max(self.last_change_id, change["id"])
            self.publish({"type": "change", **change}, change["agency"])

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prune_loop(self) -> None:
        while True:
            try:
                n = await self.db(self.store.prune_reports, utcnow() - self.settings.retention)
                if n:
                    log.info("pruned %d raw reports older than %s", n, self.settings.retention)
                n = await self.db(self.store.prune_changes,
                                  utcnow() - self.settings.change_retention)
                if n:
                    log.info("pruned %d change events older than %s", n,
                             self.settings.change_retention)
            except Exception:
                log.exception("pruning raw reports or change history failed")
            await asyncio.sleep(3600)


class _Connection(asyncssh.SSHServer):
    """One client connection: authentication, presence, and what it may open."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.username = ""
        self.role: str | None = None
        self.key: asyncssh.SSHKey | None = None
        self.operator: dict[str, Any] | None = None
        self.authenticated = False
        self.counted = False  # admitted by the door and still counted as a startup
        self.source = ""
        self.turned_away = False  # refused at the door: nothing more to log or count
        self.deadline: asyncio.TimerHandle | None = None  # handshake, or an enrol's command
        self.login_refused: str | None = None  # audited once when the connection ends
        self.keys_refused = 0  # public keys refused on this connection (queries count)
        self.timed_out = False  # a deadline ended it: an enrol that overstayed is no login
        self.access_version = 0  # hub.access.version when the login's records were read
        self.channels = 0  # session channels open now (capped per role)
        self.login_order = 0  # agents: which of its connections logged in last

    # --- connection and login -----------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        host, port = conn.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        # asyncssh sends its version line right after this returns: a refusal here costs the
        # hub no key exchange, which is the point of the door (inventory/hub/_door.py).
        self.source = source_of(str(host))
        door = self.hub.door
        code = door.admit(self.source)
        if code is not None:
            if (folded := door.refusal_to_log(self.source, code)) is not None:
                log.warning("conn %s refused (%s): %d connections are still logging in, %d "
                            "from this address%s; %d more refused since the last such line",
                            self.peer, code, door.pending_total, door.pending(self.source),
                            f", penalised for {door.penalty_left(self.source):.0f} s more"
                            if code == PENALISED else "", folded)
            self.hub.audit.record(self.source, "anonymous", "connection_refused", code, None)
            self.turned_away = True
            _refuse(conn, code)
            return
        self.counted = True
        self.deadline = asyncio.get_running_loop().call_later(
            self.hub.settings.handshake_timeout_s, self._expired, "handshake_timeout",
            f"no key exchange within {self.hub.settings.handshake_timeout_s:g} s")
        log.info("conn %s opened", self.peer)

    def _expired(self, code: str, why: str) -> None:
        self.deadline = None
        self.timed_out = True
        log.warning("conn %s closed (%s): %s", self.peer, code, why)
        if self.conn is None:
            return
        if self.authenticated:
            self.conn.close()  # an enrol that overstayed: a clean SSH disconnect
        else:
            self.conn.abort()  # before the key exchange there is nothing to say it on

    def _release(self) -> None:
        """Stop counting this connection against the pre-auth budgets."""
        if self.counted:
            self.counted = False
            self.hub.door.release(self.source)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.turned_away:
            return  # logged (coalesced) when refused; a line each would let a flood fill the log
        if self.deadline:
            self.deadline.cancel()
            self.deadline = None
        # Still counted and no login (or an enrol that timed out): a failed startup, which
        # penalises a source that keeps doing it (_door.py, `penalised`).
        if self.counted and (not self.authenticated or self.timed_out) and \
                self.hub.door.failed(self.source):
            log.warning("conn %s: source %s penalised for %.0f s: too many connections ended "
                        "without logging in", self.peer, self.source,
                        self.hub.door.penalty_left(self.source))
            self.hub.audit.record(self.source, "anonymous", "connection_refused", PENALISED,
                                  None)
        self._release()
        # The reason may be the client's own disconnect message: quoted, it forges nothing.
        reason = f": {quoted(str(exc))}" if exc else ""
        log.info("conn %s closed%s", self.peer, reason)
        if self.authenticated:
            self.hub.access.discard(self)
        elif self.login_refused:
            # One line and one audit row per connection (coalesced per source), with the
            # count of keys refused, not one per key tried or queried.
            log.warning("conn %s login refused for user %s: %d key(s) refused, the last: %s",
                        self.peer, quoted(self.username, 64), self.keys_refused,
                        self.login_refused)
            self.hub.audit.record(self.source, "anonymous", "login_failed",
                                  self.username[:64], {"reason": self.login_refused,
                                                       "keys_refused": self.keys_refused})
        if self.authenticated and self.role == "agent":
            self.hub.remote.withdraw(self)
            if not self.hub.access.connections.get(self.username):
                # Offline only when this was its last connection: a replaced one closing
                # after its successor logged in must not mark the agent offline.
                self.hub.spawn(self.hub.presence(self.username, False))

    def begin_auth(self, username: str) -> bool:
        if self.deadline:  # the key exchange is done: asyncssh's login timeout takes over
            self.deadline.cancel()
            self.deadline = None
        self.username = username
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Also called for "would this key be accepted?" queries: decide, but don't log a login.
        fp = key.get_fingerprint("sha256")
        self.access_version = self.hub.access.version
        if username == ENROL_USER:
            self.role, self.key = "enrol", key
            return True
        if _AGENT_ID.match(username):
            expected = await self.hub.db(self.hub.store.agent_fingerprint, username)
            if expected == fp:
                self.role, self.key = "agent", key
                return True
            why = "unknown or revoked agent" if expected is None else "key does not match"
        elif OPERATOR_NAME.match(username):
            operator = await self.hub.db(self.hub.store.operator, username)
            if operator and operator["key_fingerprint"] == fp:
                self.role, self.key, self.operator = "operator", key, operator
                return True
            why = "unknown operator" if operator is None else "key does not match"
        else:
            why = "unknown user"
        # Logged once at close with the count (connection_lost), not per key: a client
        # offering thousands of keys would otherwise write a line for each.
        log.debug("conn %s refused user %s key %s: %s", self.peer, quoted(username, 64), fp,
                  why)
        self.login_refused = why
        self.keys_refused += 1
        if self.keys_refused >= MAX_AUTH_TRIES:
            # OpenSSH's MaxAuthTries: each attempt is a store lookup; past the cap, cut off.
            raise asyncssh.DisconnectError(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                f"too_many_auth_attempts: at most {MAX_AUTH_TRIES} keys may be refused "
                "per connection")
        return False

    def auth_completed(self) -> None:
        self.authenticated = True
        if self.role != "enrol":
            # A real login: the source is known for a day (exempt from penalties and early
            # drop, may use the reserve), so a flood from fresh addresses cannot lock it out.
            self.hub.door.logged_in(self.source)
        if self.role == "enrol":
            # Any key logs in as enrol, so it is anonymous in effect: it stays a startup until
            # it closes, and must be done within the login timeout.
            self.deadline = asyncio.get_running_loop().call_later(
                self.hub.settings.login_timeout_s, self._expired, "enrol_timeout",
                f"enrol not done within {self.hub.settings.login_timeout_s:g} s")
        else:
            self._release()
        fp = self.key.get_fingerprint("sha256") if self.key else "?"
        log.info("conn %s login user=%s role=%s key=%s", self.peer, self.username, self.role, fp)
        self.hub.access.add(self)
        if self.role == "agent":
            self.login_order = next(_LOGIN_ORDER)
            self._close_older_connections()
            self.hub.spawn(self.hub.presence(self.username, True))
        elif self.role == "operator":
            self.hub.spawn(self.hub.db(self.hub.store.audit, f"operator:{self.username}",
                                       "login", None, {"peer": self.peer}))

    def _close_older_connections(self) -> None:
        """An agent keeps one connection; a second is allowed while the first (maybe dead
        after a network drop, not yet noticed by keepalives) is being replaced. Past that
        the oldest are closed: a compromised agent cannot multiply its channels and buffers
        by opening connections."""
        mine = sorted(self.hub.access.connections.get(self.username, ()),
                      key=lambda c: c.login_order)
        for old in mine[:max(0, len(mine) - AGENT_CONNECTIONS)]:
            log.info("conn %s closed: agent %s logged in again from %s", old.peer,
                     self.username, self.peer)
            if old.conn is not None:
                old.conn.close()

    # --- what the client may open -------------------------------------------------------

    def session_requested(self) -> Any:
        assert self.conn is not None
        if (ended := refused(self.hub, self)) is not None:
            raise ended
        # Each channel costs buffers and a task: 2,000 on one connection cost +27 MB.
        limit = CHANNELS_PER_CONNECTION.get(self.role or "", 1)
        if self.channels >= limit:
            log.warning("conn %s refused channel: %d open, the limit for %s", self.peer,
                        self.channels, self.role)
            self.hub.audit.record(self.peer.rsplit(":", 1)[0], f"{self.role}:{self.username}",
                                  "channel_refused", None,
                                  {"code": "too_many_channels", "limit": limit})
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"too_many_channels: at most {limit} open channels per connection")
        self.channels += 1
        return self.conn.create_server_channel(encoding=None), _Session(self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Any:
        if (ended := refused(self.hub, self)) is not None:
            raise ended
        if self.role == "operator":
            return self.hub.remote.open(self, dest_host, dest_port)  # a remote session
        log.warning("conn %s refused port forward to %s:%s", self.peer,
                    quoted(dest_host, 64), dest_port)
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        if self.hub.access.refusal(self) is not None:
            return False
        return self.hub.remote.offer(self, listen_host, listen_port)  # agents only

    def unix_connection_requested(self, dest_path: str) -> bool:
        log.warning("conn %s refused unix socket forward", self.peer)
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        log.warning("conn %s refused unix socket listener", self.peer)
        return False



def _refuse(conn: asyncssh.SSHServerConnection, code: str) -> None:
    """Cut a connection off before the SSH version exchange, with one line saying why.

    RFC 4253 lets a server send text lines before its version; OpenSSH does the same with
    "Exceeded MaxStartups". asyncssh has no public way to write raw bytes, so the line goes
    out on its transport when there is one; the connection is cut off either way.
    """
    transport = getattr(conn, "_transport", None)
    if transport is not None:
        transport.write(f"Refused {code}: {MESSAGES[code]}\r\n".encode())
        transport.close()  # sends the line, then FIN; abort alone could drop the line
    conn.abort()


class _Watcher:
    """One `estate-watch v1` channel: events in the operator's scope, as JSON lines.

    A watcher holding more than WATCH_BACKLOG_BYTES unsent (a stalled console), or any
    behind one while all watchers together hold WATCH_BACKLOG_TOTAL, is sent one `resync`
    event instead of the ones it missed, and reloads; the hub never buffers without bound
    for slow clients.
    """

    def __init__(self, chan: Any, scope: list[str] | None, operator: str = "") -> None:
        self.chan, self.scope, self.operator = chan, scope, operator
        self.behind = False

    def backlog(self) -> int:
        try:
            return int(self.chan.get_write_buffer_size())
        except Exception:  # a closing channel holds nothing the hub can still send
            return 0

    def offer(self, line: bytes, over_total: bool) -> None:
        """Send one encoded event line (Hub.publish has checked the scope)."""
        backlog = self.backlog()
        if backlog > WATCH_BACKLOG_BYTES or (over_total and backlog > 0):
            if not self.behind:
                self.behind = True
                self.chan.write(b'{"type": "resync"}\n')
            return
        self.behind = False
        try:
            self.chan.write(line)
        except Exception:  # one broken watcher (a closing channel) must not stop the others
            log.exception("sending a watch event failed")


def _error_line(request_id: Any, code: str, message: str, **extra: Any) -> bytes:
    """An `estate-api v1` error answer, encoded."""
    return (json.dumps({"id": request_id, "ok": False, "error": {
        "code": code, "message": message, **extra}}, separators=(",", ":")) + "\n").encode()


class _Session(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """One session channel running one allow-listed command."""

    def __init__(self, owner: _Connection) -> None:
        self.owner = owner
        self.hub = owner.hub
        self.chan: asyncssh.SSHServerChannel | None = None  # type: ignore[type-arg]
        self.command: str | None = None
        self.body = bytearray()
        self.limit = MAX_RECEIVED_BYTES
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.watcher: _Watcher | None = None
        self.api: OperatorApi | None = None
        self.lines: LineReader | None = None  # estate-api: request lines waiting for answers
        self.lines_ready = asyncio.Event()  # a line (or the end of input) is waiting
        self.input_ended = False
        self.reading_paused = False
        self.held = 0  # bytes of body taken from the hub's input budget
        self.handling = False  # the body went to its handler, which gives the budget back
        self.writable = asyncio.Event()  # flow control: answers wait for the client's window
        self.writable.set()

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:  # type: ignore[type-arg]
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        log.warning("conn %s refused pty", self.owner.peer)
        return False

    def shell_requested(self) -> bool:
        log.warning("conn %s refused shell", self.owner.peer)
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        log.warning("conn %s refused subsystem %s", self.owner.peer, quoted(subsystem, 64))
        return False

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True  # accepted so the refusal can say why, in JSON, on this channel

    def session_started(self) -> None:
        needed = COMMANDS.get(self.command or "")
        if needed is None:
            self._fail(EXIT_USAGE, "unknown_command",
                       f"unknown command {quoted(self.command, 64)}; this hub runs "
                       f"{', '.join(sorted(COMMANDS))}")
        elif needed != self.owner.role:
            self._fail(EXIT_NOPERM, "forbidden",
                       f"user {self.owner.username!r} may not run {self.command!r}")
        elif self.command == API_COMMAND:
            assert self.owner.operator is not None
            self.api = OperatorApi(self.hub.store, self.owner.operator, audit=self.hub.audit,
                                   source=self.owner.source,
                                   max_answer=self.hub.settings.max_answer_size)
            self.lines = LineReader(MAX_LINE_BYTES)
            self.hub.spawn(self._serve_api())
        elif self.command == WATCH_COMMAND:
            assert self.owner.operator is not None and self.chan is not None
            if (refusal := self._watch_refusal()) is not None:
                self._fail(EXIT_TEMPFAIL, "too_many_watchers", refusal, retry_after=30)
                return
            self.watcher = _Watcher(self.chan, self.owner.operator["agencies"],
                                    self.owner.username)
            self.hub.watchers.add(self.watcher)
            self.chan.write(b'{"type": "hello"}\n')
        else:
            if self.command == ENROL_COMMAND:
                self.limit = MAX_ENROL_BYTES
            elif self.command == EXPORT_COMMAND:
                self.limit = MAX_EXPORT_REQUEST_BYTES
            self.timer = asyncio.get_running_loop().call_later(BODY_TIMEOUT_S, self._timeout)

    def _watch_refusal(self) -> str | None:
        """Why one more watch may not be opened (each is a copy of every event), or None."""
        settings, name = self.hub.settings, self.owner.username
        if len(self.hub.watchers) >= settings.max_watchers:
            limit, what = settings.max_watchers, "on this hub"
        elif sum(w.operator == name for w in self.hub.watchers) >= \
                settings.watchers_per_operator:
            limit, what = settings.watchers_per_operator, f"for operator {name}"
        else:
            return None
        log.warning("conn %s operator %s refused watch: %d open %s, the limit",
                    self.owner.peer, name, limit, what)
        self.hub.audit.record(self.owner.source, f"operator:{name}", "channel_refused", None,
                              {"code": "too_many_watchers", "limit": limit})
        return f"at most {limit} watches may be open {what}; close one and retry"

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.finished:
            return
        if self.lines is not None:
            self._api_data(data)
            return
        if self.watcher is not None:
            return  # a watch has no input
        if len(self.body) + len(data) > self.limit:
            self._release()
            self._fail(EXIT_DATA, "too_large", f"input is over the limit of {self.limit} bytes")
            return
        budget, holder = self._budget(), self._holder()
        if not budget.take(len(data), holder):
            # Over the hub's budget for every channel's bodies together, or over this
            # sender's share of it (one sender must not hold it all): come back later.
            mine = budget.held_by(holder) + len(data) > (budget.per_holder or budget.limit)
            self._release()
            code = "input_per_sender" if mine else "input_total"
            if (folded := self.hub.door.refusal_to_log(holder, code)) is not None:
                log.warning("conn %s %s refused (%s): %d bytes of input buffered in all, %d "
                            "by %s; %d more refused since the last such line",
                            self.owner.peer, self.command, code, budget.used,
                            budget.held_by(holder), quoted(holder, 64), folded)
            self.hub.audit.record(self.owner.source, f"{self.owner.role}:{self.owner.username}",
                                  "input_refused", self.command, {"code": code})
            whose = "from you" if mine else "in all"
            self._fail(EXIT_TEMPFAIL, "busy", f"the hub is holding as much input as it may "
                                              f"{whose}; retry later", retry_after=RETRY_AFTER_S)
            return
        self.held += len(data)
        self.body += data

    def _budget(self) -> Budget:
        return self.hub.export_budget if self.command == EXPORT_COMMAND else \
            self.hub.input_budget

    def _holder(self) -> str:
        """Whose share of the input budgets a body counts against: the agent or operator,
        or for `enrol` (any key logs in) the address it comes from."""
        owner = self.owner
        return f"source:{owner.source}" if owner.role == "enrol" else \
            f"{owner.role}:{owner.username}"

    def _release(self) -> None:
        """Drop the body and give its bytes back to the hub's budget."""
        self.body = bytearray()
        if self.held:
            self._budget().give(self.held, self._holder())
            self.held = 0

    def eof_received(self) -> bool:
        if self.lines is not None and not self.finished:
            self.input_ended = True  # answer what was asked, then end
            self.lines_ready.set()
            return True
        if self.command == WATCH_COMMAND:
            self._finish_quietly()
            return True
        if not self.finished:
            body, self.body = bytes(self.body), bytearray()
            handler = {REPORT_COMMAND: self._report, ENROL_COMMAND: self._enrol,
                       EXPORT_COMMAND: self._export}[self.command or ""]
            self.handling = True  # the budget is given back when the handler is done
            self.hub.spawn(self._handle(handler, body))
        return True  # keep our side open to answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.finished = True
        self.writable.set()  # release a sender waiting on a window that will never open
        self.lines_ready.set()  # and the API loop, which ends
        if self.timer:
            self.timer.cancel()
            self.timer = None
        if self.watcher is not None:
            self.hub.watchers.discard(self.watcher)
            self.watcher = None
        # Closed sessions sit in reference cycles (channel <-> session) until a full GC:
        # whatever they buffered is let go now, not then.
        if not self.handling:
            self._release()
        self.body = bytearray()
        if self.lines is not None:
            self.lines.clear()
        self.chan = None
        self.owner.channels -= 1
        if self.owner.role == "enrol" and self.owner.conn is not None:
            self.owner.conn.close()  # enrol runs one command per connection

    # --- estate-api v1: JSON lines ------------------------------------------------------

    def _api_data(self, data: bytes) -> None:
        assert self.lines is not None
        if not self.lines.feed(data, asyncio.get_running_loop().time()):
            self._cut_off("too_many_bad_lines", "too many blank lines; this channel is closed")
            return
        self.lines_ready.set()
        self._pace()

    def _pace(self) -> None:
        """Read while the line queue has room and the last answer has gone; else pause.

        Paused, asyncssh stops opening the SSH window, so a client that sends faster than it
        reads its answers is held back by its own window, not buffered by the hub.
        """
        if self.chan is None or self.lines is None:
            return
        pause = self.lines.full or not self.writable.is_set()
        if pause and not self.reading_paused:
            self.reading_paused = True
            self.chan.pause_reading()
        elif not pause and self.reading_paused:
            self.reading_paused = False
            self.chan.resume_reading()  # may deliver buffered data (and EOF) at once

    def _cut_off(self, code: str, message: str) -> None:
        """End an API channel that sends garbage at a rate no client does."""
        if self.finished or self.chan is None:
            return
        log.warning("conn %s operator %s cut off: %s", self.owner.peer, self.owner.username,
                    code)
        self.hub.audit.record(self.owner.peer.rsplit(":", 1)[0],
                              f"operator:{self.owner.username}", "channel_cut_off", None,
                              {"code": code})
        self.finished = True
        self.chan.write((json.dumps({"id": None, "ok": False, "error": {
            "code": code, "message": message}}) + "\n").encode())
        self.chan.exit(EXIT_DATA)
        if self.lines is not None:
            self.lines.clear()

    async def _serve_api(self) -> None:
        lines, api = self.lines, self.api
        assert lines is not None and api is not None
        while not self.finished:
            if not lines.lines:
                if self.input_ended:
                    break
                self.lines_ready.clear()
                await self.lines_ready.wait()
                continue
            line = lines.pop()
            self._pace()
            if (ended := self.hub.access.refusal(self.owner)) is not None:
                self._fail(EXIT_NOPERM, "access_ended", f"access ended: {ended}")
                return
            code: str | None
            request_id: Any = None
            if line == TOO_LONG:
                code = "line_too_long"
                data = _error_line(None, code, f"a request line may be at most "
                                               f"{MAX_LINE_BYTES} bytes")
            else:
                try:
                    # Encoded on the store thread: the event loop never dumps a big answer.
                    data, code, request_id = await self.hub.db(api.answer, line)
                except Exception:  # answer() never raises; if the call itself fails, answer
                    log.exception("conn %s: API request failed", self.owner.peer)
                    code = "internal"
                    data = _error_line(None, code, "the hub failed; retry later")
            if self.finished or self.chan is None:
                return
            if code in INVALID_LINE_CODES \
                    and not lines.invalid(asyncio.get_running_loop().time()):
                self._cut_off("too_many_bad_lines", "too many invalid request lines; this "
                                                    "channel is closed")
                return
            if len(data) > ANSWER_CHUNK and not self.hub.answer_budget.take(len(data)):
                log.warning("conn %s operator %s: an answer of %d bytes refused busy, %d "
                            "bytes of answers held", self.owner.peer, self.owner.username,
                            len(data), self.hub.answer_budget.used)
                data = _error_line(request_id, "busy", "the hub is holding as many answer "
                                   "bytes as it may; retry later", retry_after=RETRY_AFTER_S)
            held = len(data) if len(data) > ANSWER_CHUNK else 0
            try:
                if not await self._write_answer(data):
                    return
            finally:
                self.hub.answer_budget.give(held)
        self._finish_quietly()

    async def _write_answer(self, data: bytes) -> bool:
        """Write one answer a chunk at a time, each once the client's window has room.

        The next request waits until this answer is on its way, so a client that never
        reads its answers stops being served instead of growing the hub; one that takes
        no answer bytes for ANSWER_WRITE_TIMEOUT_S loses the channel (and the bytes it
        held). False: the channel is gone.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_WRITE_TIMEOUT_S
        for start in range(0, len(data), ANSWER_CHUNK):
            if self.finished or self.chan is None:
                return False
            self.chan.write(data[start:start + ANSWER_CHUNK])
            if not self.writable.is_set():
                self._pace()
                try:
                    await asyncio.wait_for(self.writable.wait(), deadline - loop.time())
                except TimeoutError:
                    log.warning("conn %s operator %s: answer not read within %g s; channel "
                                "closed", self.owner.peer, self.owner.username,
                                ANSWER_WRITE_TIMEOUT_S)
                    self.finished = True
                    if self.chan is not None:
                        self.chan.close()
                    return False
                self._pace()
                deadline = loop.time() + ANSWER_WRITE_TIMEOUT_S  # it reads: give it time
        return not self.finished

    def _finish_quietly(self) -> None:
        if not self.finished and self.chan is not None:
            self.finished = True
            self.chan.exit(EXIT_OK)

    def _timeout(self) -> None:
        self._fail(EXIT_TEMPFAIL, "timeout", f"no end of input within {BODY_TIMEOUT_S:g} s",
                   retry_after=5)

    async def _handle(self, handler: Callable[[bytes], Any], body: bytes) -> None:
        try:
            await self._run(handler, body)
        finally:
            self.handling = False
            self._release()

    async def _run(self, handler: Callable[[bytes], Any], body: bytes) -> None:
        if self.timer:
            self.timer.cancel()
        if (ended := self.hub.access.refusal(self.owner)) is not None:
            self._fail(EXIT_NOPERM, "access_ended", f"access ended: {ended}")
            return
        try:
            await handler(body)
        except Exception:
            log.exception("conn %s: %s failed", self.owner.peer, self.command)
            self._fail(EXIT_TEMPFAIL, "internal", "the hub failed; retry later", retry_after=30)

    async def _report(self, body: bytes) -> None:
        agent_id = self.owner.username
        budgets = self.hub.ingest.budgets
        try:
            # Charged to the agent before it is decompressed or parsed (on a worker thread).
            report = await self.hub.ingest.accept(body, agent_id)
        except OverBudget as exc:
            if exc.first:  # once per throttled episode, not per refusal
                log.warning("reports from %s throttled: %s", agent_id, exc)
            self.hub.audit.record(self.owner.source, f"agent:{agent_id}", "report_throttled",
                                  agent_id, {"code": "busy", "budget": exc.budget})
            self._fail(EXIT_TEMPFAIL, "busy", str(exc), retry_after=exc.retry_after)
            return
        except Busy as exc:
            self._fail(EXIT_TEMPFAIL, "busy", str(exc), retry_after=exc.retry_after)
            return
        except ReportError as exc:
            log.warning("report from %s refused: %s", agent_id, quoted(str(exc), 300))
            self._fail(EXIT_DATA, "invalid_report", exc.problem, path=exc.path)
            return
        try:
            status = await self.hub.writer.submit(Incoming(agent_id, report, body, utcnow()))
        except Busy as exc:
            budgets.give_back(agent_id, len(body))  # the hub is behind, not the agent
            self._fail(EXIT_TEMPFAIL, "busy", str(exc), retry_after=exc.retry_after)
            return
        except StoreUnavailable as exc:
            budgets.give_back(agent_id, len(body))
            self._fail(EXIT_TEMPFAIL, "store_unavailable", str(exc), retry_after=30)
            return
        if status == "stored":
            budgets.stored(agent_id, report["agent"].get("interval_s"))
        # Debug only: at 200 reports/s an info line per report would swamp the log.
        log.debug("report %s from %s %s", report["report_id"], agent_id, status)
        self._finish(EXIT_OK, {"status": status, "report_id": report["report_id"]})

    async def _enrol(self, body: bytes) -> None:
        try:
            request = json.loads(body.decode("utf-8"))
            token, public_key = request["token"], request["public_key"]
            hostname = request.get("hostname")
            if not all(isinstance(v, str) for v in (token, public_key)) or \
                    not isinstance(hostname, (str, type(None))):
                raise TypeError
            token_id, secret, token_fp = _tokens.split_token(token)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            self._fail(EXIT_DATA, "bad_request",
                       'expected {"token": "EST1...", "public_key": "ssh-ed25519 ...", '
                       '"hostname": ...}')
            return
        if token_fp != self.hub.fingerprint:
            self._fail(EXIT_DATA, "token_wrong_hub", "this token was issued by another hub "
                                                     "(its host key does not match)")
            return
        try:
            offered = asyncssh.import_public_key(public_key)
        except (asyncssh.KeyImportError, ValueError):
            offered = None
        key = self.owner.key
        if offered is None or key is None or \
                offered.get_fingerprint("sha256") != key.get_fingerprint("sha256"):
            self._fail(EXIT_DATA, "key_mismatch", "public_key must be the key this "
                                                  "connection logged in with")
            return
        try:
            result = await self.hub.db(
                self.hub.store.enrol, token_id, secret,
                key.export_public_key("openssh").decode().strip(),
                key.get_fingerprint("sha256"), (hostname or "")[:255] or None, False)
        except EnrolError as exc:
            log.warning("conn %s enrol refused: %s", self.owner.peer, exc.code)
            # Coalesced: a flood of refused enrolments writes a row a minute, not 500 a second.
            self.hub.audit.record(self.owner.source, "enrol", "enrol_refused",
                                  token_id, {"code": exc.code,
                                             "key": key.get_fingerprint("sha256"),
                                             "hostname": (hostname or "")[:255] or None})
            self._fail(EXIT_NOPERM, exc.code, exc.message)
            return
        log.info("enrolled %s (%s/%s) key %s", result["agent_id"], result["agency"],
                 result["site"], key.get_fingerprint("sha256"))
        self._finish(EXIT_OK, {"status": "enrolled", **result})

    async def _export(self, body: bytes) -> None:
        from inventory.hub._export import serve_export

        assert self.owner.operator is not None
        if self.chan is None:
            return  # the operator went away before the export started
        status, doc = await serve_export(
            self.hub, self.owner.operator, body, self.chan, self.writable,
            gone=lambda: self.finished or self.chan is None or
            self.hub.access.refusal(self.owner) is not None)
        if doc is not None:
            self._finish(status, doc)
        elif not self.finished:
            self.finished = True
            self.chan.exit(status)

    def pause_writing(self) -> None:
        self.writable.clear()
        self._pace()

    def resume_writing(self) -> None:
        self.writable.set()
        self._pace()

    def _fail(self, status: int, code: str, message: str, **extra: Any) -> None:
        self._finish(status, {"status": "error", "code": code, "message": message, **extra})

    def _finish(self, status: int, doc: dict[str, Any]) -> None:
        if self.finished or self.chan is None:
            return
        self.finished = True
        if self.timer:
            self.timer.cancel()
        self.chan.write((json.dumps(doc, ensure_ascii=False) + "\n").encode())
        self.chan.exit(status)
        if self.owner.role == "enrol" and self.owner.conn is not None:
            # One command per enrol connection: it holds no state past its answer.
            self.owner.conn.close()
