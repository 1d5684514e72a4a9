"""Real processes for end-to-end tests: a hub on a free loopback port, enrolled agents.

Every wait is bounded; every process is killed at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh

from estate.agent.transport import HubClient, load_key
from estate.inventory.protocol import ERROR_CODES
from estate.inventory.store import Store
from tests.stores import ON_POSTGRES, open_test_store, store_env, test_store_url

PY = sys.executable
# Every test client connects from 127.0.0.1, often many times a second: lift the hub's
# per-source connection rate (10 a second by default) unless a test sets its own (later flags
# win). tests/test_hardening_door.py and tests/test_ssh_audit.py test the real default.
# Many tests refuse logins from 127.0.0.1 on purpose: no source penalty unless a test asks.
LOOPBACK_RATE = ("--connection-rate", "1000", "--connection-burst", "1000",
                 "--penalty-after", "0")


class AnyKeyServer(asyncssh.SSHServer):
    """A server that lets any public key in as any user: a rogue or old hub in a test
    (subclass it for what else it does)."""

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True


class LoopbackSshServer:
    """A real SSH server on 127.0.0.1, on an event loop of its own thread, that lets any key
    in (a hub of a test's own making: an old one, a rogue one). A subclass answers each
    session in `_run`; `fingerprint` is what an agent pins; `close()` closes every socket."""

    def __init__(self) -> None:
        import paramiko

        from estate.agent.transport import fingerprint_of

        self.key = asyncssh.generate_private_key("ssh-ed25519")
        self.fingerprint = fingerprint_of(paramiko.Ed25519Key(data=self.key.public_data))
        self.connections: list[asyncssh.SSHServerConnection] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(30)
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _listen(self) -> Any:
        connections = self.connections

        class Tracked(AnyKeyServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                connections.append(conn)

        return await asyncssh.create_server(
            Tracked, "127.0.0.1", 0, server_host_keys=[self.key], process_factory=self._run,
            encoding=None)

    async def _run(self, process: asyncssh.SSHServerProcess) -> None:
        """Each session's answer; by default that of a hub that knows no such command (a
        subclass answers what it plays)."""
        answer = {"status": "error", "code": "unknown_command",
                  "message": f"unknown command {process.command!r}"}
        process.stdout.write((json.dumps(answer) + "\n").encode())
        process.exit(ERROR_CODES["unknown_command"])

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            await self.server.wait_closed()
            for conn in self.connections:
                conn.close()
                await conn.wait_closed()

        # Every socket closed here, not left to a later test's garbage collection to find.
        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def run(*args: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([PY, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


class HubProcess:
    """`estate-hub serve` as a subprocess with its own data folder; its store on the backend
    under test (tests/stores.py): the folder's estate.db, or a PostgreSQL database named after
    the folder, which `serve --store` and the admin verbs ($ESTATE_HUB_STORE) are given."""

    def __init__(self, data: Path, extra: tuple[str, ...] = ()) -> None:
        self.data = data
        self.extra = extra
        self.port = 0
        self.fingerprint = ""
        self.metrics_port: int | None = None  # `serve --metrics`: the port it serves on
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = data.parent / f"{data.name}.log"
        self._stderr_lines: list[str] = []

    def start(self, timeout: float = 30) -> HubProcess:
        listen = f"127.0.0.1:{self.port}"
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [PY, "-m", "estate.inventory.hub.cli", "serve", "--listen", listen, "--data",
                 str(self.data), *self.store_args(), *LOOPBACK_RATE, *self.extra],
                stdout=subprocess.PIPE, stderr=log, text=True)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"hub exited before listening:\n{self.log()}")
            if m := re.search(r"host key (SHA256:\S+)", line):
                self.fingerprint = m.group(1)
            if m := re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", line):
                self.metrics_port = int(m.group(1))
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
                return self
        raise AssertionError("hub did not start in time")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        status = self.proc.wait(timeout=30)
        self._close()
        return status

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def store_args(self) -> tuple[str, ...]:
        """`--store URL` on PostgreSQL; nothing on SQLite (the data folder's own file)."""
        url = test_store_url(self.data)
        return ("--store", url) if url else ()

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("-m", "estate.inventory.hub.cli", *args, "--data", str(self.data),
                   check=check, env=store_env(self.data))

    def admin_json(self, *args: str) -> Any:
        return json.loads(self.admin(*args, "--json").stdout)

    def token(self, agency: str = "Council", site: str = "Town Hall", uses: int = 1) -> str:
        out = self.admin("token", "create", "--agency", agency, "--site", site,
                         "--uses", str(uses)).stdout
        return out.strip().splitlines()[0]

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        """The hub's store, opened as an admin verb opens it (from a second process)."""
        store = open_test_store(self.data)
        try:
            yield store
        finally:
            store.close()

    def report_ids(self, agent_id: str) -> list[str]:
        """An agent's stored report ids, in the order the hub received them."""
        with self.store() as store:
            return [r.report_id for r in reversed(store.recent_reports(agent_id, None,
                                                                       1_000_000) or [])]

    @contextlib.contextmanager
    def db(self) -> Iterator[sqlite3.Connection]:
        """A read-only look at SQLite's own file, for tests about SQLite itself (they skip on
        PostgreSQL: mark them `sqlite_only`)."""
        if ON_POSTGRES:
            import pytest

            pytest.skip("reads SQLite's own file")
        db = sqlite3.connect(f"file:{self.data / 'estate.db'}?mode=ro", uri=True, timeout=10)
        try:
            yield db
        finally:
            db.close()


class Agent:
    """An agent enrolled for real with `estate-agent enrol`."""

    def __init__(self, hub: HubProcess, folder: Path, token: str | None = None) -> None:
        self.hub = hub
        self.config = folder / "agent.toml"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # agents refuse open folders
        done = run("-m", "estate.agent", "enrol", "--token", token or hub.token(), "--hub",
                   hub.address, "--config", str(self.config))
        enrolled = re.search(r"enrolled as (ag-[0-9a-f]+)", done.stdout)
        assert enrolled is not None, done.stdout
        self.agent_id = enrolled.group(1)
        self.key_file = folder / "agent_key"

    def client(self) -> HubClient:
        return HubClient(self.hub.address, self.hub.fingerprint, load_key(self.key_file),
                         self.agent_id)

    def report_cli(self) -> subprocess.CompletedProcess[str]:
        return run("-m", "estate.agent", "report", "--config", str(self.config), check=False)

    def send(self, report: dict[str, Any] | bytes) -> tuple[int, dict[str, Any]]:
        body = report if isinstance(report, bytes) else json.dumps(report).encode()
        client = self.client()
        try:
            result = client.run("estate-report v1", body)
        finally:
            client.close()
        return result.exit_status, result.doc


_seq_lock = threading.Lock()
_seq = [0]


def make_report(base: dict[str, Any], agent_id: str, **changes: Any) -> dict[str, Any]:
    """A copy of `base` from `agent_id` with a fresh report id and a later collection time."""
    import copy

    with _seq_lock:
        _seq[0] += 1
        n = _seq[0]
    r = copy.deepcopy(base)
    r["agent"]["id"] = agent_id
    r["report_id"] = f"{agent_id}:1:{n}"
    r["collected_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + n))
    return edit(r, **changes)


def edit(report: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Set fields in place by path, `__` between keys: edit(r, system__hostname="pc")."""
    for path, value in changes.items():
        target = report
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return report


def wait_for(condition, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    """Poll until `condition()` is truthy; its value, or an AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def seed_update_cache(state_dir: Path) -> None:
    """A fresh cache of the daily update check in an agent's state folder, unless one is
    there: every agent started here runs on this one machine, and each would otherwise
    start its own package query (seconds of CPU each; tests/test_posture_linux.py tests
    the check itself)."""
    from estate.agent.collect._posture import _CACHE_VERSION, CACHE_FILE

    path = state_dir / CACHE_FILE
    if not path.exists():
        path.write_text(json.dumps({
            "version": _CACHE_VERSION, "checked_at_epoch": time.time(), "last_success": None,
            "pending": None, "reboot_required": None,
            "reason": "seeded by the test harness: the daily update check did not run"}))


class AgentService:
    """`estate-agent run` as a subprocess, for an enrolled Agent."""

    # Reports every second (`interval`), so a test sees them in seconds. A host turns stale
    # after two intervals without a report, and on a loaded machine an agent's collection
    # alone can take a second, so a test whose host list must read "online" gives
    # STEADY_INTERVAL_S.
    STEADY_INTERVAL_S = 5
    FAST = 'start_delay = 0\nreconnect_max = 1\nbacklog_rate = 50\n'

    def __init__(self, agent: Agent, extra_config: str = "",
                 wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 interval: float = 1) -> None:
        self.agent = agent
        text = agent.config.read_text()
        head, sep, tables = text.partition("\n[")
        agent.config.write_text(head.rstrip("\n") + "\n" + f"interval = {interval}\n"
                                + self.FAST + extra_config
                                + (sep + tables if sep else ""))
        self.log_path = agent.config.parent / "agent.log"
        self.wrapper, self.env = wrapper, env or {}
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> AgentService:
        seed_update_cache(self.agent.config.parent)
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [*self.wrapper, PY, "-m", "estate.agent", "run", "--config",
                 str(self.agent.config)],
                stdout=log, stderr=log, text=True, env={**os.environ, **self.env})
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.agent.config.parent / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class TcpRelay:
    """A loopback TCP relay in front of the hub, to fail a connection in the middle of a send.

    `hold()` stops passing the client's bytes on (they are counted in `held`, then dropped), so
    whatever the agent sends next never reaches the hub; `cut()` then closes every relayed
    connection, as a hub that dies or a network that drops mid-body would, and passes new
    connections through normally again.
    """

    def __init__(self, port: int) -> None:
        import socket

        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.holding = threading.Event()
        self.held = 0
        self._lock = threading.Lock()
        self._socks: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, src: Any, dst: Any, upward: bool) -> None:
        try:
            while data := src.recv(65536):
                if upward and self.holding.is_set():
                    with self._lock:
                        self.held += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def hold(self) -> None:
        with self._lock:
            self.held = 0
        self.holding.set()

    def cut(self) -> None:
        import socket

        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        self.holding.clear()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def tcp_queues(port: int) -> tuple[list[int], list[int]] | None:
    """Bytes waiting in the kernel on loopback TCP connections to `port` (Linux only).

    Returns (unread by the server, per server-side socket; unacknowledged by the server, per
    client-side socket), from /proc/net/tcp; None where that file does not exist. Both all 0
    means the server process has read everything its clients sent.
    """
    unread: list[int] = []
    unacked: list[int] = []
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        if state != "01":  # ESTABLISHED
            continue
        tx, rx = (int(q, 16) for q in queues.split(":"))
        if int(local.split(":")[1], 16) == port:
            unread.append(rx)
        elif int(remote.split(":")[1], 16) == port:
            unacked.append(tx)
    return unread, unacked


def stored_sequences(hub: HubProcess, agent_id: str) -> list[int]:
    """Sequence numbers of an agent's stored reports, in the order the hub received them."""
    return [int(r.rsplit(":", 1)[1]) for r in hub.report_ids(agent_id)]


def add_operator(hub: HubProcess, folder: Path, name: str, role: str = "admin",
                 agencies: str = "all") -> Any:
    """Register an operator with a new ed25519 key (written to `folder`); returns the key."""
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    path = folder / name
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    key.write_public_key(f"{path}.pub")
    hub.admin("operator", "add", name, "--key", f"{path}.pub", "--role", role,
              "--agencies", agencies)
    return key


async def ssh_connect(hub: HubProcess, user: str, key: Any) -> Any:
    """An asyncssh connection to the hub as `user` with `key`, no known_hosts, no agent."""
    import asyncio

    import asyncssh

    return await asyncio.wait_for(asyncssh.connect(
        "127.0.0.1", hub.port, username=user, client_keys=[key], known_hosts=None,
        agent_path=None, config=None), 30)
