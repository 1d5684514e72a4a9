"""The agent's session relay writing to sshd from paramiko's thread (agent/remote.py
`_ToSshd`): bytes keep their order whether they go straight to the socket or wait in the
channel's buffer, and the window is acknowledged only for what went straight out."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import pytest

from estate.agent.remote import CHUNK, _ToSshd

pytestmark = pytest.mark.skipif(not hasattr(socket, "MSG_DONTWAIT"),
                                reason="the direct write needs MSG_DONTWAIT (not on Windows)")


class _Channel:
    """What `_ToSshd` uses of a paramiko Channel: its transport and window accounting."""

    remote_chanid = 7

    def __init__(self) -> None:
        self.adjusts: list[object] = []  # WINDOW_ADJUST messages sent from paramiko's thread
        self.transport = SimpleNamespace(clear_to_send=threading.Event(),
                                         _send_message=self.adjusts.append)
        self.transport.clear_to_send.set()
        self.acknowledged = 0
        self.in_buffer: object = None

    def _check_add_window(self, n: int) -> int:
        self.acknowledged += n
        return n


def _reader(sock: socket.socket, size: int, into: bytearray) -> threading.Thread:
    def read() -> None:
        while len(into) < size:
            into.extend(sock.recv(1 << 20))
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _drain(feed: _ToSshd, sock: socket.socket, until: int = 0) -> None:
    """As the session thread does: take from the buffer and write, holding `writing`."""
    while len(feed) > until:
        with feed.writing:
            sock.sendall(feed.read(CHUNK))


def test_a_full_socket_queues_the_rest_and_the_order_holds():
    to_sshd, sshd = socket.socketpair()
    with to_sshd, sshd:
        chan = _Channel()
        feed = _ToSshd(chan)
        assert chan.in_buffer is feed
        feed.sock = to_sshd
        first = [bytes([i]) * 65536 for i in range(64)]  # 4 MiB: more than the socket holds
        for chunk in first:
            feed.feed(chunk)
        queued = len(feed)
        assert queued > 0  # sshd read nothing: the socket filled, the rest waits
        direct = len(first) * 65536 - queued
        assert direct > 0 and chan.acknowledged == direct and chan.adjusts
        received = bytearray()
        second = [bytes([200 + i]) * 40000 for i in range(16)]
        total = sum(map(len, first + second))
        reader = _reader(sshd, total, received)
        _drain(feed, to_sshd, until=queued // 2)
        for chunk in second:  # while bytes still wait, new ones wait behind them
            feed.feed(chunk)
        _drain(feed, to_sshd)
        reader.join(timeout=30)
        assert bytes(received) == b"".join(first + second)
        # Once the queue is empty, paramiko's thread writes directly again.
        feed.feed(b"tail")
        assert len(feed) == 0 and sshd.recv(16) == b"tail"


def test_nothing_goes_direct_during_a_key_exchange_or_before_sshd_is_connected():
    to_sshd, sshd = socket.socketpair()
    with to_sshd, sshd:
        chan = _Channel()
        feed = _ToSshd(chan)
        feed.feed(b"early")  # the session thread is still connecting to sshd
        feed.sock = to_sshd
        _drain(feed, to_sshd)
        chan.transport.clear_to_send.clear()  # a window adjust may not go out now
        feed.feed(b"during kex")
        assert len(feed) == len(b"during kex") and chan.acknowledged == 0
        _drain(feed, to_sshd)
        chan.transport.clear_to_send.set()
        feed.feed(b"after")
        assert chan.acknowledged == len(b"after")
        sshd.settimeout(10)
        got = b""
        while len(got) < len(b"earlyduring kexafter"):
            got += sshd.recv(100)
        assert got == b"earlyduring kexafter"
