"""TCP keepalive on a connected socket, for the hub's accepted connections and the agent's
connection to the hub alike (standard library only: the agent imports it)."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

log = logging.getLogger("estate")


@dataclass(frozen=True)
class TcpKeepalive:
    """TCP keepalive timings (the hub's `--tcp-keepalive IDLE:INTERVAL:COUNT`; the agent
    uses the defaults): after `idle_s` without traffic the kernel probes every
    `interval_s`, and drops the connection after `count` unanswered probes, 4 minutes by
    default. The probes also keep NAT and firewall state of an idle connection alive."""

    idle_s: int = 120
    interval_s: int = 30
    count: int = 4

    @property
    def give_up_s(self) -> int:
        return self.idle_s + self.interval_s * self.count


def keep_alive(sock: socket.socket | None, keepalive: TcpKeepalive) -> None:
    """Turn on TCP keepalive with these timings, so the kernel drops a connection whose peer
    vanished without a FIN (power cut, network gone, a laptop asleep) at no cost to the
    process's CPU, where an SSH keepalive would wake it for every connection.
    TCP_USER_TIMEOUT gives data the peer never acknowledges the same total before the
    connection is dropped (about 15 minutes of retransmissions otherwise). Options the
    platform lacks are skipped (macOS has no TCP_USER_TIMEOUT)."""
    if sock is None:
        return
    options = ((socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
               (socket.IPPROTO_TCP, "TCP_KEEPIDLE", keepalive.idle_s),
               (socket.IPPROTO_TCP, "TCP_KEEPINTVL", keepalive.interval_s),
               (socket.IPPROTO_TCP, "TCP_KEEPCNT", keepalive.count),
               (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", keepalive.give_up_s * 1000))
    try:
        for level, name, value in options:
            if (option := getattr(socket, name, None)) is not None:
                sock.setsockopt(level, option, value)
    except OSError as exc:  # the peer is already gone: connection_lost follows
        log.debug("TCP keepalive not set: %s", exc)
