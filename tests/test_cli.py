"""`estate-agent collect` as a real process: a valid report, lean imports."""

from __future__ import annotations

import json
import subprocess
import sys

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
