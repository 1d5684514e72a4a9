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


class Budget:
    """A count of bytes held against a limit (event-loop only, so no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve `n` bytes; False (nothing reserved) if that would go over the limit."""
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)
