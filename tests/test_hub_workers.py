"""Several hub processes as one hub: `serve --workers N` on one port (PostgreSQL), one host key
on several hubs (`key export`/`import`), and `--max-agents` sending agents away `busy`. Real
processes on loopback; every wait bounded."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import stat
import time
from pathlib import Path

import asyncssh
import psutil
import pytest

from estate.agent.transport import HubBusy, _sent_away
from estate.inventory.protocol import Exit
from tests.harness import (
    Agent,
    AgentService,
    HubProcess,
    add_operator,
    run,
    ssh_connect,
    stored_sequences,
    wait_for,
)
from tests.stores import ON_POSTGRES, test_store_url

HUB = ("-m", "estate.inventory.hub.cli")
# Workers share a store only PostgreSQL lets several processes write.
needs_postgres = pytest.mark.skipif(
    not ON_POSTGRES, reason="several writer processes need PostgreSQL: runs in the "
                            "PostgreSQL pass (make test-postgres)")
# Nothing here depends on the store: run once, in the SQLite pass.
once = pytest.mark.skipif(ON_POSTGRES, reason="does not depend on the store: runs in the "
                                              "SQLite pass")


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def _logins(hub: HubProcess, agent_id: str | None = None) -> list[tuple[str, str]]:
    """(worker, agent id) of each agent login in the hub's log, oldest first."""
    who = re.escape(agent_id) if agent_id else r"ag-[0-9a-f]+"
    return re.findall(rf" (w\d+) INFO conn \S+ login user=({who}) role=agent", hub.log())


def _worker_pid(hub: HubProcess, index: int) -> int:
    assert hub.proc is not None
    for child in psutil.Process(hub.proc.pid).children():
        if child.cmdline()[-2:] == ["--worker", str(index)]:
            return child.pid
    raise AssertionError(f"no worker {index} under the parent")


def _land_on(hub: HubProcess, agent: Agent, worker: str, after: int = 0) -> None:
    """Log in again and again (each a new connection the kernel places) until `worker` takes
    one, after the first `after` logins in the log."""
    for _ in range(60):
        client = agent.client()
        client.connect()
        client.close()
        if any(w == worker for w, _ in _logins(hub)[after:]):
            return
    raise AssertionError(f"60 logins and none on {worker}: {_logins(hub)}")


@needs_postgres
def test_workers_share_one_port_and_a_killed_worker_is_restarted_with_nothing_lost(tmp_path):
    hub = HubProcess(tmp_path / "hub", ("--workers", "2", "--report-burst", "0"))
    hub.port = _free_port()
    hub.start(timeout=90)
    services: list[AgentService] = []
    try:
        agents = [Agent(hub, tmp_path / f"agent{i}") for i in range(3)]
        # One port, two processes: new connections land on both.
        for worker in ("w1", "w2"):
            _land_on(hub, agents[0], worker)
        services = [AgentService(a).start() for a in agents]
        for a in agents:
            wait_for(lambda a=a: len(stored_sequences(hub, a.agent_id)) >= 2, timeout=60,
                     what=f"2 reports from {a.agent_id}")
        # SIGKILL the worker holding the first agent: the parent notices and starts it again.
        victim = _logins(hub, agents[0].agent_id)[-1][0]
        index = int(victim[1:])
        pid = _worker_pid(hub, index)
        psutil.Process(pid).send_signal(signal.SIGKILL)
        wait_for(lambda: re.search(rf"worker {index} \(pid {pid}\) died after \d+ s \(killed "
                                   rf"by SIGKILL\); restarting it in \d+ s", hub.log()),
                 timeout=30, what="the parent to see its worker die")
        wait_for(lambda: f"worker {index} restarted" in hub.log(), timeout=30,
                 what="the worker restarted")
        new_pid = wait_for(lambda: _worker_pid(hub, index), timeout=30, what="its new pid")
        assert new_pid != pid
        at_kill = {a.agent_id: max(stored_sequences(hub, a.agent_id)) for a in agents}
        # The restarted worker takes connections again.
        _land_on(hub, agents[1], victim, after=len(_logins(hub)))
        # Its agents came back (through either worker) and every report arrived once.
        for svc, a in zip(services, agents, strict=True):
            wait_for(lambda svc=svc, a=a: svc.status().get("connected")
                     and svc.status().get("spool_reports") == 0
                     and max(stored_sequences(hub, a.agent_id)) >= at_kill[a.agent_id] + 2,
                     timeout=90, what=f"{a.agent_id} reporting again")
        for svc in services:
            assert svc.stop() == 0
        for a in agents:
            seqs = stored_sequences(hub, a.agent_id)
            assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"lost or doubled: {seqs}"
        # SIGTERM to the parent stops every worker cleanly, then the parent.
        workers = [_worker_pid(hub, i) for i in (1, 2)]
        assert hub.signal(signal.SIGTERM) == 0
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in workers)
    finally:
        for svc in services:
            svc.kill()
        hub.kill()


@needs_postgres
def test_a_worker_that_cannot_listen_stops_the_whole_start(tmp_path):
    data = tmp_path / "hub"
    with socket.create_server(("127.0.0.1", 0)) as taken:  # no SO_REUSEPORT: nobody joins it
        port = taken.getsockname()[1]
        done = run(*HUB, "serve", "--data", str(data), "--store", test_store_url(data) or "",
                   "--listen", f"127.0.0.1:{port}", "--workers", "2", check=False,
                   timeout=120)
    assert done.returncode == Exit.FAIL, done.stderr
    assert "cannot listen on" in done.stderr
    assert re.search(r"worker \d exited \(exit status 1\) before it was listening; stopping "
                     r"the others", done.stderr), done.stderr
    assert "Traceback" not in done.stderr


@once
@pytest.mark.parametrize(("store", "listen", "why"), [
    ((), "127.0.0.1:2222", "need a PostgreSQL store"),
    (("--store", "postgresql://db.example/estate"), "127.0.0.1:0", "give --listen a fixed one"),
], ids=["sqlite", "port_0"])
def test_workers_are_refused_on_sqlite_and_on_port_0(tmp_path, store, listen, why):
    data = tmp_path / "hub"
    done = run(*HUB, "serve", "--data", str(data), *store, "--listen", listen,
               "--workers", "2", check=False, env={"ESTATE_HUB_STORE": ""})
    assert done.returncode == Exit.USAGE
    assert done.stderr.startswith("estate-hub: --workers 2: ") and why in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stdout == ""
    assert not data.exists(), "refused, yet it wrote into the data folder"


@once
def test_an_exported_host_key_makes_another_hub_the_same_hub_to_agents(tmp_path):
    a = HubProcess(tmp_path / "a").start()
    agent = Agent(a, tmp_path / "agent")
    out = tmp_path / "hub-key"
    done = a.admin("key", "export", "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "private host key" in done.stderr and "pose as the hub" in done.stderr
    assert a.fingerprint in done.stdout
    again = a.admin("key", "export", "--out", str(out), check=False)
    assert again.returncode == Exit.FAIL and "--force" in again.stderr
    assert a.admin("key", "export", "--out", str(out), "--force").returncode == 0
    exports = a.admin_json("audit", "--action", "key_export")
    assert [(e["target"], json.loads(e["detail"])["file"]) for e in exports] == \
        [(a.fingerprint, str(out))] * 2
    store = test_store_url(a.data) or f"sqlite://{a.data / 'estate.db'}"
    assert a.signal(signal.SIGTERM) == 0

    # Hub B: its own data folder with A's key, on A's store.
    b_data = tmp_path / "b"
    done = run(*HUB, "key", "import", str(out), "--data", str(b_data))
    assert a.fingerprint in done.stdout
    assert "not audited" in done.stderr and "--store" in done.stderr  # a bare new folder
    b = HubProcess(b_data, ("--store", store)).start()
    try:
        assert b.fingerprint == a.fingerprint
        text = agent.config.read_text()
        agent.config.write_text(text.replace(f'"{a.address}"', f'"{b.address}"'))
        sent = agent.report_cli()
        assert sent.returncode == 0, sent.stderr  # the agent pinned A's key: B presents it
        assert len(stored_sequences(a, agent.agent_id)) == 1  # A's store is B's
    finally:
        b.kill()

    # B's folder now holds a key: another is refused without --replace, and kept with it.
    other = tmp_path / "other"
    other.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    refused = run(*HUB, "key", "import", str(other), "--data", str(b_data), check=False)
    assert refused.returncode == Exit.FAIL and "--replace" in refused.stderr
    assert _fingerprint(b_data / "host_key_ed25519") == a.fingerprint
    run(*HUB, "key", "import", str(other), "--data", str(b_data), "--replace", "--store", store)
    imports = a.admin_json("audit", "--action", "key_import")  # A's store is B's
    assert [(e["target"], json.loads(e["detail"])["replaced"]) for e in imports] == \
        [(_fingerprint(other), a.fingerprint)]
    assert _fingerprint(b_data / "host_key_ed25519") == _fingerprint(other)
    assert _fingerprint(b_data / "host_key_ed25519.replaced") == a.fingerprint
    # Not a key, or not ed25519: exit 2, naming the file.
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    for bad in (junk, agent.config.parent / "agent_key.pub"):
        done = run(*HUB, "key", "import", str(bad), "--data", str(b_data), check=False)
        assert done.returncode == Exit.USAGE and str(bad) in done.stderr, done.stderr


def _fingerprint(path: Path) -> str:
    return asyncssh.read_private_key(str(path)).get_fingerprint("sha256")


@once
def test_max_agents_sends_the_next_agent_away_busy_and_still_lets_operators_in(tmp_path):
    hub = HubProcess(tmp_path / "hub", ("--max-agents", "1")).start()
    services: list[AgentService] = []
    try:
        first, second = Agent(hub, tmp_path / "a1"), Agent(hub, tmp_path / "a2")
        services.append(AgentService(first).start())
        wait_for(lambda: stored_sequences(hub, first.agent_id), what="the first agent held")
        with pytest.raises(HubBusy) as busy:
            second.client().connect()
        assert 30 <= busy.value.retry_after <= 90
        assert re.search(rf"agent {second.agent_id} refused \(busy\): this hub holds 1 agents",
                         hub.log())
        # The agent service waits retry_after (and some): quietly, and it keeps running.
        svc = AgentService(second).start()
        services.append(svc)
        line = wait_for(lambda: re.search(r"INFO the hub at \S+ is busy \(it holds as many "
                                          r"agents as it may\): retrying in (\d+) s", svc.log()),
                        timeout=30, what="the second agent told busy")
        assert 30 <= int(line.group(1)) <= 90 * 1.25
        assert "busy" in wait_for(lambda: svc.status().get("last_error"), what="its status")
        time.sleep(1)  # the agent's loop goes on: no second attempt, no loud give-up
        assert svc.proc is not None and svc.proc.poll() is None
        assert "ERROR" not in svc.log() and svc.log().count("is busy") == 1
        assert not stored_sequences(hub, second.agent_id)
        # Operators are never refused by it.
        key = add_operator(hub, tmp_path, "alice")

        async def operator_logs_in() -> None:
            conn = await ssh_connect(hub, "alice", key)
            conn.close()
            await conn.wait_closed()

        asyncio.run(operator_logs_in())
        assert "login user=alice role=operator" in hub.log()
        # The agent it holds may log in again (replacing a connection it thinks dead).
        again = first.client()
        again.connect()
        again.close()
    finally:
        for s in services:
            s.kill()
        hub.kill()


@once
@pytest.mark.parametrize(("reason", "wait"), [
    ("busy: this hub holds as many agents as it may; retry_after=47", 47.0),
    ("busy: no number said", 60.0),  # a hub that names none: a minute
    ("busy: retry_after=999999", 900.0),  # capped: a hub back sooner must not wait hours
    ("busy: retry_after=0", 1.0),  # never a reconnect loop
], ids=["said", "unsaid", "capped", "floored"])
def test_the_agent_reads_a_busy_refusal_as_come_back_later(reason, wait):
    refusal = _sent_away("127.0.0.1:2222", reason)
    assert isinstance(refusal, HubBusy) and refusal.retry and refusal.retry_after == wait


@once
def test_a_store_the_hub_cannot_reach_is_retried_and_a_refused_key_is_not_sent_away():
    assert _sent_away("h:1", "store_unavailable: the hub cannot reach its store; retry "
                             "later").retry
    for reason in ("", "too_many_auth_attempts: at most 6 keys", "busybody: retry_after=5"):
        assert _sent_away("h:1", reason) is None, reason
