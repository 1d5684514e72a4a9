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

from estate.agent.transport import load_key
from estate.inventory.hub._api import OperatorApi
from estate.inventory.store import ChangeEvent
from tests.harness import Agent, HubProcess, add_operator, make_report, ssh_connect

FORGED = "FORGED 2026-01-01T00:00:00.000Z INFO conn 1.2.3.4:5 login user=root role=admin"
EVIL = f"x\n{FORGED}\x1b[2J\x1b]0;owned\x07\u202e\x9b"


@pytest.fixture(scope="module")
def operator_key(module_hub, tmp_path_factory):
    return add_operator(module_hub, tmp_path_factory.mktemp("operator"), "oscar")


# --- 10: every request gets an answer --------------------------------------------------

def test_out_of_range_since_is_a_bad_request_and_the_channel_goes_on(module_hub, operator_key):
    async def body():
        conn = await ssh_connect(module_hub, "oscar", operator_key)
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
        conn = await ssh_connect(module_hub, module_agent.agent_id,
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


# --- answers bounded in bytes (attack finding 4) ------------------------------------------

KiB, MiB = 1024, 1024 * 1024


def _rss(hub: HubProcess) -> int:
    assert hub.proc is not None
    with open(f"/proc/{hub.proc.pid}/status") as status:
        return next(int(line.split()[1]) * KiB for line in status if line.startswith("VmRSS:"))


class _Unread(asyncssh.SSHClientSession):
    """A client that asks and then does not read: what it got stays in its SSH window."""

    def __init__(self) -> None:
        self.received = bytearray()

    def data_received(self, data, datatype) -> None:
        self.received += data


def test_unread_large_answers_keep_the_hub_bounded_and_others_answered(tmp_path,
                                                                        live_report):
    # Small budgets, so going over them is cheap: 12 MiB an answer, 20 MiB held in all.
    hub = HubProcess(tmp_path / "data", ("--max-answer-size", "12", "--max-answer-bytes",
                                         "20")).start()
    try:
        agent = Agent(hub, tmp_path / "agent")
        assert agent.send(make_report(live_report, agent.agent_id))[0] == 0
        key = asyncssh.generate_private_key("ssh-ed25519")
        (tmp_path / "op.pub").write_bytes(key.export_public_key())
        hub.admin("operator", "add", "olga", "--key", str(tmp_path / "op.pub"), "--role",
                  "staff", "--agencies", "all")
        # History from before values were cut (600 rows of 32 KiB): one row, one value each.
        with hub.store() as store:
            store.record_changes([ChangeEvent("2026-01-01T00:00:00Z", agent.agent_id,
                                              "ip_changed", "eth0", "a" * 16 * KiB,
                                              "b" * 16 * KiB, "r")] * 600)

        async def body():
            conns = [await ssh_connect(hub, "olga", key) for _ in range(2)]
            try:
                before = _rss(hub)
                sessions = []
                for n in range(16):  # 8 channels on each connection, ~9.6 MiB asked on each
                    chan, session = await conns[n % 2].create_session(
                        _Unread, "estate-api v1", encoding=None)
                    chan.pause_reading()
                    chan.write(json.dumps({"id": n, "op": "changes", "limit": 300}).encode()
                               + b"\n")
                    sessions.append((chan, session))
                peak = before
                for _ in range(60):  # bounded: 30 s to build, encode and (not) send them
                    await asyncio.sleep(0.5)
                    peak = max(peak, _rss(hub))
                settled = _rss(hub)
                fresh = await ssh_connect(hub, "olga", key)
                proc = await fresh.create_process("estate-api v1", encoding="utf-8")
                proc.stdin.write('{"id": "s", "op": "summary"}\n'
                                 '{"id": "big", "op": "changes", "limit": 600}\n')
                summary = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
                big = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
                fresh.close()
                for chan, _ in sessions:
                    chan.resume_reading()
                await asyncio.sleep(2)
                firsts = [bytes(s.received[:200]) for _, s in sessions]
                return before, peak, settled, summary, big, firsts
            finally:
                for conn in conns:
                    conn.close()

        before, peak, settled, summary, big, firsts = asyncio.run(body())
    finally:
        hub.kill()
    # Unbounded, the 16 answers (~150 MiB) were held in the channels until they closed.
    assert settled - before < 80 * MiB, (before / MiB, peak / MiB, settled / MiB)
    assert summary["ok"] is True and summary["id"] == "s"
    assert big["ok"] is False and big["error"]["code"] == "too_large", big
    assert "limit" in big["error"]["message"] and "since" in big["error"]["message"]
    busy = [f for f in firsts if b'"code":"busy"' in f]
    answered = [f for f in firsts if f.startswith(b'{"id":') and b'"ok":true' in f]
    assert busy and all(b'"retry_after":' in f for f in busy), firsts
    assert len(answered) <= 2, "more answers held than the budget allows"


# --- exports: a fair queue, nothing made for a channel that went away (second attack, F2) --

def test_export_slots_are_shared_fairly_between_operators():
    from estate.inventory.hub._budget import ExportSlots

    slots = ExportSlots(per_operator=2, total=3)
    assert slots.take("auditor") is None and slots.take("auditor") is None
    assert "you have 2 exports" in slots.take("auditor"), "a third of one operator's waits"
    assert slots.take("olive") is None, "another operator still gets in"
    assert "3 exports are queued or running" in slots.take("ann")
    slots.give("auditor")
    assert slots.take("ann") is None and slots.in_use == 3
    for name in ("auditor", "olive", "ann"):
        slots.give(name)
    assert slots.in_use == 0 and slots.take("auditor") is None


def test_an_export_whose_channel_went_away_is_not_made(tmp_path):
    from estate.inventory.export import ExportRequest
    from estate.inventory.hub._export import _Gone, _produce

    request = ExportRequest.parse({"report": "inventory", "format": "csv"})
    with pytest.raises(_Gone):
        _produce(None, tmp_path, request, producer=None,  # type: ignore[arg-type]
                 horizon=None, standby=False,  # type: ignore[arg-type]
                 progress=lambda rows, total: None, gone=lambda: True)
    assert list(tmp_path.iterdir()) == [], "no folder, no file, no read of the store"
