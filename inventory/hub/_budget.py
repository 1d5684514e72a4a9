"""Memory budgets shared by all channels: bytes of input the hub buffers at once.

Each channel's own limit (4 MiB a report, 16 MiB an export request) does not bound the
total: 40 report channels of 4 MiB each held ~164 MB. A channel takes from the budget as its
body arrives and gives it back when the body is handled or the channel closes; a body that
would go over the budget is refused with `busy` and `retry_after`, and the hub keeps serving.
"""

from __future__ import annotations

MiB = 1024 * 1024
MAX_BUFFERED_INPUT = 64 * MiB  # report and enrol bodies, all channels together
MAX_EXPORT_REQUESTS = 32 * MiB  # export request bodies waiting or being parsed
RETRY_AFTER_S = 5
# API answers: each is encoded on the store thread and counts against a hub-wide budget of
# answer bytes held until it is written (8 unread `changes` answers once held 4 GB). It is
# written a chunk at a time, each waiting for the client's SSH window.
MAX_ANSWER_BYTES = 128 * MiB  # answers held, all channels together
MAX_ANSWER = 32 * MiB  # one answer; past it `too_large` (lower `limit` or page)
ANSWER_CHUNK = 64 * 1024  # written at a time; an answer this small skips the budget
ANSWER_WRITE_TIMEOUT_S = 120.0  # a client that does not take its answer loses the channel


# What one holder (an agent, an operator, an anonymous address enrolling) may hold of the
# input budgets at once: two report bodies, one export request. Without it one compromised
# agent holding bodies without an end of input on many channels filled the hub's whole input
# budget in two seconds, and every other agent got `busy`.
INPUT_PER_HOLDER = 8 * MiB
EXPORT_REQUESTS_PER_HOLDER = 16 * MiB


class Budget:
    """A count of bytes held against a limit, and optionally a limit per holder (event-loop
    only, so no lock)."""

    def __init__(self, limit: int, per_holder: int | None = None) -> None:
        self.limit, self.per_holder = limit, per_holder
        self.used = 0
        self._held: dict[str, int] = {}  # holder -> bytes; only holders holding something

    def take(self, n: int, holder: str = "") -> bool:
        """Reserve `n` bytes; False (nothing reserved) if that would go over a limit."""
        if self.used + n > self.limit:
            return False
        if self.per_holder is not None:
            mine = self._held.get(holder, 0) + n
            if mine > self.per_holder:
                return False
            self._held[holder] = mine
        self.used += n
        return True

    def give(self, n: int, holder: str = "") -> None:
        self.used = max(0, self.used - n)
        if self.per_holder is not None and holder in self._held:
            left = self._held[holder] - n
            if left > 0:
                self._held[holder] = left
            else:
                del self._held[holder]

    def held_by(self, holder: str) -> int:
        return self._held.get(holder, 0)


# Exports queued or running: per operator, and for the hub. An auditor's script once queued
# 200 exports in four seconds and closed each channel; the queue was first in, first out and
# unbounded, so every other operator's export waited minutes behind files nobody would read.
EXPORTS_PER_OPERATOR = 2
MAX_EXPORTS_QUEUED = 16


class ExportSlots:
    """Exports queued or running, per operator and in all (event loop only)."""

    def __init__(self, per_operator: int = EXPORTS_PER_OPERATOR,
                 total: int = MAX_EXPORTS_QUEUED) -> None:
        self.per_operator, self.total = per_operator, total
        self.in_use = 0
        self._by_operator: dict[str, int] = {}

    def take(self, name: str) -> str | None:
        """A slot for `name`'s export, or why not."""
        if self._by_operator.get(name, 0) >= self.per_operator:
            return f"you have {self.per_operator} exports queued or running; retry when " \
                   f"one is done"
        if self.in_use >= self.total:
            return f"{self.in_use} exports are queued or running; retry later"
        self._by_operator[name] = self._by_operator.get(name, 0) + 1
        self.in_use += 1
        return None

    def give(self, name: str) -> None:
        n = self._by_operator.pop(name, 0) - 1
        if n > 0:
            self._by_operator[name] = n
        self.in_use = max(0, self.in_use - 1)
