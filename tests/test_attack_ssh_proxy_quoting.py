"""`estate ssh`'s ProxyCommand (`ssh -W` to the hub) through the real OpenSSH client and
`sh -c`: paths and addresses with shell and ssh-token characters reach the relay as the same
argv, and run nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from estate.console import _known_hubs, remote
from estate.console._settings import PinnedHub

SSH = shutil.which("ssh")
PUBLIC_KEY = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519" + bytes(36)).decode()
PINNED = "SHA256:" + base64.b64encode(hashlib.sha256(
    base64.b64decode(PUBLIC_KEY.split()[1])).digest()).decode().rstrip("=")
HOST = "ag-0123456789ab"

pytestmark = pytest.mark.skipif(SSH is None or sys.platform == "win32",
                                reason="needs OpenSSH's client and a POSIX shell")


@pytest.mark.parametrize("address", ["127.0.0.1:2222", "[fe80::1%lo]:2222"])
def test_hostile_characters_reach_the_relay_as_they_are(tmp_path, monkeypatch, address):
    folder = tmp_path / "Ann's 50%d $HOME `touch pwned` ;touch pwned"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ESTATE_CONSOLE_CONFIG", str(folder / "console.toml"))
    # The relay ProxyCommand runs: a stand-in for ssh that writes down the argv it was given.
    seen = tmp_path / "argv.json"
    relay = tmp_path / "relay"
    relay.write_text(f"#!{sys.executable}\nimport json, sys\n"
                     f"open({str(seen)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    relay.chmod(0o755)
    monkeypatch.setattr(remote, "find_ssh", lambda: str(relay))
    (folder / "known_hubs").write_text(f"{_known_hubs.alias(address)} {PUBLIC_KEY}\n")
    hub = PinnedHub(address, "alice", PINNED, folder / "key %h 'x' $(touch pwned)")
    expected = remote.openssh_relay(hub, HOST)
    assert expected is not None

    argv = remote.ssh_command(str(SSH), hub, HOST, None, [])
    subprocess.run([*argv, "-F", "/dev/null", "-o", "BatchMode=yes",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5"],
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)

    assert json.loads(seen.read_text()) == expected[1:]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def _relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: Path,
           key: Path) -> list[str] | None:
    folder.mkdir()
    monkeypatch.setenv("ESTATE_CONSOLE_CONFIG", str(folder / "console.toml"))
    monkeypatch.setattr(remote, "find_ssh", lambda: str(SSH))
    (folder / "known_hubs").write_text(f"{_known_hubs.alias('127.0.0.1:2222')} {PUBLIC_KEY}\n")
    return remote.openssh_relay(PinnedHub("127.0.0.1:2222", "alice", PINNED, key), HOST)


def test_ssh_reads_the_kept_key_from_a_folder_with_percent_signs(tmp_path, monkeypatch):
    # ssh expands %d, %h... in UserKnownHostsFile and -i: the relay doubles each `%`, so ssh
    # reads the file that is there (an unknown token such as %b would stop ssh outright).
    folder = tmp_path / "50%d %b"
    relay = _relay(tmp_path, monkeypatch, folder, tmp_path / "key%h")
    assert relay is not None
    shown = subprocess.run([*relay[:-1], "-G", relay[-1]], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert f"userknownhostsfile {folder / 'known_hubs'}" in shown.replace('"', "")
    assert relay[relay.index("-i") + 1] == str(tmp_path / "key%%h")


@pytest.mark.parametrize("where", ["folder", "key"])
def test_a_path_ssh_would_expand_a_variable_in_takes_the_python_relay(tmp_path, monkeypatch,
                                                                     where):
    folder = tmp_path / ("${HOME}" if where == "folder" else "console")
    key = tmp_path / ("${HOME}" if where == "key" else "key")
    assert _relay(tmp_path, monkeypatch, folder, key) is None
