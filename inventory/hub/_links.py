"""Hub-to-hub links: the SSH connections that carry remote sessions between the hubs of one
estate (an operator on this hub, the agent's connection on another).

Every hub of an estate presents one host key, the hub identity (`estate-hub key export` and
`import`). A hub logs in to another as `hub:<its name>` with that key as its client key and
pins the other's host key to that same key; the other accepts the login only when the key is
its own host key and the name is a hub registered and live in the store's registry
(`link_refusal`). One link per peer hub carries up to `LINK_CHANNELS` sessions, each a
`direct-tcpip` channel to `AGENT_ID:22`, and is closed after `LINK_IDLE_S` without any.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncssh

from estate.inventory.protocol import HUB_USER_PREFIX
from estate.inventory.sanitise import quoted
from estate.inventory.store import HubRow, parse_time

log = logging.getLogger("estate.hub.remote")

LINK_CHANNELS = 64  # sessions one link carries at once; the per-operator limits come first
LINK_IDLE_S = 60.0  # a link without sessions this long is closed
LINK_CONNECT_TIMEOUT_S = 15.0  # connect, key exchange and login to the peer hub
LINK_KEEPALIVE_S = 30.0  # a link carrying sessions finds a dead peer within 90 s


class LinkFailed(Exception):
    """No session could be carried to the peer hub: unreachable, refused us, or link full."""


def live(hub: HubRow, now: datetime) -> bool:
    """Whether a registered hub's heartbeat is within its timeout (`estate-hub hubs` live)."""
    return parse_time(hub.heartbeat_at) + timedelta(seconds=hub.timeout_s) >= now


def find_live(hubs: list[HubRow], hub_id: str, now: datetime) -> HubRow | None:
    """The registered, live hub named `hub_id`, or None."""
    return next((h for h in hubs if h.id == hub_id and live(h, now)), None)


def link_refusal(username: str, key: asyncssh.SSHKey, identity: asyncssh.SSHKey,
                 hubs: list[HubRow], now: datetime) -> str | None:
    """Why a `hub:NAME` login is refused (the audit's reason, as for any refused login), or
    None to accept it: the key must be the hub identity, NAME a registered, live hub."""
    hub_id = username[len(HUB_USER_PREFIX):]
    if key.public_data != identity.public_data:
        return "key is not the hub identity"
    if find_live(hubs, hub_id, now) is None:
        return "unknown or dead hub"
    return None


def reachable_address(host: str, port: int) -> str:
    """The HOST:PORT this hub registers for other hubs' links: where it listens, or this
    machine's name when it listens on every address."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - compared with, not bound to
        host = socket.getfqdn()
    return f"{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as the registry holds a hub's address."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(eq=False)
class _Link:
    peer: str  # the peer hub's name
    conn: asyncssh.SSHClientConnection
    channels: int = 0
    idle: asyncio.TimerHandle | None = None
    closed: bool = False


class _LinkClient(asyncssh.SSHClient):
    def __init__(self, links: Links, peer: str) -> None:
        self.links, self.peer = links, peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.links.lost(self.peer, exc)


@dataclass(eq=False)
class Links:
    """This hub's links to its peers, opened on a session's demand and reused."""

    identity: asyncssh.SSHKey  # the host key: our client key, and the key every peer presents
    hub_id: str = ""  # set once registered: the name we log in to peers as
    _links: dict[str, _Link] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _watching: set[asyncio.Task[None]] = field(default_factory=set)  # held: the loop's are weak

    async def open_channel(self, peer: HubRow, session: Callable[[], Any], agent_id: str,
                           port: int, orig_host: str) -> None:
        """A channel to `agent_id:port` through the hub `peer`, its data to `session()`.

        Raises:
            asyncssh.ChannelOpenError: the peer refused the session (its reason).
            LinkFailed: the link could not be opened, or carries all it may.
        """
        link = await self._link(peer)
        if link.channels >= LINK_CHANNELS:
            raise LinkFailed(f"the link to hub {peer.id} carries {link.channels} sessions, "
                             f"its limit")
        link.channels += 1
        if link.idle is not None:
            link.idle.cancel()
            link.idle = None
        try:
            chan, _ = await link.conn.create_connection(session, agent_id, port, orig_host, 0)
        except BaseException:
            self._released(link)
            raise
        task = asyncio.get_running_loop().create_task(self._release_when_closed(link, chan))
        self._watching.add(task)
        task.add_done_callback(self._watching.discard)

    async def _release_when_closed(self, link: _Link, chan: Any) -> None:
        await chan.wait_closed()
        self._released(link)

    def _released(self, link: _Link) -> None:
        link.channels -= 1
        if not link.channels and not link.closed:
            link.idle = asyncio.get_running_loop().call_later(LINK_IDLE_S, self._close_idle,
                                                              link)

    def _close_idle(self, link: _Link) -> None:
        if not link.channels:
            log.info("link to hub %s closed: idle", link.peer)
            link.conn.close()

    async def _link(self, peer: HubRow) -> _Link:
        """The open link to `peer`, made once however many sessions ask at the same time."""
        lock = self._locks.setdefault(peer.id, asyncio.Lock())
        async with lock:
            link = self._links.get(peer.id)
            if link is not None and not link.closed:
                return link
            if not peer.address:
                raise LinkFailed(f"hub {peer.id} has no address in the registry")
            host, port = split_address(peer.address)
            try:
                conn, _ = await asyncio.wait_for(asyncssh.create_connection(
                    lambda: _LinkClient(self, peer.id), host, port,
                    username=HUB_USER_PREFIX + self.hub_id, client_keys=[self.identity],
                    # The peer is another hub of this estate: it presents our own key.
                    known_hosts=([self.identity.convert_to_public()], [], []),
                    agent_path=None, config=None, password_auth=False, kbdint_auth=False,
                    keepalive_interval=LINK_KEEPALIVE_S, keepalive_count_max=3),
                    LINK_CONNECT_TIMEOUT_S)
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                # A refusal's reason is the peer's text: quoted, it forges nothing.
                why = quoted(getattr(exc, "strerror", None) or str(exc) or "timed out", 200)
                log.warning("link to hub %s at %s failed: %s", peer.id, peer.address, why)
                raise LinkFailed(f"hub {peer.id} cannot be reached: {why}") from None
            link = self._links[peer.id] = _Link(peer.id, conn)
            log.info("link to hub %s at %s opened", peer.id, peer.address)
            return link

    def lost(self, peer: str, exc: Exception | None) -> None:
        link = self._links.pop(peer, None)
        if link is not None:
            link.closed = True
            if link.idle is not None:
                link.idle.cancel()
            if exc is not None:
                log.warning("link to hub %s lost: %s", peer, quoted(str(exc), 200))

    async def close(self) -> None:
        """At hub stop: close every link (their sessions have ended)."""
        for link in list(self._links.values()):
            link.conn.close()
            await link.conn.wait_closed()
