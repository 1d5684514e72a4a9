"""The hub's store thread: calls run one at a time in the order made, an urgent one (the
heartbeat) ahead of those still waiting, errors reach the caller, and shutdown lets the calls
already made finish."""

from __future__ import annotations

import asyncio
import threading

import pytest

from estate.inventory.hub._store_thread import StoreThread


def test_an_urgent_call_goes_ahead_of_the_queue_but_not_of_the_running_call():
    ran: list[str] = []
    release = threading.Event()

    async def scenario() -> None:
        db = StoreThread()
        try:
            first = asyncio.ensure_future(db(lambda: release.wait(10) and ran.append("running")))
            await asyncio.sleep(0.05)  # the first call holds the thread
            queued = [asyncio.ensure_future(db(ran.append, f"login {i}")) for i in range(50)]
            beat = asyncio.ensure_future(db.urgent(ran.append, "heartbeat"))
            await asyncio.sleep(0.05)
            release.set()
            await asyncio.gather(first, beat, *queued)
        finally:
            db.shutdown()

    asyncio.run(scenario())
    assert ran[:2] == ["running", "heartbeat"]
    assert ran[2:] == [f"login {i}" for i in range(50)]  # the rest in the order made


def test_errors_reach_the_caller_and_the_thread_goes_on():
    async def scenario() -> int:
        db = StoreThread()
        try:
            with pytest.raises(ZeroDivisionError):
                await db(lambda: 1 / 0)
            return await db(lambda: 7)
        finally:
            db.shutdown()

    assert asyncio.run(scenario()) == 7


def test_shutdown_finishes_the_calls_made_and_refuses_later_ones():
    done: list[int] = []

    async def scenario() -> None:
        db = StoreThread()
        calls = [asyncio.ensure_future(db(done.append, i)) for i in range(20)]
        await asyncio.sleep(0)  # the calls are queued, not yet run
        db.shutdown()  # waits for them
        assert done == list(range(20))
        await asyncio.gather(*calls)
        with pytest.raises(RuntimeError, match="shut down"):
            await db(done.append, 99)

    asyncio.run(scenario())
    assert done == list(range(20))
