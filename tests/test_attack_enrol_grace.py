"""Attacks on an `enrol` connection's grace (ANSWERED_GRACE_S): after its one answer the
connection stays open a little for the client's input still on its way, and nothing in that
time may buy a second command, a forward, or a longer life."""

from __future__ import annotations

import asyncio
import time
import warnings

import asyncssh
import pytest

from tests.harness import HubProcess

# Past the grace, with room for a loaded machine; only a bound, never a timing assertion.
CLOSED_WITHIN_S = 15.0


async def _answered_enrol(hub: HubProcess, **options) -> asyncssh.SSHClientConnection:
    """An anonymous client (a fresh key logs in as `enrol`) that has had its one answer."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    conn = await asyncssh.connect("127.0.0.1", hub.port, username="enrol", client_keys=[key],
                                  known_hosts=None, **options)
    result = await conn.run("estate-report v1", input="")
    assert result.exit_status == 77  # forbidden: the answer the grace follows
    return conn


async def _keep_asking(conn: asyncssh.SSHClientConnection) -> int:
    """Global requests back to back until the hub closes the connection (each one also
    rekeys when the client's rekey_bytes is tiny); bounded by CLOSED_WITHIN_S."""
    deadline, asked = time.monotonic() + CLOSED_WITHIN_S, 0
    while not conn.is_closed() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(conn._make_global_request("keepalive@openssh.com"), 5)
        except (asyncssh.Error, OSError, asyncio.TimeoutError):
            break
        asked += 1
    return asked


@pytest.mark.parametrize("kex", ["curve25519-sha256", "diffie-hellman-group18-sha512"])
def test_keepalives_and_rekeys_do_not_stretch_the_grace(module_hub, kex):
    async def attack() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cryptography deprecates finite-field DH
            conn = await _answered_enrol(module_hub, rekey_bytes=1, kex_algs=[kex])
            port = conn.get_extra_info("sockname")[1]
            asked = await _keep_asking(conn)
        await asyncio.wait_for(conn.wait_closed(), CLOSED_WITHIN_S)
        assert asked > 0
        return int(port)

    port = asyncio.run(attack())
    # Closed by the grace, not by the enrol's login timeout (20 s) a grace ignored would leave.
    assert f"127.0.0.1:{port} closed (enrol_timeout)" not in module_hub.log()


def test_nothing_else_opens_in_the_grace(module_hub):
    async def attack() -> None:
        conn = await _answered_enrol(module_hub)
        with pytest.raises(asyncssh.ChannelOpenError, match="Connection refused"):
            await conn.open_connection("127.0.0.1", module_hub.port)  # direct-tcpip
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("", 0, "127.0.0.1", 1)  # tcpip-forward
        with pytest.raises(asyncssh.ChannelOpenError, match="too_many_channels"):
            await conn.run("estate-enrol v1", input="{}")  # a second token guess
        await asyncio.wait_for(conn.wait_closed(), CLOSED_WITHIN_S)

    asyncio.run(attack())


def test_a_channel_the_client_closes_at_once_still_spends_the_connection(module_hub):
    async def attack() -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        conn = await asyncssh.connect("127.0.0.1", module_hub.port, username="enrol",
                                      client_keys=[key], known_hosts=None)
        # The client closes its channel without reading the answer: still no second
        # channel (token) on this connection.
        chan, _ = await conn.create_session(asyncssh.SSHClientSession, "estate-enrol v1")
        chan.close()
        await chan.wait_closed()
        with pytest.raises(asyncssh.ChannelOpenError, match="too_many_channels"):
            await conn.run("estate-enrol v1", input="{}")
        await asyncio.wait_for(conn.wait_closed(), CLOSED_WITHIN_S)

    asyncio.run(attack())


def test_connections_gone_before_the_grace_ends_leave_the_door_open(module_hub):
    # The per-source door admits 10 connections logging in at once (enrol counts until it
    # closes); 3 rounds of 8 that each vanish before their grace ends must leak no count.
    async def attack() -> None:
        for _ in range(3):
            conns = await asyncio.gather(*(_answered_enrol(module_hub) for _ in range(8)))
            for conn in conns:
                conn.abort()
            await asyncio.gather(*(conn.wait_closed() for conn in conns))
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while True:  # the hub notices the aborts in its own time
            try:
                conns = await asyncio.gather(*(_answered_enrol(module_hub) for _ in range(8)))
                break
            except (asyncssh.Error, OSError):
                assert time.monotonic() < deadline, "the door kept counting closed connections"
                await asyncio.sleep(0.2)
        for conn in conns:
            conn.close()

    asyncio.run(attack())
