"""Coalesced audit of refusals: one row at once, repeats folded into one row with a count.

Anyone can make the hub refuse something hundreds of times a second (a wrong key, a spent
token, a probe for a host out of scope). Writing a row per refusal would let them fill the
audit log and bury the rows that matter, so refusals go through `AuditCoalescer.record`:

- the first occurrence per (source address, action) in a window of `WINDOW_S` seconds is
  written at once (within one turn of the event loop) with `"count": 1`;
- repeats in that window are counted, and one more row with `"repeats": n` (plus the first
  and last time and up to `MAX_SAMPLES` distinct targets) is written when the window ends,
  or at hub stop (`close`);
- at most `MAX_KEYS` windows are open at once; past that, a new source's refusals fold into
  one `"source": "*"` window per action, so memory stays bounded whatever the attacker does.

Usage (from the event loop or from the store thread, e.g. inside the operator API):

    hub.audit.record(peer_host, f"operator:{name}", "scope_denied", agent_id, {"op": "host"})

Rows go to `Store.audit(actor, action, target, detail)`, with `source` added to `detail`.
Sensitive actions that succeed (a login, an export) are not coalesced: write them directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from estate.inventory.hub._tasks import log_failure

log = logging.getLogger("estate.hub.audit")

WINDOW_S = 60.0
MAX_KEYS = 10_000
MAX_SAMPLES = 10
OVERFLOW_SOURCE = "*"

# One audit row: (actor, action, target, detail).
Row = tuple[str, str, str | None, dict[str, Any] | None]
Writer = Callable[[list[Row]], Awaitable[None]]


@dataclass
class _Window:
    """One (source, action) in its current window: what the folded row will say."""

    started: float  # monotonic, for expiry
    first_at: str  # wall clock, for the row
    actor: str
    target: str | None
    detail: dict[str, Any] | None
    repeats: int = 0
    last_at: str = ""
    samples: list[str] = field(default_factory=list)


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class AuditCoalescer:
    """Folds repeated refusals into few audit rows. Thread-safe `record`; `run` on the loop.

    Args:
        write: stores a batch of rows (the hub passes one that runs on the store thread).
        window_s: length of a coalescing window (tests shorten it).
    """

    def __init__(self, write: Writer, window_s: float = WINDOW_S,
                 max_keys: int = MAX_KEYS) -> None:
        self._write = write
        self.window_s = window_s
        self.max_keys = max_keys
        self._lock = threading.Lock()  # record() is called from the store thread too
        self._windows: dict[tuple[str, str], _Window] = {}
        self._ready: list[Row] = []  # rows to write on the next flush
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def record(self, source: str, actor: str, action: str, target: str | None = None,
               detail: dict[str, Any] | None = None) -> None:
        """Audit one refusal (or probe) from `source` (an address, no port).

        Never blocks on the database and never raises: the first in a window is queued for
        writing at once, a repeat only counts.
        """
        now, now_text = time.monotonic(), _now_text()
        with self._lock:
            key = (source, action)
            window = self._windows.get(key)
            if window is None and len(self._windows) >= self.max_keys:
                key = (OVERFLOW_SOURCE, action)
                window = self._windows.get(key)
            if window is not None and now - window.started < self.window_s:
                window.repeats += 1
                window.last_at = now_text
                if target is not None and target not in window.samples and \
                        len(window.samples) < MAX_SAMPLES:
                    window.samples.append(target[:255])
                return
            if window is not None:  # expired but not yet flushed: close it first
                self._fold(key, window)
            self._windows[key] = _Window(now, now_text, actor, target, detail,
                                         samples=[target[:255]] if target else [])
            self._ready.append((actor, action, target,
                                {**(detail or {}), "source": key[0], "count": 1}))
        self._poke()

    def _fold(self, key: tuple[str, str], window: _Window) -> None:
        """Queue the folded row of a window that ends (lock held)."""
        del self._windows[key]
        if window.repeats:
            self._ready.append((window.actor, key[1], window.target, {
                **(window.detail or {}), "source": key[0], "repeats": window.repeats,
                "first_at": window.first_at, "last_at": window.last_at,
                "targets": window.samples}))

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not running yet: the first flush picks the rows up
        try:
            if _running_loop() is loop:
                wake.set()
            else:
                loop.call_soon_threadsafe(wake.set)
        except RuntimeError:
            pass  # the loop is closing; close() flushes what is left

    def _take(self, everything: bool) -> list[Row]:
        now = time.monotonic()
        with self._lock:
            for key, window in list(self._windows.items()):
                if everything or now - window.started >= self.window_s:
                    self._fold(key, window)
            rows, self._ready = self._ready, []
        return rows

    async def flush(self, everything: bool = False) -> None:
        """Write queued rows and the folded rows of windows that ended (all, if told)."""
        rows = self._take(everything)
        if rows:
            try:
                await self._write(rows)
            except Exception:
                log_failure(log, "writing %d audit rows failed", len(rows))

    async def run(self) -> None:
        """Flush new rows at once and ended windows every second, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        """At hub stop: write everything, including windows still open."""
        await self.flush(everything=True)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
