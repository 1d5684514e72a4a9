"""`estate ssh`'s ProxyCommand: OpenSSH's `ssh -W` to the hub itself once the hub's full key is
kept, so no Python starts between ssh and the hub; `estate tunnel` (whose Python relay checks
the pin and keeps the key) until then, or when the kept key is not the pinned one."""

from __future__ import annotations

import base64
import shlex
import sys
from pathlib import Path

import pytest

from estate.console import _known_hubs, remote
from estate.console._settings import PinnedHub
from tests.test_console_platform import HOST, HUB, PINNED, PUBLIC_KEY


@pytest.fixture()
def folder(tmp_path, monkeypatch) -> Path:
    """The console's folder (known_hubs lives beside console.toml), with a space in it."""
    folder = tmp_path / "Ann Lee"
    folder.mkdir()
    monkeypatch.setenv("ESTATE_CONSOLE_CONFIG", str(folder / "console.toml"))
    monkeypatch.setattr(remote.shutil, "which", lambda name: f"/opt/ssh/bin/{name}")
    monkeypatch.setattr(sys, "platform", "linux")
    return folder


def _proxy(hub: PinnedHub) -> list[str]:
    argv = remote.ssh_command("/opt/ssh/bin/ssh", hub, HOST, "root", ["uptime"])
    [proxy] = [a.split("=", 1)[1] for a in argv if a.startswith("ProxyCommand=")]
    assert argv[-2:] == [f"root@{HOST}", "uptime"]
    return shlex.split(proxy.replace("%%", "%"))


def test_the_proxy_is_ssh_w_once_the_pinned_hub_key_is_kept(folder):
    key = folder / "op key"
    hub = PinnedHub(HUB, "alice", PINNED, key)
    known = folder / "known_hubs"
    known.write_text(f"{_known_hubs.alias(HUB)} {PUBLIC_KEY}\n")
    proxy = _proxy(hub)
    # The command `estate tunnel` would exec, with the same checks of the hub's key.
    assert proxy == remote.openssh_relay(hub, HOST)
    assert proxy[:5] == ["/opt/ssh/bin/ssh", "-F", "/dev/null", "-W", f"{HOST}:22"]
    assert f'UserKnownHostsFile="{known}"' in proxy and "StrictHostKeyChecking=yes" in proxy
    assert proxy[proxy.index("-i") + 1] == str(key.resolve())
    assert proxy[-1] == "127.0.0.1"


@pytest.mark.parametrize("kept", [None, "another key"])
def test_the_proxy_is_estate_tunnel_until_the_pinned_key_is_kept(folder, kept):
    if kept:  # a key on file whose fingerprint is not the pinned one is never used
        other = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519" +
                                                  bytes([1]) * 32).decode()
        (folder / "known_hubs").write_text(f"{_known_hubs.alias(HUB)} {other}\n")
    proxy = _proxy(PinnedHub(HUB, "alice", PINNED))
    assert proxy == [sys.executable, "-m", "estate.console.cli", "tunnel", "--hub",
                     f"alice@{HUB}", "--hub-key", PINNED, HOST]
