"""Keepalives: a peer that vanishes without a FIN is still dropped and shown offline.

Two layers (docs/configuration.md "Keepalives"): the kernel's TCP keepalive on every accepted
socket finds a vanished host at no hub CPU; the SSH keepalive finds a peer whose TCP end
still answers (a relay, a proxy, a hung process) and is what a frozen relay here exercises.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from estate.inventory.tcp_keepalive import TcpKeepalive, keep_alive
from tests.harness import Agent, HubProcess, TcpRelay, run, wait_for


def agent_state(hub: HubProcess, agent_id: str) -> str:
    return next(a["state"] for a in hub.admin_json("agent", "list") if a["id"] == agent_id)


def test_a_peer_gone_silent_behind_a_live_tcp_end_is_closed_and_shown_offline(tmp_path):
    # The relay's kernel keeps acknowledging the hub's TCP (keepalive probes too) while the
    # agent's bytes are dropped: only the SSH keepalive can tell, here after 1 s of silence.
    hub = HubProcess(tmp_path / "hub", ("--keepalive", "1")).start()
    relay = TcpRelay(hub.port)
    try:
        agent = Agent(hub, tmp_path / "agent")
        client = agent.client()
        client.hub = relay.address
        client.connect()
        wait_for(lambda: agent_state(hub, agent.agent_id) == "connected",
                 what="the agent to show connected")
        relay.hold()  # no FIN, no RST: the agent's side just goes quiet
        wait_for(lambda: agent_state(hub, agent.agent_id) == "enrolled", timeout=60,
                 what="the hub to notice the silent agent")
        assert "not responding to keepalive" in hub.log()
        client.close()
    finally:
        relay.close()
        hub.kill()


def _hub_side_timer(hub_port: int, client_port: int) -> tuple[int, int] | None:
    """(timer kind, ticks left) of the hub's end of one loopback connection, from
    /proc/net/tcp: kind 2 is the keepalive timer (Documentation/networking/proc_net_tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, timer = fields[1], fields[2], fields[5]
        if int(local.split(":")[1], 16) == hub_port and \
                int(remote.split(":")[1], 16) == client_port:
            kind, ticks = timer.split(":")
            return int(kind, 16), int(ticks, 16)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_accepted_connections_carry_the_hubs_tcp_keepalive(tmp_path):
    """Checked against the kernel: the hub's end of a silent connection has its keepalive
    timer armed within --tcp-keepalive's IDLE, not the system's two hours."""
    hub = HubProcess(tmp_path / "hub", ("--tcp-keepalive", "7:3:2")).start()
    try:
        with socket.create_connection(("127.0.0.1", hub.port)) as sock:
            sock.recv(100)  # the hub's version line: the connection was admitted
            client_port = sock.getsockname()[1]
            timer = wait_for(lambda: (t := _hub_side_timer(hub.port, client_port))
                             and t[0] == 2 and t, what="a keepalive timer on the hub's end")
            assert 0 < timer[1] <= 7 * os.sysconf("SC_CLK_TCK")
    finally:
        hub.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's option names")
def test_keep_alive_sets_every_timing_on_the_socket():
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as sock:
        keep_alive(sock, TcpKeepalive(idle_s=61, interval_s=7, count=5))
        got = {name: sock.getsockopt(level, getattr(socket, name)) for level, name in (
            (socket.SOL_SOCKET, "SO_KEEPALIVE"), (socket.IPPROTO_TCP, "TCP_KEEPIDLE"),
            (socket.IPPROTO_TCP, "TCP_KEEPINTVL"), (socket.IPPROTO_TCP, "TCP_KEEPCNT"),
            (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT"))}
    assert got == {"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 61, "TCP_KEEPINTVL": 7, "TCP_KEEPCNT": 5,
                   "TCP_USER_TIMEOUT": (61 + 7 * 5) * 1000}


def test_tcp_keepalive_flag_refuses_nonsense(tmp_path):
    for value in ("120:30", "0:30:4", "120:30:4:1", "a:b:c", "99999:30:4"):
        done = run("-m", "estate.inventory.hub.cli", "serve", "--data", str(tmp_path / "hub"),
                   "--tcp-keepalive", value, check=False, timeout=60)
        assert done.returncode == 2 and "--tcp-keepalive" in done.stderr, value


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's option names")
def test_the_agents_connection_uses_tcp_keepalive_not_ssh_keepalives(tmp_path):
    """An SSH keepalive every 30 s from each agent cost the hub ~13% of a core per 10,000
    idle agents: the agent leaves finding a vanished hub (and keeping NAT state) to TCP."""
    hub = HubProcess(tmp_path / "hub").start()
    try:
        client = Agent(hub, tmp_path / "agent").client()
        client.connect()
        sock = client.transport.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == TcpKeepalive().idle_s
        assert client.transport.packetizer._Packetizer__keepalive_interval == 0
        client.close()
    finally:
        hub.kill()
