"""The single writer: batches reports into one transaction each (group commit).

Each report's ack waits for the commit of the transaction that holds it, so an acknowledged
report is durable; reports that arrive while a commit runs share the next one, which is how
one fsync serves many agents.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from inventory.store import DEFAULT_INTERVAL_S, Incoming, Store

log = logging.getLogger("estate.hub")

MAX_BATCH = 256
MAX_QUEUE = 4096
REPORT_BURST = 10
REPORTS_PER_INTERVAL = 4
MAX_RETRY_AFTER_S = 300


@dataclass(frozen=True)
class ReportRate:
    """Reports one agent may send: `burst` back to back, then `per_interval` per its own
    `agent.interval_s` (a few times what its schedule explains, so a catch-up after an outage
    still drains). `burst` 0 turns the limit off (benchmarks, load tests)."""

    burst: int = REPORT_BURST
    per_interval: float = REPORTS_PER_INTERVAL


class _Buckets:
    """A token bucket per agent, in memory: a hub restart refills them, which is harmless."""

    def __init__(self, rate: ReportRate) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}  # agent id: (tokens, at)

    def take(self, agent_id: str, interval_s: float) -> int:
        """Take one token; returns 0, or the seconds until one is due when there is none."""
        if self.rate.burst <= 0:
            return 0
        per_s = self.rate.per_interval / max(interval_s, 1.0)
        now = time.monotonic()
        tokens, at = self._buckets.get(agent_id, (float(self.rate.burst), now))
        tokens = min(float(self.rate.burst), tokens + (now - at) * per_s)
        if tokens < 1.0:
            self._buckets[agent_id] = (tokens, now)
            return min(MAX_RETRY_AFTER_S, max(1, math.ceil((1.0 - tokens) / per_s)))
        self._buckets[agent_id] = (tokens - 1.0, now)
        return 0

    def give_back(self, agent_id: str) -> None:
        """A report that cost nothing (a duplicate: the agent resending after a lost ack)."""
        if agent_id in self._buckets:
            tokens, at = self._buckets[agent_id]
            self._buckets[agent_id] = (min(float(self.rate.burst), tokens + 1.0), at)


class Busy(Exception):
    """Too many reports waiting; the agent should come back after `retry_after` seconds."""

    def __init__(self, queued: int, retry_after: int, message: str | None = None) -> None:
        super().__init__(message or f"{queued} reports are waiting to be stored; retry in "
                                    f"{retry_after} s")
        self.retry_after = retry_after


class StoreUnavailable(Exception):
    """The transaction failed (disk full, I/O error); nothing of the batch was stored."""


class Writer:
    def __init__(self, db: Callable[..., Awaitable[Any]], store: Store,
                 max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE,
                 on_commit: Callable[[list[str]], Awaitable[None]] | None = None,
                 rate: ReportRate | None = None) -> None:
        self._db, self._store, self._on_commit = db, store, on_commit
        self._max_batch, self._max_queue = max_batch, max_queue
        self._buckets = _Buckets(rate or ReportRate())
        self._queue: asyncio.Queue[tuple[Incoming, asyncio.Future[str]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Store what is queued, then stop."""
        if self._task:
            await self._queue.join()
            self._task.cancel()

    async def submit(self, item: Incoming) -> str:
        """Queue a report; returns "stored" or "duplicate" once committed.

        Raises:
            Busy: the queue is full, or this agent sent more reports than its rate allows.
            StoreUnavailable: the transaction holding it failed.
        """
        queued = self._queue.qsize()
        if queued >= self._max_queue:
            raise Busy(queued, retry_after=min(MAX_RETRY_AFTER_S, 5 + queued // 100))
        # An agent that does not say its interval is held to the hub's default one.
        interval_s = item.report["agent"].get("interval_s") or DEFAULT_INTERVAL_S
        wait = self._buckets.take(item.agent_id, float(interval_s))
        if wait:
            raise Busy(queued, wait, f"this agent sent more reports than its interval "
                                     f"explains; retry in {wait} s")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        result = await future
        if result == "duplicate":
            self._buckets.give_back(item.agent_id)
        return result

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._db(self._store.store_reports, [i for i, _ in batch])
            except Exception as exc:
                log.exception("storing a batch of %d reports failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(StoreUnavailable(f"the store failed: {exc}"))
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                stored = [i.agent_id for (i, _), r in zip(batch, results, strict=True)
                          if r == "stored"]
                if stored and self._on_commit:
                    try:
                        await self._on_commit(stored)
                    except Exception:
                        log.exception("publishing stored reports failed")
            finally:
                for _ in batch:
                    self._queue.task_done()
