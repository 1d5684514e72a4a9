"""The hub's background tasks: started on its event loop, held until done, cancelled at stop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class Tasks:
    """Tasks the hub started and nobody awaits (the loop keeps only weak references to them)."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()
        # Set when the hub begins to stop: work that would outlive it is not started
        # (stop() marks every agent offline itself).
        self.stopping = False

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def cancel_all(self) -> None:
        for task in list(self._running):
            task.cancel()
