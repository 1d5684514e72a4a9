"""This process's stdin and stdout as async byte streams: `estate tunnel`'s Python relay.

POSIX: the event loop's own pipe transports. Windows: two daemon threads, because the
Proactor event loop reads only handles opened for overlapped I/O, and ssh.exe gives its
ProxyCommand ordinary pipes; daemon threads, so a read still blocked on stdin never holds
up the exit.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
from typing import Protocol

__all__ = ["Stdio", "open_stdio"]


class Stdio(Protocol):
    async def read(self) -> bytes:
        """What stdin has, up to the chunk size; b"" at its end."""

    async def write(self, data: bytes) -> None:
        """All of `data`, once stdout took it."""

    def close(self) -> None:
        """Stop writing; stdout is closed (or left to the exit, on Windows)."""


async def open_stdio(chunk: int) -> Stdio:
    """stdin and stdout, read `chunk` bytes at a time at most."""
    if sys.platform == "win32":
        return _ThreadedStdio(asyncio.get_running_loop(), chunk)
    return await _PipeStdio.open(chunk)


class _PipeStdio:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 chunk: int) -> None:
        self._reader, self._writer, self._chunk = reader, writer, chunk

    @classmethod
    async def open(cls, chunk: int) -> _PipeStdio:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=chunk)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(sys.stdin.fileno(), "rb", buffering=0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(sys.stdout.fileno(), "wb", buffering=0))
        return cls(reader, asyncio.StreamWriter(transport, protocol, None, loop), chunk)

    async def read(self) -> bytes:
        return await self._reader.read(self._chunk)

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    def close(self) -> None:
        self._writer.transport.close()


class _ThreadedStdio:
    def __init__(self, loop: asyncio.AbstractEventLoop, chunk: int,
                 stdin_fd: int | None = None, stdout_fd: int | None = None) -> None:
        self._loop, self._chunk = loop, chunk
        self._in = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        self._out = sys.stdout.fileno() if stdout_fd is None else stdout_fd
        if sys.platform == "win32":
            import msvcrt

            # The C runtime's text mode would turn the SSH stream's \n bytes into \r\n.
            msvcrt.setmode(self._in, os.O_BINARY)
            msvcrt.setmode(self._out, os.O_BINARY)
        # A few chunks in flight at most: a reader thread ahead of the hub waits for room.
        self._incoming: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        self._outgoing: queue.SimpleQueue[tuple[bytes, asyncio.Future[None]] | None] = (
            queue.SimpleQueue())
        threading.Thread(target=self._read_stdin, name="stdin", daemon=True).start()
        threading.Thread(target=self._write_stdout, name="stdout", daemon=True).start()

    async def read(self) -> bytes:
        return await self._incoming.get()

    async def write(self, data: bytes) -> None:
        done: asyncio.Future[None] = self._loop.create_future()
        self._outgoing.put((data, done))
        await done

    def close(self) -> None:
        self._outgoing.put(None)

    def _read_stdin(self) -> None:
        while True:
            try:
                data = os.read(self._in, self._chunk)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(self._incoming.put(data), self._loop).result()
            except RuntimeError:  # the loop is closed: the relay is over
                return
            if not data:
                return

    def _write_stdout(self) -> None:
        while (item := self._outgoing.get()) is not None:
            data, done = item
            failure: OSError | None = None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._out, view):]
            except OSError as exc:
                failure = exc
            try:
                self._loop.call_soon_threadsafe(_settle, done, failure)
            except RuntimeError:  # the loop is closed
                return


def _settle(done: asyncio.Future[None], failure: OSError | None) -> None:
    if done.done():
        return
    if failure is None:
        done.set_result(None)
    else:
        done.set_exception(failure)
