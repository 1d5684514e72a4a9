"""Remote access across hubs, over real processes: OpenSSH's ssh -> estate tunnel -> hub A ->
hub-to-hub link -> hub B -> agent -> sshd, two hubs on one PostgreSQL sharing one host key.

The session is authorised and recorded once, on the operator's hub, naming both hubs; the
agent's hub accepts the link only from a registered hub presenting the hub identity.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess

import asyncssh
import pytest

from estate.inventory.hub._keys import HOST_KEY_FILE
from tests.harness import PY, Agent, AgentService, HubProcess, run, wait_for
from tests.multihub import tcp_channel_answers
from tests.sshd import MISSING, Sshd, keygen
from tests.stores import ON_POSTGRES, test_store_url

pytestmark = [
    pytest.mark.skipif(not ON_POSTGRES, reason="several hubs share a PostgreSQL store; "
                       "SQLite has one hub (run with ESTATE_TEST_STORE=postgresql, as "
                       "`make test` does)"),
    pytest.mark.skipif(MISSING is not None, reason=MISSING or ""),
]

COMMAND, OUTPUT = "expr 1234 '*' 5678", "7006652"  # computed on the endpoint only
BOUND_S = 60  # generous: the machine is shared; no timing is asserted


@pytest.fixture(scope="module")
def hubs(tmp_path_factory):
    """Hub A (operators connect here) and hub B (the agent's), one store and one key; sshd;
    an agent on hub B offering remote access, allowed; alice (Council, the agent's agency)
    and fred (Fire & Rescue)."""
    base = tmp_path_factory.mktemp("across")
    url = test_store_url(base / "a")
    assert url is not None
    sshd = Sshd(base / "sshd").start()
    hub_a = HubProcess(base / "a", ("--hub-name", "hub-a")).start()
    key = base / "hub-key"
    run("-m", "estate.inventory.hub.cli", "key", "export", "--out", str(key), "--data",
        str(base / "a"))
    run("-m", "estate.inventory.hub.cli", "key", "import", str(key), "--data", str(base / "b"))
    hub_b = HubProcess(base / "b", ("--store", url, "--hub-name", "hub-b")).start()
    service = None
    try:
        assert hub_b.fingerprint == hub_a.fingerprint
        agent = Agent(hub_b, base / "agent", hub_a.token())
        offer = f'remote_access = true\nremote_access_target = "127.0.0.1:{sshd.port}"\n'
        service = AgentService(agent, offer).start()
        for name, agencies in (("alice", "Council"), ("fred", "Fire & Rescue")):
            keygen(base / name)
            hub_a.admin("operator", "add", name, "--key", str(base / f"{name}.pub"),
                        "--role", "staff", "--agencies", agencies)
        hub_a.admin("agent", "allow-remote", agent.agent_id)
        wait_for(lambda: _remote_state(hub_a, agent.agent_id) == "ready", BOUND_S,
                 what="the agent on hub B to offer remote access")
        wait_for(lambda: hub_a.admin_json("hosts"), BOUND_S, what="the agent's report")
        yield {"base": base, "sshd": sshd, "a": hub_a, "b": hub_b, "agent": agent,
               "identity": asyncssh.read_private_key(str(base / "a" / HOST_KEY_FILE)),
               "known_hosts": sshd.known_hosts(base / "known_hosts", agent.agent_id)}
    finally:
        if service is not None:
            service.kill()
        hub_a.kill()
        hub_b.kill()
        sshd.stop()


def _remote_state(hub: HubProcess, agent_id: str) -> str:
    return next(r["remote"] for r in hub.admin_json("agent", "list") if r["id"] == agent_id)


def _estate_ssh(env, operator: str, *command: str) -> subprocess.CompletedProcess[str]:
    hub, sshd = env["a"], env["sshd"]
    return subprocess.run(
        [PY, "-m", "estate.console.cli", "ssh", "--hub", f"{operator}@{hub.address}",
         "--key", str(env["base"] / operator), "--hub-key", hub.fingerprint,
         f"{sshd.user}@{env['agent'].agent_id}", "--",
         *sshd.client_options(env["known_hosts"]), *command],
        capture_output=True, text=True, timeout=120,
        env={**os.environ,
             "ESTATE_CONSOLE_CONFIG": str(env["base"] / "console" / "console.toml")})


def _audit(hub: HubProcess, action: str) -> list[dict]:
    return [{**r, "detail": json.loads(r["detail"] or "null")}
            for r in hub.admin_json("audit", "--action", action)]


def test_estate_ssh_on_hub_a_reaches_a_host_on_hub_b_audited_once(hubs):
    hub_a, hub_b, agent = hubs["a"], hubs["b"], hubs["agent"]
    done = _estate_ssh(hubs, "alice", COMMAND)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == OUTPUT

    session = wait_for(lambda: next((s for s in hub_a.admin_json("sessions")
                                     if s["ended_at"]), None), BOUND_S, what="session end")
    assert session["operator"] == "alice" and session["agent_id"] == agent.agent_id
    assert session["bytes_to_host"] > 1000 and session["bytes_from_host"] > 1000
    # One start and one end in the estate's one audit log, each naming both hubs.
    starts, ends = _audit(hub_a, "remote_session_start"), _audit(hub_a, "remote_session_end")
    assert [(r["actor"], r["target"]) for r in starts + ends] == \
        [("operator:alice", agent.agent_id)] * 2
    for row in starts + ends:
        assert row["detail"]["session"] == session["id"]
        assert (row["detail"]["hub"], row["detail"]["agent_hub"]) == ("hub-a", "hub-b")
    assert "via hub hub-b" in hub_a.log()
    assert "hub hub-a: session to " + agent.agent_id + " relayed" in hub_b.log()
    # End to end: the relayed bytes are ciphertext to both hubs.
    assert OUTPUT not in hub_a.log() + hub_b.log()

    # A second session reuses the link.
    again = _estate_ssh(hubs, "alice", "true")
    assert again.returncode == 0, again.stderr
    assert hub_a.log().count("link to hub hub-b at") == 1


def test_operator_of_another_agency_is_refused_on_hub_a(hubs):
    hub_a, agent = hubs["a"], hubs["agent"]
    done = _estate_ssh(hubs, "fred", "true")
    assert done.returncode != 0
    refused = [r for r in _audit(hub_a, "remote_refused")
               if r["actor"] == "operator:fred"]
    assert [r["detail"]["code"] for r in refused] == ["unknown_host"]
    assert refused[0]["target"] == agent.agent_id
    assert "hub hub-a refused session" not in hubs["b"].log()


def test_hub_link_needs_the_hub_identity_and_a_registered_hub(hubs, tmp_path):
    hub_a, hub_b, agent = hubs["a"], hubs["b"], hubs["agent"]
    identity = hubs["identity"]
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    # Not in the registry (a third process holding the key), or the wrong key: refused.
    assert asyncio.run(_link_login(hub_b, "hub:hub-c", identity)) == "refused"
    assert asyncio.run(_link_login(hub_b, "hub:hub-a", stranger)) == "refused"
    for user, why in (("hub:hub-c", "unknown or dead hub"),
                      ("hub:hub-a", "key is not the hub identity")):
        wait_for(lambda user=user, why=why: f'login refused for user "{user}": 1 key(s) '
                 f'refused, the last: {why}' in hub_b.log(), BOUND_S, what="the refusal")
    # Audited as any refused login (the second folds into the first's row, per source).
    first = _audit(hub_a, "login_failed")[-1]
    assert (first["target"], first["detail"]["reason"]) == ("hub:hub-c", "unknown or dead hub")

    # A registered hub with the key gets in, and only to agents' sshd: hub B answers with
    # the remote-access codes hub A reads back.
    answers = asyncio.run(_link_login(hub_b, "hub:hub-a", identity, [
        (agent.agent_id, 2222), ("ag-000000000000", 22)]))
    assert answers[0].startswith("bad_port: only port 22")
    assert answers[1].startswith("not_offered: ag-000000000000 is not reachable")
    hub_a.admin("agent", "deny-remote", agent.agent_id)
    try:
        [denied] = asyncio.run(_link_login(hub_b, "hub:hub-a", identity,
                                           [(agent.agent_id, 22)]))
    finally:
        hub_a.admin("agent", "allow-remote", agent.agent_id)
    assert denied.startswith(f"not_allowed: remote access is not enabled for "
                             f"{agent.agent_id}")


async def _link_login(hub: HubProcess, user: str, key: asyncssh.SSHKey,
                      channels: list[tuple[str, int]] = ()) -> str | list[str]:
    """Log in to `hub` as `user` with `key` ("refused" if refused), then open each
    direct-tcpip channel: its refusal's reason, or "opened"; a session channel is refused."""
    host, port = hub.address.split(":")
    try:
        conn = await asyncssh.connect(host, int(port), username=user, client_keys=[key],
                                      known_hosts=None, agent_path=None, config=None)
    except asyncssh.PermissionDenied:
        return "refused"
    answers = []
    async with conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_session(asyncssh.SSHClientSession, "estate-api v1")
        answers += await tcp_channel_answers(conn, channels)
    return answers


def test_estate_ssh_through_a_workers_hub_crosses_between_its_workers(tmp_path):
    """`serve --workers 2`: the operator's connection and the agent's land on workers the
    kernel picks; a session works either way, and one that crosses goes over the link
    between the two workers, audited once with both named."""
    sshd = Sshd(tmp_path / "sshd").start()
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = int(s.getsockname()[1])
    hub = HubProcess(tmp_path / "hub", ("--workers", "2"))
    hub.port = port
    hub.start(timeout=90)
    service = None
    try:
        agent = Agent(hub, tmp_path / "agent")
        offer = f'remote_access = true\nremote_access_target = "127.0.0.1:{sshd.port}"\n'
        service = AgentService(agent, offer).start()
        keygen(tmp_path / "alice")
        hub.admin("operator", "add", "alice", "--key", str(tmp_path / "alice.pub"),
                  "--role", "staff", "--agencies", "Council")
        hub.admin("agent", "allow-remote", agent.agent_id)
        wait_for(lambda: _remote_state(hub, agent.agent_id) == "ready", BOUND_S,
                 what="the agent to offer remote access")
        env = {"a": hub, "sshd": sshd, "base": tmp_path, "agent": agent,
               "known_hosts": sshd.known_hosts(tmp_path / "known_hosts", agent.agent_id)}
        crossed = sessions = 0
        while not crossed and sessions < 12:  # each a new connection: 1 in 2 crosses
            sessions += 1
            done = _estate_ssh(env, "alice", COMMAND)
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == OUTPUT
            crossed = len(re.findall(r"via hub \S+/w\d", hub.log()))
        assert crossed, "12 sessions and none crossed between the workers"

        def all_ended() -> list[dict] | None:
            rows = hub.admin_json("sessions")
            return rows if len(rows) == sessions and all(r["ended_at"] for r in rows) else None

        wait_for(all_ended, BOUND_S, what="every session ended")
        starts = _audit(hub, "remote_session_start")
        assert len(starts) == sessions  # once per session, crossing or not
        across = [r for r in starts if r["detail"].get("agent_hub")]
        assert len(across) == 1
        assert across[0]["detail"]["hub"] != across[0]["detail"]["agent_hub"]
        assert {across[0]["detail"]["hub"].rsplit("/", 1)[1],
                across[0]["detail"]["agent_hub"].rsplit("/", 1)[1]} == {"w1", "w2"}
        assert OUTPUT not in hub.log()  # relayed bytes are ciphertext to the hub
    finally:
        if service is not None:
            service.kill()
        hub.kill()
        sshd.stop()

