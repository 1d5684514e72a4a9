"""`estate-report v2`, the report stream: a real hub, a real asyncssh client on loopback
sending frames on one channel; and `need_full` on v1 and v2."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh
import pytest

from estate.agent.collect._common import package_hash
from estate.inventory.protocol import MAX_RECEIVED_BYTES, REPORT_STREAM_COMMAND
from tests.harness import Agent, HubProcess, make_report, ssh_connect

WITHIN_S = 30


def frame(body: dict[str, Any] | bytes) -> bytes:
    data = body if isinstance(body, bytes) else gzip.compress(json.dumps(body).encode())
    return len(data).to_bytes(4, "big") + data


class Stream:
    """One `estate-report v2` channel of one agent connection."""

    def __init__(self, proc: asyncssh.SSHClientProcess) -> None:  # type: ignore[type-arg]
        self.proc = proc

    async def send(self, data: bytes) -> dict[str, Any]:
        self.proc.stdin.write(data)
        return await self.answer()

    async def report(self, report: dict[str, Any] | bytes) -> dict[str, Any]:
        return await self.send(frame(report))

    async def answer(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.proc.stdout.readline(), WITHIN_S)
        return json.loads(line) if line else {}

    async def exit_status(self) -> int | None:
        await asyncio.wait_for(self.proc.wait_closed(), WITHIN_S)
        return self.proc.exit_status


def on_stream(agent: Agent, scenario: Callable[..., Awaitable[Any]], streams: int = 1) -> Any:
    """Run `scenario(conn, stream, ...)` with `streams` v2 channels open on one connection."""
    async def run() -> Any:
        conn = await ssh_connect(agent.hub, agent.agent_id,
                                 asyncssh.read_private_key(agent.key_file))
        try:
            opened = [Stream(await conn.create_process(REPORT_STREAM_COMMAND, encoding=None))
                      for _ in range(streams)]
            return await scenario(conn, *opened)
        finally:
            conn.close()

    return asyncio.run(run())


def with_packages(report: dict[str, Any], agent_id: str, version: str) -> dict[str, Any]:
    """A new report of `agent_id` whose package list is two packages at `version`."""
    packages = [{"name": f"estate-pkg{i}", "version": version, "arch": "all",
                 "publisher": None} for i in range(2)]
    return make_report(report, agent_id, software__packages=packages,
                       software__hash=package_hash(packages), software__count=2)


def hash_only(report: dict[str, Any], agent_id: str) -> dict[str, Any]:
    """A new report with `report`'s package hash and no list, as the agent sends it when its
    list is the one last acknowledged."""
    return make_report(report, agent_id, software__packages=None)


def stored_packages(hub: HubProcess, agent_id: str) -> Any:
    with hub.store() as store:
        detail = store.host_detail(agent_id, None)
    assert detail is not None, agent_id
    return detail["packages"]


def test_reports_on_one_stream_are_acked_in_order_and_refusals_keep_it_open(
        module_hub, module_agent, live_report):
    agent = module_agent
    reports = [make_report(live_report, agent.agent_id) for _ in range(3)]
    invalid = make_report(live_report, agent.agent_id, hardware__memory__total_bytes=-1)
    after = make_report(live_report, agent.agent_id)

    async def scenario(conn: Any, stream: Stream) -> list[dict[str, Any]]:
        answers = [await stream.report(r) for r in reports]
        answers.append(await stream.report(reports[1]))  # a resend after a lost ack
        answers.append(await stream.report(invalid))
        answers.append(await stream.report(json.dumps(after).encode()))  # plain JSON too
        stream.proc.stdin.write_eof()  # the agent is done: the stream ends cleanly
        answers.append({"exit": await stream.exit_status()})
        return answers

    answers = on_stream(agent, scenario)
    assert answers[:4] == [{"status": "stored", "report_id": r["report_id"]}
                           for r in reports] + [{"status": "duplicate",
                                                 "report_id": reports[1]["report_id"]}]
    assert (answers[4]["status"], answers[4]["code"], answers[4]["path"]) == \
        ("error", "invalid_report", "hardware.memory.total_bytes")
    assert answers[5:] == [{"status": "stored", "report_id": after["report_id"]}, {"exit": 0}]
    ids = module_hub.report_ids(agent.agent_id)
    assert [i for i in ids if i in {r["report_id"] for r in [*reports, after]}] == \
        [*(r["report_id"] for r in reports), after["report_id"]]


@pytest.mark.parametrize(("header", "code"), [
    ((MAX_RECEIVED_BYTES + 1).to_bytes(4, "big"), "too_large"),
    (b"\xff\xff\xff\xff", "too_large"),
    (b"\x00\x00\x00\x00", "bad_request"),
])
def test_a_frame_header_out_of_bounds_ends_the_stream(module_agent, live_report, header, code):
    report = make_report(live_report, module_agent.agent_id)

    async def scenario(conn: Any, stream: Stream) -> tuple[dict[str, Any], int | None]:
        first = await stream.report(report)
        assert first["status"] == "stored"
        return await stream.send(header + b"x" * 64), await stream.exit_status()

    answer, status = on_stream(module_agent, scenario)
    assert (answer["status"], answer["code"], status) == ("error", code, 65)


def test_a_second_stream_on_one_connection_is_busy_and_the_first_goes_on(
        module_agent, live_report):
    first, second = (make_report(live_report, module_agent.agent_id) for _ in range(2))

    async def scenario(conn: Any, one: Stream, two: Stream) -> list[Any]:
        refused = await two.answer()
        status = await two.exit_status()
        return [refused, status, await one.report(first), await one.report(second)]

    refused, status, *acks = on_stream(module_agent, scenario, streams=2)
    assert (refused["code"], refused["retry_after"], status) == ("busy", 5, 75)
    assert [a["status"] for a in acks] == ["stored", "stored"]


def test_hash_only_reports_need_the_full_list_unless_the_hub_holds_it(hub, tmp_path,
                                                                       live_report):
    """On v1 and on v2: a report whose list is sent by hash only is stored when the hub holds
    that list (which it leaves as it is), and answered `need_full` with nothing stored when the
    hub holds none or another; the same report with its list is then stored."""
    for n, via in enumerate(("v1", "v2")):
        agent = Agent(hub, tmp_path / f"agent-{via}")
        first = with_packages(live_report, agent.agent_id, "1.0")
        unknown = hash_only(first, agent.agent_id)  # the hub has no list for it yet
        changed = with_packages(first, agent.agent_id, "2.0")
        stale = hash_only(first, agent.agent_id)  # the hub's list moved on to 2.0
        quiet = hash_only(first, agent.agent_id)  # the hub holds 1.0's list again
        order = [unknown, {**unknown, "software": first["software"]}, changed, stale,
                 {**stale, "software": first["software"]}, quiet]
        if via == "v1":
            answers = [agent.send(r) for r in order]
        else:
            async def scenario(conn: Any, stream: Stream, order: list[Any] = order) -> Any:
                return [(0, await stream.report(r)) for r in order]

            answers = on_stream(agent, scenario)
        need_full = 65 if via == "v1" else 0
        assert [(s, a["status"], a.get("code"), a["report_id"]) for s, a in answers] == [
            (need_full, "error", "need_full", unknown["report_id"]),
            (0, "stored", None, unknown["report_id"]),
            (0, "stored", None, changed["report_id"]),
            (need_full, "error", "need_full", stale["report_id"]),
            (0, "stored", None, stale["report_id"]),
            (0, "stored", None, quiet["report_id"]),
        ], via
        assert hub.report_ids(agent.agent_id) == [unknown["report_id"], changed["report_id"],
                                                  stale["report_id"], quiet["report_id"]]
        # The last report, by hash only, left the list as it was.
        assert stored_packages(hub, agent.agent_id) == first["software"]["packages"], n


def test_a_revoked_agents_stream_is_ended_by_the_hub(hub, tmp_path, live_report):
    """Revoked, the agent's open stream is closed within about a second with its connection
    (a frame arriving in between is answered `access_ended`: the handler test below); the
    stream takes nothing more."""
    agent = Agent(hub, tmp_path / "agent")
    before, after = (make_report(live_report, agent.agent_id) for _ in range(2))

    async def scenario(conn: Any, stream: Stream) -> tuple[dict[str, Any], Any]:
        acked = await stream.report(before)
        await asyncio.to_thread(hub.admin, "agent", "revoke", agent.agent_id)
        # The hub ends the connection, not anything this client does.
        await asyncio.wait_for(conn.wait_closed(), WITHIN_S)
        try:
            late: Any = await stream.report(after)
        except (asyncssh.Error, OSError):
            late = "closed"
        return acked, late

    acked, late = on_stream(agent, scenario)
    assert acked["status"] == "stored"
    assert late in ("closed", {})
    assert hub.report_ids(agent.agent_id) == [before["report_id"]]
    assert "access ended (agent revoked)" in hub.log()


# --- the handler's own bounds, on a channel without SSH: its time limit (60 s for real) ---

class _Chan:
    """What the handler's channel writes to: answers, the exit status, reading on or off."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.status: int | None = None
        self.reading = True

    def write(self, data: bytes) -> None:
        self.out += data

    def exit(self, status: int) -> None:
        self.status = status

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def answers(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


def _handler(budget_bytes: int = 1 << 20, ended: str | None = None) -> Any:
    from types import SimpleNamespace

    from estate.inventory.hub._budget import Budget
    from estate.inventory.hub._commands.base import Channel
    from estate.inventory.hub._commands.report_stream import ReportStreamCommand

    tasks: set[asyncio.Task[Any]] = set()
    ctx = SimpleNamespace(
        peer=SimpleNamespace(name="ag-000000000001", actor="agent:ag-000000000001",
                             address="127.0.0.1:5000", source="127.0.0.1"),
        budgets=SimpleNamespace(input=Budget(budget_bytes, budget_bytes)),
        ingest=SimpleNamespace(streams=set()),
        tasks=SimpleNamespace(spawn=lambda coro: tasks.add(asyncio.create_task(coro))),
        door=SimpleNamespace(refusal_to_log=lambda holder, code: None),
        audit=SimpleNamespace(record=lambda *args: None),
        access_ended=lambda: ended)
    channel = Channel()
    channel.chan = _Chan()  # type: ignore[assignment]
    handler = ReportStreamCommand(ctx, channel)  # type: ignore[arg-type]
    handler.start()
    return handler, ctx, channel.chan


def test_a_frame_begun_and_not_finished_in_time_ends_the_stream(monkeypatch):
    from estate.inventory.hub._commands import report_stream

    monkeypatch.setattr(report_stream, "BODY_TIMEOUT_S", 0.2)

    async def scenario() -> Any:
        handler, ctx, chan = _handler()
        await asyncio.sleep(0.4)  # between frames the stream may idle
        assert chan.status is None
        handler.data((100).to_bytes(4, "big") + b"x" * 10)
        await asyncio.sleep(0.4)
        handler.closed()
        return chan, ctx.budgets.input.used, ctx.ingest.streams

    chan, used, streams = asyncio.run(scenario())
    assert [(a["code"], a["retry_after"]) for a in chan.answers()] == [("timeout", 5)]
    assert (chan.status, used, streams) == (75, 0, set())


def test_a_frame_over_the_input_budget_is_dropped_unread_and_the_stream_goes_on():
    async def scenario() -> Any:
        handler, ctx, chan = _handler(budget_bytes=100)
        handler.data((1000).to_bytes(4, "big"))
        handler.data(b"x" * 200)  # over the budget: the rest of the frame is dropped
        assert ctx.budgets.input.used == 0
        handler.data(b"x" * 800 + b"\x00\x00\x00\x00")  # the frame's end, then a next one
        return chan

    chan = asyncio.run(scenario())
    assert [(a["code"], a.get("retry_after")) for a in chan.answers()] == \
        [("busy", 5), ("bad_request", None)]  # the next frame's header was read as one
    assert chan.status == 65


def test_a_frame_after_access_ended_is_answered_access_ended():
    async def scenario() -> Any:
        handler, ctx, chan = _handler(ended="agent revoked")
        handler.data(frame(b"{}"))
        assert not chan.reading  # nothing more is read while a frame is handled
        await asyncio.sleep(0.1)
        handler.closed()
        return chan, ctx.budgets.input.used

    chan, used = asyncio.run(scenario())
    assert [(a["code"], a["message"]) for a in chan.answers()] == \
        [("access_ended", "access ended: agent revoked")]
    assert (chan.status, used) == (77, 0)


def test_a_small_report_is_read_on_the_event_loop_and_a_large_one_on_a_worker(
        monkeypatch, report):
    """A report sent by package hash only is read at once (no thread hop); a full one, or
    one that grows past the size once decompressed, on the ingest workers."""
    from estate.inventory.hub import _ingest
    from estate.inventory.hub._ingest import Ingest, ReportRate

    on_worker: list[int] = []
    real_accept = _ingest.accept

    def counted(body: bytes, agent_id: str) -> dict[str, Any]:
        on_worker.append(len(body))
        return real_accept(body, agent_id)

    monkeypatch.setattr(_ingest, "accept", counted)
    full = make_report(report, "ag-000000000001", software__packages=[
        {"name": f"pkg{i}", "version": "1", "arch": None, "publisher": None}
        for i in range(400)])
    small = make_report(full, "ag-000000000001", software__packages=None)
    bodies = [gzip.compress(json.dumps(r).encode()) for r in (small, full)]
    assert len(json.dumps(small)) <= _ingest.INLINE_REPORT_BYTES < len(json.dumps(full))
    assert len(bodies[1]) <= _ingest.INLINE_REPORT_BYTES  # small as received, not inflated

    async def scenario() -> list[Any]:
        ingest = Ingest(ReportRate(burst=0), workers=1)
        try:
            return [await ingest.accept(b, "ag-000000000001") for b in bodies]
        finally:
            ingest.close()

    assert [r["report_id"] for r in asyncio.run(scenario())] == \
        [small["report_id"], full["report_id"]]
    assert on_worker == [len(bodies[1])]
