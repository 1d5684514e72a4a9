"""Turning the bytes an agent sent into a report the store may keep.

Limits are enforced before parsing: each body is charged to its agent's budgets (reports and
bytes) as it arrives, refused, duplicate or stored alike, so a hostile agent cannot make the
hub decompress and parse bodies it would refuse anyway; the bytes are bounded as received and
while decompressing, so a gzip bomb is stopped at the limit instead of filling memory; and the
parse runs on worker threads, so a large report does not hold up every other connection.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from estate.inventory.hub._writer import MAX_RETRY_AFTER_S, Busy
from estate.inventory.protocol import MAX_RECEIVED_BYTES, MAX_REPORT_BYTES
from estate.inventory.report import ReportError, parse
from estate.inventory.store import DEFAULT_INTERVAL_S, parse_time, utcnow

MAX_FUTURE = timedelta(days=365)
"""A report collected further ahead of the hub's clock than this is refused (`collected_at`);
closer ones are stored, and ordered by the time received when more than a day ahead."""

_GZIP_MAGIC = b"\x1f\x8b"


def decompress(body: bytes, limit: int = MAX_REPORT_BYTES) -> bytes:
    """The report bytes: gunzipped when gzip, refused when they would exceed `limit`.

    Raises:
        ReportError: corrupt gzip, or more than `limit` bytes once decompressed.
    """
    if not body.startswith(_GZIP_MAGIC):
        return body
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ReportError("", f"corrupt gzip ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ReportError("", f"report decompresses to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise ReportError("", "gzip stream is truncated")
    if inflater.unused_data:
        # A second gzip member (or junk) after the report would be stored with it and break
        # every later reader of the stored body (as-of exports).
        raise ReportError("", f"{len(inflater.unused_data)} bytes of trailing data after the "
                              f"gzip stream")
    return out


def accept(body: bytes, agent_id: str, now: datetime | None = None) -> dict[str, Any]:
    """Decode, validate and check a report against its sender's enrolment and the hub clock.

    Raises:
        ReportError: the report is malformed, claims to be from someone else, or was
            collected implausibly far in the future.
    """
    return _checked(parse(decompress(body)), agent_id, now)


def _small(body: bytes) -> bytes | None:
    """The report bytes of a body that is at most INLINE_REPORT_BYTES once decompressed, else
    None (larger, or corrupt: `accept` on a worker thread says which)."""
    if not body.startswith(_GZIP_MAGIC):
        return body if len(body) <= INLINE_REPORT_BYTES else None
    try:
        return decompress(body, INLINE_REPORT_BYTES)
    except ReportError:
        return None


def _checked(report: dict[str, Any], agent_id: str, now: datetime | None) -> dict[str, Any]:
    now = now or utcnow()
    try:
        ahead = parse_time(report["collected_at"]) - now
    except (ValueError, OverflowError):
        raise ReportError("collected_at", "not a time the hub can read") from None
    if ahead > MAX_FUTURE:
        raise ReportError("collected_at", f"{report['collected_at']} is more than "
                                          f"{MAX_FUTURE.days} days ahead of the hub's clock")
    if report["agent"]["id"] != agent_id:
        raise ReportError("agent.id", f"this connection is agent {agent_id}; a report may "
                                      f"not claim to be {report['agent']['id']!r}")
    # The report id is the idempotency key: one agent must not be able to squat another's.
    if not report["report_id"].startswith(f"{agent_id}:"):
        raise ReportError("report_id", f"must start with this agent's id ({agent_id}:)")
    return report


MiB = 1024 * 1024
REPORT_BURST = 10
REPORTS_PER_INTERVAL = 4
MIN_REPORT_INTERVAL_S = 60.0
AGENT_BYTES_PER_DAY = 64 * MiB
AGENT_BYTES_BURST = 16 * MiB
PARSE_WORKERS = 2
# Running or queued for a worker, all agents together. Their bodies already count against
# the hub's input budget, so this bounds latency rather than memory: a hub restart brings
# back hundreds of agents at once, and a few milliseconds each is a wait worth having.
MAX_PARSES_WAITING = 1024
PARSES_BUSY_RETRY_S = 5
# A report this small once decompressed is read on the event loop: one sending its package
# list by hash only is ~4 KB, read in ~0.1 ms, less than handing it to a worker thread and
# back (a thread hop and two GIL hand-offs a report, ~10% of the hub's CPU under load).
INLINE_REPORT_BYTES = 16 * 1024


@dataclass(frozen=True)
class ReportRate:
    """What one agent may send, set by the hub, never by the agent.

    Reports: `burst` back to back, then `per_interval` per max(`min_interval_s`, the
    `agent.interval_s` of its last *stored* report; 300 s until one is). A report is charged
    when its body arrives, before it is parsed, so the interval it claims cannot raise the
    budget it is charged against, and no claim raises it above `per_interval` per
    `min_interval_s`. An invalid report costs `burst / 4` (at least 1), so an agent sending
    bodies that are refused anyway is throttled within a few.
    Bytes: `bytes_per_day` of bodies (as received), with a burst of `AGENT_BYTES_BURST`
    (at most a day's worth, at least one largest body); 0 turns it off.
    `burst` 0 turns both limits off (benchmarks, load tests).
    """

    burst: int = REPORT_BURST
    per_interval: float = REPORTS_PER_INTERVAL
    min_interval_s: float = MIN_REPORT_INTERVAL_S
    bytes_per_day: int = AGENT_BYTES_PER_DAY

    @property
    def invalid_cost(self) -> float:
        return max(1.0, self.burst / 4)

    @property
    def bytes_burst(self) -> float:
        return float(max(MAX_RECEIVED_BYTES, min(AGENT_BYTES_BURST, self.bytes_per_day)))


class OverBudget(Busy):
    """The agent is over one of its own budgets (`budget`: "reports" or "bytes"); `first`
    when its previous body was admitted, so a throttled episode is logged once."""

    def __init__(self, budget: str, retry_after: int, message: str, first: bool) -> None:
        super().__init__(0, retry_after, message)
        self.budget, self.first = budget, first


@dataclass
class _Account:
    reports: float
    bytes: float
    at: float
    interval_s: float = DEFAULT_INTERVAL_S  # claimed by the agent's last stored report
    throttled: bool = False  # its last body was refused for its budgets
    need_full_refunded: bool = False  # a `need_full` given back since its last stored report


class AgentBudgets:
    """A token bucket per agent for reports and one for bytes, in memory (event loop only):
    a hub restart refills them, which is harmless; one entry per agent that has logged in."""

    def __init__(self, rate: ReportRate) -> None:
        self.rate = rate
        self._accounts: dict[str, _Account] = {}

    def _account(self, agent_id: str) -> _Account:
        now = time.monotonic()
        a = self._accounts.get(agent_id)
        if a is None:
            a = self._accounts[agent_id] = _Account(float(self.rate.burst),
                                                    self.rate.bytes_burst, now)
        elapsed, a.at = now - a.at, now
        a.reports = min(float(self.rate.burst), a.reports + elapsed * self._per_s(a))
        a.bytes = min(self.rate.bytes_burst,
                      a.bytes + elapsed * self.rate.bytes_per_day / 86400)
        return a

    def _per_s(self, a: _Account) -> float:
        return self.rate.per_interval / max(self.rate.min_interval_s, a.interval_s, 1.0)

    def take(self, agent_id: str, nbytes: int) -> None:
        """Charge one report of `nbytes` to the agent, or refuse it uncharged.

        Raises:
            OverBudget: the agent has no report left, or not enough bytes for this body.
        """
        if self.rate.burst <= 0:
            return
        a = self._account(agent_id)
        first, a.throttled = not a.throttled, True
        if a.reports < 1.0:
            wait = _retry_after((1.0 - a.reports) / self._per_s(a))
            per = max(self.rate.min_interval_s, a.interval_s)
            raise OverBudget("reports", wait, f"this agent sent more reports than the hub "
                             f"allows it ({self.rate.per_interval:g} per {per:g} s interval "
                             f"past a burst of {self.rate.burst}); retry in {wait} s", first)
        if self.rate.bytes_per_day and a.bytes < nbytes:
            wait = _retry_after((nbytes - a.bytes) / (self.rate.bytes_per_day / 86400))
            raise OverBudget("bytes", wait, f"this agent sent more report bytes than the hub "
                             f"allows it ({self.rate.bytes_per_day / MiB:g} MiB a day); retry "
                             f"in {wait} s", first)
        a.throttled = False
        a.reports -= 1.0
        a.bytes -= nbytes

    def refused(self, agent_id: str) -> None:
        """The report was invalid: charge the rest of its cost (a debt of up to a burst)."""
        if self.rate.burst > 0 and (a := self._accounts.get(agent_id)) is not None:
            a.reports = max(-float(self.rate.burst), a.reports - (self.rate.invalid_cost - 1))

    def stored(self, agent_id: str, interval_s: float | None) -> None:
        """Remember the interval the agent's stored report claimed, for its next refills."""
        if (a := self._accounts.get(agent_id)) is not None:
            a.interval_s = float(interval_s or DEFAULT_INTERVAL_S)
            a.need_full_refunded = False

    def need_full(self, agent_id: str, nbytes: int) -> None:
        """A report stored as nothing until it comes back with its package list: given back
        once per stored report, so the resend counts once, but an agent sending hashes the
        hub never holds (each a parse and a store lookup) pays for them as for any report."""
        if (a := self._accounts.get(agent_id)) is not None and not a.need_full_refunded:
            a.need_full_refunded = True
            self.give_back(agent_id, nbytes)

    def give_back(self, agent_id: str, nbytes: int) -> None:
        """The hub, not the agent, failed (store queue full, store unavailable)."""
        if self.rate.burst > 0 and (a := self._accounts.get(agent_id)) is not None:
            a.reports = min(float(self.rate.burst), a.reports + 1.0)
            a.bytes = min(self.rate.bytes_burst, a.bytes + nbytes)


def _retry_after(seconds: float) -> int:
    return min(MAX_RETRY_AFTER_S, max(1, math.ceil(seconds)))


class Ingest:
    """Admits report bodies: charged to the agent first, then parsed on a worker thread, one
    at a time per agent (an agent sends its reports one after another; a hostile one with
    many channels must not take every worker)."""

    def __init__(self, rate: ReportRate, workers: int = PARSE_WORKERS,
                 max_waiting: int = MAX_PARSES_WAITING) -> None:
        self.budgets = AgentBudgets(rate)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest")
        self._max_waiting = max_waiting
        self._waiting = 0
        self._reading: set[str] = set()  # agents with a body being read
        # Connections (by peer address) with an `estate-report v2` stream open: one each.
        self.streams: set[str] = set()

    async def accept(self, body: bytes, agent_id: str) -> dict[str, Any]:
        """`accept()` of the body, once the agent's budgets and the parse queue allow it.

        Raises:
            OverBudget: over the agent's budgets (nothing charged).
            Busy: too many parses waiting, or one of this agent's is (nothing charged).
            ReportError: as `accept()`; the agent is charged an invalid report's cost.
        """
        if agent_id in self._reading:
            raise Busy(0, PARSES_BUSY_RETRY_S, f"a report from this agent is being read; "
                                               f"retry in {PARSES_BUSY_RETRY_S} s")
        if self._waiting >= self._max_waiting:
            raise Busy(self._waiting, PARSES_BUSY_RETRY_S,
                       f"{self._waiting} reports are waiting to be read; retry in "
                       f"{PARSES_BUSY_RETRY_S} s")
        self.budgets.take(agent_id, len(body))
        if (small := _small(body)) is not None:
            try:
                return _checked(parse(small), agent_id, None)
            except ReportError:
                self.budgets.refused(agent_id)
                raise
        self._waiting += 1
        self._reading.add(agent_id)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, accept, body, agent_id)
        except ReportError:
            self.budgets.refused(agent_id)
            raise
        finally:
            self._waiting -= 1
            self._reading.discard(agent_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
