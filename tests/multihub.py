"""What the multi-hub tests share: an operator's watch on one hub, followed on a thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

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
