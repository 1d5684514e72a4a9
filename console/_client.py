"""The operator's SSH client to the hub (asyncssh): pinned host key, the API and the watch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh

from estate.inventory.errors import CodedError, EstateError
from estate.inventory.protocol import API_COMMAND, WATCH_COMMAND
from estate.inventory.sanitise import plain

__all__ = ["ApiFailure", "HubConnection", "HubUnreachable", "UnknownHubKey", "open_connection",
           "probe_host_key"]


class HubUnreachable(EstateError):
    """No connection (down, refused, timed out, login refused); the message says which."""


class UnknownHubKey(HubUnreachable):
    """The hub's key is not the pinned one (or none is pinned yet)."""

    def __init__(self, address: str, seen: str | None, pinned: str | None) -> None:
        if pinned:
            text = (f"the hub at {address} presented host key {seen}, but this console pinned "
                    f"{pinned}: refusing to connect (if the hub was rebuilt, update hub_key)")
        else:
            text = f"the hub at {address} presents host key {seen}, which is not pinned yet"
        super().__init__(text)
        self.seen, self.pinned = seen, pinned


class ApiFailure(CodedError):
    """The hub's error answer; its code and message made plain text (they are the hub's)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(plain(code, 64), plain(message, 1000))

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class _Pinned(asyncssh.SSHClient):
    """Accepts exactly the pinned host key; remembers what it was shown."""

    def __init__(self, pinned: str | None) -> None:
        self.pinned = pinned
        self.seen: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        self.seen = key.get_fingerprint("sha256")
        return self.pinned is not None and self.seen == self.pinned


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def _open(address: str, user: str, key_path: Path | None,
                pinned: str | None) -> tuple[asyncssh.SSHClientConnection, _Pinned]:
    host, port = _split(address)
    client = _Pinned(pinned)
    keys = [asyncssh.read_private_key(str(key_path))] if key_path else None
    try:
        conn, _ = await asyncio.wait_for(asyncssh.create_connection(
            lambda: client, host, port, username=user, client_keys=keys,
            known_hosts=([], [], []), agent_path=None if keys else (),
            config=None, keepalive_interval=30, keepalive_count_max=3,
            password_auth=False, kbdint_auth=False), timeout=20)
    except asyncssh.HostKeyNotVerifiable:
        raise UnknownHubKey(address, client.seen, pinned) from None
    except asyncssh.PermissionDenied:
        raise HubUnreachable(f"the hub at {address} refused the login of {user!r} (is the "
                             f"operator registered with this key?)") from None
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        # A disconnect's reason is the server's text: plain, whoever is listening there.
        why = plain(getattr(exc, "strerror", None) or exc or "timed out", 500)
        raise HubUnreachable(f"cannot reach the hub at {address}: {why}") from None
    return conn, client


async def open_connection(address: str, user: str, key_path: Path | None,
                          pinned: str) -> asyncssh.SSHClientConnection:
    """A logged-in connection to the hub with its key checked against the pinned one."""
    conn, _ = await _open(address, user, key_path, pinned)
    return conn


async def probe_host_key(address: str) -> str:
    """The fingerprint the hub presents, for a first-use prompt (no login happens)."""
    try:
        await _open(address, "probe", None, None)
    except UnknownHubKey as exc:
        if exc.seen:
            return exc.seen
        raise
    raise HubUnreachable(f"the hub at {address} accepted an unpinned key check")


class HubConnection:
    """One SSH connection: a JSON-lines API channel, and watch channels on demand."""

    def __init__(self, address: str, user: str, key_path: Path | None,
                 hub_key: str) -> None:
        self.address, self.user, self.key_path, self.hub_key = address, user, key_path, hub_key
        self.conn: asyncssh.SSHClientConnection | None = None
        self._api: Any = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.conn, _ = await _open(self.address, self.user, self.key_path, self.hub_key)
        try:
            self._api = await self.conn.create_process(API_COMMAND, encoding="utf-8")
        except (asyncssh.Error, OSError) as exc:
            raise HubUnreachable(f"the hub refused the API channel ({plain(exc, 500)})") \
                from None
        self._reader = asyncio.get_running_loop().create_task(self._read_answers())

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    async def request(self, op: str, **params: Any) -> Any:
        """One API call. Raises ApiFailure for an error answer, HubUnreachable if cut off."""
        if self._api is None or not self.connected:
            raise HubUnreachable("not connected to the hub")
        self._next_id += 1
        rid = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self._api.stdin.write(json.dumps({"id": rid, "op": op, **params}) + "\n")
        except (asyncssh.Error, OSError) as exc:
            self._pending.pop(rid, None)
            raise HubUnreachable(f"the connection to the hub was lost ({exc})") from None
        answer = await future
        if not answer.get("ok"):
            err = answer.get("error") or {}
            raise ApiFailure(err.get("code", "error"), err.get("message", "failed"))
        return answer["result"]

    async def _read_answers(self) -> None:
        try:
            async for line in self._api.stdout:
                answer = json.loads(line)
                future = self._pending.pop(answer.get("id"), None)
                if future and not future.done():
                    future.set_result(answer)
        except (asyncssh.Error, OSError, ValueError):
            pass
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HubUnreachable("the connection to the hub was lost"))
        self._pending.clear()

    async def open_watch(self) -> Any:
        """Subscribe to events now (before loading, so nothing between is missed)."""
        if self.conn is None:
            raise HubUnreachable("not connected to the hub")
        try:
            return await self.conn.create_process(WATCH_COMMAND, encoding="utf-8")
        except (asyncssh.Error, OSError) as exc:
            raise HubUnreachable(f"the connection to the hub was lost ({exc})") from None

    async def events(self, process: Any) -> AsyncIterator[dict[str, Any]]:
        """Events in scope: presence, host updates, changes; ends when the connection does."""
        try:
            async for line in process.stdout:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
        except (asyncssh.Error, OSError) as exc:
            raise HubUnreachable(f"the connection to the hub was lost ({exc})") from None
        finally:
            process.close()

    async def watch(self) -> AsyncIterator[dict[str, Any]]:
        async for event in self.events(await self.open_watch()):
            yield event

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            try:
                await asyncio.wait_for(self.conn.wait_closed(), 5)
            except (asyncio.TimeoutError, OSError):
                pass
        self.conn = None
