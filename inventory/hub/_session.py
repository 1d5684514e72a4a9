"""One SSH session channel: refuses shells, ptys and subsystems, checks that the peer may run
the command it asked for, and hands the channel's events to that command's handler."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from estate.inventory.hub._commands import HANDLERS, Channel, Handler
from estate.inventory.hub._context import Context
from estate.inventory.protocol import COMMANDS
from estate.inventory.sanitise import quoted

log = logging.getLogger("estate.hub")


class Session(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """One session channel running one allow-listed command.

    Args:
        ctx: what the command's handler gets.
        closed: called when the channel is gone (the connection counts its channels).
        close_connection: for a connection that runs one command (`enrol`): closes it.
    """

    def __init__(self, ctx: Context, closed: Callable[[], None],
                 close_connection: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        self.channel = Channel(close_connection)
        self.command: str | None = None
        self.handler: Handler | None = None
        self._closed = closed

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:  # type: ignore[type-arg]
        self.channel.chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        log.warning("conn %s refused pty", self.ctx.peer.address)
        return False

    def shell_requested(self) -> bool:
        log.warning("conn %s refused shell", self.ctx.peer.address)
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        log.warning("conn %s refused subsystem %s", self.ctx.peer.address,
                    quoted(subsystem, 64))
        return False

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True  # accepted so the refusal can say why, in JSON, on this channel

    def session_started(self) -> None:
        peer = self.ctx.peer
        needed = COMMANDS.get(self.command or "")
        if needed is None:
            self.channel.fail("unknown_command",
                              f"unknown command {quoted(self.command, 64)}; this hub runs "
                              f"{', '.join(sorted(COMMANDS))}")
        elif needed != peer.role:
            self.channel.fail("forbidden",
                              f"user {peer.name!r} may not run {self.command!r}")
        else:
            self.handler = HANDLERS[self.command or ""](self.ctx, self.channel)
            self.handler.start()

    def data_received(self, data: bytes, datatype: Any) -> None:
        if not self.channel.finished and self.handler is not None:
            self.handler.data(data)

    def eof_received(self) -> bool:
        if self.handler is not None:
            self.handler.eof()
        return True  # keep our side open to answer

    def pause_writing(self) -> None:
        self.channel.writable.clear()
        if self.handler is not None:
            self.handler.flow()

    def resume_writing(self) -> None:
        self.channel.writable.set()
        if self.handler is not None:
            self.handler.flow()

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.finished = True
        self.channel.writable.set()  # release a sender waiting on a window that will never open
        if self.handler is not None:
            self.handler.closed()
        self.channel.chan = None
        self._closed()
        self.channel.close_connection_soon()  # enrol runs one command per connection
