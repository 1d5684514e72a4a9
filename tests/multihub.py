"""What the multi-hub tests share: an operator's watch on one hub, followed on a thread, and
the answers a hub-to-hub link gets to the channels it opens."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import asyncssh

from estate.console._client import HubConnection
from tests.harness import HubProcess


class WatchThread(threading.Thread):
    """An operator's `estate-watch v1` on one hub through the console's client, on an event
    loop of its own: the events received, until the hub goes away."""

    def __init__(self, hub: HubProcess, operator: str, key: Path) -> None:
        super().__init__(daemon=True)
        self.conn = HubConnection(hub.address, operator, key, hub.fingerprint)
        self.events: list[dict[str, Any]] = []

    def run(self) -> None:
        asyncio.run(self._follow())

    async def _follow(self) -> None:
        try:
            await self.conn.connect()
            async for event in self.conn.watch():
                self.events.append(event)
        except Exception:  # the hub was stopped: the test reads what came
            pass
        finally:
            await self.conn.close()


async def tcp_channel_answers(conn: asyncssh.SSHClientConnection,
                              channels: Iterable[tuple[str, int]]) -> list[str]:
    """Open a direct-tcpip channel to each (host, port) on `conn`: "opened", or the reason
    the hub gave for refusing it."""
    answers = []
    for dest in channels:
        try:
            chan, _ = await conn.create_connection(asyncssh.SSHTCPSession, *dest)
            chan.close()
            answers.append("opened")
        except asyncssh.ChannelOpenError as exc:
            answers.append(exc.reason)
    return answers
