"""agent.toml: unknown keys, wrong types and bad values name the file and the key path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from estate.agent.config import ConfigError, load

GOOD = """
agent_id = "a-7f3c"
hub = "hub.partnership.example:2222"
hub_key = "SHA256:abc"
key_file = "agent_key"
interval = 60
collector_timeout = 5

[[probes]]
name = "dc"
kind = "tcp"
target = "[::1]:445"

[[probes]]
name = "gw"
kind = "gateway"
timeout = 0.5
"""


def _write(tmp_path, text):
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_config(tmp_path):
    cfg = load(_write(tmp_path, GOOD))
    assert cfg.agent_id == "a-7f3c"
    assert cfg.interval_s == 60.0
    assert cfg.key_file == tmp_path / "agent_key", "relative to the config file"
    assert [(p.name, p.kind, p.timeout_s) for p in cfg.probes] == [("dc", "tcp", 2.0),
                                                                   ("gw", "gateway", 0.5)]


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("intervall = 60", "intervall", "unknown key"),
        ('interval = "60"', "interval", "expected a number of seconds from 1 to 86400"),
        ("interval = 0", "interval", "from 1 to 86400"),
        ("interval = nan", "interval", "got nan"),
        ("interval = true", "interval", "got True"),
        ('hub = "hub-without-port"', "hub", "expected HOST:PORT"),
        ('hub = "hub:99999"', "hub", "expected HOST:PORT"),
        ("agent_id = 7", "agent_id", "expected a string"),
        ('agent_id = "a b"', "agent_id", "letters, digits"),
        ('[[probes]]\nname = "x"\nkind = "icmp"', "probes[0].kind", "expected one of"),
        ('[[probes]]\nname = "x"\nkind = "tcp"', "probes[0].target", "required"),
        ('[[probes]]\nname = "x"\nkind = "tcp"\ntarget = "h:0"', "probes[0].target",
         "HOST:PORT"),
        ('[[probes]]\nkind = "dns"\ntarget = "x"', "probes[0].name", "required"),
        ('[[probes]]\nname = "x"\nkind = "dns"\ntarget = "x"\ntimeout = 99',
         "probes[0].timeout", "from 0.1 to 60"),
        ('[[probes]]\nname = "x"\nkind = "dns"\ntarget = "x"\ncolour = 1',
         "probes[0].colour", "unknown key"),
        ('[[probes]]\nname = "x"\nkind = "dns"\ntarget = "a"\n'
         '[[probes]]\nname = "x"\nkind = "dns"\ntarget = "b"', "probes[1].name", "duplicate"),
        ('probes = "all"', "probes", "list of tables"),
    ],
)
def test_bad_values_name_file_key_and_problem(tmp_path, text, key, problem):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.key == key
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}: {key}: ")


def test_not_toml_and_missing(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(_write(tmp_path, "interval = = 3"))
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.toml")


def test_check_config_command(tmp_path):
    good = _write(tmp_path, GOOD)
    ok = subprocess.run([sys.executable, "-m", "estate.agent", "check-config", "--config",
                         str(good)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "ok (2 probes" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("interval = -5\n")
    fail = subprocess.run([sys.executable, "-m", "estate.agent", "check-config", "--config",
                           str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert fail.returncode == 1
    assert f"{bad}: interval: expected a number" in fail.stderr
