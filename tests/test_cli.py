"""`estate-agent collect` as a real process: a valid report, lean imports."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from estate.inventory.report import validate


def _agent(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "estate.agent", *args], capture_output=True,
                          text=True, timeout=120, **kw)


def test_collect_prints_a_valid_report(tmp_path):
    done = _agent("collect", "--pretty", env={"ESTATE_AGENT_CONFIG": str(tmp_path / "none"),
                                              "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    assert done.returncode == 0, done.stderr
    report = validate(json.loads(done.stdout))
    assert report["software"]["packages"] is not None
    assert done.stdout.startswith("{\n  ")


def test_collect_one_section(tmp_path):
    done = _agent("collect", "--section", "hardware",
                  env={"ESTATE_AGENT_CONFIG": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "memory" in json.loads(done.stdout)


def test_collect_with_a_bad_config_says_why(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[[probes]]\nname = "x"\nkind = "ping"\n')
    done = _agent("collect", "--config", str(cfg))
    assert done.returncode == 2
    assert "probes[0].kind: expected one of tcp, dns, gateway" in done.stderr


def test_collect_never_imports_paramiko_or_textual(tmp_path):
    code = ("import sys, io, contextlib\n"
            "from estate.agent.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['collect'])\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('paramiko', 'textual', 'asyncssh', 'cryptography', 'rich')]\n"
            "print(bad)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={"ESTATE_AGENT_CONFIG": str(tmp_path / "none")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# Modules a one-shot collection does without, each a few ms of a process meant to take well
# under a third of `facter --json`'s time (docs/benchmarks.md, issue 17): dataclasses brings
# inspect; hashlib loads OpenSSL; platform, _strptime (the first strptime call), gzip, and the
# escaping of error messages are needed only off the usual path. tomllib only with a config.
_LEFT_OUT = ("dataclasses", "inspect", "hashlib", "_hashlib", "platform", "_strptime", "gzip",
             "estate.inventory.sanitise")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux collectors' imports")
@pytest.mark.parametrize("with_config", [False, True], ids=["no-config", "config"])
def test_collect_imports_only_what_a_collection_needs(tmp_path, with_config):
    cfg = tmp_path / "agent.toml"
    if with_config:  # as on an enrolled machine: the state folder, a local probe
        cfg.write_text('interval = 60\n[[probes]]\nname = "self"\nkind = "dns"\n'
                       'target = "localhost"\n')
    code = ("import sys, io, contextlib\n"
            "from estate.agent.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    status = main(['collect'])\n"
            "assert status == 0 and out.getvalue().startswith('{'), status\n"
            "print(sorted(sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env["ESTATE_AGENT_CONFIG"] = str(cfg)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    loaded = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert "estate.agent.collect" in loaded  # the check itself works
    assert bool(loaded & {"tomllib", "tomli"}) == with_config
    left_out = set(_LEFT_OUT)
    if os.path.isdir("/var/lib/clamav"):  # its database's date only strptime reads
        left_out.discard("_strptime")
    assert sorted(loaded & left_out) == []


def test_inventory_and_agent_never_import_textual():
    code = ("import sys, agent, agent.cli, agent.collect, agent.probes, agent.config, "
            "inventory, inventory.report, inventory.fields\n"
            "print([m for m in sys.modules if m.split('.')[0] == 'textual'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_help_explains_the_commands():
    done = _agent("--help")
    assert done.returncode == 0
    for word in ("collect", "check-config"):
        assert word in done.stdout
