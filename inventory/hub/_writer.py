"""The single writer: batches reports into one transaction each (group commit).

Each report's ack waits for the commit of the transaction that holds it, so an acknowledged
report is durable; reports that arrive while a commit runs share the next one, which is how
one fsync serves many agents. With a commit delay (`serve --commit-delay-ms`) the writer
also waits that long after a batch's first report, as PostgreSQL's own commit_delay does, so
that more reports share each commit: on PostgreSQL a commit's cost is mostly per transaction
(its lock, its statements, its WAL flush), not per report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from estate.inventory import errors
from estate.inventory.hub import _metrics
from estate.inventory.store import Incoming, StoreInterface

log = logging.getLogger("estate.hub")

MAX_BATCH = 256
MAX_QUEUE = 4096
MAX_RETRY_AFTER_S = 300


class Busy(Exception):
    """Too many reports waiting, or over the agent's budget (`_ingest.AgentBudgets`); the
    agent should come back after `retry_after` seconds."""

    def __init__(self, queued: int, retry_after: int, message: str | None = None) -> None:
        super().__init__(message or f"{queued} reports are waiting to be stored; retry in "
                                    f"{retry_after} s")
        self.retry_after = retry_after


class StoreUnavailable(Exception):
    """The transaction failed (disk full, I/O error); nothing of the batch was stored."""


class Writer:
    def __init__(self, db: Callable[..., Awaitable[Any]], store: StoreInterface,
                 max_batch: int = MAX_BATCH, max_queue: int = MAX_QUEUE,
                 on_commit: Callable[[list[str]], Awaitable[None]] | None = None,
                 commit_delay_s: float = 0.0) -> None:
        self._db, self._store, self._on_commit = db, store, on_commit
        self._max_batch, self._max_queue = max_batch, max_queue
        self._commit_delay_s = commit_delay_s
        self._last_batch = 1  # reports the last commit held
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
        """Queue a report; returns "stored" or "duplicate" once committed, or "need_full"
        (nothing stored: its package list, sent by hash only, is not the one the store holds).

        Raises:
            Busy: the queue is full (the agent's own budgets are charged before parsing, in
                `_ingest`, not here).
            StoreUnavailable: the transaction holding it failed.
        """
        queued = self._queue.qsize()
        if queued >= self._max_queue:
            raise Busy(queued, retry_after=min(MAX_RETRY_AFTER_S, 5 + queued // 100))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Only when the last commit had company (as PostgreSQL's commit_siblings): a
            # quiet hub's lone report would wait for nothing.
            if self._commit_delay_s and self._last_batch > 1:
                await asyncio.sleep(self._commit_delay_s)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._last_batch = len(batch)
            try:
                await self._store_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _store_batch(self, batch: list[tuple[Incoming, asyncio.Future[str]]]) -> None:
        started = time.perf_counter()
        try:
            results = await self._db(self._store.store_reports, [i for i, _ in batch])
        except Exception as exc:
            if isinstance(exc, errors.StoreUnavailable):  # one line: the store says why
                log.warning("storing a batch of %d reports failed: %s", len(batch), exc)
            elif len(batch) > 1:
                # Not the store but a report it could not take (a hostile agent found a
                # bug): that report fails alone, not every one that shared its batch.
                log.warning("storing a batch of %d reports failed (%s); storing them one at "
                            "a time", len(batch), type(exc).__name__)
                for one in batch:
                    await self._store_batch([one])
                return
            else:
                log.exception("storing a report failed")
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreUnavailable(f"the store failed: {exc}"))
            return
        _metrics.batch_committed(len(batch), time.perf_counter() - started)
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
