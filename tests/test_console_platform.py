"""The console on each OS, run here on Linux: its folders, `estate ssh`'s hand-over to OpenSSH
(exec on POSIX, a child whose exit status is passed on on Windows), the signals it stops on,
and the tunnel's stdio without the event loop's pipes. Only the OS boundary is faked:
sys.platform, the environment, os.execv, subprocess.run, msvcrt."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from estate.console import _embedded, _known_hubs, _paths, _stdio, remote
from estate.console._keys import default_keymap_path
from estate.console._settings import config_path
from estate.console.cli import exit_signals
from estate.console.cli import main as estate

HOST = "ag-0123456789ab"
HUB = "127.0.0.1:2222"
PUBLIC_KEY = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519" + bytes(36)).decode()
PINNED = "SHA256:" + base64.b64encode(hashlib.sha256(
    base64.b64decode(PUBLIC_KEY.split()[1])).digest()).decode().rstrip("=")


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A home of the test's own, with none of the variables that move the console's folders."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("ESTATE_CONSOLE_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "APPDATA",
                 "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    return home


def _folders() -> tuple[Path, Path, Path, Path]:
    """Where each caller looks: console.toml, keymap.toml, known_hubs, the embedded data."""
    return (config_path(), default_keymap_path(), _known_hubs.path(),
            _embedded.default_data_dir())


def _expected(config: Path, data: Path) -> tuple[Path, Path, Path, Path]:
    return config / "console.toml", config / "keymap.toml", config / "known_hubs", data


@pytest.mark.parametrize("platform", ["linux", "freebsd14"])
def test_posix_keeps_the_xdg_folders(home, monkeypatch, platform):
    monkeypatch.setattr(sys, "platform", platform)
    assert _folders() == _expected(home / ".config/estate", home / ".local/share/estate")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    # APPDATA on a POSIX machine (a Wine or Cygwin leftover) changes nothing.
    monkeypatch.setenv("APPDATA", str(home / "appdata"))
    assert _folders() == _expected(home / "cfg/estate", home / "data/estate")


def test_windows_keeps_config_in_roaming_appdata_and_data_in_local(home, monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "cfg"))  # not Windows' convention
    roaming, local = r"C:\Users\ann\AppData\Roaming", r"C:\Users\ann\AppData\Local"
    monkeypatch.setenv("APPDATA", roaming)
    monkeypatch.setenv("LOCALAPPDATA", local)
    assert _folders() == _expected(Path(roaming) / "Estate", Path(local) / "Estate")
    # A stripped environment: where Windows puts those folders in the profile.
    monkeypatch.delenv("APPDATA")
    monkeypatch.delenv("LOCALAPPDATA")
    assert _folders() == _expected(home / "AppData/Roaming/Estate",
                                   home / "AppData/Local/Estate")


def test_macos_keeps_both_in_application_support(home, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "cfg"))
    support = home / "Library" / "Application Support" / "Estate"
    assert _folders() == _expected(support, support)


def test_estate_console_config_still_wins_on_every_os(home, monkeypatch):
    monkeypatch.setenv("ESTATE_CONSOLE_CONFIG", str(home / "elsewhere.toml"))
    for platform in ("linux", "win32", "darwin"):
        monkeypatch.setattr(sys, "platform", platform)
        assert config_path() == home / "elsewhere.toml"
        assert _known_hubs.path() == home / "known_hubs"


@pytest.mark.parametrize(("platform", "data", "keymap"), [
    ("linux", "~/.local/share/estate", "~/.config/estate/keymap.toml"),
    ("win32", "%LOCALAPPDATA%\\Estate", "%APPDATA%\\Estate\\keymap.toml"),
    ("darwin", "~/Library/Application Support/Estate",
     "~/Library/Application Support/Estate/keymap.toml"),
])
def test_help_names_this_os_default_folders(monkeypatch, capsys, platform, data, keymap):
    monkeypatch.setattr(sys, "platform", platform)
    assert (_paths.data_dir_shown(), _paths.config_file_shown("keymap.toml")) == (data, keymap)
    with pytest.raises(SystemExit) as done:
        estate(["--help"])  # argparse %-formats help: %APPDATA% must not break it
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"(default {data})" in shown and f"(default {keymap} if present" in shown


@pytest.fixture()
def hub_config(home, monkeypatch) -> Path:
    """console.toml naming a pinned hub, in a folder with a space (as "C:\\Users\\Ann Lee")."""
    folder = home / "Ann Lee"
    folder.mkdir()
    path = folder / "console.toml"
    path.write_text(f'hub = "alice@{HUB}"\nhub_key = "{PINNED}"\n'
                    f'ssh_args = ["-o", "ServerAliveInterval=30"]\n')
    monkeypatch.setenv("ESTATE_CONSOLE_CONFIG", str(path))
    monkeypatch.setattr(remote.shutil, "which", lambda name: f"/opt/ssh/bin/{name}")
    return path


class _Exec(Exception):
    """os.execv, faked: it never returns."""


@pytest.fixture()
def launches(monkeypatch) -> list[tuple[str, list[str]]]:
    """Every ssh handed over to, by exec or as a child: ("exec"|"child", argv). The child's
    exit status is 75 (anything but 0, 1 and 2 shows it is ssh's, passed on)."""
    seen: list[tuple[str, list[str]]] = []

    def execv(path, argv):
        assert path == argv[0]
        seen.append(("exec", list(argv)))
        raise _Exec

    def run(argv, check):
        assert check is False
        # The child has Ctrl-C to itself while it runs.
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        seen.append(("child", list(argv)))
        return subprocess.CompletedProcess(argv, 75)

    monkeypatch.setattr(remote.os, "execv", execv)
    monkeypatch.setattr(remote.subprocess, "run", run)
    return seen


def _option(argv: list[str], name: str) -> str:
    """The value of ssh's `-o NAME=value` in argv."""
    found = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(found) == 1, argv
    return found[0]


def test_estate_ssh_on_posix_becomes_ssh(hub_config, launches, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(_Exec):
        estate(["ssh", f"root@{HOST}", "--", "-v", "uptime"])
    [(how, argv)] = launches
    assert how == "exec"
    assert argv[:3] == ["/opt/ssh/bin/ssh", "-o", "ServerAliveInterval=30"]
    assert argv[-5:] == ["-o", f"HostKeyAlias={HOST}", f"root@{HOST}", "-v", "uptime"]
    # ProxyCommand is for `sh -c`: quoted as a POSIX shell reads it, % doubled for ssh.
    proxy = shlex.split(_option(argv, "ProxyCommand").replace("%%", "%"))
    assert proxy == [sys.executable, "-m", "estate.console.cli", "tunnel", "--hub",
                     f"alice@{HUB}", "--hub-key", PINNED, HOST]


def test_estate_ssh_on_windows_runs_ssh_as_a_child_and_passes_its_status_on(
        hub_config, launches, monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    before = signal.getsignal(signal.SIGINT)
    assert estate(["ssh", f"root@{HOST}", "--", "uptime"]) == 75
    assert signal.getsignal(signal.SIGINT) == before  # Ctrl-C is the console's again
    [(how, argv)] = launches
    assert how == "child"
    assert argv[0] == "/opt/ssh/bin/ssh" and argv[-2:] == [f"root@{HOST}", "uptime"]
    # Windows' ssh hands ProxyCommand to CreateProcess: the C runtime's quoting, not sh's.
    proxy = _option(argv, "ProxyCommand").replace("%%", "%")
    assert proxy == subprocess.list2cmdline([
        sys.executable, "-m", "estate.console.cli", "tunnel", "--hub", f"alice@{HUB}",
        "--hub-key", PINNED, HOST])


def test_a_proxy_command_keeps_a_windows_path_with_spaces_in_one_piece(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    python = r"C:\Program Files\Python311\python.exe"
    assert remote.command_line([python, "-m", "x", "100%"]) == \
        r'"C:\Program Files\Python311\python.exe" -m x 100%'
    monkeypatch.setattr(sys, "platform", "linux")
    assert remote.command_line([python, "-m"]) == f"'{python}' -m"


def _known_hub(hub_config: Path) -> Path:
    known = hub_config.with_name("known_hubs")
    known.write_text(f"{_known_hubs.alias(HUB)} {PUBLIC_KEY}\n")
    return known


def test_the_tunnel_on_posix_becomes_ssh_w_with_posix_null_files(hub_config, launches,
                                                                 monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    known = _known_hub(hub_config)
    with pytest.raises(_Exec):
        estate(["tunnel", HOST])
    [(how, argv)] = launches
    assert how == "exec"
    assert argv[:5] == ["/opt/ssh/bin/ssh", "-F", "/dev/null", "-W", f"{HOST}:22"]
    assert _option(argv, "GlobalKnownHostsFile") == "/dev/null"
    assert _option(argv, "UserKnownHostsFile") == f'"{known}"'  # a space: one file, not two
    assert argv[-1] == "127.0.0.1"


def test_the_tunnel_on_windows_runs_ssh_w_as_a_child_and_passes_its_status_on(
        hub_config, launches, monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    known = _known_hub(hub_config)
    assert estate(["tunnel", HOST]) == 75
    [(how, argv)] = launches
    assert how == "child"
    # Windows has no /dev/null: ssh's own `none`.
    assert argv[:5] == ["/opt/ssh/bin/ssh", "-F", "none", "-W", f"{HOST}:22"]
    assert _option(argv, "GlobalKnownHostsFile") == "none"
    assert _option(argv, "UserKnownHostsFile") == f'"{known}"'
    assert _option(argv, "StrictHostKeyChecking") == "yes"


def test_ssh_is_found_where_windows_installs_it(tmp_path, monkeypatch, capsys, hub_config):
    monkeypatch.setattr(remote.shutil, "which", lambda name: None)
    monkeypatch.setenv("SystemRoot", str(tmp_path))
    monkeypatch.setattr(sys, "platform", "linux")
    assert remote.find_ssh() is None
    assert estate(["ssh", HOST]) == 1
    assert "apt install openssh-client" in capsys.readouterr().err
    monkeypatch.setattr(sys, "platform", "win32")
    assert estate(["ssh", HOST]) == 1
    assert "Optional features > OpenSSH Client" in capsys.readouterr().err
    ssh = tmp_path / "System32" / "OpenSSH" / "ssh.exe"
    ssh.parent.mkdir(parents=True)
    ssh.write_bytes(b"")
    assert remote.find_ssh() == str(ssh)


def test_the_console_stops_on_sigbreak_where_there_is_no_sighup(monkeypatch, hub_config):
    assert exit_signals() == (signal.SIGHUP, signal.SIGTERM)
    monkeypatch.delattr(signal, "SIGHUP")
    monkeypatch.setattr(signal, "SIGBREAK", 21, raising=False)
    assert exit_signals() == (21, signal.SIGTERM)
    # The console itself starts with them, and without SIGHUP.
    installed = []
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.append(sig))
    monkeypatch.setattr("estate.console.cli._run", lambda *a, **kw: 0)
    assert estate([]) == 0
    assert installed == [21, signal.SIGTERM]


def test_the_embedded_default_detaches_its_children_as_each_os_can(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert _embedded._detached() == {"start_new_session": True}
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    assert _embedded._detached() == {"creationflags": 0x200}


def test_the_tunnels_threaded_stdio_relays_both_ways_in_binary(monkeypatch):
    """Windows' stdio for the Python relay, on real pipes: bytes through unchanged, the end
    of stdin seen, stdout writes waited for; the C runtime set to binary on both."""
    modes = []
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "O_BINARY", 0x8000, raising=False)
    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(
        setmode=lambda fd, mode: modes.append((fd, mode))))
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()

    async def relay() -> list[bytes]:
        stdio = _stdio._ThreadedStdio(asyncio.get_running_loop(), 4, in_read, out_write)
        os.write(in_write, b"ab\r\n")
        got = [await stdio.read()]
        os.close(in_write)
        got.append(await stdio.read())
        await stdio.write(b"x\n" * 10)
        stdio.close()
        return got

    try:
        assert asyncio.run(relay()) == [b"ab\r\n", b""]
        assert os.read(out_read, 100) == b"x\n" * 10
        assert modes == [(in_read, 0x8000), (out_write, 0x8000)]
    finally:
        for fd in (in_read, out_read, out_write):
            os.close(fd)


def test_the_embedded_hub_takes_stop_signals_where_event_loops_cannot(monkeypatch):
    """Windows' event loops take no signal handlers: the hub (the embedded default's too)
    falls back to signal.signal, and a SIGTERM still stops it on its loop."""
    import asyncio
    import signal

    from estate.inventory.hub._cli_shared import on_stop_signals

    installed = {}
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.__setitem__(sig, handler))

    async def main() -> bool:
        loop = asyncio.get_running_loop()

        def refuse(*_):  # what Windows' event loops do
            raise NotImplementedError

        monkeypatch.setattr(loop, "add_signal_handler", refuse)
        stop = asyncio.Event()
        on_stop_signals(stop.set)
        installed[signal.SIGTERM](signal.SIGTERM, None)
        await asyncio.wait_for(stop.wait(), 5)
        return stop.is_set()

    assert asyncio.run(main())
    assert set(installed) == {signal.SIGTERM, signal.SIGINT}
