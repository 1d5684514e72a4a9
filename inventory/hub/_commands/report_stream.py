"""`estate-report v2`: one channel per agent connection carrying framed reports, each
answered as `estate-report v1` answers its body (docs/protocol.md, "Report stream").

A frame is a 4-byte big-endian length N (1 to MAX_RECEIVED_BYTES), then N bytes of report
body. The agent waits for each answer before its next frame; the hub reads nothing more of
the channel while a frame is being handled or its answer waits for the client's window, so
what it holds per stream is one frame and at most one SSH packet past it, all charged to the
hub's input budget as it arrives.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from estate.inventory.hub import _metrics
from estate.inventory.hub._budget import RETRY_AFTER_S
from estate.inventory.hub._commands.base import BODY_TIMEOUT_S, Channel, Handler, input_refused
from estate.inventory.hub._commands.report import Refusal, take_report
from estate.inventory.hub._context import Context
from estate.inventory.protocol import MAX_RECEIVED_BYTES, REPORT_STREAM_COMMAND, ChannelExit

log = logging.getLogger("estate.hub")

HEADER_BYTES = 4
# The refusals after which the stream cannot go on: the framing is lost (`too_large`,
# `bad_request`, `timeout`), or the agent may send nothing more (`access_ended`), or the hub
# failed in a way it cannot vouch for the next frame (`internal`).
ENDS_STREAM = frozenset({"too_large", "bad_request", "timeout", "access_ended", "internal"})


class ReportStreamCommand(Handler):
    command = REPORT_STREAM_COMMAND

    def __init__(self, ctx: Context, channel: Channel) -> None:
        super().__init__(ctx, channel)
        channel.on_refusal = _metrics.report_refused
        self.buffer = bytearray()  # received, not yet handed to a frame
        self.held = 0  # bytes taken from the hub's input budget, buffered or being handled
        self.length: int | None = None  # the frame's body length, once its header is in
        self.handling = 0  # bytes of the frame being handled (0: none)
        # A frame the input budget refused: its bytes still to drop, and its answer.
        self.dropping = 0
        self.dropped_answer = ""
        self.timer: asyncio.TimerHandle | None = None
        self.streaming = False  # this channel is its connection's stream
        self.ended = False  # the client ended its input

    # --- the session's events -----------------------------------------------------------

    def start(self) -> None:
        streams, address = self.ctx.ingest.streams, self.ctx.peer.address
        if address in streams:
            # One stream per connection bounds what a connection holds; the first goes on.
            self.channel.fail("busy", "this connection has a report stream open already; "
                                      "send on it", retry_after=RETRY_AFTER_S)
            return
        streams.add(address)
        self.streaming = True

    def data(self, data: bytes) -> None:
        if self.dropping:
            n = min(self.dropping, len(data))
            self.dropping -= n
            data = data[n:]
            if self.dropping:
                return
            self._stop_timer()
            self.channel.refuse("busy", self.dropped_answer, retry_after=RETRY_AFTER_S)
            if not self.channel.writable.is_set():
                # As after any answer: a client that does not read its answers is not read
                # either, or frames refused unread would pile answers up without bound.
                self.channel.reading(False)
                self.ctx.tasks.spawn(self._read_once_writable())
            if not data:
                return
        budget, holder = self.ctx.budgets.input, self.ctx.peer.actor
        if not budget.take(len(data), holder):
            if self.length is None:  # not even the frame's length is known: framing lost
                message = input_refused(self, budget, holder, len(data), self._drop_buffer)
                self._stop_timer()
                self.channel.fail("busy", message, retry_after=RETRY_AFTER_S)
                return
            # Drop the rest of this frame unread and refuse it; the stream goes on.
            self.dropping = self.length - len(self.buffer)
            self.length = None
            self.dropped_answer = input_refused(self, budget, holder, len(data),
                                                self._drop_buffer)
            self._start_timer()  # the frame's own time still runs
            self.data(data)
            return
        self.held += len(data)
        self.buffer += data
        self._next_frame()

    def eof(self) -> None:
        self.ended = True
        self._next_frame()

    def closed(self) -> None:
        self._stop_timer()
        if self.streaming:
            self.ctx.ingest.streams.discard(self.ctx.peer.address)
            self.streaming = False
        # A frame being handled gives its bytes back when done; the rest goes now.
        self._drop_buffer()

    # --- frames -------------------------------------------------------------------------

    def _next_frame(self) -> None:
        """Hand the next complete frame to `_handle`, or wait (within the frame's time) for
        the rest of it; past a frame that cannot be, end the stream."""
        if self.handling or self.dropping or self.channel.finished:
            return
        if self.length is None and len(self.buffer) >= HEADER_BYTES:
            length = int.from_bytes(self.buffer[:HEADER_BYTES], "big")
            if length == 0:
                self._fail("bad_request", "a frame of 0 bytes; each frame is one report")
                return
            if length > MAX_RECEIVED_BYTES:
                self._fail("too_large", f"a frame of {length} bytes is over the limit of "
                                        f"{MAX_RECEIVED_BYTES} bytes")
                return
            self.length = length
            del self.buffer[:HEADER_BYTES]
            self._release(HEADER_BYTES)
        if self.length is not None and len(self.buffer) >= self.length:
            body = bytes(self.buffer[:self.length])
            del self.buffer[:self.length]
            self.length = None
            self._stop_timer()
            self.handling = len(body)
            self.channel.reading(False)  # stop-and-wait: nothing more until answered
            self.ctx.tasks.spawn(self._handle(body))
        elif self.ended:
            if self.buffer or self.length is not None:
                self._fail("bad_request", "the input ended inside a frame")
            else:
                self.channel.end(ChannelExit.OK)
        elif self.buffer or self.length is not None:
            self._start_timer()

    def _start_timer(self) -> None:
        """A frame begun must end in time; between frames the stream may idle."""
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(BODY_TIMEOUT_S, self._timeout)

    async def _handle(self, body: bytes) -> None:
        try:
            await self._answer(body)
            # Flow control: a client that does not read its answers is not read either.
            await self.channel.writable.wait()
        finally:
            self._release(self.handling)
            self.handling = 0
        if not self.channel.finished:
            self.channel.reading(True)
            self._next_frame()

    async def _read_once_writable(self) -> None:
        await self.channel.writable.wait()
        if not self.channel.finished and not self.handling:
            self.channel.reading(True)

    async def _answer(self, body: bytes) -> None:
        ctx = self.ctx
        if (ended := ctx.access_ended()) is not None:
            self.channel.fail("access_ended", f"access ended: {ended}")
            return
        try:
            result = await take_report(ctx, body)
        except Exception:
            log.exception("conn %s: %s failed", ctx.peer.address, self.command)
            self.channel.fail("internal", "the hub failed; retry later", retry_after=30)
            return
        if not isinstance(result, Refusal):
            self.channel.answer(result)
        elif result.code in ENDS_STREAM:
            self.channel.fail(result.code, result.message, **result.extra)
        else:
            self.channel.refuse(result.code, result.message, **result.extra)

    def _fail(self, code: str, message: str, **extra: Any) -> None:
        self._stop_timer()
        self._drop_buffer()
        self.channel.fail(code, message, **extra)

    def _timeout(self) -> None:
        self.timer = None
        self._fail("timeout", f"a frame begun was not complete within {BODY_TIMEOUT_S:g} s",
                   retry_after=5)

    def _drop_buffer(self) -> None:
        """Let go of what was received and not handed to a frame."""
        self._release(self.held - self.handling)
        self.buffer = bytearray()

    def _release(self, n: int) -> None:
        if n > 0:
            self.ctx.budgets.input.give(n, self.ctx.peer.actor)
            self.held -= n

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
