"""`estate`'s command line: console.toml read strictly into typed settings, the verbs as
argparse subcommands, and `estate tunnel` kept light."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from estate.console._settings import ConfigError, ConsoleConfig, HubSettings, load, load_config
from estate.console.cli import main as estate

GOOD = """\
hub = "alice@hub.example:2222"
key = "~/.ssh/id_ed25519"
hub_key = "SHA256:abc"
theme = "nord"
ssh_args = ["-o", "ServerAliveInterval=30"]
"""


@pytest.fixture()
def config(tmp_path, monkeypatch) -> Path:
    """console.toml's path for this test (not written yet)."""
    path = tmp_path / "console.toml"
    monkeypatch.setenv("ESTATE_CONSOLE_CONFIG", str(path))
    return path


def test_console_toml_is_read_into_a_frozen_typed_record(config):
    config.write_text(GOOD)
    read = load_config()
    assert read == ConsoleConfig(path=config, hub="alice@hub.example:2222",
                                 key=Path("~/.ssh/id_ed25519").expanduser(),
                                 hub_key="SHA256:abc", theme="nord",
                                 ssh_args=("-o", "ServerAliveInterval=30"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.hub = "mallory@evil:22"  # type: ignore[misc]
    assert load_config(config.with_name("none.toml")) == ConsoleConfig(
        config.with_name("none.toml"))


@pytest.mark.parametrize(("text", "named", "problem"), [
    ('hub = "alice@hub:2222"\nhubkey = "SHA256:x"\n', "hubkey",
     "unknown key (expected hub, key, hub_key, theme, ssh_args)"),
    ("hub = 2222\n", "hub", 'expected a string "USER@HOST:PORT", got 2222'),
    ('hub = "alice@hub"\n', "hub", "expected USER@HOST:PORT, got 'alice@hub'"),
    ('key = ["a"]\n', "key", "expected a string: the path of your private key, got ['a']"),
    ("hub_key = true\n", "hub_key", "expected a string: the hub's fingerprint"),
    ('hub_key = ""\n', "hub_key", "got ''"),
    ("theme = 1\n", "theme", "expected a string: a Textual theme name, got 1"),
    ('ssh_args = "-v"\n', "ssh_args", "expected a list of strings"),
    ('ssh_args = ["-o", 1]\n', "ssh_args", "expected a list of strings"),
])
def test_a_bad_console_toml_names_the_file_the_key_and_the_problem(config, text, named,
                                                                   problem):
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config()
    assert str(caught.value).startswith(f"{config}: {named}: ")
    assert problem in str(caught.value)


def test_flags_win_over_console_toml_and_no_hub_is_the_embedded_default(config, tmp_path):
    assert load() == (ConsoleConfig(config), None)
    key = tmp_path / "op_key"
    key.write_text("")
    config.write_text(f'hub = "alice@hub.example:2222"\nkey = "{key}"\nhub_key = "SHA256:a"\n')
    _, from_file = load()
    assert from_file == HubSettings("hub.example:2222", "alice", "SHA256:a", key)
    _, from_flags = load("bob@[::1]:22", None, "SHA256:b")
    assert from_flags == HubSettings("[::1]:22", "bob", "SHA256:b", key)
    assert from_flags.pinned() == from_flags.pin("SHA256:b")
    assert HubSettings("hub:22", "bob").pinned() is None
    with pytest.raises(ConfigError, match=r"^hub: expected USER@HOST:PORT, got 'bob'$"):
        load("bob")
    with pytest.raises(ConfigError, match=r"^key: .*/missing does not exist$"):
        load(key=tmp_path / "missing")


def test_help_lists_the_verbs_and_each_verb_has_its_own(capsys):
    with pytest.raises(SystemExit) as done:
        estate(["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    for verb in ("ssh", "tunnel", "export", "verify"):
        assert f"\n    {verb} " in shown, shown
    for verb, option in (("ssh", "-- SSH_ARGS"), ("tunnel", "HOST"), ("export", "--register"),
                         ("verify", "--manifest")):
        with pytest.raises(SystemExit) as done:
            estate([verb, "--help"])
        assert done.value.code == 0
        shown = capsys.readouterr().out
        assert shown.startswith(f"usage: estate {verb} ") and option in shown, shown


def test_verbs_keep_their_exit_statuses_and_messages(config, capsys):
    with pytest.raises(SystemExit) as done:
        estate(["bogus"])
    assert done.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    assert estate(["ssh", "somehost"]) == 2
    assert capsys.readouterr().err == ("estate ssh: no hub configured: pass --hub "
                                       "USER@HOST:PORT, or set hub in console.toml\n")
    # The connection options may come before the verb as well as after it.
    for argv in (["tunnel", "--hub", "op@127.0.0.1:9", "h"],
                 ["--hub", "op@127.0.0.1:9", "tunnel", "h"]):
        assert estate(argv) == 2
        assert "estate tunnel: the hub's key is not pinned" in capsys.readouterr().err
    assert estate(["export", "--report", "inventory"]) == 2
    assert "estate export: no hub configured" in capsys.readouterr().err
    config.write_text("colour = 1\n")
    assert estate(["export", "--report", "inventory"]) == 2
    assert f"{config}: colour: unknown key" in capsys.readouterr().err
    # The console's own options mean nothing to a verb: refused, not ignored.
    with pytest.raises(SystemExit) as done:
        estate(["--readonly", "ssh", "somehost"])
    assert done.value.code == 2
    assert "--readonly: an option of the console itself" in capsys.readouterr().err


def test_a_bad_console_toml_stops_the_console_before_it_starts_anything(config, capsys):
    config.write_text("theme = 7\n")
    assert estate([]) == 2
    assert capsys.readouterr().err == f"estate: {config}: theme: expected a string: a " \
                                      f"Textual theme name, got 7\n"


def test_parsing_estate_tunnel_imports_nothing_heavy():
    """`estate tunnel` starts before every remote session: its parse must not load what the
    other verbs need (asyncssh, the export package, Textual)."""
    code = ("import sys\n"
            "from estate.console.cli import _parser\n"
            "args = _parser().parse_args(['tunnel', '--hub-key', 'SHA256:x', 'ag-1'])\n"
            "assert args.run.__name__ == 'tunnel_main' and args.hub_key == 'SHA256:x'\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('asyncssh', 'textual', 'cryptography')"
            " or m.startswith('estate.inventory.export')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
