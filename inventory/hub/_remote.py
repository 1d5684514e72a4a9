"""Remote access: the hub relays an operator's SSH connection to an endpoint's own sshd.

The agent offers a reverse forward named after itself (`tcpip-forward` for `AGENT_ID:22`) on
its connection; the hub accepts it only from that agent and only when its hub-side record
allows remote access. An operator's `direct-tcpip` channel to `HOST:22` is then bridged to a
`forwarded-tcpip` channel back through that agent's connection. The operator's `ssh` talks to
the endpoint's sshd end to end inside the bridged channels: the hub moves bytes it cannot read,
and records who went where, when, and how many bytes each way.

Across hubs: when the agent's connection is on another hub of the estate (the store's
`agents.connected_hub`), this hub authorises the operator as above, then opens a channel to
`AGENT_ID:22` over its link to that hub (`_links.py`), which checks the agent still offers and
allows remote access and bridges it to the agent (`relay`). The session is recorded once, here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, NoReturn

import asyncssh

from estate.inventory.errors import CodedError
from estate.inventory.hub import _metrics
from estate.inventory.hub._links import (
    LINK_CHANNELS,
    LINK_CONNECT_TIMEOUT_S,
    LinkFailed,
    Links,
    find_live,
)
from estate.inventory.hub._peer import Login
from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import Tasks, log_failure
from estate.inventory.hub._watch import Watch
from estate.inventory.protocol import AGENT_ID, REMOTE_REFUSAL_CODES
from estate.inventory.sanitise import quoted
from estate.inventory.store import HubRow, StoreInterface, utcnow

log = logging.getLogger("estate.hub.remote")

SSH_PORT = 22
REMOTE_ROLES = ("admin", "staff")  # auditors read; they do not get shells
SUPERVISE_INTERVAL_S = 1.0
OPEN_TIMEOUT_S = 20.0  # an agent that does not answer a channel open within this is hung
# Through another hub: the link's login, then that hub's wait on the agent.
LINK_OPEN_TIMEOUT_S = LINK_CONNECT_TIMEOUT_S + OPEN_TIMEOUT_S + 5.0
_PROHIBITED = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED


class Refused(CodedError):
    """A session the hub will not open; `code` is stable, `message` goes to the operator."""


@dataclass
class Limits:
    per_operator: int = 4
    per_host: int = 2


class _Half(asyncssh.SSHTCPSession):  # type: ignore[type-arg]
    """One side of a bridge: what arrives here is written to the other side, with flow
    control (a slow reader pauses the fast writer instead of the hub buffering it).

    What arrives while the other side is closing (its close came, its end is on its way) is
    dropped: asyncssh refuses the write with BrokenPipeError, which, raised here, would close
    this side's whole connection: for the host's side, the agent's, with its reports and
    every other session through it."""

    def __init__(self, bridge: Bridge, name: str) -> None:
        self.bridge, self.name = bridge, name
        self.chan: Any = None
        self.bytes_in = 0
        self.eof = False
        self.pending: list[bytes] = []  # arrived before the other side was connected

    @property
    def peer(self) -> _Half:
        return self.bridge.operator if self is self.bridge.host else self.bridge.host

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        if self.bridge.ended:  # the other side went away while this one was opening
            chan.close()
            return
        for data in self.peer.pending:
            chan.write(data)
        self.peer.pending.clear()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.bytes_in += len(data)
        if self.peer.chan is None:
            self.pending.append(data)
        elif not self.peer.chan.is_closing():
            self.peer.chan.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer.chan is not None and not self.peer.chan.is_closing():
            self.peer.chan.write_eof()
        return True  # the other direction may still be talking

    def connection_lost(self, exc: Exception | None) -> None:
        self.chan = None
        if self is self.bridge.host:
            lost = f"link to hub {self.bridge.agent_hub}" if self.bridge.agent_hub else \
                "agent connection"
            reason = f"{lost} lost ({exc})" if exc else "host closed"
        elif self.peer.eof:  # the host finished first; the operator's side then went away
            reason = "host closed"
        else:
            reason = f"operator connection lost ({exc})" if exc else "operator closed"
        self.bridge.end(reason)

    def pause_writing(self) -> None:
        if self.peer.chan is not None:
            self.peer.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.peer.chan is not None:
            self.peer.chan.resume_reading()


@dataclass(eq=False)
class Bridge:
    """One relayed session: operator channel <-> agent channel."""

    relay: RemoteAccess
    operator_name: str
    agent_id: str
    agent_hub: str | None = None  # the other hub holding the agent, reached over a link
    link: Login | None = None  # on the agent's hub: the link from the operator's hub
    session_id: int = 0
    ended: bool = False
    operator: _Half = field(init=False)
    host: _Half = field(init=False)

    def __post_init__(self) -> None:
        self.operator = _Half(self, "operator")
        self.host = _Half(self, "host")

    def end(self, reason: str) -> None:
        """Close both sides and record the end, once."""
        if self.ended:
            return
        self.ended = True
        for half in (self.operator, self.host):
            if half.chan is not None:
                half.chan.close()
        self.relay.ended(self, reason)


class RemoteAccess:
    """The hub's offered forwards (agent id -> its connection) and live bridges."""

    def __init__(self, db: StoreThread, store: StoreInterface, tasks: Tasks, watch: Watch,
                 limits: Limits, links: Links) -> None:
        self.db, self.store, self.tasks, self.watch = db, store, tasks, watch
        self.limits, self.links = limits, links
        self.hub_id = ""  # set once the hub has registered: the sessions it relays name it
        self.offers: dict[str, Login] = {}  # agent id -> the login that offers its sshd
        self.live: dict[int, Bridge] = {}  # sessions of this hub's operators, recorded here
        self.relayed: set[Bridge] = set()  # other hubs' sessions to agents held here

    # --- the agent's side ---------------------------------------------------------------

    async def offer(self, conn: Login, listen_host: str,
                    listen_port: int) -> asyncssh.SSHListener | bool:
        """An agent's `tcpip-forward` request: accepted only for itself, port 22, allowed."""
        agent_id = conn.peer.name
        if conn.peer.role != "agent":
            why = f"user {quoted(agent_id, 64)} is not an agent"
        elif listen_host != agent_id or listen_port != SSH_PORT:
            why = f"an agent may offer only {agent_id}:{SSH_PORT}"
        elif not await self.db(self.store.remote_allowed, agent_id):
            why = (f"remote access is not allowed for {agent_id} "
                   f"(estate-hub agent allow-remote {agent_id})")
        else:
            old = self.offers.get(agent_id)
            self.offers[agent_id] = conn
            if old is not conn:
                await self.db(self.store.set_remote_offered, agent_id, True)
                await self.watch.refresh_host(agent_id)
            log.info("conn %s agent %s offers remote access", conn.peer.address, agent_id)
            return _Offer(self, conn)
        log.warning("conn %s refused remote forward %s:%s: %s", conn.peer.address,
                    quoted(listen_host, 64), listen_port, why)
        return False

    def withdraw(self, conn: Login) -> None:
        """The agent cancelled its forward or its connection went away."""
        agent_id = conn.peer.name
        if self.offers.get(agent_id) is not conn:
            return
        del self.offers[agent_id]
        for bridge in [*self.live.values(), *self.relayed]:
            if bridge.agent_id == agent_id:
                bridge.end("agent disconnected")

        async def record() -> None:
            if agent_id not in self.offers:
                await self.db(self.store.set_remote_offered, agent_id, False)
                await self.watch.refresh_host(agent_id)
        if not self.tasks.stopping:
            self.tasks.spawn(record())

    # --- the operator's side ------------------------------------------------------------

    async def open(self, conn: Login, dest_host: str, dest_port: int) -> _Half:
        """An operator's `direct-tcpip` request: the session's operator side, or a refusal
        (ChannelOpenError, whose reason the operator's ssh prints)."""
        assert conn.peer.operator is not None
        name = conn.peer.operator.name
        try:
            agent_id, target = await self._authorize(conn, dest_host, dest_port)
        except Refused as exc:
            await self._refused(conn, dest_host, dest_port, exc)
        bridge = Bridge(self, name, agent_id,
                        agent_hub=target.id if isinstance(target, HubRow) else None)
        try:
            if isinstance(target, HubRow):
                await self._open_via(target, bridge, conn)
            else:
                await _open_host(target, bridge, conn.peer.host)
        except Refused as exc:  # the agent's hub refused it, for one of the reasons above
            await self._refused(conn, dest_host, dest_port, exc)
        except (asyncssh.Error, OSError, asyncio.TimeoutError, LinkFailed) as exc:
            # The agent's reason is its own text: quoted for the log and the operator's ssh.
            detail = quoted(str(exc) or "timed out", 200)
            log.warning("agent %s did not open the session: %s", agent_id, detail)
            _metrics.refused("agent_failed")
            await self.db(self.store.audit, f"operator:{name}", "remote_refused",
                          agent_id, {"code": "agent_failed", "reason": detail,
                                     "peer": conn.peer.address})
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"the agent of {agent_id} could not open the "
                                              f"session: {detail}") from None
        bridge.session_id = await self.db(self.store.session_started, name, agent_id,
                                          conn.peer.address, utcnow(), self.hub_id,
                                          bridge.agent_hub)
        self.live[bridge.session_id] = bridge
        log.info("session %d: operator %s -> %s%s", bridge.session_id, name, agent_id,
                 f" via hub {bridge.agent_hub}" if bridge.agent_hub else "")
        if bridge.ended:  # the host side closed while we were recording the start
            self.ended(bridge, "host closed")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            f"{agent_id} closed the session at once")
        return bridge.operator

    async def _refused(self, conn: Login, dest_host: str, dest_port: int,
                       exc: Refused) -> NoReturn:
        """Log, count and audit a refused session; raise the refusal the operator's ssh
        prints."""
        assert conn.peer.operator is not None
        name = conn.peer.operator.name
        _metrics.refused(exc.code)
        log.warning("conn %s operator %s refused session to %s:%s: %s", conn.peer.address,
                    name, quoted(dest_host, 64), dest_port, quoted(exc.message, 300))
        await self.db(self.store.audit, f"operator:{name}", "remote_refused",
                      dest_host[:255], {"port": dest_port, "code": exc.code,
                                        "reason": exc.message, "peer": conn.peer.address})
        raise asyncssh.ChannelOpenError(_PROHIBITED, exc.message) from None

    async def _open_via(self, hub: HubRow, bridge: Bridge, conn: Login) -> None:
        """The host side of a session through the agent's hub, over the link to it.

        Raises:
            Refused: the agent's hub refused it with a remote-access code (not agent_failed).
        """
        try:
            await asyncio.wait_for(self.links.open_channel(
                hub, lambda: bridge.host, bridge.agent_id, SSH_PORT, conn.peer.host),
                LINK_OPEN_TIMEOUT_S)
        except asyncssh.ChannelOpenError as exc:
            code, _, message = exc.reason.partition(": ")
            if code in REMOTE_REFUSAL_CODES and code != "agent_failed":
                raise Refused(code, message) from None
            raise asyncssh.ChannelOpenError(exc.code, message if code == "agent_failed"
                                            else exc.reason) from None

    async def _authorize(self, conn: Login, dest_host: str,
                         dest_port: int) -> tuple[str, Login | HubRow]:
        operator = conn.peer.operator
        assert operator is not None
        if operator.role not in REMOTE_ROLES:
            raise Refused("forbidden_role", f"role {operator.role!r} may not open remote "
                                            f"sessions (only {', '.join(REMOTE_ROLES)})")
        if dest_port != SSH_PORT:
            raise Refused("bad_port", f"only port {SSH_PORT} (the host's own sshd) is relayed, "
                                      f"not {dest_port}")
        matches = await self.db(self.store.remote_targets, dest_host, operator.agencies)
        if not matches:  # unknown and out of scope read the same: nothing to learn by probing
            raise Refused("unknown_host", f"no host {dest_host[:64]!r} in your agencies")
        if len(matches) > 1:
            raise Refused("ambiguous_host", f"hostname {dest_host[:64]!r} matches "
                                            f"{len(matches)} hosts; use the host id "
                                            f"({', '.join(m.agent_id for m in matches)})")
        host = matches[0]
        agent_id = host.agent_id
        if host.revoked_at:
            raise Refused("revoked", f"host {agent_id} is revoked")
        if not host.remote_access:
            raise _not_allowed(agent_id)
        target: Login | HubRow | None = self.offers.get(agent_id)
        if target is None and host.connected and host.remote_offered and \
                host.connected_hub not in (None, self.hub_id):
            # Held by another hub: reached over the link to it, while that hub is live.
            target = find_live(await self.db(self.store.hubs), str(host.connected_hub),
                               utcnow())
        if target is None:
            raise _not_offered(agent_id)
        mine = sum(1 for b in self.live.values() if b.operator_name == operator.name)
        if mine >= self.limits.per_operator:
            raise Refused("operator_limit", f"you have {mine} sessions open, the limit")
        theirs = sum(1 for b in self.live.values() if b.agent_id == agent_id)
        if theirs >= self.limits.per_host:
            raise Refused("host_limit", f"{agent_id} has {theirs} sessions open, the limit")
        return agent_id, target

    # --- another hub's session to an agent held here -------------------------------------

    async def relay(self, link: Login, dest_host: str, dest_port: int,
                    orig_host: str) -> _Half:
        """A `direct-tcpip` channel from another hub's link (its operator authorised and the
        session recorded there): bridged to the agent when it still offers and is allowed
        remote access here; refused with the remote-access code, `CODE: message`, which the
        operator's hub reads back."""
        hub_id = link.peer.name
        try:
            target = await self._relay_target(link, dest_host, dest_port)
        except Refused as exc:
            log.warning("conn %s hub %s refused session to %s:%s: %s", link.peer.address,
                        hub_id, quoted(dest_host, 64), dest_port, quoted(exc.message, 300))
            raise asyncssh.ChannelOpenError(_PROHIBITED, f"{exc.code}: {exc.message}") \
                from None
        bridge = Bridge(self, link.peer.actor, dest_host, link=link)
        self.relayed.add(bridge)
        try:
            await _open_host(target, bridge, orig_host)
        except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
            self.relayed.discard(bridge)
            # The operator's hub quotes the agent's text as it does its own agents'.
            log.warning("agent %s did not open hub %s's session: %s", dest_host, hub_id,
                        quoted(str(exc) or "timed out", 200))
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"agent_failed: {str(exc)[:200] or 'timed out'}"
            ) from None
        log.info("hub %s: session to %s relayed", hub_id, dest_host)
        if bridge.ended:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            "agent_failed: the host closed the session at once")
        return bridge.operator

    async def _relay_target(self, link: Login, agent_id: str, dest_port: int) -> Login:
        if find_live(await self.db(self.store.hubs), link.peer.name, utcnow()) is None:
            # Taken for dead or removed since it logged in: its link goes too.
            link.ssh.close()
            raise Refused("access_ended", f"hub {link.peer.name} is no longer registered")
        if dest_port != SSH_PORT:
            raise Refused("bad_port", f"only port {SSH_PORT} (the host's own sshd) is relayed, "
                                      f"not {dest_port}")
        # fullmatch: the pattern's `$` also matches before a final newline, which would be
        # echoed back in the refusal.
        named = AGENT_ID.fullmatch(agent_id) is not None
        target = self.offers.get(agent_id) if named else None
        if target is None:  # it left this hub, or stopped offering, since the store said so
            raise _not_offered(agent_id if named else "the host")
        if not await self.db(self.store.remote_allowed, agent_id):
            raise _not_allowed(agent_id)
        carried = sum(1 for b in self.relayed if b.link is link)
        if carried >= LINK_CHANNELS:
            raise Refused("too_many_channels", f"the link carries {carried} sessions, "
                                               f"its limit")
        # Every session to this host passes here, whichever hub its operator is on.
        theirs = sum(1 for b in [*self.live.values(), *self.relayed] if b.agent_id == agent_id)
        if theirs >= self.limits.per_host:
            raise Refused("host_limit", f"{agent_id} has {theirs} sessions open, the limit")
        return target

    # --- ending -------------------------------------------------------------------------

    def ended(self, bridge: Bridge, reason: str) -> None:
        if bridge.link is not None:  # another hub's session: recorded there
            if bridge in self.relayed:
                self.relayed.discard(bridge)
                log.info("hub %s's session to %s ended: %s", bridge.link.peer.name,
                         bridge.agent_id, reason)
            return
        if not bridge.session_id or self.live.pop(bridge.session_id, None) is None:
            return  # not started yet (open() records it), or already recorded
        to_host, from_host = bridge.operator.bytes_in, bridge.host.bytes_in
        log.info("session %d ended: %s (%d bytes to the host, %d from it)",
                 bridge.session_id, reason, to_host, from_host)
        self.tasks.spawn(self.db(self.store.session_ended, bridge.session_id, to_host,
                                 from_host, reason, utcnow(), bridge.agent_hub))

    async def supervise(self) -> None:
        """End live sessions an admin ended, or whose host lost remote access."""
        while True:
            await asyncio.sleep(SUPERVISE_INTERVAL_S)
            if not self.live:
                continue
            try:
                ends = await self.db(self.store.sessions_to_end, list(self.live))
            except Exception:
                log_failure(log, "checking live sessions failed")
                continue
            for session_id, reason in ends:
                bridge = self.live.get(session_id)
                if bridge is not None:
                    bridge.end(reason)

    async def close_all(self, reason: str) -> None:
        """At hub stop: end every session and wait until each end is recorded."""
        for bridge in list(self.relayed):
            bridge.end(reason)
        for session_id, bridge in list(self.live.items()):
            del self.live[session_id]  # so ended() leaves the recording to us
            bridge.end(reason)
            await self.db(self.store.session_ended, session_id,
                          bridge.operator.bytes_in, bridge.host.bytes_in, reason, utcnow(),
                          bridge.agent_hub)
        await self.links.close()


def _not_offered(agent_id: str) -> Refused:
    return Refused("not_offered", f"{agent_id} is not reachable: its agent is offline or does "
                                  f"not offer remote access (remote_access = true in its "
                                  f"agent.toml)")


def _not_allowed(agent_id: str) -> Refused:
    return Refused("not_allowed", f"remote access is not enabled for {agent_id} (an admin "
                                  f"runs: estate-hub agent allow-remote {agent_id})")


async def _open_host(target: Login, bridge: Bridge, orig_host: str) -> None:
    """Open the host side of `bridge`: a `forwarded-tcpip` channel on the agent's
    connection, to its offered `AGENT_ID:22`."""
    await asyncio.wait_for(target.ssh.create_connection(
        lambda: bridge.host, bridge.agent_id, SSH_PORT, orig_host, 0), OPEN_TIMEOUT_S)


class _Offer(asyncssh.SSHListener):
    """The accepted reverse forward: nothing listens on the hub; closing withdraws it."""

    def __init__(self, relay: RemoteAccess, conn: Login) -> None:
        super().__init__()
        self.relay, self.conn = relay, conn

    def close(self) -> None:
        self.relay.withdraw(self.conn)

    async def wait_closed(self) -> None:
        return None
