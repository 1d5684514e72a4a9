"""`estate ssh` and `estate tunnel`: a shell on an endpoint, through the hub, with real `ssh`.

`estate ssh HOST` runs the system's OpenSSH client with `estate tunnel` as its ProxyCommand.
The tunnel logs in to the hub with the operator's key and opens a `direct-tcpip` channel to
`HOST:22` (as OpenSSH's `ssh -W` once the hub's full key is known, else in asyncssh); the hub
bridges it through the host's agent to the host's own sshd. So `ssh` itself
authenticates to the endpoint (the operator's keys, agent, certificates and ~/.ssh/config work
as usual) and checks the endpoint's host key, recorded under the host id (HostKeyAlias), not
under the hub's address.

On POSIX ssh replaces this process (os.execv), so its exit status is the session's. Windows
has no exec: os.execv there starts ssh and returns to the shell at once, so ssh (the system's
OpenSSH client, built into Windows 10 and later) runs as a child and its exit status is
passed on (`hand_over_to_ssh`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estate.console import _known_hubs, _settings
from estate.console._settings import ConfigError, ConsoleConfig, PinnedHub
from estate.inventory.protocol import AGENT_ID, Exit
from estate.inventory.sanitise import plain

if TYPE_CHECKING:
    from estate.console._client import HubConnection

# asyncssh and asyncio are imported where used: `estate tunnel` on its fast path (OpenSSH's
# `ssh -W`) must start in milliseconds, before every session.

SSH_PORT = 22
CHUNK = 64 * 1024


def _on_windows() -> bool:
    """Asked at each use (not once at import), so tests can take each OS's branch."""
    return sys.platform == "win32"


def _no_file() -> str:
    """What ssh reads for "no file": /dev/null on POSIX. Windows has no /dev/null; there ssh's
    own `none` (-F none; GlobalKnownHostsFile none since OpenSSH 8.4, before it a file named
    none that is not there, which is as good)."""
    return "none" if _on_windows() else "/dev/null"


def find_ssh() -> str | None:
    """The OpenSSH client: on PATH, or on Windows where Windows installs it (a PATH without
    System32\\OpenSSH; Sysnative for a 32-bit Python on 64-bit Windows)."""
    found = shutil.which("ssh")
    if found or not _on_windows():
        return found
    root = os.environ.get("SystemRoot", r"C:\Windows")
    for system in ("System32", "Sysnative"):
        candidate = Path(root, system, "OpenSSH", "ssh.exe")
        if candidate.is_file():
            return str(candidate)
    return None


def hand_over_to_ssh(ssh: str, command: list[str]) -> int:
    """Run ssh for the rest of this command; its exit status is the session's.

    POSIX: ssh replaces this process and this never returns. Windows: ssh runs as a child,
    with Ctrl-C left to it (as a shell leaves it to the command it runs: ssh passes it on to
    the session, or ends), and its exit status is returned.
    """
    sys.stdout.flush()
    if not _on_windows():
        os.execv(ssh, command)  # noqa: S606 - a fixed argv, no shell
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.run(command, check=False).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def _ssh_option_path(path: Path) -> str:
    """A path as an ssh -o value: quoted if it has a space ("C:\\Users\\Ann Lee\\…"), which
    ssh would otherwise split into two files."""
    text = str(path)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def command_line(argv: list[str]) -> str:
    """argv as one command line for this OS: for ssh's ProxyCommand (POSIX ssh hands it to
    `sh -c`; Windows' ssh to CreateProcess, whose programs split it by the C runtime's
    rules), and to show the operator."""
    return subprocess.list2cmdline(argv) if _on_windows() else shlex.join(argv)


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """--hub, --key and --hub-key, which may also come before the verb (`estate --hub … ssh`):
    a flag not given here leaves that one's value alone."""
    parser.add_argument("--hub", metavar="USER@HOST:PORT", default=argparse.SUPPRESS,
                        help="the hub and your operator name (default: console.toml)")
    parser.add_argument("--key", type=Path, metavar="FILE", default=argparse.SUPPRESS,
                        help="your private key for the hub (default: console.toml, else "
                             "ssh-agent or ~/.ssh)")
    parser.add_argument("--hub-key", metavar="SHA256:…", default=argparse.SUPPRESS,
                        help="the hub's host-key fingerprint (default: console.toml)")


def define_tunnel(parser: argparse.ArgumentParser) -> None:
    """`estate tunnel`'s arguments (console/cli.py adds them when the verb is used)."""
    parser.description = ("Relay stdin/stdout to HOST's sshd through the hub. Meant as ssh's "
                          "ProxyCommand (estate ssh sets it up); the hub checks your role and "
                          "agencies and records the session.")
    add_connection_options(parser)
    parser.add_argument("host", metavar="HOST", help="host id or hostname")
    parser.set_defaults(run=tunnel_main)


def tunnel_main(args: argparse.Namespace) -> int:
    found = connection_settings(args, "tunnel")
    if found is None:
        return Exit.USAGE
    hub, _ = found
    status = _openssh_tunnel(hub, args.host)  # on POSIX, returns only when it cannot be used
    if status is not None:
        return status
    import asyncio

    try:
        return asyncio.run(_tunnel(hub, args.host))
    except KeyboardInterrupt:
        return Exit.FAIL


# OpenSSH's default ciphers, AES-GCM first: the hub (asyncssh) decrypts this leg in Python,
# one AEAD call per packet with GCM against three for chacha20-poly1305. The session inside is
# end to end with the host's sshd and keeps ssh's own choice.
HUB_LEG_CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
                   "aes128-ctr,aes192-ctr,aes256-ctr")


def _openssh_tunnel(hub: PinnedHub, host: str) -> int | None:
    """Hand over to `ssh -W HOST:22` to the hub (`openssh_relay`) when it can be used. None
    when it cannot; else (Windows only) ssh's exit status."""
    command = openssh_relay(hub, host)
    return None if command is None else hand_over_to_ssh(command[0], command)


def openssh_relay(hub: PinnedHub, host: str) -> list[str] | None:
    """`ssh -W HOST:22` to the hub, when OpenSSH is here and the pinned hub's full key is
    known (`_known_hubs`): it relays in C and checks the hub's key itself. None when it
    cannot be used (the Python relay then logs in, checks the pin and keeps the key)."""
    ssh = find_ssh()
    known = _known_hubs.verified(hub.address, hub.hub_key)
    key = hub.key.resolve() if hub.key else None
    # ssh expands `%` tokens and `${VAR}` in these two paths (doubling escapes `%`; nothing
    # escapes `${`): a path with `${` takes the Python relay, which reads it as it is.
    if ssh is None or known is None or any("${" in str(p) for p in (known, key) if p):
        return None
    hub_host, _, port = hub.address.rpartition(":")
    alias = _known_hubs.alias(hub.address)
    command = [ssh, "-F", _no_file(), "-W", f"{host}:{SSH_PORT}", "-p", port,
               "-l", hub.user, "-o", f"HostKeyAlias={alias}",
               "-o", f"UserKnownHostsFile={_ssh_option_path(known).replace('%', '%%')}",
               "-o", f"GlobalKnownHostsFile={_no_file()}",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
               "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
               "-o", "ServerAliveInterval=30", "-o", f"Ciphers={HUB_LEG_CIPHERS}"]
    if key:
        command += ["-i", str(key).replace("%", "%%"), "-o", "IdentitiesOnly=yes"]
    return [*command, hub_host.strip("[]")]


def define_ssh(parser: argparse.ArgumentParser) -> None:
    """`estate ssh`'s arguments (console/cli.py adds them when the verb is used)."""
    parser.description = ("Open a shell on HOST through the hub with your own OpenSSH client: "
                          "your keys, agent and ~/.ssh/config apply, and ssh checks the host's "
                          "key (kept under the host id). Arguments after -- go to ssh "
                          "(options, then an optional command).")
    parser.epilog = "example: estate ssh admin@ag-0123456789ab -- -o BatchMode=yes uptime"
    add_connection_options(parser)
    parser.add_argument("target", metavar="[USER@]HOST", help="host id or hostname")
    parser.add_argument("ssh_args", nargs=argparse.REMAINDER, metavar="-- SSH_ARGS",
                        help="passed to ssh after the destination")
    parser.set_defaults(run=ssh_main)


def ssh_main(args: argparse.Namespace) -> int:
    found = connection_settings(args, "ssh")
    if found is None:
        return Exit.USAGE
    hub, config = found
    user, _, host = args.target.rpartition("@")
    extra = args.ssh_args[1:] if args.ssh_args[:1] == ["--"] else args.ssh_args
    ssh = find_ssh()
    if ssh is None:
        how = _INSTALL_SSH_WINDOWS if _on_windows() else _INSTALL_SSH_DEBIAN
        print(f"estate ssh: the OpenSSH client (ssh) is not installed; {how}", file=sys.stderr)
        return Exit.FAIL
    agent_id = host
    if not AGENT_ID.match(host):
        # A hostname is looked up first. A host id needs no lookup (the console passes
        # one): the hub's answer to the tunnel says why if it cannot be reached, and the
        # session starts without a round trip (or asyncssh's import) first.
        import asyncio

        from estate.console._client import ApiFailure, HubUnreachable

        try:
            agent_id = asyncio.run(resolve(hub, host))
        except (HubUnreachable, ApiFailure, ValueError) as exc:
            print(f"estate ssh: {plain(exc, 2000)}", file=sys.stderr)
            return Exit.FAIL
    command = ssh_command(ssh, hub, agent_id, user or None, extra, config.ssh_args)
    return hand_over_to_ssh(ssh, command)


_INSTALL_SSH_DEBIAN = "on Debian or Ubuntu: apt install openssh-client"
_INSTALL_SSH_WINDOWS = (
    "on Windows: Settings > System > Optional features > OpenSSH Client (or, as an "
    "administrator: Add-WindowsCapability -Online -Name OpenSSH.Client~~~~0.0.1.0)")


async def resolve(hub: PinnedHub, host: str) -> str:
    """A hostname to the host id it names, if that host accepts remote access now.

    Raises:
        ValueError: the host does not accept remote access now.
        ApiFailure: unknown or ambiguous host.
        HubUnreachable: the hub could not be reached.
    """
    from estate.console._client import HubConnection

    connection = HubConnection(hub.address, hub.user, hub.key, hub.hub_key)
    await connection.connect()
    try:
        _remember_hub_key(hub, connection.conn)
        found = await connection.request("resolve", host=host)
    finally:
        await connection.close()
    agent_id, state = found["agent_id"], found["remote"]
    if state != "ready":
        raise ValueError(f"{agent_id} ({found['hostname'] or 'no hostname'}) does not "
                         f"accept remote access now: {_WHY[state]}")
    return str(agent_id)


def ssh_command(ssh: str, hub: PinnedHub, agent_id: str, user: str | None,
                extra: list[str], ssh_args: tuple[str, ...] = ()) -> list[str]:
    """The ssh command line for a host: the relay to the hub as its ProxyCommand, the
    endpoint's host key checked under the host id; `ssh_args` (console.toml's) go before the
    options.

    The relay is `ssh -W` itself once the hub's full key is kept: `estate tunnel` would only
    exec the same command, after a Python start and its imports (measured: about a fifth of
    the time to the first prompt). Until then, `estate tunnel`, whose Python relay keeps the
    key.
    """
    tunnel = openssh_relay(hub, agent_id)
    if tunnel is None:
        tunnel = [sys.executable, "-m", "estate.console.cli", "tunnel",
                  "--hub", f"{hub.user}@{hub.address}", "--hub-key", hub.hub_key]
        if hub.key:
            tunnel += ["--key", str(hub.key.resolve())]
        tunnel.append(agent_id)
    proxy = command_line(tunnel).replace("%", "%%")  # ssh expands % tokens
    destination = f"{user}@{agent_id}" if user else agent_id
    return [ssh, *ssh_args, "-o", f"ProxyCommand={proxy}",
            "-o", f"HostKeyAlias={agent_id}", destination, *extra]


def shell_refusal(agent_id: str, readonly: bool, state: str | None) -> str | None:
    """Why the console will not open a shell on this host now, or None."""
    if readonly:
        return "read-only console (--readonly): remote access is off"
    if state != "ready":
        return f"{agent_id} does not accept remote access now: {_WHY.get(state or 'off')}"
    return None


def shell_command(hub: HubConnection, agent_id: str) -> list[str]:
    """`estate ssh` for a host, as the console runs it: the same path as the CLI."""
    command = [sys.executable, "-m", "estate.console.cli", "ssh", "--hub",
               f"{hub.user}@{hub.address}", "--hub-key", hub.hub_key]
    if hub.key_path:
        command += ["--key", str(hub.key_path)]
    return [*command, agent_id]


_WHY = {
    "allowed": "the hub allows it, but the agent does not offer it (it is offline, or its "
               "agent.toml lacks remote_access = true)",
    "asked": "its agent offers it, but the hub does not allow it (an admin runs: estate-hub "
             "agent allow-remote ID)",
    "off": "it is not enabled (remote_access = true in the agent.toml, and estate-hub agent "
           "allow-remote ID on the hub)",
}


def connection_settings(args: argparse.Namespace,
                        verb: str) -> tuple[PinnedHub, ConsoleConfig] | None:
    """The pinned hub the connection options and console.toml name, and console.toml; None
    (and a message on stderr) if there is none."""
    try:
        config, settings = _settings.load(args.hub, args.key, args.hub_key)
    except ConfigError as exc:
        print(f"estate {verb}: {plain(exc, 2000)}", file=sys.stderr)
        return None
    if settings is None:
        print(f"estate {verb}: no hub configured: pass --hub USER@HOST:PORT, or set hub in "
              f"console.toml", file=sys.stderr)
        return None
    hub = settings.pinned()
    if hub is None:
        print(f"estate {verb}: the hub's key is not pinned: run estate once to pin it, or pass "
              f"--hub-key", file=sys.stderr)
        return None
    return hub, config


def _remember_hub_key(hub: PinnedHub, conn: Any) -> None:
    """After a login that checked the hub's key against the pin: keep the full key."""
    key = conn.get_server_host_key() if conn is not None else None
    if key is not None and key.get_fingerprint("sha256") == hub.hub_key:
        try:
            _known_hubs.remember(hub.address, key.export_public_key("openssh").decode())
        except OSError:
            pass  # a read-only home: the next session takes the slower path again


async def _tunnel(hub: PinnedHub, host: str) -> int:
    """The relay in Python (asyncssh), when OpenSSH's cannot be used yet."""
    import asyncio
    import contextlib
    import signal

    import asyncssh

    from estate.console._client import HubUnreachable, open_connection
    from estate.console._stdio import open_stdio

    try:
        conn = await open_connection(hub.address, hub.user, hub.key, hub.hub_key)
    except HubUnreachable as exc:
        print(f"estate tunnel: {plain(exc, 2000)}", file=sys.stderr)
        return Exit.FAIL
    _remember_hub_key(hub, conn)
    async with conn:
        try:
            reader, writer = await conn.open_connection(host, SSH_PORT)
        except asyncssh.ChannelOpenError as exc:
            # The reason is the hub's (or the host's agent's) text: one plain line, so it
            # cannot clear the operator's screen or draw a prompt of its own.
            print(f"estate tunnel: the hub refused: {plain(exc.reason, 1000)}",
                  file=sys.stderr)
            return Exit.FAIL
        stdio = await open_stdio(CHUNK)

        async def upstream() -> None:  # ssh -> hub
            while data := await stdio.read():
                writer.write(data)
                await writer.drain()

        async def downstream() -> None:  # hub -> ssh
            while data := await reader.read(CHUNK):
                await stdio.write(data)

        # Either side ending ends the session: ssh closing its pipe (or, as it does when it
        # exits, sending us SIGHUP) means it is done with the connection; the host closing
        # means there is nothing more to read.
        hangup = asyncio.Event()
        if not _on_windows():  # Windows has no SIGHUP, and its event loops no signal handlers
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, hangup.set)
        tasks = {asyncio.create_task(upstream()), asyncio.create_task(downstream()),
                 asyncio.create_task(hangup.wait())}
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        writer.close()  # a clean channel close, so the hub records how it ended
        with contextlib.suppress(asyncio.TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(writer.channel.wait_closed(), 5)
        stdio.close()
        for task in done:
            failure = task.exception()
            if isinstance(failure, asyncssh.Error):
                print(f"estate tunnel: the session was cut: {plain(failure, 1000)}",
                      file=sys.stderr)
                return Exit.FAIL
    return Exit.OK
