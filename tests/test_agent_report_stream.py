"""The agent's side of `estate-report v2`: one report stream per connection, package lists by
hash only, the resend in full on `need_full`, and v1 against a hub that does not know v2.

The agent runs in-process (its collector replaced by one that serves a real report with a
package list the test sets), against a real hub on loopback or a small real asyncssh server
that answers as a hub from before v2 does.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import threading
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from estate.agent import collect as collect_module
from estate.agent.collect._common import package_hash
from estate.agent.config import AgentConfig, SpoolConfig, load
from estate.agent.service import Service
from estate.agent.spool import Spool
from estate.agent.transport import HubClient, load_key
from estate.inventory.protocol import (
    ERROR_CODES,
    REPORT_COMMAND,
    REPORT_STREAM_COMMAND,
    ChannelExit,
)
from estate.inventory.report import make_report_id
from tests.harness import (
    Agent,
    AgentService,
    HubProcess,
    LoopbackSshServer,
    seed_update_cache,
    stored_sequences,
    wait_for,
)

PACKAGES_A = [{"name": "bash", "version": "5.2", "arch": "amd64", "publisher": None},
              {"name": "curl", "version": "8.5", "arch": "amd64", "publisher": None}]
PACKAGES_B = [*PACKAGES_A, {"name": "vim", "version": "9.1", "arch": "amd64",
                            "publisher": None}]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """One real report (a collection of this machine), the shape every fake one copies."""
    report, _ = collect_module.collect_report(agent_id="ag-000000000000", timeout_s=30)
    return report


class FakeCollector:
    """Stands in for `collect_report`: the template, with the package list the test sets."""

    def __init__(self, template: dict[str, Any]) -> None:
        self.template, self.packages = template, PACKAGES_A

    def __call__(self, agent_id: str, sequence: int, **_: Any) -> tuple[dict[str, Any], None]:
        report = copy.deepcopy(self.template)
        report["agent"]["id"] = agent_id
        report["agent"]["interval_s"] = 1.0
        report["report_id"] = make_report_id(agent_id, 1, sequence)
        report["collected_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report["software"].update(packages=copy.deepcopy(self.packages),
                                  count=len(self.packages), hash=package_hash(self.packages))
        return report, None


@pytest.fixture()
def collector(template, monkeypatch) -> FakeCollector:
    fake = FakeCollector(template)
    monkeypatch.setattr(collect_module, "collect_report", fake)
    return fake


class Sent:
    """Every report the agent's client sends, decoded, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reports: list[dict[str, Any]] = []
        real = HubClient.report

        def spy(client: HubClient, body: bytes) -> Any:
            self.reports.append(json.loads(gzip.decompress(body)))
            return real(client, body)

        monkeypatch.setattr(HubClient, "report", spy)

    def in_full(self) -> list[bool]:
        """Per report sent, whether its package list went in full."""
        return [r["software"]["packages"] is not None for r in self.reports]


class Running:
    """A Service on a thread (made there: its spool's SQLite stays on one thread); stopped,
    its spool closed, at exit."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.made = threading.Event()
        self.service: Service | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service = Service(self.cfg)
        finally:
            self.made.set()
        self.service.run()

    def __enter__(self) -> Service:
        self.thread.start()
        self.made.wait(30)
        assert self.service is not None, "the service did not start"
        return self.service

    def __exit__(self, *exc: object) -> None:
        assert self.service is not None
        self.service.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the service did not stop"


def _fast(cfg: AgentConfig) -> AgentConfig:
    return cfg._replace(interval_s=1.0, start_delay_s=0.0, reconnect_max_s=1.0,
                        backlog_rate=50.0)


# --- against the real hub ------------------------------------------------------------------


@pytest.fixture()
def verbose_hub(tmp_path):
    """A hub that logs asyncssh's messages: one `Command:` line per channel's exec."""
    from estate.inventory.hub._commands import HANDLERS

    if REPORT_STREAM_COMMAND not in HANDLERS:
        pytest.skip("this tree's hub does not serve estate-report v2 yet")
    hub = HubProcess(tmp_path / "hub", ("-v",)).start()
    yield hub
    hub.kill()


def _host_packages(hub: HubProcess, agent_id: str) -> list[dict[str, Any]] | None:
    with hub.store() as store:
        host = store.host_detail(agent_id, None)
    return host.packages if host else None


def _execs(hub: HubProcess, command: str) -> int:
    return hub.log().count(f"Command: {command}")


def test_reports_share_one_stream_and_an_unchanged_package_list_goes_by_hash(
        verbose_hub, tmp_path, collector, monkeypatch):
    """Several reports over ONE v2 channel; the list in full once, then by hash only until
    it changes; the hub holds the list the agent has, every report stored once."""
    hub = verbose_hub
    agent = Agent(hub, tmp_path / "agent")
    sent = Sent(monkeypatch)
    with Running(_fast(load(agent.config))):
        wait_for(lambda: len(hub.report_ids(agent.agent_id)) >= 3, what="3 reports stored")
        assert _host_packages(hub, agent.agent_id) == PACKAGES_A
        collector.packages = PACKAGES_B
        wait_for(lambda: _host_packages(hub, agent.agent_id) == PACKAGES_B,
                 what="the changed package list stored")
        count = len(sent.reports)
        wait_for(lambda: len(sent.reports) >= count + 2, what="2 more reports")
    full = sent.in_full()
    assert full[0] and not any(full[1:3]), f"by hash only after the first ack: {full}"
    changed = next(i for i, r in enumerate(sent.reports)
                   if r["software"]["hash"] == package_hash(PACKAGES_B))
    assert full[changed] and not any(full[changed + 1:]), \
        f"a changed list goes in full once, then by hash: {full}"
    stored = hub.report_ids(agent.agent_id)
    assert len(stored) == len(set(stored)), "a report stored twice"
    assert set(stored) <= {r["report_id"] for r in sent.reports}
    assert _execs(hub, REPORT_STREAM_COMMAND) == 1, "more than one report stream"
    assert _execs(hub, REPORT_COMMAND) == 0


def test_a_hub_without_the_list_asks_for_it_and_gets_the_same_report_in_full(
        verbose_hub, tmp_path, collector, monkeypatch):
    """The agent believes the hub acked this list (its spool says so, as after a hub restored
    from a backup): the report goes by hash, the hub answers need_full, the same report goes
    again in full, and the hub ends up with the list."""
    hub = verbose_hub
    agent = Agent(hub, tmp_path / "agent")
    cfg = _fast(load(agent.config))
    spool = Spool(cfg.state_dir() / "spool.db")
    spool.save_acked_software(package_hash(PACKAGES_A))
    spool.close()
    sent = Sent(monkeypatch)
    with Running(cfg):
        wait_for(lambda: len(hub.report_ids(agent.agent_id)) >= 2, what="2 reports stored")
    first, again = sent.reports[0], sent.reports[1]
    assert first["software"]["packages"] is None, "the first report did not go by hash"
    assert again["report_id"] == first["report_id"] and \
        again["software"]["packages"] == PACKAGES_A, "not the same report in full"
    assert _host_packages(hub, agent.agent_id) == PACKAGES_A
    stored = hub.report_ids(agent.agent_id)
    assert stored[0] == first["report_id"] and len(stored) == len(set(stored))
    assert not any(sent.in_full()[2:]), "after the ack in full, by hash again"


def test_across_a_hub_sigkill_every_report_arrives_once_over_v2(verbose_hub, tmp_path):
    """The real agent (a process) on v2, its hub SIGKILLed mid-stream and started again: every
    report stored once, each connection on one stream, v1 never used."""
    hub = verbose_hub
    agent = Agent(hub, tmp_path / "agent", hub.token())
    svc = AgentService(agent).start()
    try:
        wait_for(lambda: len(stored_sequences(hub, agent.agent_id)) >= 3, what="3 reports")
        hub.kill()
        wait_for(lambda: svc.status().get("spool_reports", 0) >= 3, timeout=30,
                 what="reports waiting in the spool while the hub is down")
        hub.start()
        wait_for(lambda: svc.status().get("spool_reports") == 0 and svc.status().get(
            "connected") and len(stored_sequences(hub, agent.agent_id)) >= 8, timeout=60,
            what="the spool to drain")
        assert svc.stop() == 0
    finally:
        svc.kill()
    seqs = stored_sequences(hub, agent.agent_id)
    assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"lost or doubled: {seqs}"
    streams = _execs(hub, REPORT_STREAM_COMMAND)
    logins = hub.log().count(f"login user={agent.agent_id}")
    assert 2 <= streams <= logins, f"{streams} streams for {logins} connections"
    assert _execs(hub, REPORT_COMMAND) == 0


# --- an older hub: v1 only -----------------------------------------------------------------


class SmallHub(LoopbackSshServer):
    """A small real SSH server: any agent key, `estate-report v1` answered `stored` (or
    `duplicate`), anything else `unknown_command` (exit 64) as the hub's session does: a hub
    from before v2. With `streams_ending` set, it serves v2 frames too, but ends that many
    streams after their first frame without an answer. `drop()` closes every connection."""

    def __init__(self, streams_ending: int | None = None) -> None:
        self.streams_ending = streams_ending
        self.commands: list[str] = []
        self.stored: list[str] = []
        super().__init__()

    async def _run(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or ""
        self.commands.append(command)
        if command == REPORT_STREAM_COMMAND and self.streams_ending is not None:
            await self._stream(process)
            return
        if command != REPORT_COMMAND:
            answer = {"status": "error", "code": "unknown_command",
                      "message": f"unknown command {command!r}"}
            process.stdout.write((json.dumps(answer) + "\n").encode())
            process.exit(ERROR_CODES["unknown_command"])
            return
        process.stdout.write(self._store(await process.stdin.read()))
        process.exit(ChannelExit.OK)

    async def _stream(self, process: asyncssh.SSHServerProcess) -> None:
        try:
            while True:
                length = int.from_bytes(await process.stdin.readexactly(4), "big")
                body = await process.stdin.readexactly(length)
                if self.streams_ending:
                    self.streams_ending -= 1
                    process.exit(ChannelExit.OK)  # ended, the frame unanswered
                    return
                process.stdout.write(self._store(body))
        except asyncio.IncompleteReadError:
            process.exit(ChannelExit.OK)

    def _store(self, body: bytes) -> bytes:
        """Store a report (in memory): its ack line."""
        report = json.loads(gzip.decompress(body))
        status = "duplicate" if report["report_id"] in self.stored else "stored"
        self.stored.append(report["report_id"])
        return (json.dumps({"status": status, "report_id": report["report_id"]})
                + "\n").encode()

    def drop(self) -> None:
        for conn in list(self.connections):
            self.loop.call_soon_threadsafe(conn.close)


@pytest.fixture()
def old_hub():
    server = SmallHub()
    yield server
    server.close()


def _agent_for(server: SmallHub, folder: Path) -> AgentConfig:
    """An agent enrolled (as far as it knows) with `server`: its own key, the server pinned."""
    folder.mkdir(mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = folder / "agent_key"
    key_file.write_bytes(key.export_private_key())
    key_file.chmod(0o600)
    load_key(key_file)  # as the agent reads it
    seed_update_cache(folder)
    return _fast(AgentConfig(path=folder / "agent.toml", agent_id="ag-0123456789ab",
                             hub=f"127.0.0.1:{server.port}", hub_key=server.fingerprint,
                             key_file=key_file, spool=SpoolConfig(path=folder / "spool.db")))


def test_against_a_hub_without_v2_the_agent_uses_v1_until_its_next_connection(
        old_hub, tmp_path, collector, caplog):
    """v2 is tried once a connection: answered `unknown_command`, that report and the rest go
    over v1 on channels of their own; a new connection tries v2 again. Nothing is lost."""
    caplog.set_level("INFO", logger="estate.agent")
    cfg = _agent_for(old_hub, tmp_path / "agent")
    with Running(cfg) as svc:
        wait_for(lambda: len(old_hub.stored) >= 3, what="3 reports over v1")
        assert old_hub.commands[0] == REPORT_STREAM_COMMAND
        assert set(old_hub.commands[1:]) == {REPORT_COMMAND}, old_hub.commands
        old_hub.drop()
        wait_for(lambda: old_hub.commands.count(REPORT_STREAM_COMMAND) >= 2,
                 what="v2 tried again on the next connection")
        count = len(old_hub.stored)
        wait_for(lambda: len(old_hub.stored) >= count + 2, what="v1 again after it")
        assert svc.client is not None and svc.client.v1_only
    fallbacks = [r for r in caplog.records if "does not know estate-report v2" in r.message]
    assert len(fallbacks) == old_hub.commands.count(REPORT_STREAM_COMMAND) == 2
    assert all(r.levelname == "INFO" for r in fallbacks)
    assert len(old_hub.stored) == len(set(old_hub.stored)), "a report sent twice"
    assert cfg.spool.path is not None
    spool = Spool(cfg.spool.path)
    try:
        assert spool.depth()[0] <= 1, "acked reports left in the spool"
    finally:
        spool.close()


def test_a_stream_ended_without_an_answer_is_reopened_and_the_report_sent_again(
        tmp_path, collector, caplog):
    """The hub ends the stream after a frame, unanswered: the report stays in the spool and
    goes again on a new stream of the same connection; stored once."""
    server = SmallHub(streams_ending=1)
    try:
        cfg = _agent_for(server, tmp_path / "agent")
        first = f"{cfg.agent_id}:1:1"
        with Running(cfg):
            wait_for(lambda: first in server.stored and len(server.stored) >= 3,
                     what="the unanswered report, and more, stored over v2")
        assert server.commands[:2] == [REPORT_STREAM_COMMAND] * 2, server.commands
        assert REPORT_COMMAND not in server.commands
        assert len(server.connections) == 1, "the connection was dropped for it"
        assert len(server.stored) == len(set(server.stored)), server.stored
        assert any("ended the report stream" in r.message for r in caplog.records)
    finally:
        server.close()


def test_the_spool_keeps_a_package_list_while_a_report_waits_by_its_hash(tmp_path):
    """Lists are kept once per hash, for the reports waiting by hash and the newest put, no
    longer; a spool from before (no such columns) opens and keeps its reports."""
    import sqlite3

    path = tmp_path / "spool.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, report_id TEXT NOT NULL "
                "UNIQUE, created_at REAL NOT NULL, body BLOB NOT NULL)")
    old.execute("INSERT INTO outbox (report_id, created_at, body) VALUES ('a:1:1', ?, ?)",
                (time.time(), b"old"))
    old.commit()
    old.close()
    path.chmod(0o600)
    spool = Spool(path)
    try:
        item = spool.newest()
        assert item is not None and (item.body, item.software_hash, item.by_hash) == \
            (b"old", None, False)
        spool.put("a:1:2", b"full", "h1", False, b"list-1")
        spool.put("a:1:3", b"by-hash", "h1", True)
        assert spool.package_list("h1") == b"list-1"
        spool.put("a:1:4", b"full", "h2", False, b"list-2")
        assert spool.has_packages("h1"), "a report waiting by hash lost its list"
        newest = spool.newest()
        assert newest is not None and (newest.software_hash, newest.by_hash) == ("h2", False)
        waiting = spool.newest(excluding={newest.seq})
        assert waiting is not None and waiting.by_hash and waiting.software_hash == "h1"
        spool.ack(waiting.seq)
        spool.put("a:1:5", b"by-hash", "h2", True)
        assert not spool.has_packages("h1") and spool.package_list("h2") == b"list-2"
        assert spool.acked_software() is None
        spool.save_acked_software("h2")
    finally:
        spool.close()
    again = Spool(path)
    try:
        assert again.acked_software() == "h2"
        again.save_acked_software(None)
        assert again.acked_software() is None
    finally:
        again.close()
