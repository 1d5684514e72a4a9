"""Remote access over real processes: OpenSSH's ssh -> estate tunnel -> hub -> agent -> sshd.

The endpoint is OpenSSH's real sshd on a loopback port. Skipped, saying how to install it,
where sshd is missing (`.ci/run` installs openssh-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from estate.console._client import open_connection
from tests.harness import (
    PY,
    Agent,
    AgentService,
    AnyKeyServer,
    HubProcess,
    make_report,
    wait_for,
)
from tests.sshd import MISSING, Sshd, keygen

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# The command's output is computed on the endpoint, so it is not in the command line either.
COMMAND, OUTPUT = "expr 4321 '*' 8765", "37873565"


@pytest.fixture(scope="module")
def remote(tmp_path_factory, live_report):
    """A hub (session limits 2 per operator, 3 per host), sshd, and agents:

    - `ready`: Council, remote access offered by its agent and allowed on the hub;
    - `quiet`: Council, enrolled, reported once as quiet-pc; no service, not allowed;
    - `fire`: Fire & Rescue, offered and allowed.
    The running agents report this machine's hostname, so `ready` and `fire` share it.
    """
    base = tmp_path_factory.mktemp("remote")
    sshd = Sshd(base / "sshd").start()
    hub = HubProcess(base / "hub", ("--sessions-per-operator", "2",
                                    "--sessions-per-host", "3")).start()
    agents = {"ready": Agent(hub, base / "ready"),
              "quiet": Agent(hub, base / "quiet"),
              "fire": Agent(hub, base / "fire", hub.token("Fire & Rescue", "Station 1"))}
    quiet = agents["quiet"]  # the others' running services report for themselves
    status, _ = quiet.send(make_report(live_report, quiet.agent_id, system__hostname="quiet-pc"))
    assert status == 0
    offer = f'remote_access = true\nremote_access_target = "127.0.0.1:{sshd.port}"\n'
    services = [AgentService(agents[n], offer).start() for n in ("ready", "fire")]
    for name, role, agencies in (("alice", "staff", "Council"), ("bob", "staff", "Council"),
                                 ("fred", "staff", "Fire & Rescue"),
                                 ("audrey", "auditor", "all"), ("root.admin", "admin", "all")):
        keygen(base / name)
        hub.admin("operator", "add", name, "--key", str(base / f"{name}.pub"), "--role", role,
                  "--agencies", agencies)
    for name in ("ready", "fire"):
        hub.admin("agent", "allow-remote", agents[name].agent_id)
    known = sshd.known_hosts(base / "known_hosts",
                             *(a.agent_id for a in agents.values()))
    env = {"base": base, "sshd": sshd, "hub": hub, "agents": agents, "services": services,
           "known_hosts": known}
    try:
        for name in ("ready", "fire"):
            wait_for(lambda n=name: _remote_state(hub, agents[n].agent_id) == "ready", 30,
                     what=f"{name} to offer remote access")
        wait_for(lambda: len(hub.admin_json("hosts")) == 3, 30, what="every host's report")
        yield env
    finally:
        for service in services:
            service.kill()
        hub.kill()
        sshd.stop()


def _remote_state(hub: HubProcess, agent_id: str) -> str:
    rows = hub.admin_json("agent", "list")
    return next(r["remote"] for r in rows if r["id"] == agent_id)


def _estate_ssh(env, operator: str, host: str, *command: str,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    hub, sshd = env["hub"], env["sshd"]
    return subprocess.run(
        [PY, "-m", "estate.console.cli", "ssh", "--hub", f"{operator}@{hub.address}",
         "--key", str(env["base"] / operator), "--hub-key", hub.fingerprint,
         f"{sshd.user}@{host}", "--", *sshd.client_options(env["known_hosts"]), *command],
        capture_output=True, text=True, timeout=timeout, env=_console_env(env))


def _console_env(env) -> dict[str, str]:
    """The operator's console folder (console.toml, known_hubs) inside the test's own."""
    return {**os.environ, "ESTATE_CONSOLE_CONFIG": str(env["base"] / "console" / "console.toml")}


async def _open_channel(env, operator: str, host: str, port: int = 22):
    """A raw direct-tcpip channel as `operator`: (connection, reader, writer)."""
    conn = await open_connection(env["hub"].address, operator, env["base"] / operator,
                                 env["hub"].fingerprint)
    try:
        reader, writer = await conn.open_connection(host, port)
    except BaseException:
        conn.close()
        raise
    return conn, reader, writer


def _refusal(env, operator: str, host: str, port: int = 22) -> str:
    async def attempt() -> str:
        with pytest.raises(asyncssh.ChannelOpenError) as err:
            conn, _, _ = await _open_channel(env, operator, host, port)
            conn.close()
        return err.value.reason
    return asyncio.run(attempt())


def _audited_refusals(hub: HubProcess) -> list[str]:
    with hub.store() as store:
        return [r.detail for r in reversed(store.audit_log(action="remote_refused"))]


# --- a real session ---------------------------------------------------------------------

def test_ssh_through_hub_runs_a_command_and_the_hub_never_sees_it(remote):
    hub, agent = remote["hub"], remote["agents"]["ready"]
    done = _estate_ssh(remote, "alice", agent.agent_id, COMMAND)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == OUTPUT

    session = wait_for(lambda: next((s for s in hub.admin_json("sessions")
                                     if s["ended_at"]), None), 15, what="session end")
    assert session["operator"] == "alice" and session["agent_id"] == agent.agent_id
    assert session["bytes_to_host"] > 1000 and session["bytes_from_host"] > 1000
    assert session["end_reason"] in ("operator closed", "host closed")
    actions = [(a["action"], a["target"]) for a in hub.admin_json("audit")]
    assert ("remote_session_start", agent.agent_id) in actions
    assert ("remote_session_end", agent.agent_id) in actions
    # The relayed bytes are ciphertext to the hub: the output is nowhere it wrote.
    written = hub.log().encode()
    for path in hub.data.iterdir():
        if path.is_file():
            written += path.read_bytes()
    assert OUTPUT.encode() not in written
    # ssh checked the endpoint's key under the host id (HostKeyAlias), not the hub's port.
    assert hub.address not in remote["known_hosts"].read_text()


def test_tunnel_hands_the_hub_leg_to_openssh_once_the_hub_key_is_known(remote):
    """After a first session (Python relay), the pinned hub's full key is kept, and
    `estate tunnel` becomes `ssh -W`; a known_hubs line for another key is never used."""
    import psutil

    hub, ready = remote["hub"], remote["agents"]["ready"]
    known = remote["base"] / "console" / "known_hubs"
    assert _estate_ssh(remote, "alice", ready.agent_id, "true").returncode == 0
    line = known.read_text()
    assert hub.fingerprint not in line and line.startswith("estate-hub-127.0.0.1-")

    def tunnel_program() -> tuple[str, bytes]:
        proc = subprocess.Popen(
            [PY, "-m", "estate.console.cli", "tunnel", "--hub", f"alice@{hub.address}", "--key",
             str(remote["base"] / "alice"), "--hub-key", hub.fingerprint, ready.agent_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=_console_env(remote))
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()  # the endpoint's sshd greets through the relay
            return psutil.Process(proc.pid).name(), banner
        finally:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe:
                    pipe.close()

    name, banner = tunnel_program()
    assert name == "ssh" and banner.startswith(b"SSH-2.0-OpenSSH")
    other = keygen(remote["base"] / "not-the-hub")
    known.write_text(f"{line.split(' ', 1)[0]} {' '.join(other.split()[:2])}\n")
    name, banner = tunnel_program()  # wrong key on file: the Python relay, which re-pins
    assert name.startswith("python") and banner.startswith(b"SSH-2.0-OpenSSH")
    assert known.read_text() == line


def test_megabytes_each_way_arrive_whole_and_in_order(remote):
    """A copy larger than every window on the way, echoed back by the endpoint: with the
    agent writing to sshd from paramiko's own thread when it can (and acknowledging the
    window there) and through its session thread when sshd lags, every byte arrives, in
    order, both ways; the hub counts them all."""
    hub, sshd, ready = remote["hub"], remote["sshd"], remote["agents"]["ready"]
    assert _estate_ssh(remote, "alice", ready.agent_id, "true").returncode == 0  # ssh -W
    data = os.urandom(6 * 2**20 + 12345)
    done = subprocess.run(
        [PY, "-m", "estate.console.cli", "ssh", "--hub", f"alice@{hub.address}",
         "--key", str(remote["base"] / "alice"), "--hub-key", hub.fingerprint,
         f"{sshd.user}@{ready.agent_id}", "--", *sshd.client_options(remote["known_hosts"]),
         "cat"], input=data, capture_output=True, timeout=300, env=_console_env(remote))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert len(done.stdout) == len(data) and done.stdout == data
    session = wait_for(lambda: next((s for s in hub.admin_json("sessions")
                                     if s["ended_at"] and s["bytes_to_host"] > len(data)),
                                    None), 30, what="the copy's session end")
    assert session["bytes_from_host"] > len(data)


def test_host_key_is_checked_by_ssh_under_the_host_id(remote, tmp_path):
    """A known_hosts entry for another key under this host id: ssh refuses to connect."""
    agent = remote["agents"]["ready"]
    wrong = tmp_path / "known_hosts"
    other = keygen(tmp_path / "other")
    wrong.write_text(f"{agent.agent_id} {other.split(' ', 2)[0]} {other.split(' ', 2)[1]}\n")
    remote_env = {**remote, "known_hosts": wrong}
    done = _estate_ssh(remote_env, "alice", agent.agent_id, COMMAND)
    assert done.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in done.stderr or \
        "Host key verification failed" in done.stderr
    assert OUTPUT not in done.stdout


# --- refusals, each with its reason, each audited -----------------------------------------

def test_operator_of_another_agency_is_refused(remote):
    reason = _refusal(remote, "fred", remote["agents"]["ready"].agent_id)
    assert "no host" in reason and "your agencies" in reason


def test_auditor_role_is_refused(remote):
    reason = _refusal(remote, "audrey", remote["agents"]["ready"].agent_id)
    assert "auditor" in reason


def test_unknown_host_is_refused(remote):
    assert "no host 'nowhere'" in _refusal(remote, "alice", "nowhere")


def test_addresses_other_than_a_hosts_sshd_are_refused(remote):
    """The hub relays to hosts' sshd by host id or name, never to an address of its own."""
    for address in ("127.0.0.1", "localhost", remote["hub"].address.split(":")[0],
                    f"127.0.0.1:{remote['sshd'].port}"):
        assert "no host" in _refusal(remote, "root.admin", address)
    assert "only port 22" in _refusal(remote, "root.admin", "127.0.0.1", remote["sshd"].port)


def test_hostname_shared_by_two_hosts_is_refused_as_ambiguous(remote, live_report):
    name = live_report["system"]["hostname"]  # what both running agents report
    reason = _refusal(remote, "root.admin", name)
    assert "matches 2 hosts; use the host id" in reason
    # In alice's scope the same name is one host: it resolves.
    asyncio.run(_open_and_close(remote, "alice", name))


async def _open_and_close(env, operator: str, host: str) -> None:
    conn, _, writer = await _open_channel(env, operator, host)
    writer.close()
    conn.close()


def test_port_other_than_22_is_refused(remote):
    reason = _refusal(remote, "alice", remote["agents"]["ready"].agent_id, 2222)
    assert "only port 22" in reason


def test_agent_without_remote_access_is_refused(remote):
    hub, quiet = remote["hub"], remote["agents"]["quiet"]
    assert "not enabled" in _refusal(remote, "alice", "quiet-pc")
    hub.admin("agent", "allow-remote", quiet.agent_id)  # allowed, but its agent offers nothing
    try:
        assert "not reachable" in _refusal(remote, "alice", quiet.agent_id)
    finally:
        hub.admin("agent", "deny-remote", quiet.agent_id)
    done = _estate_ssh(remote, "alice", "quiet-pc", COMMAND)  # a name: looked up first
    assert done.returncode == 1 and "does not accept remote access" in done.stderr
    done = _estate_ssh(remote, "alice", quiet.agent_id, COMMAND)  # an id: the tunnel says
    assert done.returncode == 255 and "remote access is not enabled" in done.stderr
    codes = " ".join(_audited_refusals(hub))
    assert '"code": "not_allowed"' in codes and '"code": "not_offered"' in codes


def test_agent_may_offer_only_itself_on_port_22(remote):
    """An agent asking to be the endpoint for another host (or another port) is refused."""
    hub, quiet, ready = remote["hub"], remote["agents"]["quiet"], remote["agents"]["ready"]
    hub.admin("agent", "allow-remote", quiet.agent_id)
    client = quiet.client()
    try:
        client.connect()
        assert client.transport is not None
        for host, port in ((ready.agent_id, 22), (quiet.agent_id, 2222), ("0.0.0.0", 22)):
            with pytest.raises(paramiko.SSHException):
                client.transport.request_port_forward(host, port)
        assert client.transport.request_port_forward(quiet.agent_id, 22) == 22
    finally:
        client.close()
        hub.admin("agent", "deny-remote", quiet.agent_id)
    assert f"an agent may offer only {quiet.agent_id}:22" in hub.log()
    # The real host's agent still holds its offer: sessions still reach `ready`.
    assert _remote_state(hub, ready.agent_id) == "ready"


def test_agent_connects_only_its_configured_sshd(remote, tmp_path):
    """A hub that asks the agent for other addresses (a compromised hub, played here by a
    bare asyncssh server) gets those channels closed, and nothing reaches any sshd."""
    sshd = remote["sshd"]
    rogue = asyncio.run(_rogue_hub_session(sshd, tmp_path))
    for asked, (data, closed) in rogue.items():
        if asked == ("ag-000000000777", 22):
            assert data.startswith(b"SSH-2.0-OpenSSH"), data  # its own sshd, as offered
        else:
            assert closed and data == b"", (asked, data)


async def _rogue_hub_session(sshd: Sshd, folder: Path) -> dict:
    """Run a real agent against a rogue hub; open channels asking for various addresses."""
    agent_id = "ag-000000000777"
    offered: asyncio.Future = asyncio.get_running_loop().create_future()

    class Rogue(AnyKeyServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            self.conn = conn

        def server_requested(self, host: str, port: int) -> asyncssh.SSHListener:
            if not offered.done():
                offered.set_result(self.conn)
            return asyncssh.SSHListener()

    async def ack(process: asyncssh.SSHServerProcess) -> None:
        await process.stdin.read()
        process.stdout.write(b'{"status": "stored", "report_id": "x"}\n')
        process.exit(0)

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(Rogue, "127.0.0.1", 0, server_host_keys=[host_key],
                                          process_factory=ack, encoding=None)
    port = server.sockets[0].getsockname()[1]
    key = asyncssh.generate_private_key("ssh-ed25519")
    (folder / "agent_key").write_bytes(key.export_private_key())
    (folder / "agent_key").chmod(0o600)
    config = folder / "agent.toml"
    config.write_text(f'agent_id = "{agent_id}"\nhub = "127.0.0.1:{port}"\n'
                      f'hub_key = "{host_key.get_fingerprint("sha256")}"\n'
                      f'key_file = "agent_key"\ninterval = 300\nstart_delay = 0\n'
                      f'remote_access = true\nremote_access_target = "127.0.0.1:{sshd.port}"\n')
    with open(folder / "agent.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            PY, "-m", "estate.agent", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=log)
    seen: dict = {}
    try:
        conn = await asyncio.wait_for(offered, 30)  # channels follow the hub's yes at once
        before = sshd.log().count("Connection from")
        for asked in ((f"ag-{'1' * 12}", 22), (agent_id, 2222), ("127.0.0.1", 22),
                      ("127.0.0.1", sshd.port), (agent_id, 22)):
            watch = _Watch()
            chan, _ = await conn.create_connection(lambda w=watch: w, *asked)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(watch.closed.wait(), 3)
            chan.close()
            seen[asked] = (bytes(watch.got), watch.closed.is_set())
        # Only the one good channel reached sshd.
        assert sshd.log().count("Connection from") - before <= 1
    finally:
        proc.kill()
        await proc.wait()
        server.close()
    return seen


class _Watch(asyncssh.SSHTCPSession):  # type: ignore[type-arg]
    """What a channel brings back, and whether the other side closed it."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes, datatype: object) -> None:
        self.got.extend(data)

    def connection_lost(self, exc: object) -> None:
        self.closed.set()


def test_session_limits_per_operator_and_per_host(remote):
    ready = remote["agents"]["ready"].agent_id

    async def scenario() -> tuple[str, str]:
        held = [await _open_channel(remote, "alice", ready) for _ in range(2)]
        try:
            with pytest.raises(asyncssh.ChannelOpenError) as mine:
                await _open_channel(remote, "alice", ready)
            held.append(await _open_channel(remote, "bob", ready))  # host's third: allowed
            with pytest.raises(asyncssh.ChannelOpenError) as host:
                await _open_channel(remote, "bob", ready)
            return mine.value.reason, host.value.reason
        finally:
            for conn, _, _ in held:
                conn.close()

    mine, host = asyncio.run(scenario())
    assert "you have 2 sessions open" in mine
    assert f"{ready} has 3 sessions open" in host
    wait_for(lambda: not remote["hub"].admin_json("sessions", "--live"), 15,
             what="held sessions to end")


def test_admin_ends_a_live_session(remote):
    hub = remote["hub"]
    proc = _ssh_background(remote, "alice", remote["agents"]["ready"].agent_id, "sleep 60")
    try:
        live = wait_for(lambda: hub.admin_json("sessions", "--live"), 30, what="live session")
        hub.admin("sessions", "--end", str(live[0]["id"]))
        proc.wait(timeout=30)
    finally:
        proc.kill()
    ended = next(s for s in hub.admin_json("sessions") if s["id"] == live[0]["id"])
    assert ended["end_reason"].startswith("ended by admin:")
    assert hub.admin("sessions", "--end", str(live[0]["id"]), check=False).returncode == 1


def test_deny_remote_ends_live_sessions(remote):
    hub, fire = remote["hub"], remote["agents"]["fire"]
    proc = _ssh_background(remote, "fred", fire.agent_id, "sleep 60")
    try:
        live = wait_for(lambda: hub.admin_json("sessions", "--live"), 30, what="live session")
        hub.admin("agent", "deny-remote", fire.agent_id)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        hub.admin("agent", "allow-remote", fire.agent_id)
    ended = next(s for s in hub.admin_json("sessions") if s["id"] == live[0]["id"])
    assert ended["end_reason"] == "remote access denied"


def _ssh_background(env, operator: str, host: str, command: str) -> subprocess.Popen[bytes]:
    hub, sshd = env["hub"], env["sshd"]
    with open(env["base"] / "ssh-background.log", "ab") as log:
        return subprocess.Popen(
            [PY, "-m", "estate.console.cli", "ssh", "--hub", f"{operator}@{hub.address}",
             "--key", str(env["base"] / operator), "--hub-key", hub.fingerprint,
             f"{sshd.user}@{host}", "--", *sshd.client_options(env["known_hosts"]), command],
            stdout=subprocess.DEVNULL, stderr=log, env=_console_env(env))


# --- from the console: x suspends it, runs estate ssh, and comes back --------------------

def test_console_x_opens_a_shell_and_returns(remote, tmp_path):
    if not shutil.which("tmux"):
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run installs it)")
    hub, sshd, ready = remote["hub"], remote["sshd"], remote["agents"]["ready"]
    config = tmp_path / "console.toml"
    options = sshd.client_options(remote["known_hosts"])
    config.write_text("ssh_args = [" + ", ".join(f'"{o}"' for o in options) + "]\n")
    session = f"estate-ssh-{tmp_path.name[-8:]}"
    command = shlex.join([PY, "-m", "estate.console.cli", "--hub", f"alice@{hub.address}", "--key",
                          str(remote["base"] / "alice"), "--hub-key", hub.fingerprint])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "45",
                    "-e", f"ESTATE_CONSOLE_CONFIG={config}", command], check=True)

    def keys(*typed: str, literal: bool = False) -> None:
        subprocess.run(["tmux", "send-keys", "-t", session, *(["-l"] if literal else []),
                        *typed], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"],
                              capture_output=True, text=True).stdout

    def shows(test: Any, what: str) -> None:
        try:
            wait_for(lambda: test(screen()), 30, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{screen()}") from None

    try:
        shows(lambda text: "x Shell" in text and "2 hosts" in text, "the console")
        keys("/")
        # The words must reach the filter box, not the list ("r" would reverse the sort):
        # the footer offers the list's "s Sort" only while the list has focus.
        shows(lambda text: "s Sort" not in text, "the filter box to take focus")
        keys("remote:ready", literal=True)
        keys("Enter")
        shows(lambda text: "showing 1" in text, "the filtered list")
        keys("x")
        shows(lambda text: "showing 1" not in text and "#" in text, "the remote shell")
        keys(f"{COMMAND}; exit", literal=True)
        keys("Enter")
        shows(lambda text: "showing 1" in text, "the console to come back")
        session_row = wait_for(lambda: next((s for s in hub.admin_json("sessions")
                                             if s["operator"] == "alice" and s["ended_at"]
                                             and s["bytes_from_host"] > 3000), None), 15,
                               what="the console's session in the record")
        assert session_row["agent_id"] == ready.agent_id
        keys("q")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


# --- the agent dies mid-session ----------------------------------------------------------

def test_killing_the_agent_mid_session_ends_it_on_both_sides(remote):
    hub = remote["hub"]
    service = remote["services"][0]  # `ready`
    ready = remote["agents"]["ready"].agent_id
    # The remote command outlives every wait below, so only the kill can end the session.
    proc = _ssh_background(remote, "alice", ready, "sleep 600")
    try:
        live = wait_for(lambda: hub.admin_json("sessions", "--live"), 30, what="live session")
        service.proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) != 0
        wait_for(lambda: _remote_state(hub, ready) != "ready", 30,
                 what="the dead agent's host to stop offering remote access")
    finally:
        proc.kill()
        proc.wait(timeout=30)
        # The module's `ready` agent runs again, so no test depends on running before this.
        service.proc.wait(timeout=30)
        service.start()
        wait_for(lambda: _remote_state(hub, ready) == "ready", 60,
                 what="the ready agent to offer remote access again")
    ended = wait_for(lambda: next((s for s in hub.admin_json("sessions")
                                   if s["id"] == live[0]["id"] and s["ended_at"]), None),
                     60, what="the session's end to be recorded")
    assert ended["end_reason"].startswith(("agent disconnected", "agent connection lost"))
    # The hub keeps serving: other hosts are still reachable.
    done = _estate_ssh(remote, "fred", remote["agents"]["fire"].agent_id, COMMAND)
    assert done.returncode == 0 and done.stdout.strip() == OUTPUT, done.stderr


def test_estate_ssh_without_a_hub_says_how_to_configure_one(tmp_path):
    done = subprocess.run([sys.executable, "-m", "estate.console.cli", "ssh", "somehost"],
                          capture_output=True, text=True, timeout=30,
                          env={"ESTATE_CONSOLE_CONFIG": str(Path(tmp_path) / "none.toml"),
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "no hub configured" in done.stderr
