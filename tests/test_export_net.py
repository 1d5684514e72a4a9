"""Exports narrowed by connectivity (`net:` and `rtt` filters), over real SSH against a real
hub: a host's `net` is the hub's verdict now, as the host list has it; as of a moment it is
unknown (the verdict keeps no history), so no `net:` filter matches then."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.harness import Agent, make_report, run
from tests.sshd import keygen


def _probe(name: str, kind: str, ok: bool, latency_ms: float | None = None,
           target: str = "t") -> dict:
    return {"name": name, "kind": kind, "target": target, "ok": ok, "latency_ms": latency_ms,
            "answers": [], "error": None if ok else "timed out", "source": "builtin"}


PROBES = {  # hostname: its report's probe results -> the hub's verdict
    "net-ok": [_probe("hub", "hub", True, 20.0), _probe("gateway", "gateway", True, 1.0)],
    "net-degraded": [_probe("hub", "hub", True, 35.0),
                     _probe("gateway", "gateway", False, target="10.0.0.1")],
    "net-down": [_probe("link", "link", False, target="eth0"), _probe("hub", "hub", False)],
}


@pytest.fixture(scope="module")
def estate(module_hub, tmp_path_factory, live_report):
    base = tmp_path_factory.mktemp("export-net")
    hub = module_hub
    for name, probes in PROBES.items():
        agent = Agent(hub, base / name, hub.token("Fire & Rescue", "Station 1"))
        report = make_report(live_report, agent.agent_id, system__hostname=name)
        report["connectivity"]["probes"] = probes
        assert agent.send(report)[0] == 0
    keygen(base / "chief")
    hub.admin("operator", "add", "chief", "--key", str(base / "chief.pub"), "--role", "admin",
              "--agencies", "all")
    return {"base": base, "hub": hub}


def _export(env, out: Path, *args: str) -> dict:
    hub = env["hub"]
    run("-m", "estate.console.cli", "export", "--hub", f"chief@{hub.address}", "--key",
        str(env["base"] / "chief"), "--hub-key", hub.fingerprint, "--format", "json", *args,
        "-o", str(out))
    return json.loads(out.read_text())


@pytest.mark.parametrize("report", ["inventory", "availability"])
def test_a_net_filter_exports_the_hosts_in_that_state_only(estate, tmp_path, report):
    doc = _export(estate, tmp_path / "degraded.json", "--report", report, "--filter",
                  "net:degraded")
    assert [r["hostname"] for r in doc["rows"]] == ["net-degraded"]
    assert doc["manifest"]["filters"]["filter"] == "net:degraded"
    not_ok = _export(estate, tmp_path / "not-ok.json", "--report", report, "--filter=-net:ok")
    assert [r["hostname"] for r in not_ok["rows"]] == ["net-degraded", "net-down"]
    slow = _export(estate, tmp_path / "slow.json", "--report", report, "--filter", "rtt>30")
    assert [r["hostname"] for r in slow["rows"]] == ["net-degraded"]


def test_as_of_a_moment_connectivity_is_unknown_so_net_filters_match_nothing(estate, tmp_path):
    everyone = _export(estate, tmp_path / "everyone.json", "--report", "inventory", "--as-of",
                       _today())
    assert sorted(r["hostname"] for r in everyone["rows"]) == sorted(PROBES)
    doc = _export(estate, tmp_path / "degraded.json", "--report", "inventory", "--as-of",
                  _today(), "--filter", "net:degraded")
    assert doc["rows"] == []


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())
