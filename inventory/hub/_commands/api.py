"""`estate-api v1`: an operator's request lines answered in order, one JSON line each
(`_api.OperatorApi` answers them), with the flow control and budgets of a long-lived channel."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from estate.inventory.hub._api import OperatorApi
from estate.inventory.hub._budget import ANSWER_CHUNK, ANSWER_WRITE_TIMEOUT_S, RETRY_AFTER_S
from estate.inventory.hub._commands.base import Handler
from estate.inventory.hub._lines import TOO_LONG, LineReader
from estate.inventory.protocol import API_COMMAND, MAX_API_LINE_BYTES, ChannelExit

log = logging.getLogger("estate.hub")

# API answers that mean "this line is not a request"; many a second and the channel is cut.
INVALID_LINE_CODES = frozenset({"bad_json", "bad_request", "unknown_op", "line_too_long"})


def error_line(request_id: Any, code: str, message: str, **extra: Any) -> bytes:
    """An `estate-api v1` error answer, encoded."""
    return (json.dumps({"id": request_id, "ok": False, "error": {
        "code": code, "message": message, **extra}}, separators=(",", ":")) + "\n").encode()


class ApiCommand(Handler):
    command = API_COMMAND
    api: OperatorApi
    lines: LineReader  # request lines waiting for answers

    def start(self) -> None:
        ctx = self.ctx
        assert ctx.peer.operator is not None
        self.api = OperatorApi(ctx.store, ctx.peer.operator, audit=ctx.audit,
                               source=ctx.peer.source, max_answer=ctx.settings.max_answer_size)
        self.lines = LineReader(MAX_API_LINE_BYTES)
        self.lines_ready = asyncio.Event()  # a line (or the end of input) is waiting
        self.input_ended = False
        self.reading_paused = False
        self.ctx.tasks.spawn(self._serve())

    def data(self, data: bytes) -> None:
        if not self.lines.feed(data, asyncio.get_running_loop().time()):
            self._cut_off("too_many_bad_lines", "too many blank lines; this channel is closed")
            return
        self.lines_ready.set()
        self.flow()

    def eof(self) -> None:
        if not self.channel.finished:
            self.input_ended = True  # answer what was asked, then end
            self.lines_ready.set()

    def closed(self) -> None:
        self.lines_ready.set()  # the loop ends
        self.lines.clear()

    def flow(self) -> None:
        """Read while the line queue has room and the last answer has gone; else pause.

        Paused, asyncssh stops opening the SSH window, so a client that sends faster than it
        reads its answers is held back by its own window, not buffered by the hub.
        """
        chan = self.channel.chan
        if chan is None:
            return
        pause = self.lines.full or not self.channel.writable.is_set()
        if pause and not self.reading_paused:
            self.reading_paused = True
            chan.pause_reading()
        elif not pause and self.reading_paused:
            self.reading_paused = False
            chan.resume_reading()  # may deliver buffered data (and EOF) at once

    def _cut_off(self, code: str, message: str) -> None:
        """End an API channel that sends garbage at a rate no client does."""
        channel, peer = self.channel, self.ctx.peer
        if channel.finished or channel.chan is None:
            return
        log.warning("conn %s operator %s cut off: %s", peer.address, peer.name, code)
        self.ctx.audit.record(peer.host, peer.actor, "channel_cut_off", None, {"code": code})
        channel.finished = True
        channel.chan.write((json.dumps({"id": None, "ok": False, "error": {
            "code": code, "message": message}}) + "\n").encode())
        channel.chan.exit(ChannelExit.DATA)
        self.lines.clear()

    async def _serve(self) -> None:
        lines, api, channel, ctx = self.lines, self.api, self.channel, self.ctx
        while not channel.finished:
            if not lines.lines:
                if self.input_ended:
                    break
                self.lines_ready.clear()
                await self.lines_ready.wait()
                continue
            line = lines.pop()
            self.flow()
            if (ended := ctx.access_ended()) is not None:
                channel.fail("access_ended", f"access ended: {ended}")
                return
            code: str | None
            request_id: Any = None
            if line == TOO_LONG:
                code = "line_too_long"
                data = error_line(None, code, f"a request line may be at most "
                                              f"{MAX_API_LINE_BYTES} bytes")
            else:
                try:
                    # Encoded on the store thread: the event loop never dumps a big answer.
                    data, code, request_id = await ctx.db(api.answer, line)
                except Exception:  # answer() never raises; if the call itself fails, answer
                    log.exception("conn %s: API request failed", ctx.peer.address)
                    code = "internal"
                    data = error_line(None, code, "the hub failed; retry later")
            if channel.finished or channel.chan is None:
                return
            if code in INVALID_LINE_CODES \
                    and not lines.invalid(asyncio.get_running_loop().time()):
                self._cut_off("too_many_bad_lines", "too many invalid request lines; this "
                                                    "channel is closed")
                return
            budget = ctx.budgets.answer
            if len(data) > ANSWER_CHUNK and not budget.take(len(data)):
                log.warning("conn %s operator %s: an answer of %d bytes refused busy, %d "
                            "bytes of answers held", ctx.peer.address, ctx.peer.name,
                            len(data), budget.used)
                data = error_line(request_id, "busy", "the hub is holding as many answer "
                                  "bytes as it may; retry later", retry_after=RETRY_AFTER_S)
            held = len(data) if len(data) > ANSWER_CHUNK else 0
            try:
                if not await self._write_answer(data):
                    return
            finally:
                budget.give(held)
        channel.end()

    async def _write_answer(self, data: bytes) -> bool:
        """Write one answer a chunk at a time, each once the client's window has room.

        The next request waits until this answer is on its way, so a client that never
        reads its answers stops being served instead of growing the hub; one that takes
        no answer bytes for ANSWER_WRITE_TIMEOUT_S loses the channel (and the bytes it
        held). False: the channel is gone.
        """
        channel, peer = self.channel, self.ctx.peer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_WRITE_TIMEOUT_S
        for start in range(0, len(data), ANSWER_CHUNK):
            if channel.finished or channel.chan is None:
                return False
            channel.chan.write(data[start:start + ANSWER_CHUNK])
            if not channel.writable.is_set():
                self.flow()
                try:
                    await asyncio.wait_for(channel.writable.wait(), deadline - loop.time())
                except TimeoutError:
                    log.warning("conn %s operator %s: answer not read within %g s; channel "
                                "closed", peer.address, peer.name, ANSWER_WRITE_TIMEOUT_S)
                    channel.finished = True
                    if channel.chan is not None:
                        channel.chan.close()
                    return False
                self.flow()
                deadline = loop.time() + ANSWER_WRITE_TIMEOUT_S  # it reads: give it time
        return not channel.finished
