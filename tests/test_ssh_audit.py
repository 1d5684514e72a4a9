"""The hub's SSH front door as an auditor sees it, and every client we ship still connecting.

`ssh-audit` (the `test` dependency group) is run against a real hub: no failures, no warnings
other than post-quantum notes, and connection throttling in place (DHEat, CVE-2002-20001).
Then the three clients, against the same algorithm list: the agent (paramiko) through its real
CLI, the console's asyncssh client, and OpenSSH's `ssh`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from estate.console._client import HubConnection
from estate.inventory.hub._server import ENCRYPTION_ALGS, KEX_ALGS, MAC_ALGS
from tests.harness import Agent, HubProcess, make_report

POST_QUANTUM = "post-quantum"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = HubProcess(tmp_path_factory.mktemp("audit") / "hub").start()
    yield hub
    hub.kill()


def _ssh_audit() -> list[str] | None:
    script = Path(sys.executable).with_name("ssh-audit")
    if script.exists():
        return [str(script)]
    found = shutil.which("ssh-audit")
    return [found] if found else None


def _findings(doc: dict, level: str) -> list[tuple[str, str, str]]:
    return [(section, alg["algorithm"], note)
            for section in ("kex", "key", "enc", "mac")
            for alg in doc.get(section, [])
            for note in alg.get("notes", {}).get(level, [])]


def test_ssh_audit_passes_the_hub(tmp_path):
    command = _ssh_audit()
    if command is None:
        pytest.skip("ssh-audit is not installed: pip install 'ssh-audit>=3.9' (the test group)")
    # A hub of its own, with the default per-source rate (the harness lifts it): the audit's
    # rate test spends 127.0.0.1's connection budget.
    hub = HubProcess(tmp_path / "hub", ("--connection-rate", "10", "--connection-burst",
                                        "10")).start()
    try:
        done = subprocess.run([*command, "-j", f"127.0.0.1:{hub.port}"], capture_output=True,
                              text=True, timeout=180)
    finally:
        hub.kill()
    doc = json.loads(done.stdout)
    assert _findings(doc, "fail") == []
    assert [f for f in _findings(doc, "warn") if POST_QUANTUM not in f[2]] == []
    assert doc.get("cves") == []
    assert not doc.get("recommendations"), doc.get("recommendations")
    notes = " ".join(doc.get("additional_notes", []))
    assert "DHEat" not in notes, notes  # new connections from one address are throttled
    assert [k["algorithm"] for k in doc["key"]] == ["ssh-ed25519"]
    offered = {section: [a["algorithm"] for a in doc[section]] for section in ("kex", "enc",
                                                                                "mac")}
    assert [k for k in offered["kex"] if not k.startswith(("ext-info", "kex-strict"))] \
        == KEX_ALGS
    assert offered["enc"] == ENCRYPTION_ALGS and offered["mac"] == MAC_ALGS
    assert doc["compression"] == ["none"]


@pytest.fixture(scope="module")
def agent(hub, tmp_path_factory):
    return Agent(hub, tmp_path_factory.mktemp("agent"), hub.token())


def test_the_agent_enrols_and_reports_through_its_cli(agent):
    """paramiko: `estate-agent enrol` (the fixture) and `estate-agent report`."""
    done = agent.report_cli()
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_console_client_connects(hub, tmp_path):
    """asyncssh, as the console uses it: an operator's API channel."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "alice"
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    key.write_public_key(str(path) + ".pub")
    hub.admin("operator", "add", "alice", "--key", f"{path}.pub", "--role", "staff",
              "--agencies", "all")

    async def summary():
        conn = HubConnection(hub.address, "alice", path, hub.fingerprint)
        await conn.connect()
        try:
            return await conn.request("summary")
        finally:
            await conn.close()

    assert "totals" in asyncio.run(summary())


def test_openssh_connects_with_a_key_and_a_known_hosts_file(hub, agent, tmp_path, live_report):
    ssh = shutil.which("ssh")
    if ssh is None:
        pytest.skip("OpenSSH's ssh is not installed (apt-get install openssh-client)")
    host_key = asyncssh.read_private_key(hub.data / "host_key_ed25519")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_bytes(f"[127.0.0.1]:{hub.port} ".encode()
                            + host_key.export_public_key("openssh"))
    report = json.dumps(make_report(live_report, agent.agent_id))
    done = subprocess.run(
        [ssh, "-F", os.devnull, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "IdentityAgent=none", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=none", "-o", "StrictHostKeyChecking=yes",
         "-i", str(agent.key_file), "-p", str(hub.port), "-l", agent.agent_id, "127.0.0.1",
         "estate-report v1"],
        input=report, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "stored"
