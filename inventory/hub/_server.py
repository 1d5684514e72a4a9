"""The hub's SSH server: who gets in (the front door, public-key logins) and what a logged-in
client may open (session channels, and the two forwards remote access uses).

Users on the wire: `enrol` (any key; may only run `estate-enrol v1` with a valid token), an
agent id (its enrolled key; may only run `estate-report v1`, and offer its own sshd for remote
access), an operator name (the API, the watch, and remote sessions to hosts in scope) and
`hub:NAME`, another hub of the estate (the hub identity's key; only sessions of its operators
to agents held here, `_links.py`).
Shells, ptys, subsystems and every other kind of forwarding are refused; `_session` runs the
allow-listed commands and `_remote` decides the two forwards remote access uses.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from typing import Any

import asyncssh

from estate.inventory.errors import StoreUnavailable
from estate.inventory.hub import _metrics
from estate.inventory.hub._context import Services
from estate.inventory.hub._door import MESSAGES, PENALISED, source_of
from estate.inventory.hub._links import link_refusal
from estate.inventory.hub._peer import Login, Peer
from estate.inventory.hub._session import Session
from estate.inventory.hub._ssh_ignore import skip_needless_ignores
from estate.inventory.protocol import AGENT_ID, ENROL_USER, HUB_USER_PREFIX, OPERATOR_NAME
from estate.inventory.sanitise import quoted
from estate.inventory.store import Operator, utcnow
from estate.inventory.tcp_keepalive import keep_alive

log = logging.getLogger("estate.hub")

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

# Open session channels per connection: the console uses a few (API, watch, exports); an agent
# one at a time; `enrol` runs one command and is then disconnected.
CHANNELS_PER_CONNECTION = {"operator": 8, "agent": 4, "enrol": 1}
AGENT_CONNECTIONS = 2  # logged-in connections one agent may hold; the oldest go past it
_LOGIN_ORDER = itertools.count(1)
# Public keys one connection may have refused (queries count) before it is cut off, as
# OpenSSH's MaxAuthTries: each is a store lookup, and a client may offer thousands.
MAX_AUTH_TRIES = 6
# `busy` (serve --max-agents): an agent refused at login comes back after this many seconds,
# chosen at random between the two, or goes to another hub meanwhile.
BUSY = "busy"
BUSY_RETRY_S = (30, 90)



async def listen(services: Services, port: int | None = None) -> asyncssh.SSHAcceptor:
    """Start the SSH server on the settings' address, with the hub's host key; on `port`
    instead, a port of this process alone (a worker's, for hub-to-hub links)."""
    settings = services.settings
    # No CBC-only empty packet before each packet sent, on every connection of this process
    # (reports, relayed sessions, links): none of ENCRYPTION_ALGS is CBC.
    skip_needless_ignores()
    return await asyncssh.create_server(
        lambda: Connection(services), settings.host, settings.port if port is None else port,
        server_host_keys=[services.host_key],
        login_timeout=settings.login_timeout_s,
        keepalive_interval=settings.keepalive_interval_s,
        keepalive_count_max=settings.keepalive_count_max,
        kex_algs=KEX_ALGS, encryption_algs=ENCRYPTION_ALGS, mac_algs=MAC_ALGS,
        # ptys reach Session.pty_requested, which refuses and logs them.
        compression_algs=["none"], agent_forwarding=False,
        x11_forwarding=False, password_auth=False, kbdint_auth=False,
        gss_host=None, host_based_auth=False, allow_scp=False,
        server_version="Estate",
        # `serve --workers`: every worker binds the same port; the kernel spreads new
        # connections over them. A lone hub does not, so a second one on its port still fails.
        reuse_port=settings.worker > 0 and port is None,
    )


class Connection(asyncssh.SSHServer):
    """One client connection: admission, authentication, presence, and what it may open."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "?"
        self.username = ""
        self.role: str | None = None
        self.key: asyncssh.SSHKey | None = None
        self.operator: Operator | None = None
        self.login: Login | None = None  # once logged in: who, as everything else sees it
        self.counted = False  # admitted by the door and still counted as a startup
        self.source = ""
        self.turned_away = False  # refused at the door: nothing more to log or count
        self.deadline: asyncio.TimerHandle | None = None  # handshake, or an enrol's command
        self.login_refused: str | None = None  # audited once when the connection ends
        self.keys_refused = 0  # public keys refused on this connection (queries count)
        self.timed_out = False  # a deadline ended it: an enrol that overstayed is no login
        self.access_version = 0  # access.version when the login's records were read
        self.channels = 0  # session channels open now (capped per role)
        self.sent_away = False  # a known agent told `busy`: no failed login to penalise

    # --- connection and login -----------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        host, port = conn.get_extra_info("peername")[:2]
        self.peer = f"{host}:{port}"
        # asyncssh sends its version line right after this returns: a refusal here costs the
        # hub no key exchange, which is the point of the door (inventory/hub/_door.py).
        self.source = source_of(str(host))
        door = self.services.door
        code = door.admit(self.source)
        if code is not None:
            if (folded := door.refusal_to_log(self.source, code)) is not None:
                log.warning("conn %s refused (%s): %d connections are still logging in, %d "
                            "from this address%s; %d more refused since the last such line",
                            self.peer, code, door.pending_total, door.pending(self.source),
                            f", penalised for {door.penalty_left(self.source):.0f} s more"
                            if code == PENALISED else "", folded)
            self.services.audit.record(self.source, "anonymous", "connection_refused", code, None)
            _metrics.refused(code)
            self.turned_away = True
            _refuse(conn, code)
            return
        self.counted = True
        keep_alive(conn.get_extra_info("socket"), self.services.settings.tcp_keepalive)
        self.deadline = asyncio.get_running_loop().call_later(
            self.services.settings.handshake_timeout_s, self._expired, "handshake_timeout",
            f"no key exchange within {self.services.settings.handshake_timeout_s:g} s")
        log.info("conn %s opened", self.peer)

    def _expired(self, code: str, why: str) -> None:
        self.deadline = None
        self.timed_out = True
        log.warning("conn %s closed (%s): %s", self.peer, code, why)
        if self.conn is None:
            return
        if self.login is not None:
            self.conn.close()  # an enrol that overstayed: a clean SSH disconnect
        else:
            self.conn.abort()  # before the key exchange there is nothing to say it on

    def _release(self) -> None:
        """Stop counting this connection against the pre-auth budgets."""
        if self.counted:
            self.counted = False
            self.services.door.release(self.source)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.turned_away:
            return  # logged (coalesced) when refused; a line each would let a flood fill the log
        if self.deadline:
            self.deadline.cancel()
            self.deadline = None
        # Still counted and no login (or an enrol that timed out): a failed startup, which
        # penalises a source that keeps doing it (_door.py, `penalised`).
        if self.counted and (self.login is None or self.timed_out) and \
                not self.sent_away and self.services.door.failed(self.source):
            log.warning("conn %s: source %s penalised for %.0f s: too many connections ended "
                        "without logging in", self.peer, self.source,
                        self.services.door.penalty_left(self.source))
            self.services.audit.record(self.source, "anonymous", "connection_refused",
                                       PENALISED, None)
        self._release()
        # The reason may be the client's own disconnect message: quoted, it forges nothing.
        reason = f": {quoted(str(exc))}" if exc else ""
        log.info("conn %s closed%s", self.peer, reason)
        if self.login is not None:
            self.services.access.discard(self.login)
            _metrics.connection_closed(self.role)
        elif self.login_refused:
            # One line and one audit row per connection (coalesced per source), with the
            # count of keys refused, not one per key tried or queried.
            log.warning("conn %s login refused for user %s: %d key(s) refused, the last: %s",
                        self.peer, quoted(self.username, 64), self.keys_refused,
                        self.login_refused)
            self.services.audit.record(self.source, "anonymous", "login_failed",
                                       self.username[:64], {"reason": self.login_refused,
                                                            "keys_refused": self.keys_refused})
        if self.login is not None and self.role == "agent":
            self.services.remote.withdraw(self.login)
            if not self.services.access.connections.get(self.username):
                # Offline only when this was its last connection: a replaced one closing
                # after its successor logged in must not mark the agent offline.
                self.services.tasks.spawn(self.services.watch.presence(self.username, False))

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
        self.access_version = self.services.access.version
        if username == ENROL_USER:
            self.role, self.key = "enrol", key
            return True
        try:
            return await self._check_key(username, key, fp)
        except StoreUnavailable as exc:
            # Not a refusal of the key: the agent or operator is told to come back.
            log.warning("conn %s login of %s not checked: %s", self.peer,
                        quoted(username, 64), exc)
            _metrics.refused("store_unavailable")
            raise asyncssh.DisconnectError(
                asyncssh.DISC_SERVICE_NOT_AVAILABLE,
                "store_unavailable: the hub cannot reach its store; retry later") from None

    async def _check_key(self, username: str, key: asyncssh.SSHKey, fp: str) -> bool:
        if AGENT_ID.match(username):
            expected = await self.services.db(self.services.store.agent_fingerprint, username)
            if expected == fp:
                self._admit_agent(username)
                self.role, self.key = "agent", key
                return True
            why = "unknown or revoked agent" if expected is None else "key does not match"
        elif OPERATOR_NAME.match(username):
            operator = await self.services.db(self.services.store.operator, username)
            if operator and operator.key_fingerprint == fp:
                self.role, self.key, self.operator = "operator", key, operator
                return True
            why = "unknown operator" if operator is None else "key does not match"
        elif username.startswith(HUB_USER_PREFIX):
            hubs = await self.services.db(self.services.store.hubs)
            refusal = link_refusal(username, key, self.services.host_key, hubs, utcnow())
            if refusal is None:
                self.role, self.key = "hub", key
                return True
            why = refusal
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
            _metrics.refused("too_many_auth_attempts")
            raise asyncssh.DisconnectError(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                f"too_many_auth_attempts: at most {MAX_AUTH_TRIES} keys may be refused "
                "per connection")
        return False

    def _admit_agent(self, agent_id: str) -> None:
        """`serve --max-agents`: past it, a new agent is sent away `busy`, to come back after
        retry_after or to log in to another hub. Checked once its key matched (so nobody else
        learns the hub is full) and with no await before its login completes, so the count
        is exact. An agent already held here (replacing a dead connection) is let in."""
        limit = self.services.settings.max_agents
        access = self.services.access
        if not limit or access.agents_held < limit or agent_id in access.connections:
            return
        # Spread over a minute: a restarted hub's agents must not all come back at once.
        wait = random.randint(*BUSY_RETRY_S)  # noqa: S311 - jitter, not security
        if (folded := self.services.door.refusal_to_log("*", BUSY)) is not None:
            log.warning("conn %s agent %s refused (busy): this hub holds %d agents, its "
                        "--max-agents; told to retry after %d s; %d more refused since the "
                        "last such line", self.peer, agent_id, access.agents_held, wait, folded)
        self.sent_away = True
        _metrics.refused(BUSY)
        raise asyncssh.DisconnectError(
            asyncssh.DISC_TOO_MANY_CONNECTIONS,
            f"{BUSY}: this hub holds as many agents as it may; retry_after={wait}")

    def auth_completed(self) -> None:
        assert self.conn is not None and self.role is not None and self.key is not None
        # A hub is named by its registry name: its actor in the audit is `hub:NAME`.
        name = self.username.removeprefix(HUB_USER_PREFIX) if self.role == "hub" \
            else self.username
        self.login = Login(Peer(self.role, name, self.peer, self.source, self.key,
                                self.operator if self.role == "operator" else None),
                           self.conn, self.access_version,
                           next(_LOGIN_ORDER) if self.role == "agent" else 0)
        if self.role != "enrol":
            # A real login: the source is known for a day (exempt from penalties and early
            # drop, may use the reserve), so a flood from fresh addresses cannot lock it out.
            self.services.door.logged_in(self.source)
        if self.role == "enrol":
            # Any key logs in as enrol, so it is anonymous in effect: it stays a startup until
            # it closes, and must be done within the login timeout.
            self.deadline = asyncio.get_running_loop().call_later(
                self.services.settings.login_timeout_s, self._expired, "enrol_timeout",
                f"enrol not done within {self.services.settings.login_timeout_s:g} s")
        else:
            self._release()
        log.info("conn %s login user=%s role=%s key=%s", self.peer, self.username, self.role,
                 self.key.get_fingerprint("sha256"))
        self.services.access.add(self.login)
        _metrics.connection_opened(self.role)
        if self.role == "agent":
            self._close_older_connections()
            self.services.tasks.spawn(self.services.watch.presence(self.username, True))
        elif self.role == "operator":
            services = self.services
            services.tasks.spawn(services.db(services.store.audit, f"operator:{self.username}",
                                             "login", None, {"peer": self.peer}))

    def _close_older_connections(self) -> None:
        """An agent keeps one connection; a second is allowed while the first (maybe dead
        after a network drop, not yet noticed by keepalives) is being replaced. Past that
        the oldest are closed: a compromised agent cannot multiply its channels and buffers
        by opening connections."""
        mine = sorted(self.services.access.connections.get(self.username, ()),
                      key=lambda login: login.order)
        for old in mine[:max(0, len(mine) - AGENT_CONNECTIONS)]:
            log.info("conn %s closed: agent %s logged in again from %s", old.peer.address,
                     self.username, self.peer)
            old.ssh.close()

    # --- what the client may open -------------------------------------------------------

    def session_requested(self) -> Any:
        assert self.conn is not None and self.login is not None
        login = self.login
        if (ended := self.services.access.channel_refusal(login)) is not None:
            raise ended
        if self.role == "hub":  # a link carries sessions to agents, never commands
            log.warning("conn %s refused session channel from hub %s", self.peer,
                        login.peer.name)
            return False
        # Each channel costs buffers and a task: 2,000 on one connection cost +27 MB.
        limit = CHANNELS_PER_CONNECTION.get(self.role or "", 1)
        if self.channels >= limit:
            log.warning("conn %s refused channel: %d open, the limit for %s", self.peer,
                        self.channels, self.role)
            self.services.audit.record(login.peer.host, login.peer.actor, "channel_refused",
                                       None, {"code": "too_many_channels", "limit": limit})
            _metrics.refused("too_many_channels")
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"too_many_channels: at most {limit} open channels per connection")
        self.channels += 1
        ctx = self.services.context(login.peer, lambda: self.services.access.refusal(login))
        return self.conn.create_server_channel(encoding=None), Session(
            ctx, self._channel_closed, self.conn.close if self.role == "enrol" else None)

    def _channel_closed(self) -> None:
        # An enrol connection runs one command in its life (one token tried each): its channel
        # stays counted through the grace before the hub closes the connection.
        if self.role != "enrol":
            self.channels -= 1

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Any:
        assert self.login is not None
        if (ended := self.services.access.channel_refusal(self.login)) is not None:
            raise ended
        if self.role == "operator":
            return self.services.remote.open(self.login, dest_host, dest_port)  # a remote session
        if self.role == "hub":  # another hub's operator's session to an agent held here
            return self.services.remote.relay(self.login, dest_host, dest_port, orig_host)
        log.warning("conn %s refused port forward to %s:%s", self.peer,
                    quoted(dest_host, 64), dest_port)
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        assert self.login is not None
        if self.services.access.refusal(self.login) is not None:
            return False
        return self.services.remote.offer(self.login, listen_host, listen_port)  # agents only

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
