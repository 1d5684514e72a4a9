"""The store's thread: one thread owns the database connection; every store call goes through it."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

URGENT, NORMAL, LAST = 0, 1, 2


class StoreThread:
    """Runs store calls, one at a time and in the order made, off the event loop:
    `await db(store.method, *args)`.

    `await db.urgent(...)` goes ahead of the calls waiting: the hub's heartbeat, which a
    queue of thousands of logins after a reconnect storm would otherwise hold back past the
    hub timeout, so that other hubs take a live hub for dead (measured: bench/scale.py).
    """

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()  # FIFO within a priority
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="store", daemon=True)
        self._thread.start()

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._submit(NORMAL, fn, args)

    async def urgent(self, fn: Callable[..., T], *args: Any) -> T:
        """Like calling it, but ahead of every call not yet started."""
        return await self._submit(URGENT, fn, args)

    async def _submit(self, priority: int, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._closed:
            raise RuntimeError("the store thread has shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((priority, next(self._order), (fn, args, loop, future)))
        return await future

    def _run(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            fn, args, loop, future = job
            outcome: tuple[Any, BaseException | None]
            try:
                outcome = (fn(*args), None)
            except BaseException as exc:  # handed to the caller, as an executor would
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:
                pass  # the caller's loop has closed: nobody is waiting any more

    def shutdown(self) -> None:
        """After the last call: let the calls already made finish, then stop."""
        if not self._closed:
            self._closed = True
            self._queue.put((LAST, next(self._order), None))
        self._thread.join()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return  # the caller gave up (a timeout, the hub stopping); the call still ran
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
