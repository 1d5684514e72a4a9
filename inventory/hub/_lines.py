"""Request lines out of an `estate-api v1` byte stream, in bulk, with the channel's budgets.

A client may send anything at line rate: megabytes of bare newlines, megabytes of `x\\n`,
one endless line. Lines are split with `bytes.split` over each received chunk and blank ones
dropped with C-level `map`/`compress`, never a per-byte Python loop or a `del` at the front
of a buffer (40 MiB of `\\n` held the event loop ~12 s that way). The queue of lines waiting
for an answer is bounded (`full`: the session pauses reading, so the SSH window stops the
sender), and a channel that sends more than a few blank or invalid lines per second is
garbage, not a client: `feed`/`invalid` say so and the session cuts it off.
"""

from __future__ import annotations

from collections import deque
from itertools import compress

MAX_QUEUED_LINES = 16  # request lines read ahead of the one being answered
MAX_QUEUED_BYTES = 256 * 1024
MAX_BLANK_LINES_PER_S = 1000  # whitespace-only lines
MAX_BLANK_BYTES_PER_S = 1024 * 1024
MAX_INVALID_LINES_PER_S = 100  # lines answered bad_json, bad_request, unknown_op, too long
TOO_LONG = b"\x00too-long"  # stands for a line over the limit (a real line is JSON text)


class LineReader:
    """Splits received bytes into request lines and queues them, within budgets.

    Args:
        max_line: the longest request line, in bytes; a longer one is queued as TOO_LONG
            and the rest of it skipped up to its newline.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.lines: deque[bytes] = deque()
        self.queued_bytes = 0
        self._partial = bytearray()  # the line still being received
        self._skipping = False  # inside a line already over the limit
        self._window = -1.0  # start of the current one-second accounting window
        self._blank_lines = self._blank_bytes = self._invalid = 0

    @property
    def full(self) -> bool:
        """Enough read ahead: stop reading until the queue drains."""
        return len(self.lines) >= MAX_QUEUED_LINES or self.queued_bytes >= MAX_QUEUED_BYTES

    def feed(self, data: bytes, now: float) -> bool:
        """Queue the complete non-blank lines in `data` (`now`: a monotonic clock).

        Returns:
            False when the channel went over its blank-line budget (cut it off).
        """
        parts = data.split(b"\n")
        tail = parts.pop()  # after the last newline: the start of a line to come
        if parts:
            if self._skipping:
                parts[0], self._skipping = TOO_LONG, False
            elif self._partial:
                parts[0] = bytes(self._partial) + parts[0]
                self._partial = bytearray()
            kept = list(compress(parts, map(bytes.strip, parts)))
            if kept and max(map(len, kept)) > self.max_line:
                kept = [TOO_LONG if len(line) > self.max_line else line for line in kept]
            blank_lines = len(parts) - len(kept)
            blank_bytes = max(0, len(data) - len(tail) - sum(map(len, kept)))
            self.lines.extend(kept)
            self.queued_bytes += sum(map(len, kept))
            if blank_lines and not self._count(now, blank_lines, blank_bytes, 0):
                return False
        if not self._skipping:
            self._partial += tail
            if len(self._partial) > self.max_line:
                self._partial = bytearray()
                self._skipping = True
        return True

    def pop(self) -> bytes:
        line = self.lines.popleft()
        self.queued_bytes -= len(line)
        return line

    def invalid(self, now: float) -> bool:
        """Count one line answered as invalid. Returns False past the budget."""
        return self._count(now, 0, 0, 1)

    def clear(self) -> None:
        """Drop everything buffered (the channel closed)."""
        self.lines.clear()
        self.queued_bytes = 0
        self._partial = bytearray()

    def _count(self, now: float, blank_lines: int, blank_bytes: int, invalid: int) -> bool:
        if now - self._window >= 1.0:
            self._window = now
            self._blank_lines = self._blank_bytes = self._invalid = 0
        self._blank_lines += blank_lines
        self._blank_bytes += blank_bytes
        self._invalid += invalid
        return (self._blank_lines <= MAX_BLANK_LINES_PER_S
                and self._blank_bytes <= MAX_BLANK_BYTES_PER_S
                and self._invalid <= MAX_INVALID_LINES_PER_S)
