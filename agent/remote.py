"""Remote access on the agent: the endpoint's own sshd, offered through the hub connection.

Off unless the agent's config says `remote_access = true`. The agent then asks the hub for
one reverse forward named after itself (`AGENT_ID:22`). When the hub opens a channel on it,
the agent connects that channel to `remote_access_target` (default 127.0.0.1:22) — that
address and no other, whatever the channel asks for — and copies bytes both ways. It never
runs a command: the endpoint's sshd authenticates the operator itself, end to end.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from typing import Any

import paramiko

log = logging.getLogger("estate.agent.remote")

SSH_PORT = 22  # the port name the hub relays; the real target is the configured address
MAX_RELAYS = 8  # concurrent sessions; the hub has its own, lower, per-host limit
CONNECT_TIMEOUT_S = 10.0
CHUNK = 64 * 1024


class RemoteRelay:
    """The agent's side of remote access: the offer, and one thread per live session."""

    def __init__(self, agent_id: str, target: tuple[str, int]) -> None:
        self.agent_id, self.target = agent_id, target
        self.offered_on: paramiko.Transport | None = None
        self.refused_on: paramiko.Transport | None = None
        self.active = 0
        self._lock = threading.Lock()

    def state(self) -> str:
        transport = self.offered_on
        if transport is not None and transport.is_active():
            return "offered"
        return "refused by the hub" if self.refused_on is not None else "not offered yet"

    def offer(self, transport: paramiko.Transport) -> bool:
        """Ask the hub, on this connection, for the forward. False if it refused (logged)."""
        if transport.is_active() and self.offered_on is transport:
            return True
        # paramiko installs the handler only once the hub's yes has reached this thread; a
        # session the hub opens in between would be refused. So install it first (and take
        # it away again if the hub says no).
        transport._tcp_handler = self._incoming
        try:
            transport.request_port_forward(self.agent_id, SSH_PORT, handler=self._incoming)
        except (paramiko.SSHException, OSError, EOFError):
            transport._tcp_handler = None
            if self.refused_on is not transport:  # once per connection, not every retry
                log.warning("the hub refused remote access for %s: an admin must allow it "
                            "(estate-hub agent allow-remote %s)", self.agent_id, self.agent_id)
            self.refused_on = transport
            return False
        self.offered_on, self.refused_on = transport, None
        log.info("remote access offered: sessions go to %s:%d", *self.target)
        return True

    def _incoming(self, chan: paramiko.Channel, origin: tuple[str, int],
                  server: tuple[str, int]) -> None:
        """A session from the hub. Runs on paramiko's thread: check, then hand off."""
        if tuple(server) != (self.agent_id, SSH_PORT):
            log.warning("refused a channel for %r: this agent offers only %s:%d", server,
                        self.agent_id, SSH_PORT)
            chan.close()
            return
        with self._lock:
            if self.active >= MAX_RELAYS:
                log.warning("refused a session: %d already open", self.active)
                chan.close()
                return
            self.active += 1
        threading.Thread(target=self._relay, args=(chan,), name="remote-session",
                         daemon=True).start()

    def _relay(self, chan: paramiko.Channel) -> None:
        try:
            try:
                sock = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT_S)
            except OSError as exc:
                log.warning("remote session: cannot reach sshd at %s:%d: %s", *self.target,
                            exc.strerror or exc)
                return
            log.info("remote session opened to %s:%d", *self.target)
            try:
                sock.settimeout(None)
                _copy_both_ways(chan, sock)
            finally:
                sock.close()
            log.info("remote session closed")
        finally:
            chan.close()
            with self._lock:
                self.active -= 1


def _copy_both_ways(chan: paramiko.Channel, sock: socket.socket) -> None:
    """Until both directions reach end of file, or either side closes."""
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        sel.register(chan, selectors.EVENT_READ)
        ends: list[Any] = [sock, chan]
        while ends and not chan.closed:
            for key, _ in sel.select(timeout=5.0):
                try:
                    data = key.fileobj.recv(CHUNK)  # type: ignore[union-attr]
                    if key.fileobj is sock:
                        if data:
                            chan.sendall(data)
                        else:
                            chan.shutdown_write()
                    elif data:
                        sock.sendall(data)
                    else:
                        sock.shutdown(socket.SHUT_WR)
                except OSError:
                    return  # either side is gone
                if not data:
                    sel.unregister(key.fileobj)
                    ends.remove(key.fileobj)
