"""The hub's single writer and its commit delay (`serve --commit-delay-ms`): reports that
come while it waits share one transaction; a quiet hub's lone report does not wait."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import timedelta

import pytest

from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._writer import Writer
from estate.inventory.store import Incoming, iso, utcnow
from tests.stores import open_test_store

T0 = utcnow().replace(microsecond=0)
_TURNS = 10_000  # event-loop turns a step may take before the test gives up


def _incoming(base: dict, agent_id: str, n: int) -> Incoming:
    r = copy.deepcopy(base)
    r["agent"]["id"], r["report_id"] = agent_id, f"{agent_id}:1:{n}"
    r["collected_at"] = iso(T0 + timedelta(seconds=n))
    return Incoming(agent_id, r, json.dumps(r).encode(), T0 + timedelta(seconds=n))


async def _taken(writer: Writer) -> None:
    """Until the writer has taken the report a task just submitted (it is then storing, or
    waiting for more). The loop runs ready callbacks in order: the submitting task, started
    before this one, has queued its report after this first turn."""
    await asyncio.sleep(0)
    for _ in range(_TURNS):
        if writer._queue.empty():
            return
        await asyncio.sleep(0)
    raise AssertionError("the writer never took the queued report")


def _commits(tmp_path, report, delay_s: float) -> list[int]:
    """The reports each commit held: a lone report, then two at once, then a report and
    another sent while the writer holds the first."""
    store = open_test_store(tmp_path)
    token_id, secret, _ = store.create_token("Council", "Town Hall", 2, timedelta(hours=1),
                                             "admin:test")
    a, b = (store.enrol(token_id, secret, f"ssh-ed25519 K{i}", f"SHA256:k{i}",
                        f"pc{i}")["agent_id"] for i in range(2))
    thread, commits = StoreThread(), []

    async def db(fn, *args):
        if fn == store.store_reports:
            commits.append(len(args[0]))
        return await thread(fn, *args)

    async def scenario() -> None:
        writer = Writer(db, store, commit_delay_s=delay_s)
        writer.start()
        seq = iter(range(1, 100))
        results = []

        async def one_then_another() -> None:
            first = asyncio.ensure_future(writer.submit(_incoming(report, a, next(seq))))
            await _taken(writer)
            second = writer.submit(_incoming(report, b, next(seq)))
            results.extend(await asyncio.gather(first, second))

        await one_then_another()  # the last commit (none yet) had no company: no wait
        results.extend(await asyncio.gather(writer.submit(_incoming(report, a, next(seq))),
                                            writer.submit(_incoming(report, b, next(seq)))))
        await one_then_another()  # after a commit of two
        await writer.stop()
        assert results == ["stored"] * 6

    try:
        asyncio.run(scenario())
    finally:
        thread.shutdown()
        store.close()
    return commits


def test_reports_sent_within_the_commit_delay_share_its_commit(tmp_path, report):
    # The delay is far longer than the test's next step takes: the second report is sent
    # while the writer waits, whatever the machine's speed.
    assert _commits(tmp_path, report, delay_s=0.5) == [1, 1, 2, 2]


def test_without_a_commit_delay_a_report_sent_during_a_commit_waits_for_the_next(
        tmp_path, report):
    assert _commits(tmp_path, report, delay_s=0.0) == [1, 1, 2, 1, 1]


def test_the_commit_delay_option_is_refused_out_of_range_naming_itself(capsys):
    from estate.inventory.hub import cli

    for bad in ("101", "-1", "5.5", "x"):
        with pytest.raises(SystemExit):
            cli.main(["serve", "--commit-delay-ms", bad])
        err = capsys.readouterr().err
        assert f"argument --commit-delay-ms: expected milliseconds from 0 to 100, got {bad!r}" \
            in err, err
    assert cli._parser().parse_args(["serve"]).commit_delay_ms == 5
