"""The front door: which new connections the hub takes on before any SSH work is done.

Three budgets, each answering with a stable code (logged by the hub, and sent to the client
as one plain text line before it is cut off, as OpenSSH sends "Exceeded MaxStartups"):

- `rate_limited`: new connections per source address, a token bucket (`rate` a second, up to
  `burst` at once). This is the throttle an SSH audit looks for (DHEat, CVE-2002-20001): every
  admitted connection may make the hub do a key exchange.
- `source_busy`: connections from one source address that have not logged in yet. Idle sockets
  from one address cannot take the whole pre-auth budget from everyone else.
- `startups_full` / `early_drop`: connections not yet logged in, from everywhere. Past `start`
  of them a new one is dropped with probability `drop_rate`, rising linearly to 1 at `full`
  (OpenSSH's `MaxStartups start:rate:full`), so a legitimate client retrying a few times still
  gets in while someone holds sockets open from many addresses.

- `penalised`: a source whose connections keep ending without a login (handshake or login
  timeout, refused keys, a close before logging in) more than `penalty_after` times in
  `PENALTY_WINDOW_S` is refused for `penalty_min_s`, doubling on each repeat up to
  `penalty_max_s` (OpenSSH's `PerSourcePenalties`): holding sockets open until they time out
  soon stops costing the holder's address nothing.

Connections that have logged in no longer count (an agent's persistent connection is not a
startup); `enrol` logins are anonymous in effect, so the hub keeps counting them until they end.

Sources that logged in (not as `enrol`) within `KNOWN_TTL_S` are *known*: they are never
penalised or dropped early, and may use `reserve` slots above `full`, so a flood from fresh
addresses cannot lock out returning agents and operators. The per-source and rate budgets
still apply to them. The hub keeps them across a restart (`known_ages`/`remember`), since the
reconnect storm after a restart is when its sites most need the room.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RATE_LIMITED = "rate_limited"
SOURCE_BUSY = "source_busy"
EARLY_DROP = "early_drop"
STARTUPS_FULL = "startups_full"
PENALISED = "penalised"

MESSAGES = {
    RATE_LIMITED: "too many new connections from this address; retry later",
    SOURCE_BUSY: "too many connections from this address are still logging in; retry later",
    EARLY_DROP: "the hub is busy with connections logging in; retry later",
    STARTUPS_FULL: "too many connections are still logging in; retry later",
    PENALISED: "too many connections from this address ended without logging in; retry later",
}

# A refusal is logged at most once per (source, code) in this many seconds; the next line
# says how many were folded into it, so a flood cannot fill the log.
LOG_WINDOW_S = 60.0

# Buckets of quiet sources are forgotten (a full bucket is the same as none); the table is
# swept whenever it has doubled since the last sweep, so memory follows the active sources.
_SWEEP_FLOOR = 1024

# Failed pre-auth connections are counted per source over this window.
PENALTY_WINDOW_S = 60.0
# A source's penalty history (and its failure count) is bounded: past this many sources the
# quiet ones are swept, and if all are active new ones go untracked (permissive, as OpenSSH's
# `overflow=permissive`): memory stays bounded whatever the number of attacking addresses.
MAX_PENALTY_SOURCES = 65536
# Known-good sources: logged in within a day, the most recent 100,000 kept (LRU).
KNOWN_TTL_S = 24 * 3600.0
MAX_KNOWN_SOURCES = 100_000


@dataclass(frozen=True)
class DoorLimits:
    """The budgets; `estate-hub serve` flags set them (docs/configuration.md)."""

    rate_per_s: float = 10.0
    burst: int = 10
    per_source: int = 10
    drop_start: int = 20
    drop_rate: float = 0.3
    full: int = 200
    reserve: int = 100  # extra pending slots only known sources may use, above `full`
    penalty_after: int = 5  # failed pre-auth connections in PENALTY_WINDOW_S; 0: no penalty
    penalty_min_s: float = 30.0
    penalty_max_s: float = 600.0

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1 or self.per_source < 1 or self.full < 1:
            raise ValueError("door limits must be positive")
        if self.reserve < 0 or self.penalty_after < 0 or self.penalty_min_s <= 0 or \
                self.penalty_max_s < self.penalty_min_s:
            raise ValueError("door reserve and penalties must be positive, min <= max")
        if not 0.0 <= self.drop_rate <= 1.0:
            raise ValueError("drop rate must be between 0 and 1")


def source_of(address: str) -> str:
    """The budget a peer address counts against: the IPv4 address, or the IPv6 /64.

    One IPv6 host is usually handed a whole /64, so per-address budgets there would be no
    budget at all. IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # not an IP (a unix socket, a test double): its own budget
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Door:
    """Admission counts for one hub process. Pure: the clock and the coin are injected."""

    def __init__(self, limits: DoorLimits, clock: Callable[[], float] = time.monotonic,
                 coin: Callable[[], float] = random.random) -> None:
        self.limits = limits
        self._clock, self._coin = clock, coin
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)
        self._pending: dict[str, int] = {}
        self.pending_total = 0
        self._swept_at_size = _SWEEP_FLOOR
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # -> (logged at, folded)
        self._failures: dict[str, tuple[int, float]] = {}  # source -> (count, window start)
        # source -> (penalised until, last penalty length): the length doubles on a repeat.
        self._penalties: dict[str, tuple[float, float]] = {}
        self._known: OrderedDict[str, float] = OrderedDict()  # source -> last login, LRU
        self.logins = 0  # counted, so the hub knows when the known sources are worth saving

    def admit(self, source: str) -> str | None:
        """Take on a new connection from `source` (see `source_of`), or say why not.

        Returns None when admitted (the connection then counts as pending until `release`),
        else the refusal code. A refused attempt costs the source no token.
        """
        lim = self.limits
        now = self._clock()
        known = self.is_known(source)
        if not known and (penalty := self._penalties.get(source)) is not None \
                and now < penalty[0]:
            return PENALISED  # before the bucket: a penalised source is not even counted
        tokens, at = self._buckets.get(source, (float(lim.burst), now))
        tokens = min(float(lim.burst), tokens + (now - at) * lim.rate_per_s)
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            return RATE_LIMITED
        if self._pending.get(source, 0) >= lim.per_source:
            self._buckets[source] = (tokens, now)
            return SOURCE_BUSY
        if self.pending_total >= lim.full + (lim.reserve if known else 0):
            self._buckets[source] = (tokens, now)
            return STARTUPS_FULL
        if not known and self.pending_total >= lim.drop_start and \
                self._coin() < self.drop_probability():
            self._buckets[source] = (tokens, now)
            return EARLY_DROP
        self._buckets[source] = (tokens - 1.0, now)
        self._pending[source] = self._pending.get(source, 0) + 1
        self.pending_total += 1
        if len(self._buckets) >= 2 * self._swept_at_size:
            self._sweep(now)
        return None

    def release(self, source: str) -> None:
        """An admitted connection logged in (not as `enrol`) or closed: it is pending no more."""
        n = self._pending.get(source, 0)
        if n <= 0:
            return
        if n == 1:
            del self._pending[source]
        else:
            self._pending[source] = n - 1
        self.pending_total -= 1

    def failed(self, source: str) -> bool:
        """An admitted connection ended without a login. True if that penalises its source."""
        lim = self.limits
        if lim.penalty_after == 0 or self.is_known(source):
            return False
        now = self._clock()
        count, start = self._failures.get(source, (0, now))
        if now - start >= PENALTY_WINDOW_S:
            count, start = 0, now
        count += 1
        if count <= lim.penalty_after:
            if source in self._failures or self._room(self._failures, now):
                self._failures[source] = (count, start)
            return False
        self._failures.pop(source, None)
        until, last = self._penalties.get(source, (0.0, 0.0))
        if now < until:
            return False  # already penalised (its pending connections are still ending)
        # A repeat offender's penalty doubles; one quiet for a whole max penalty starts over.
        length = lim.penalty_min_s if now - until > lim.penalty_max_s or last == 0 \
            else min(lim.penalty_max_s, 2 * last)
        if source in self._penalties or self._room(self._penalties, now):
            self._penalties[source] = (now + length, length)
            return True
        return False

    def penalty_left(self, source: str) -> float:
        until = self._penalties.get(source, (0.0, 0.0))[0]
        return max(0.0, until - self._clock())

    def logged_in(self, source: str) -> None:
        """A connection from `source` logged in (not as `enrol`): it is known for a day."""
        self._known[source] = self._clock()
        self._known.move_to_end(source)
        self.logins += 1
        while len(self._known) > MAX_KNOWN_SOURCES:
            self._known.popitem(last=False)
        self._failures.pop(source, None)
        self._penalties.pop(source, None)

    def known_ages(self) -> dict[str, float]:
        """Each known source with the seconds since its last login, oldest first."""
        now = self._clock()
        return {source: round(now - at, 1) for source, at in self._known.items()
                if now - at <= KNOWN_TTL_S}

    def remember(self, ages: dict[str, float]) -> None:
        """Take back `known_ages()` from before a restart (the newest win past the cap)."""
        now = self._clock()
        for source, age in sorted(ages.items(), key=lambda item: -item[1]):
            if 0 <= age <= KNOWN_TTL_S:
                self._known[source] = now - age
                self._known.move_to_end(source)
        while len(self._known) > MAX_KNOWN_SOURCES:
            self._known.popitem(last=False)

    def is_known(self, source: str) -> bool:
        at = self._known.get(source)
        if at is None:
            return False
        if self._clock() - at > KNOWN_TTL_S:
            del self._known[source]
            return False
        return True

    def _room(self, table: dict[str, tuple[Any, float]], now: float) -> bool:
        """Whether `table` may take another source, after forgetting what is over."""
        if len(table) < MAX_PENALTY_SOURCES:
            return True
        if table is self._failures:
            stale = [k for k, (_, start) in table.items() if now - start >= PENALTY_WINDOW_S]
        else:
            limit = self.limits.penalty_max_s
            stale = [k for k, (until, _) in table.items() if now - until > limit]
        for key in stale:
            del table[key]
        return len(table) < MAX_PENALTY_SOURCES

    def drop_probability(self) -> float:
        """Chance that the next connection is dropped early, given what is pending now."""
        lim = self.limits
        if self.pending_total >= lim.full:
            return 1.0
        if self.pending_total < lim.drop_start:
            return 0.0
        span = lim.full - lim.drop_start
        return lim.drop_rate + (1.0 - lim.drop_rate) * (self.pending_total - lim.drop_start) / span

    def refusal_to_log(self, source: str, code: str) -> int | None:
        """Whether to log this refusal: None to fold it, else how many were folded before it."""
        now = self._clock()
        key = (source, code)
        at, folded = self._logged.get(key, (now - LOG_WINDOW_S, 0))
        if now - at < LOG_WINDOW_S:
            self._logged[key] = (at, folded + 1)
            return None
        if len(self._logged) >= 2 * _SWEEP_FLOOR:
            # Forget windows that are over; what they folded is lost from the log only (the
            # audit log keeps its own coalesced count).
            self._logged = {k: v for k, v in self._logged.items() if now - v[0] < LOG_WINDOW_S}
            if len(self._logged) >= 2 * _SWEEP_FLOOR:
                return None  # an attacker spraying from many addresses: fold the rest
        self._logged[key] = (now, 0)
        return folded

    def pending(self, source: str) -> int:
        return self._pending.get(source, 0)

    def tracked_sources(self) -> int:
        return len(self._buckets)

    def tracked_penalties(self) -> int:
        return len(self._failures) + len(self._penalties)

    def _sweep(self, now: float) -> None:
        lim = self.limits
        for source, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * lim.rate_per_s >= lim.burst and source not in self._pending:
                del self._buckets[source]
        self._swept_at_size = max(_SWEEP_FLOOR, len(self._buckets))
