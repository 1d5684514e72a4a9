"""HAProxy (Debian's package, the real binary) in front of two real hubs on one PostgreSQL
store sharing one host key: agents enrol and report through it and land on both hubs, an
operator lists hosts through it, and when one hub is killed its agents come back through
HAProxy on the other and keep reporting. HAProxy runs docs/scale-out.md's sample
configuration, and the hubs its flags for hubs behind HAProxy, with this test's addresses."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from estate.console._client import HubConnection
from tests.conftest import ROOT
from tests.harness import Agent, AgentService, HubProcess, add_operator, run, wait_for
from tests.sshd import free_port, stop_process
from tests.stores import ON_POSTGRES, open_test_store, test_store_url

HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)

pytestmark = [
    pytest.mark.skipif(not ON_POSTGRES, reason="several hubs share a PostgreSQL store; SQLite "
                       "has one hub (run with ESTATE_TEST_STORE=postgresql, as `make test` does)"),
    pytest.mark.skipif(HAPROXY is None, reason="HAProxy is needed: apt-get install haproxy "
                       "(.ci/run installs it)"),
]

SCALE_OUT = ROOT / "docs" / "scale-out.md"
# Fast heartbeats: the killed hub is taken for dead 3 s after it stops. The survivor's long
# timeout keeps a heartbeat delayed by this busy machine from having it taken for dead.
HEARTBEAT = ("--heartbeat", "0.5")
AGENTS = 4
BOUND_S = 90  # generous: the machine is shared; no timing is asserted below it


def _doc_block(language: str, containing: str) -> str:
    """The first ```LANGUAGE block of docs/scale-out.md that holds `containing`."""
    for block in re.findall(rf"^```{language}\n(.*?)^```", SCALE_OUT.read_text(),
                            re.MULTILINE | re.DOTALL):
        if containing in block:
            return block
    raise AssertionError(f"docs/scale-out.md has no {language} block with {containing!r}")


def haproxy_config(port: int, hub_ports: list[int]) -> str:
    """docs/scale-out.md's sample with this test's listening port and hubs, under a global
    section of our own (the sample keeps the distribution's)."""
    sample = _doc_block("haproxy", "frontend estate")
    sample, binds = re.subn(r"^(\s*bind )\S+", rf"\g<1>127.0.0.1:{port}", sample,
                            flags=re.MULTILINE)
    servers = iter(hub_ports)
    sample, count = re.subn(r"^(\s*server \S+ )\S+",
                            lambda m: f"{m.group(1)}127.0.0.1:{next(servers)}", sample,
                            flags=re.MULTILINE)
    assert (binds, count) == (1, len(hub_ports)), "the sample's bind and server lines changed"
    return "global\n    maxconn 1000\n\n" + sample


def behind_haproxy_flags() -> tuple[str, ...]:
    """The `serve` flags docs/scale-out.md sets for hubs behind HAProxy (`--flag N` pairs)."""
    block = _doc_block("sh", "--penalty-after")
    flags = re.findall(r"(--[a-z-]+) (\d+)(?=\s)", block)
    assert {f for f, _ in flags} >= {"--connection-rate", "--penalty-after"}
    return tuple(part for pair in flags for part in pair)


class HAProxy:
    """haproxy -db (foreground) on a free loopback port, its config and log in `folder`."""

    def __init__(self, folder: Path, hub_ports: list[int]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = folder / "haproxy.cfg"
        self.config.write_text(haproxy_config(self.port, hub_ports))
        self.log_path = folder / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> HAProxy:
        assert HAPROXY is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)],
                                         stdout=log, stderr=log)
        # Up once a connection through it gets a hub's SSH version line.
        wait_for(self._answers, 30, 0.2, "HAProxy to pass a connection to a hub")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited {self.proc.returncode}:\n"
                                 f"{self.log_path.read_text(errors='replace')}")
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


def _holders(folder: Path) -> dict[str, tuple[int, str | None]]:
    """Each agent's (connected, holding hub), read from the store."""
    store = open_test_store(folder)
    try:
        return {r[0]: (r[1], r[2]) for r in store.db.execute(
            "SELECT id, connected, connected_hub FROM agents")}
    finally:
        store.close()


def _operator_hosts(address: str, key: Path, fingerprint: str) -> dict[str, str]:
    """Each host's status as the operator API answers it, through `address`."""
    async def hosts() -> Any:
        conn = HubConnection(address, "olive", key, fingerprint)
        await conn.connect()
        try:
            return await conn.request("hosts")
        finally:
            await conn.close()

    answer = asyncio.run(hosts())
    agent_id, status = answer["columns"].index("agent_id"), answer["columns"].index("status")
    return {row[agent_id]: row[status] for row in answer["rows"]}


def _wait_all_online(proxy: HAProxy, key: Path, fingerprint: str, everyone: set[str]) -> None:
    # Waited for, not asserted at once: a host is `stale` after two of its intervals without
    # a report, which a busy machine can make happen for a moment.
    wait_for(lambda: _operator_hosts(proxy.address, key, fingerprint) == dict.fromkeys(
        everyone, "online"), BOUND_S, 0.5, "every host online in the operator's host list")


def test_two_hubs_behind_haproxy_carry_agents_and_operators(tmp_path):
    url = test_store_url(tmp_path / "a")
    assert url is not None
    flags = behind_haproxy_flags()

    def hub(name: str, timeout_s: int) -> HubProcess:
        return HubProcess(tmp_path / name, extra=(
            "--store", url, "--hub-name", f"hub-{name}", *HEARTBEAT,
            "--hub-timeout", str(timeout_s), *flags))

    hub_a = hub("a", 3).start()
    key = tmp_path / "hub-key"
    run("-m", "estate.inventory.hub.cli", "key", "export", "--out", str(key), "--data",
        str(tmp_path / "a"))
    run("-m", "estate.inventory.hub.cli", "key", "import", str(key), "--data",
        str(tmp_path / "b"))
    hub_b = hub("b", 60).start()
    proxy = HAProxy(tmp_path / "haproxy", [hub_a.port, hub_b.port])
    services: list[AgentService] = []
    try:
        assert hub_b.fingerprint == hub_a.fingerprint
        proxy.start()
        # Enrolled through HAProxy: agent.toml's hub is HAProxy's address.
        front = SimpleNamespace(address=proxy.address)
        token = hub_a.token(uses=AGENTS)
        with ThreadPoolExecutor(AGENTS) as pool:
            agents = list(pool.map(lambda i: Agent(front, tmp_path / f"agent{i}", token),  # type: ignore[arg-type]
                                   range(AGENTS)))
        everyone = {a.agent_id for a in agents}
        services = [AgentService(a, interval=AgentService.STEADY_INTERVAL_S).start()
                    for a in agents]

        # leastconn spreads the long-lived connections over both hubs.
        held = wait_for(lambda: (lambda h: h if sum(h.values()) == AGENTS and len(h) == 2
                                 else None)({r["id"]: r["agents"] for r in
                                             hub_a.admin_json("hubs") if r["agents"]}),
                        BOUND_S, 0.5, "both hubs holding agents (estate-hub hubs)")
        assert set(held) == {"hub-a", "hub-b"}
        holders = _holders(tmp_path / "a")
        assert {holders[a][1] for a in everyone} == {"hub-a", "hub-b"}
        on_a = {a for a in everyone if holders[a][1] == "hub-a"}
        for agent in agents:
            wait_for(lambda agent=agent: hub_a.report_ids(agent.agent_id), BOUND_S, 0.5,
                     "a report from every agent")

        # An operator through HAProxy sees every host online, whichever hub it reached.
        add_operator(hub_a, tmp_path, "olive")
        _wait_all_online(proxy, tmp_path / "olive", hub_a.fingerprint, everyone)

        # Hub A dies without a word: its agents come back through HAProxy on hub B.
        reports_before = {a: len(hub_a.report_ids(a)) for a in on_a}
        hub_a.kill()
        wait_for(lambda: all(h == (1, "hub-b") for a, h in _holders(tmp_path / "a").items()
                             if a in everyone), BOUND_S, 0.5, "every agent held by hub B")
        for agent_id, before in reports_before.items():
            wait_for(lambda a=agent_id, n=before: len(hub_a.report_ids(a)) >= n + 2, BOUND_S,
                     0.5, "the moved agents reporting through hub B")
        wait_for(lambda: [r["id"] for r in hub_a.admin_json("hubs")] == ["hub-b"], BOUND_S,
                 0.5, "the dead hub removed from the registry")
        _wait_all_online(proxy, tmp_path / "olive", hub_a.fingerprint, everyone)
        assert proxy.proc is not None and proxy.proc.poll() is None
    finally:
        for service in services:
            service.kill()
        proxy.stop()
        hub_a.kill()
        hub_b.kill()
