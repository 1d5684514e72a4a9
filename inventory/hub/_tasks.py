"""The hub's background tasks: started on its event loop, held until done, cancelled at stop."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from estate.inventory.errors import StoreUnavailable


def log_failure(log: logging.Logger, message: str, *args: Any) -> None:
    """Log the exception being handled: the store out of reach (its server restarting, a
    failover) in one line, since it says why and the next try may work; anything else with
    its traceback."""
    exc = sys.exc_info()[1]
    if isinstance(exc, StoreUnavailable):
        log.warning(message + ": %s", *args, exc)
    else:
        log.exception(message, *args)


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
