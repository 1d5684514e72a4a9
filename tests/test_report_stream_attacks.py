"""`estate-report v2` under attack (docs/protocol.md, "Report stream"; DESIGN.md "Security
rules"): a real hub on loopback and an asyncssh client doing what an agent must not; and a
rogue asyncssh hub answering the agent's stream as a hub must not."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import pytest

from estate.inventory.protocol import REPORT_STREAM_COMMAND
from tests.harness import (
    Agent,
    HubProcess,
    LoopbackSshServer,
    add_operator,
    make_report,
    ssh_connect,
)
from tests.test_agent_report_stream import collector, template  # noqa: F401 (fixtures)
from tests.test_report_stream import WITHIN_S, Stream, on_stream


def test_hash_only_reports_with_made_up_hashes_are_charged_to_the_agent(hub: HubProcess,
                                                                         tmp_path, live_report):
    """`need_full` gives the report back to the agent's budget once (its resend with the list
    is the same report), not for every frame: an agent sending hash-only reports the hub can
    never match costs the hub a parse and a store lookup each, and is throttled as for any
    report."""
    agent = Agent(hub, tmp_path / "agent")
    bogus = [make_report(live_report, agent.agent_id, software__packages=None,
                         software__hash=secrets.token_hex(32)) for _ in range(40)]

    async def scenario(conn: Any, stream: Stream) -> list[dict[str, Any]]:
        return [await stream.report(r) for r in bogus]

    codes = [a.get("code") for a in on_stream(agent, scenario)]
    assert codes[0] == "need_full"
    assert "busy" in codes, codes  # the default burst is 10 reports
    assert hub.report_ids(agent.agent_id) == []


def test_a_legitimate_hash_only_report_and_its_resend_count_once(hub: HubProcess, tmp_path,
                                                                  live_report):
    """The refund above still holds for the agent that does as the protocol says: a burst of
    hash-only reports each answered `need_full` and resent in full is all stored."""
    agent = Agent(hub, tmp_path / "agent")
    reports = [make_report(live_report, agent.agent_id) for _ in range(8)]  # 16 frames

    async def scenario(conn: Any, stream: Stream) -> list[str]:
        out = []
        for r in reports:
            # Another list each time, so the hash the hub holds never matches.
            r["software"]["hash"] = secrets.token_hex(32)
            packages, r["software"]["packages"] = r["software"]["packages"], None
            first = await stream.report(r)
            r["software"]["packages"] = packages
            out += [first.get("code") or first["status"], (await stream.report(r))["status"]]
        return out

    assert on_stream(agent, scenario) == ["need_full", "stored"] * 8


def test_many_tiny_frames_are_charged_like_v1_bodies(hub: HubProcess, tmp_path, live_report):
    """Frames as fast as the agent can send them: past its burst each is answered `busy`
    (nothing stored), the stream stays open, and another agent is served meanwhile."""
    agent, other = Agent(hub, tmp_path / "agent"), Agent(hub, tmp_path / "other")
    reports = [make_report(live_report, agent.agent_id) for _ in range(60)]

    async def scenario(conn: Any, stream: Stream) -> list[str]:
        answers = [await stream.report(r) for r in reports]
        return [a.get("code") or a["status"] for a in answers]

    statuses = on_stream(agent, scenario)
    assert statuses.count("stored") <= 12 and statuses[-1] == "busy"
    assert len(hub.report_ids(agent.agent_id)) == statuses.count("stored")
    status, ack = other.send(make_report(live_report, other.agent_id))
    assert (status, ack["status"]) == (0, "stored")


def test_one_report_sent_on_v1_and_v2_at_once_is_stored_once(module_hub, module_agent,
                                                              live_report):
    """The same report id on a v1 channel and the v2 stream of one connection, at once."""
    agent = module_agent
    report = make_report(live_report, agent.agent_id)
    body = json.dumps(report).encode()

    async def scenario(conn: Any, stream: Stream) -> list[str]:
        async def v1() -> str:
            proc = await conn.create_process("estate-report v1", encoding=None)
            proc.stdin.write(body)
            proc.stdin.write_eof()
            out = await asyncio.wait_for(proc.stdout.read(), WITHIN_S)
            answer = json.loads(out)
            return str(answer.get("code") or answer["status"])

        async def v2() -> str:
            answer = await stream.report(report)
            return str(answer.get("code") or answer["status"])

        return sorted(await asyncio.gather(v1(), v2(), v1(), v2()))

    statuses = on_stream(agent, scenario)
    assert statuses.count("stored") == 1, statuses
    assert set(statuses) <= {"stored", "duplicate", "busy"}
    assert module_hub.report_ids(agent.agent_id).count(report["report_id"]) == 1


def test_an_operator_may_not_run_the_report_stream(module_hub, tmp_path):
    key = add_operator(module_hub, tmp_path, "mallory")

    async def run() -> tuple[Any, int | None]:
        conn = await ssh_connect(module_hub, "mallory", key)
        try:
            proc = await conn.create_process(REPORT_STREAM_COMMAND, encoding=None)
            line = await asyncio.wait_for(proc.stdout.readline(), WITHIN_S)
            await asyncio.wait_for(proc.wait_closed(), WITHIN_S)
            return json.loads(line), proc.exit_status
        finally:
            conn.close()

    answer, status = asyncio.run(run())
    assert (answer["code"], status) == ("forbidden", 77)


def test_frames_dropped_over_the_input_budget_stop_reading_while_answers_wait():
    """An agent keeping its share of the input budget all but full (bodies held open on its
    other channels) gets every frame past a header dropped unread and answered `busy`; if it
    never reads those answers, the stream is not read either (as after any answer), so the
    hub does not pile up answers without bound. On the handler, without SSH."""
    from tests.test_report_stream import _handler

    header = (1).to_bytes(4, "big")

    async def scenario() -> Any:
        handler, ctx, chan = _handler(budget_bytes=4)  # room for a header, never a body
        handler.channel.writable.clear()  # the client's window for answers is full
        handler.data(header)
        for _ in range(3):
            if chan.reading:
                handler.data(b"x" + header)  # the frame's byte dropped, then the next header
        paused = not chan.reading
        handler.channel.writable.set()  # the client reads its answers
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        resumed = chan.reading
        handler.closed()
        return chan, paused, resumed, ctx.budgets.input.used

    chan, paused, resumed, used = asyncio.run(scenario())
    assert [a["code"] for a in chan.answers()] == ["busy"]
    assert (paused, resumed, chan.status, used) == (True, True, None, 0)


# --- a hostile hub against the agent's client ----------------------------------------------


class RogueHub(LoopbackSshServer):
    """A real SSH server that answers each v2 frame with `answer(frame_number)`'s bytes."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        super().__init__()

    async def _run(self, process: Any) -> None:
        n = 0
        try:
            while True:
                length = int.from_bytes(await process.stdin.readexactly(4), "big")
                await process.stdin.readexactly(length)
                process.stdout.write(self.answer(n))
                n += 1
        except asyncio.IncompleteReadError:
            process.exit(0)

    def client(self, tmp_path: Any) -> Any:
        import asyncssh

        from estate.agent.transport import HubClient, load_key

        key_file = tmp_path / "agent_key"
        key_file.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
        key_file.chmod(0o600)
        return HubClient(f"127.0.0.1:{self.port}", self.fingerprint, load_key(key_file),
                         "ag-0123456789ab")


def test_an_answer_whose_code_is_not_a_string_is_a_hub_error(tmp_path):
    """`{"code": [...]}` from a hostile hub is a bad answer (HubError, which the service
    handles by reconnecting), not a TypeError escaping the client into the service loop."""
    from estate.agent.transport import HubError

    answers = [b'{"status": "error", "code": ["busy"], "message": "x"}\n',
               b'{"status": "error", "code": {"a": 1}, "message": "x"}\n']
    hub = RogueHub(lambda n: answers[n % 2])
    client = hub.client(tmp_path)
    outcomes = []
    try:
        for _ in range(2):
            try:
                result = client.report(b"{}")
                outcomes.append(result.exit_status)
            except HubError:
                outcomes.append("hub_error")
    finally:
        client.close()
        hub.close()
    assert outcomes == ["hub_error", "hub_error"]


@pytest.mark.usefixtures("collector")
def test_a_busy_answer_with_an_enormous_retry_after_is_capped_not_fatal(tmp_path):
    """`retry_after` as a 400-digit integer (valid JSON) does not crash the agent's service
    (converting it to a float would overflow): it waits the longest a busy hub may ask."""
    from estate.agent.transport import MAX_BUSY_WAIT_S
    from tests.harness import wait_for
    from tests.test_agent_report_stream import Running, _agent_for

    busy = ('{"status": "error", "code": "busy", "message": "x", "retry_after": 1'
            + "0" * 400 + "}\n").encode()
    hub = RogueHub(lambda n: busy)
    try:
        running = Running(_agent_for(hub, tmp_path / "agent"))  # type: ignore[arg-type]
        with running as service:
            wait_for(lambda: "hub busy" in (service.state["last_error"] or "")
                     or not running.thread.is_alive(), what="the busy answer handled")
            assert running.thread.is_alive(), "the service died"
            assert service.not_before - __import__("time").monotonic() > MAX_BUSY_WAIT_S - 60
    finally:
        hub.close()


@pytest.mark.usefixtures("collector")
def test_a_hubs_terminal_controls_do_not_reach_the_agents_log(tmp_path, caplog):
    """Error answers whose message, path and code carry escape sequences and newlines: the
    agent logs them as plain text."""
    from tests.harness import wait_for
    from tests.test_agent_report_stream import Running, _agent_for

    evil = "\x1b]0;owned\x07\x1b[2J\nforged line"
    answers = [{"status": "error", "code": "invalid_report", "message": evil, "path": evil},
               {"status": "error", "code": "store_unavailable", "message": evil}]
    hub = RogueHub(lambda n: (json.dumps(answers[n % 2]) + "\n").encode())
    caplog.set_level("INFO", logger="estate.agent")
    try:
        with Running(_agent_for(hub, tmp_path / "agent")):  # type: ignore[arg-type]
            wait_for(lambda: sum("hub rejected report" in r.getMessage()
                                 for r in caplog.records) >= 1, what="a rejected report")
    finally:
        hub.close()
    logged = [r.getMessage() for r in caplog.records if "hub" in r.getMessage()]
    assert logged and not any("\x1b" in m or "\n" in m or "\x07" in m for m in logged), logged


def test_an_answer_nested_too_deep_for_json_is_a_hub_error(tmp_path):
    """100,000 `[` (under the 1 MiB answer limit) make `json.loads` raise RecursionError,
    which is no ValueError: it must come out as a HubError, not end the agent's service."""
    from estate.agent.transport import HubError

    hub = RogueHub(lambda n: b"[" * 100_000 + b"\n")
    client = hub.client(tmp_path)
    try:
        with pytest.raises(HubError, match="not a JSON object"):
            client.report(b"{}")
    finally:
        client.close()
        hub.close()
