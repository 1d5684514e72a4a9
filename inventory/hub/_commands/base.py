"""What every command handler builds on: the channel it answers on (`Channel`), the events a
session passes it (`Handler`), and the body-then-answer shape three commands share
(`BodyCommand`: read the input within its limits and the hub's budgets, then run once)."""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import asyncssh

from estate.inventory.hub import _metrics
from estate.inventory.hub._budget import RETRY_AFTER_S, Budget
from estate.inventory.hub._context import Context
from estate.inventory.protocol import ERROR_CODES, MAX_RECEIVED_BYTES, ChannelExit
from estate.inventory.sanitise import quoted

log = logging.getLogger("estate.hub")

BODY_TIMEOUT_S = 60.0
# How long a one-command connection (`enrol`) stays open after its answer or its channel's
# end. Closing at once raced the client's input still on its way (a client may send its body
# after an early refusal): those bytes reached a closed socket and drew a TCP reset, and the
# client failed on the reset instead of reading the answer it had been sent.
ANSWERED_GRACE_S = 2.0


class Channel:
    """The answering side of one session channel: it ends once, with an exit status.

    Args:
        close_connection: called ANSWERED_GRACE_S after the answer or the channel's end, for
            a connection that runs one command (`enrol`); None for the others.
    """

    def __init__(self, close_connection: Callable[[], None] | None = None) -> None:
        self.chan: asyncssh.SSHServerChannel | None = None  # type: ignore[type-arg]
        self.finished = False
        # Also told an error answer's code, before it is sent: a command's own counter.
        self.on_refusal: Callable[[str], None] | None = None
        self.writable = asyncio.Event()  # flow control: answers wait for the client's window
        self.writable.set()
        self._close_connection = close_connection

    def fail(self, code: str, message: str, **extra: Any) -> None:
        """Answer with an error and exit with the status the protocol gives its code."""
        if not self.finished:
            _metrics.refused(code)
            if self.on_refusal is not None:
                self.on_refusal(code)
        self.finish(ERROR_CODES[code],
                    {"status": "error", "code": code, "message": message, **extra})

    def refuse(self, code: str, message: str, **extra: Any) -> None:
        """Answer with an error and go on (a report stream's refusal of one report)."""
        if not self.finished:
            _metrics.refused(code)
            if self.on_refusal is not None:
                self.on_refusal(code)
        self.answer({"status": "error", "code": code, "message": message, **extra})

    def answer(self, doc: dict[str, Any]) -> None:
        """One JSON document on a line of its own, the channel going on."""
        if not self.finished and self.chan is not None:
            self.chan.write((json.dumps(doc, ensure_ascii=False) + "\n").encode())

    def reading(self, on: bool) -> None:
        """Take the client's input or leave it in its SSH window (flow control)."""
        if not self.finished and self.chan is not None:
            if on:
                self.chan.resume_reading()
            else:
                self.chan.pause_reading()

    def finish(self, status: ChannelExit, doc: dict[str, Any]) -> None:
        """Answer with one JSON document and exit."""
        if self.finished or self.chan is None:
            return
        self.finished = True
        self.chan.write((json.dumps(doc, ensure_ascii=False) + "\n").encode())
        self.chan.exit(status)
        self.close_connection_soon()

    def close_connection_soon(self) -> None:
        """One command per enrol connection: it holds no state past its answer, so it closes
        ANSWERED_GRACE_S later (twice is harmless: the second close finds it closed)."""
        if self._close_connection is not None:
            asyncio.get_running_loop().call_later(ANSWERED_GRACE_S, self._close_connection)

    def end(self, status: ChannelExit = ChannelExit.OK) -> None:
        """Exit without a further answer (what was sent already said it all)."""
        if not self.finished and self.chan is not None:
            self.finished = True
            self.chan.exit(status)


class Handler:
    """One command running on one channel; the session calls these as the channel's events
    come. Every method may be left as is: a command that has no use for an event ignores it.
    """

    command = ""  # the protocol's name for it

    def __init__(self, ctx: Context, channel: Channel) -> None:
        self.ctx, self.channel = ctx, channel

    def start(self) -> None:
        """The peer may run this command: begin."""

    def data(self, data: bytes) -> None:
        """Input arrived (only while the channel has not finished)."""

    def eof(self) -> None:
        """The client's input ended."""

    def flow(self) -> None:
        """The client's window filled or opened (`channel.writable` says which)."""

    def closed(self) -> None:
        """The channel is gone: let go of everything held for it."""


class BodyCommand(Handler, ABC):
    """A command whose input is one body, answered once the input ends.

    The body is held within `limit` bytes and within the hub's budget for every channel's
    bodies (`_budget.py`); `run` gets it when the client ends its input, which must happen
    within BODY_TIMEOUT_S.
    """

    limit = MAX_RECEIVED_BYTES

    def __init__(self, ctx: Context, channel: Channel) -> None:
        super().__init__(ctx, channel)
        self.body = bytearray()
        self.held = 0  # bytes of body taken from the hub's input budget
        self.handling = False  # the body went to `run`, which gives the budget back
        self.timer: asyncio.TimerHandle | None = None

    @abstractmethod
    async def run(self, body: bytes) -> None:
        """Answer the body (on the channel); each command's own work."""

    def budget(self) -> Budget:
        return self.ctx.budgets.input

    def start(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(BODY_TIMEOUT_S, self._timeout)

    def data(self, data: bytes) -> None:
        if len(self.body) + len(data) > self.limit:
            self._release()
            self._stop_timer()
            self.channel.fail("too_large",
                              f"input is over the limit of {self.limit} bytes")
            return
        budget, holder = self.budget(), self._holder()
        if not budget.take(len(data), holder):
            message = input_refused(self, budget, holder, len(data), self._release)
            self._stop_timer()
            self.channel.fail("busy", message, retry_after=RETRY_AFTER_S)
            return
        self.held += len(data)
        self.body += data

    def eof(self) -> None:
        if not self.channel.finished:
            body, self.body = bytes(self.body), bytearray()
            self.handling = True  # the budget is given back when `run` is done
            self.ctx.tasks.spawn(self._handle(body))

    def closed(self) -> None:
        self._stop_timer()
        # Closed sessions sit in reference cycles (channel <-> session) until a full GC:
        # whatever they buffered is let go now, not then.
        if not self.handling:
            self._release()
        self.body = bytearray()

    def _holder(self) -> str:
        """Whose share of the input budgets a body counts against: the agent or operator,
        or for `enrol` (any key logs in) the address it comes from."""
        peer = self.ctx.peer
        return f"source:{peer.source}" if peer.role == "enrol" else peer.actor

    def _release(self) -> None:
        """Drop the body and give its bytes back to the hub's budget."""
        self.body = bytearray()
        if self.held:
            self.budget().give(self.held, self._holder())
            self.held = 0

    def _stop_timer(self) -> None:
        if self.timer:
            self.timer.cancel()
            self.timer = None

    def _timeout(self) -> None:
        self.channel.fail("timeout",
                          f"no end of input within {BODY_TIMEOUT_S:g} s", retry_after=5)

    async def _handle(self, body: bytes) -> None:
        try:
            await self._run(body)
        finally:
            self.handling = False
            self._release()

    async def _run(self, body: bytes) -> None:
        self._stop_timer()
        if (ended := self.ctx.access_ended()) is not None:
            self.channel.fail("access_ended", f"access ended: {ended}")
            return
        try:
            await self.run(body)
        except Exception:
            log.exception("conn %s: %s failed", self.ctx.peer.address, self.command)
            self.channel.fail("internal", "the hub failed; retry later",
                              retry_after=30)


def input_refused(handler: Handler, budget: Budget, holder: str, n: int,
                  release: Callable[[], None]) -> str:
    """Log and audit `n` bytes of input the hub's budget refused; the `busy` answer's message.

    Over the hub's budget for every channel's bodies together, or over this sender's share of
    it (one sender must not hold it all): come back later. `release` lets go of what the
    channel held, once whose share it was is known.
    """
    ctx, peer = handler.ctx, handler.ctx.peer
    mine = budget.held_by(holder) + n > (budget.per_holder or budget.limit)
    release()
    code = "input_per_sender" if mine else "input_total"
    if (folded := ctx.door.refusal_to_log(holder, code)) is not None:
        log.warning("conn %s %s refused (%s): %d bytes of input buffered in all, %d "
                    "by %s; %d more refused since the last such line",
                    peer.address, handler.command, code, budget.used,
                    budget.held_by(holder), quoted(holder, 64), folded)
    ctx.audit.record(peer.source, peer.actor, "input_refused", handler.command, {"code": code})
    whose = "from you" if mine else "in all"
    return f"the hub is holding as much input as it may {whose}; retry later"
