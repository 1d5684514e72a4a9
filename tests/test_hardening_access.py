"""Access withdrawn is access ended, scope does not leak, refusals are audited (coalesced).

Real hub process, real SSH clients on loopback: an operator removed or changed by
`estate-hub` in another process loses its open connection, API channel and remote session
within a few seconds; a revoked agent's open connection stores nothing more; `host` shows
identity conflicts only within the reader's agencies; failed logins and out-of-scope probes
are audited, a flood of them in a handful of rows.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from estate.agent.transport import HubError
from estate.console._client import open_connection
from tests.harness import Agent, AgentService, HubProcess, make_report, wait_for

WITHIN_S = 15.0  # "within a second" in the hub; generous here for a loaded test machine
BANNER = b"SSH-2.0-EstateTestEndpoint\r\n"


class BannerServer:
    """A stand-in for an endpoint's sshd: sends a banner, holds the connection until closed.

    The relay carries bytes it cannot read, so any TCP server shows whether a session is open.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        conn.settimeout(120)
        with conn:
            try:
                conn.sendall(BANNER)
                while conn.recv(4096):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.closing = True
        self.sock.close()


def _keypair(path: Path) -> Path:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    key.write_public_key(f"{path}.pub")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, live_report):
    """A hub; `ready` (Council) offering remote access to a banner server, allowed;
    `fire` (Fire & Rescue) with one report."""
    base = tmp_path_factory.mktemp("access")
    banner = BannerServer()
    hub = HubProcess(base / "hub").start()
    ready = Agent(hub, base / "ready")
    fire = Agent(hub, base / "fire", hub.token("Fire & Rescue", "Station 1"))
    assert fire.send(make_report(live_report, fire.agent_id, system__hostname="fire-pc"))[0] == 0
    service = AgentService(ready, f'remote_access = true\nremote_access_target = '
                                  f'"127.0.0.1:{banner.port}"\n').start()
    hub.admin("agent", "allow-remote", ready.agent_id)
    try:
        wait_for(lambda: next(r["remote"] for r in hub.admin_json("agent", "list")
                              if r["id"] == ready.agent_id) == "ready", 30,
                 what="the agent to offer remote access")
        yield {"base": base, "hub": hub, "ready": ready, "fire": fire}
    finally:
        service.kill()
        hub.kill()
        banner.close()


def _operator(env: dict[str, Any], name: str, role: str = "staff",
              agencies: str = "Council") -> Path:
    key = _keypair(env["base"] / name)
    env["hub"].admin("operator", "add", name, "--key", f"{key}.pub", "--role", role,
                     "--agencies", agencies)
    return key


async def _connect(env: dict[str, Any], name: str) -> asyncssh.SSHClientConnection:
    hub = env["hub"]
    return await open_connection(hub.address, name, env["base"] / name, hub.fingerprint)


async def _api(conn: asyncssh.SSHClientConnection) -> Any:
    return await conn.create_process("estate-api v1")


async def _ask(proc: Any, request: dict[str, Any]) -> dict[str, Any]:
    proc.stdin.write(json.dumps(request) + "\n")
    line = await asyncio.wait_for(proc.stdout.readline(), WITHIN_S)
    return json.loads(line) if line else {}


def _audit(hub: HubProcess, action: str) -> list[dict[str, Any]]:
    with hub.store() as store:
        rows = reversed(store.audit_log(action=action))
        return [{**r.as_dict(), "detail": json.loads(r.detail) if r.detail else {}}
                for r in rows]


def _ended(hub: HubProcess, user: str) -> list[str]:
    return [r["detail"]["reason"] for r in _audit(hub, "access_ended") if r["target"] == user]


# --- access withdrawn -------------------------------------------------------------------

def test_removed_operator_loses_open_api_channel_and_connection(env):
    hub = env["hub"]
    _operator(env, "olivia")

    async def scenario() -> dict[str, Any]:
        conn = await _connect(env, "olivia")
        try:
            proc = await _api(conn)
            first = await _ask(proc, {"id": 1, "op": "summary"})
            await asyncio.to_thread(hub.admin, "operator", "remove", "olivia")
            # The open connection is closed by the hub, not by anything this client does.
            await asyncio.wait_for(conn.wait_closed(), WITHIN_S)
            with pytest.raises((asyncssh.Error, OSError)):
                await conn.create_process("estate-api v1")
            return first
        finally:
            conn.close()

    first = asyncio.run(scenario())
    assert first["ok"] is True
    assert wait_for(lambda: _ended(hub, "olivia"), WITHIN_S, what="audit") == \
        ["operator removed"]
    assert "access ended (operator removed)" in hub.log()


def test_changed_role_closes_the_connection(env):
    """No verb changes a role yet; a write by another process stands in for one, and moves
    the access counter as such a verb must."""
    hub = env["hub"]
    _operator(env, "carol")

    async def scenario() -> None:
        conn = await _connect(env, "carol")
        try:
            proc = await _api(conn)
            assert (await _ask(proc, {"id": 1, "op": "summary"}))["ok"] is True
            with hub.store() as store, store._transaction():  # a commit the hub notices
                store.db.execute("UPDATE operators SET role = 'auditor' WHERE name = 'carol'")
                store._access_changed()
            await asyncio.wait_for(conn.wait_closed(), WITHIN_S)
        finally:
            conn.close()

    asyncio.run(scenario())
    assert wait_for(lambda: _ended(hub, "carol"), WITHIN_S, what="audit") == \
        ["operator role or agencies changed"]


def test_removed_operator_remote_session_ends(env):
    hub, ready = env["hub"], env["ready"]
    _operator(env, "rita")

    async def scenario() -> bytes:
        conn = await _connect(env, "rita")
        try:
            reader, _writer = await conn.open_connection(ready.agent_id, 22)
            banner = await asyncio.wait_for(reader.readline(), WITHIN_S)
            assert banner == BANNER
            await asyncio.to_thread(hub.admin, "operator", "remove", "rita")
            # The relayed session ends: the reader sees its end without anyone closing it.
            rest = await asyncio.wait_for(reader.read(), WITHIN_S)
            await asyncio.wait_for(conn.wait_closed(), WITHIN_S)
            return rest
        finally:
            conn.close()

    assert asyncio.run(scenario()) == b""
    session = wait_for(lambda: next((s for s in hub.admin_json("sessions")
                                     if s["operator"] == "rita" and s["ended_at"]), None),
                       WITHIN_S, what="the session's end to be recorded")
    assert session["end_reason"] == "operator removed"
    assert _ended(hub, "rita") == ["operator removed"]


def test_revoked_agent_open_connection_stores_nothing_more(env, live_report, tmp_path):
    hub = env["hub"]
    agent = Agent(hub, tmp_path / "revoked")
    client = agent.client()
    try:
        client.connect()
        first = client.run("estate-report v1", json.dumps(
            make_report(live_report, agent.agent_id, system__hostname="before")).encode())
        assert first.doc["status"] == "stored"
        hub.admin("agent", "revoke", agent.agent_id)
        wait_for(lambda: not client.transport.is_active(), WITHIN_S,
                 what="the hub to close the revoked agent's connection")
        with pytest.raises(HubError):  # a new connection is refused at login
            client.run("estate-report v1", json.dumps(
                make_report(live_report, agent.agent_id, system__hostname="after")).encode())
    finally:
        client.close()
    with hub.store() as store:
        stored = store.report_count(agent.agent_id)
        (row,) = store.host_rows(None, [agent.agent_id])
    hostname = row.hostname
    assert (stored, hostname) == (1, "before")
    assert _ended(hub, agent.agent_id) == ["agent revoked"]


# --- scope ------------------------------------------------------------------------------

def test_identity_conflict_shows_only_hosts_in_scope(env, live_report, tmp_path):
    hub, fire = env["hub"], env["fire"]
    council = Agent(hub, tmp_path / "cloner")
    serial = "SHARED-SERIAL-123"
    for agent in (fire, council):
        assert agent.send(make_report(live_report, agent.agent_id,
                                      hardware__serial=serial))[0] == 0
    _operator(env, "cathy")  # Council only
    _operator(env, "ada", role="admin", agencies="all")

    async def read(name: str) -> dict[str, Any]:
        conn = await _connect(env, name)
        try:
            return await _ask(await _api(conn), {"id": 1, "op": "host",
                                                 "agent_id": council.agent_id})
        finally:
            conn.close()

    assert asyncio.run(read("cathy"))["result"]["identity_conflict"] is None
    assert fire.agent_id in asyncio.run(read("ada"))["result"]["identity_conflict"]


def test_out_of_scope_probes_are_audited_without_telling_the_operator(env):
    hub, fire = env["hub"], env["fire"]
    _operator(env, "paula")  # Council only

    async def probe() -> list[dict[str, Any]]:
        conn = await _connect(env, "paula")
        try:
            proc = await _api(conn)
            return [await _ask(proc, {"id": 1, "op": "host", "agent_id": fire.agent_id}),
                    await _ask(proc, {"id": 2, "op": "host", "agent_id": "ag-000000000000"}),
                    await _ask(proc, {"id": 3, "op": "reports", "agent_id": fire.agent_id}),
                    await _ask(proc, {"id": 4, "op": "resolve", "host": "fire-pc"})]
        finally:
            conn.close()

    answers = asyncio.run(probe())
    assert [a["error"]["code"] for a in answers] == ["not_found"] * 4
    # Same words for a host in another agency as for none at all.
    assert answers[0]["error"]["message"].replace(fire.agent_id, "X") == \
        answers[1]["error"]["message"].replace("ag-000000000000", "X")

    def rows() -> list[tuple[str, str, str]]:
        return [(r["action"], r["target"], r["detail"]["op"])
                for action in ("scope_denied", "not_found") for r in _audit(hub, action)
                if r["actor"] == "operator:paula"]
    # Coalesced per (source, action): the first of each is written at once.
    found = wait_for(lambda: len(rows()) >= 2 and rows(), WITHIN_S, what="probe audit")
    assert ("scope_denied", fire.agent_id, "host") in found
    assert ("not_found", "ag-000000000000", "host") in found


# --- failed logins, coalesced -----------------------------------------------------------

ATTEMPTS = 200


@pytest.fixture()
def open_door_hub(tmp_path):
    """A hub whose per-source connection budgets let one address make the whole flood."""
    hub = HubProcess(tmp_path / "hub", ("--connection-rate", "1000", "--connection-burst",
                                        "1000", "--max-unauthenticated-per-source", "100",
                                        "--early-drop", "100:0")).start()
    yield hub
    hub.kill()


def test_failed_login_flood_writes_a_few_rows_with_a_count(open_door_hub, tmp_path):
    hub = open_door_hub
    stranger = _keypair(tmp_path / "stranger")

    key = asyncssh.read_private_key(str(stranger))

    async def attempt(i: int) -> bool:
        try:
            conn = await asyncio.wait_for(asyncssh.connect(
                "127.0.0.1", hub.port, username=f"nobody{i}", client_keys=[key],
                known_hosts=None, agent_path=None, config=None, password_auth=False,
                kbdint_auth=False), 60)
        except asyncssh.PermissionDenied:
            return True
        conn.close()
        return False

    async def flood() -> list[bool]:
        results: list[bool] = []
        for start in range(0, ATTEMPTS, 20):  # 20 at a time: a flood, not a pre-auth DoS
            results += await asyncio.gather(*(attempt(i) for i in range(start, start + 20)))
        return results

    refused = asyncio.run(flood())
    assert sum(refused) == ATTEMPTS
    first = wait_for(lambda: _audit(hub, "login_failed"), WITHIN_S, what="first row")
    assert first[0]["detail"]["count"] == 1 and first[0]["detail"]["source"] == "127.0.0.1"
    hub.signal(15)  # the folded row of the open window is written at stop
    rows = _audit(hub, "login_failed")
    assert len(rows) <= 4
    total = sum(r["detail"].get("count", 0) + r["detail"].get("repeats", 0) for r in rows)
    assert total == ATTEMPTS
    assert any(r["detail"].get("repeats") for r in rows)


def test_coalescer_windows_and_key_cap():
    """The coalescer alone: a window's repeats fold into one row; past the key cap, new
    sources share one overflow window; close() writes what is still open."""
    from estate.inventory.hub._audit import OVERFLOW_SOURCE, AuditCoalescer

    written: list[Any] = []

    async def write(rows: list[Any]) -> None:
        written.extend(rows)

    async def scenario() -> None:
        audit = AuditCoalescer(write, window_s=3600, max_keys=2)
        for i in range(50):
            audit.record("10.0.0.1", "anonymous", "login_failed", f"user{i}")
        audit.record("10.0.0.2", "anonymous", "login_failed", "x")
        for i in range(30):  # a third and later sources: over the cap
            audit.record(f"10.0.1.{i}", "anonymous", "login_failed", "y")
        await audit.flush()
        assert [r[3]["count"] for r in written] == [1, 1, 1]
        await audit.close()

    asyncio.run(scenario())
    details = [r[3] for r in written]
    assert sum(d.get("count", 0) + d.get("repeats", 0) for d in details) == 81
    assert len(written) == 5  # 3 first rows, 2 folded (10.0.0.2 had no repeat)
    folded = {d["source"]: d for d in details if "repeats" in d}
    assert folded["10.0.0.1"]["repeats"] == 49 and len(folded["10.0.0.1"]["targets"]) == 10
    assert folded[OVERFLOW_SOURCE]["repeats"] == 29


def test_a_revocation_before_the_hubs_first_look_at_the_counter_is_not_missed(tmp_path):
    """The hub reads the store's access counter every second and re-reads the records of
    those connected only when it moved. Its first reading has nothing to compare with: it
    counts as a move, so a revocation made between an agent's login and that first reading
    (an agent connecting in the hub's first second) ends the connection within a second, not
    at the full check ten minutes on."""
    from datetime import timedelta

    from estate.inventory.hub._access import AccessGuard
    from tests.stores import open_test_store

    store = open_test_store(tmp_path)
    try:
        token_id, secret, _ = store.create_token("Council", "Town Hall", 2, timedelta(hours=1),
                                                 "admin:test")
        first, second = (store.enrol(token_id, secret, f"ssh-ed25519 K{i}", f"SHA256:k{i}",
                                     f"pc{i}")["agent_id"] for i in range(2))
        assert store.revoke_agent(first, "admin:test")  # before the hub's first look
        guard = AccessGuard(None, store, None, None)  # type: ignore[arg-type]
        assert guard._records_changed() is True
        assert guard._records_changed() is False
        assert store.revoke_agent(second, "admin:test")
        assert guard._records_changed() is True
    finally:
        store.close()
