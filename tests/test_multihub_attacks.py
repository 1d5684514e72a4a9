"""Attacks on the surfaces that serve many hubs: the metrics endpoint, the `busy` refusal an
agent waits out, the pins a hub's key rotation moves, and the hub-to-hub link's login."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import urllib.request

import asyncssh
import pytest

from estate.agent.transport import CommandResult, HubBusy, HubClient, HubError
from tests.harness import HubProcess, wait_for
from tests.multihub import tcp_channel_answers
from tests.stores import ON_POSTGRES

# Nothing here depends on the store: run once, in the SQLite pass.
once = pytest.mark.skipif(ON_POSTGRES, reason="does not depend on the store: runs in the "
                                              "SQLite pass")


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@once
def test_idle_metrics_connections_are_bounded_and_closed(monkeypatch):
    """Slowloris on `--metrics`: every connection used to hold a thread and a descriptor, read
    without a timeout, so idle sockets from anyone who can reach it ran the hub out of both."""
    from estate.inventory.hub import _metrics

    monkeypatch.setattr(_metrics, "REQUEST_TIMEOUT_S", 1.0)
    server = _metrics.serve("127.0.0.1", 0)
    port = _metrics.bound_port(server)
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
    try:
        # Past the cap, a connection is closed as it is accepted; the others hold a thread.
        wait_for(lambda: sum(map(_closed_by_peer, idle)) >= len(idle) - _metrics.CONNECTIONS,
                 what="connections past the cap closed")
        assert threading.active_count() - before <= _metrics.CONNECTIONS
        # Those left idle are closed after the timeout: a scrape gets through again.
        wait_for(lambda: all(map(_closed_by_peer, idle)), what="idle connections timed out")
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert b"estate_hub_reports_received" in answer.read()
    finally:
        for sock in idle:
            sock.close()
        _metrics.stop(server)


def _disconnect_packet(reason: str) -> bytes:
    """An SSH_MSG_DISCONNECT in the clear, as anyone on the path can send before key
    exchange (RFC 4253 binary packet, no MAC)."""
    text = reason.encode()
    payload = bytes([1]) + struct.pack(">I", 11) + struct.pack(">I", len(text)) + text + \
        struct.pack(">I", 0)
    padding = 8 - (5 + len(payload)) % 8
    padding += 8 if padding < 4 else 0
    return struct.pack(">IB", 1 + len(payload) + padding, padding) + payload + \
        bytes(padding)


@once
def test_a_busy_refusal_before_the_hub_proved_its_key_is_not_waited_out():
    """A rogue on the path (no key stolen) answers in the hub's place with `busy` and the
    longest retry_after: the agent must not believe a hub that has not shown its pinned key."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def rogue() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-Rogue\r\n" +
                             _disconnect_packet("busy: full; retry_after=999999"))
                conn.settimeout(30)
                try:
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

        thread = threading.Thread(target=rogue, daemon=True)
        thread.start()
        client = HubClient(f"127.0.0.1:{port}", "SHA256:" + "A" * 43, None,  # type: ignore[arg-type]
                           "ag-000000000000", timeout_s=10)
        with pytest.raises(HubError) as refused:
            client.connect()
        thread.join(30)
    assert not isinstance(refused.value, HubBusy)
    assert refused.value.retry


needs_postgres = pytest.mark.skipif(
    not ON_POSTGRES, reason="a hub registry of several hubs needs PostgreSQL: runs in the "
                            "PostgreSQL pass (make test-postgres)")


@needs_postgres
def test_a_hub_link_reaches_only_offered_agents_and_a_dead_hub_cannot_log_in(tmp_path):
    """With the hub identity, a registered hub's link may open direct-tcpip to an agent's
    sshd and nothing else: no other host, no session, no forward the other way; a hub taken
    for dead cannot log in with it."""
    from datetime import timedelta

    from estate.inventory.hub._keys import HOST_KEY_FILE
    from estate.inventory.store import utcnow
    from tests.stores import open_test_store

    hub = HubProcess(tmp_path / "hub", ("--hub-name", "hub-x")).start()
    try:
        identity = asyncssh.read_private_key(str(tmp_path / "hub" / HOST_KEY_FILE))
        store = open_test_store(tmp_path / "hub")
        try:  # a hub that stopped beating an hour ago, not swept yet
            store.register_hub("hub-ghost", "127.0.0.1:1", 30, None,
                               utcnow() - timedelta(hours=1))
        finally:
            store.close()
        assert asyncio.run(_link(hub, "hub:hub-ghost", identity)) == ["refused"]
        answers = asyncio.run(_link(hub, "hub:hub-x", identity, (
            ("127.0.0.1", 22), ("127.0.0.1", 5432), ("ag-000000000000", 22),
            ("ag-000000000000\n", 22))))
        assert answers[0] == "session refused" and answers[1] == "forward refused"
        assert answers[2].startswith("not_offered: the host is not reachable")
        assert answers[3].startswith("bad_port: only port 22")
        assert answers[4].startswith("not_offered: ag-000000000000 is not reachable")
        assert answers[5].startswith("not_offered: the host is not reachable")
        assert "refused remote forward" in hub.log()
    finally:
        hub.kill()


async def _link(hub: HubProcess, user: str, key: asyncssh.SSHKey,
                channels: tuple[tuple[str, int], ...] = ()) -> list[str]:
    host, port = hub.address.split(":")
    try:
        conn = await asyncssh.connect(host, int(port), username=user, client_keys=[key],
                                      known_hosts=None, agent_path=None, config=None)
    except asyncssh.PermissionDenied:
        return ["refused"]
    answers = []
    async with conn:
        try:
            await conn.create_session(asyncssh.SSHClientSession, subsystem="sftp")
            answers.append("session opened")
        except asyncssh.ChannelOpenError:
            answers.append("session refused")
        try:
            await conn.forward_remote_port("ag-000000000000", 22, "127.0.0.1", 1)
            answers.append("forward opened")
        except asyncssh.ChannelListenError:
            answers.append("forward refused")
        answers += await tcp_channel_answers(conn, channels)
    return answers


class _Answers:
    """Stands in for the SSH client: every report is answered with `result`."""

    def __init__(self, result: CommandResult) -> None:
        self.result, self.transport = result, self

    def is_active(self) -> bool:
        return True

    def report(self, payload: bytes) -> CommandResult:
        return self.result

    def close(self) -> None:
        pass


@once
@pytest.mark.parametrize("retry_after", [1e300, float("inf"), float("nan"), "soon", [1]])
def test_a_tempfail_retry_after_cannot_park_the_agent_for_ever(tmp_path, retry_after):
    """A `busy` answer's retry_after is bounded as the login's is (MAX_BUSY_WAIT_S): not
    infinite, not NaN (never >= now), and not a crash of the loop when it is no number."""
    import gzip
    import json
    import math
    import time

    from estate.agent.config import AgentConfig, SpoolConfig
    from estate.agent.service import Service
    from estate.agent.transport import MAX_BUSY_WAIT_S
    from estate.inventory.protocol import ChannelExit

    cfg = AgentConfig(path=tmp_path / "agent.toml", agent_id="ag-test", hub="127.0.0.1:1",
                      hub_key="SHA256:" + "A" * 43, key_file=tmp_path / "key",
                      spool=SpoolConfig(path=tmp_path / "spool.db"))
    svc = Service(cfg)
    assert svc.spool is not None
    try:
        svc.spool.put("ag-test:1:1", gzip.compress(b'{"report_id": "ag-test:1:1"}'))
        answer = json.loads(json.dumps({"status": "error", "code": "busy",
                                        "retry_after": retry_after}))
        svc.client = _Answers(  # type: ignore[assignment]
            CommandResult(ChannelExit.TEMPFAIL, answer))
        svc._send_one()
        wait = svc.not_before - time.monotonic()
        assert math.isfinite(wait) and wait <= max(MAX_BUSY_WAIT_S, cfg.reconnect_max_s)
    finally:
        svc.spool.close()
