"""Every request answered, no log line forged (issue 11, items 10 and 13).

Real hub process, asyncssh clients doing what an attacker would.
"""

from __future__ import annotations

import asyncio
import json
import socket

import asyncssh
import paramiko
import pytest

from agent.transport import load_key
from inventory.hub._api import OperatorApi
from tests.harness import Agent, HubProcess

FORGED = "FORGED 2026-01-01T00:00:00.000Z INFO conn 1.2.3.4:5 login user=root role=admin"
EVIL = f"x\n{FORGED}\x1b[2J\x1b]0;owned\x07\u202e\x9b"


@pytest.fixture(scope="module")
def operator_key(module_hub, tmp_path_factory):
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path_factory.mktemp("operator") / "oscar"
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    key.write_public_key(f"{path}.pub")
    module_hub.admin("operator", "add", "oscar", "--key", f"{path}.pub", "--role", "admin",
                     "--agencies", "all")
    return key


async def _connect(hub: HubProcess, user: str, key) -> asyncssh.SSHClientConnection:
    return await asyncio.wait_for(asyncssh.connect(
        "127.0.0.1", hub.port, username=user, client_keys=[key], known_hosts=None,
        agent_path=None, config=None), 30)


# --- 10: every request gets an answer --------------------------------------------------

def test_out_of_range_since_is_a_bad_request_and_the_channel_goes_on(module_hub, operator_key):
    async def body():
        conn = await _connect(module_hub, "oscar", operator_key)
        try:
            proc = await conn.create_process("estate-api v1", encoding="utf-8")
            answers = []
            for n, since in enumerate(("0001-01-01T00:00:00+01:00",
                                       "9999-12-31T23:59:59-01:00", "2020-01-01")):
                proc.stdin.write(json.dumps({"id": n, "op": "changes", "since": since}) + "\n")
                answers.append(json.loads(await asyncio.wait_for(proc.stdout.readline(), 60)))
            proc.close()
            return answers
        finally:
            conn.close()

    early, late, fine = asyncio.run(body())
    for answer in (early, late):
        assert answer["ok"] is False and answer["error"]["code"] == "bad_request"
        assert answer["error"]["message"].startswith("since:")
    assert fine["ok"] is True and fine["id"] == 2


class _BrokenStore:
    """A store whose every call fails as a bug would (what no check foresaw)."""

    def __init__(self) -> None:
        self.audited: list[tuple] = []

    def summary(self, scope):
        raise OverflowError("date value out of range")

    def audit(self, *row):
        self.audited.append(row)


def test_an_unexpected_error_is_answered_internal_logged_and_audited(caplog):
    store = _BrokenStore()
    api = OperatorApi(store, {"name": "oscar", "role": "admin", "agencies": None})
    answer = api.handle(b'{"id": 7, "op": "summary"}')
    assert answer["id"] == 7 and answer["ok"] is False
    assert answer["error"]["code"] == "internal"
    assert "OverflowError" in caplog.text  # the trace is in the hub's log, not the answer
    assert "OverflowError" not in json.dumps(answer)
    assert store.audited and store.audited[0][1] == "api_internal"
    # The same object answers the next request.
    assert api.handle(b'{"id": 8, "op": "columns"}')["ok"] is True


# --- 13: untrusted text in the hub's log -----------------------------------------------

def test_untrusted_names_cannot_forge_log_lines(module_hub, module_agent: Agent):
    # asyncssh's client refuses such a username itself; paramiko sends it as given.
    sock = socket.create_connection(("127.0.0.1", module_hub.port), timeout=10)
    t = paramiko.Transport(sock)
    try:
        t.start_client(timeout=10)
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_publickey(EVIL, load_key(module_agent.key_file))
    finally:
        t.close()

    async def body():
        conn = await _connect(module_hub, module_agent.agent_id,
                              asyncssh.read_private_key(str(module_agent.key_file)))
        try:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_connection(asyncssh.SSHTCPSession, EVIL, 22)
            with pytest.raises(asyncssh.ChannelListenError):  # asyncssh lowercases this host
                await conn.forward_remote_port(EVIL, 22, "127.0.0.1", 9)
        finally:
            conn.close()
            await conn.wait_closed()

    asyncio.run(body())
    log = module_hub.log()
    assert "\x1b" not in log and "\x9b" not in log and "\u202e" not in log
    assert "\nforged" not in log.lower(), "a client's text started a line of the hub's log"
    quoted_evil = "\\nforged"
    # asyncssh turns such a username away itself; its reason, with our text, is quoted.
    assert "closed: \"Prohibited character" in log
    for what in ("refused port forward to", "refused remote forward"):
        lines = [line for line in log.splitlines() if what in line]
        assert lines and any(quoted_evil in line.lower() for line in lines), what
