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
from paramiko.buffered_pipe import BufferedPipe

log = logging.getLogger("estate.agent.remote")

SSH_PORT = 22  # the port name the hub relays; the real target is the configured address
MAX_RELAYS = 8  # concurrent sessions; the hub has its own, lower, per-host limit
CONNECT_TIMEOUT_S = 10.0
CHUNK = 64 * 1024
# Writing to sshd from paramiko's own thread without ever blocking it needs a non-blocking
# send on a blocking socket: not on Windows, which keeps the hand-off to the session thread.
_SEND_NOW = getattr(socket, "MSG_DONTWAIT", 0)


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
        # Before the channel's first data is read (this runs on paramiko's thread).
        to_sshd = _ToSshd(chan) if _SEND_NOW else None
        threading.Thread(target=self._relay, args=(chan, to_sshd), name="remote-session",
                         daemon=True).start()

    def _relay(self, chan: paramiko.Channel, to_sshd: _ToSshd | None) -> None:
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
                if to_sshd is not None:
                    to_sshd.sock = sock
                _copy_both_ways(chan, sock, to_sshd)
            finally:
                sock.close()
            log.info("remote session closed")
        finally:
            chan.close()
            with self._lock:
                self.active -= 1


class _ToSshd(BufferedPipe):  # type: ignore[misc]
    """The session channel's incoming buffer, which writes to sshd itself when it can.

    paramiko's thread feeds each packet into the channel's buffer and the session thread is
    woken to copy it to sshd: a pipe write and read, two thread switches and three copies
    per packet. When nothing is queued, no session thread is writing and
    sshd's socket takes the data at once, paramiko's thread sends it there directly (never
    waiting: a slow sshd must not stall the agent's connection) and acknowledges the window
    itself; anything else goes through the buffer as before, so the order is kept.
    """

    def __init__(self, chan: paramiko.Channel) -> None:
        super().__init__()
        self.chan = chan
        self.sock: socket.socket | None = None  # once the session thread has connected
        # Held by whichever thread writes to sshd: the order of bytes is the order they
        # took it in.
        self.writing = threading.Lock()
        chan.in_buffer = self

    def feed(self, data: bytes) -> None:
        sock, transport = self.sock, self.chan.transport
        # A window adjust may go out from paramiko's thread only outside a key exchange
        # (which only this thread starts): else the buffer, whose reader sends it later.
        if sock is None or transport is None or not transport.clear_to_send.is_set() or \
                not self.writing.acquire(blocking=False):
            super().feed(data)
            return
        try:
            if len(self._buffer):  # queued bytes go first: the session thread's turn
                super().feed(data)
                return
            try:
                sent = sock.send(data, _SEND_NOW)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # sshd is gone: the session thread finds out and ends
                super().feed(data)
                return
            if sent < len(data):
                super().feed(data[sent:])
        finally:
            self.writing.release()
        if sent and (ack := self.chan._check_add_window(sent)):
            message = paramiko.Message()
            message.add_byte(paramiko.common.cMSG_CHANNEL_WINDOW_ADJUST)
            message.add_int(self.chan.remote_chanid)
            message.add_int(ack)
            transport._send_message(message)


def _copy_both_ways(chan: paramiko.Channel, sock: socket.socket,
                    to_sshd: _ToSshd | None = None) -> None:
    """Until both directions reach end of file, or either side closes."""
    writing = to_sshd.writing if to_sshd is not None else threading.Lock()
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        sel.register(chan, selectors.EVENT_READ)
        ends: list[Any] = [sock, chan]
        while ends and not chan.closed:
            for key, _ in sel.select(timeout=5.0):
                try:
                    if key.fileobj is sock:
                        data = sock.recv(CHUNK)
                        if data:
                            chan.sendall(data)
                        else:
                            chan.shutdown_write()
                    else:
                        with writing:
                            data = chan.recv(CHUNK)
                            if data:
                                sock.sendall(data)
                            else:
                                sock.shutdown(socket.SHUT_WR)
                except OSError:
                    return  # either side is gone
                if not data:
                    sel.unregister(key.fileobj)
                    ends.remove(key.fileobj)
