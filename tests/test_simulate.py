"""Simulated agents: schema-valid, varied reports; real enrolment; a real hub storing them."""

from __future__ import annotations

import asyncssh

from estate.inventory import simulate
from estate.inventory.report import validate
from tests.harness import run


def _ident(i: int) -> simulate.Identity:
    return simulate.Identity(i, f"ag-{i:012x}", asyncssh.generate_private_key("ssh-ed25519"),
                             *simulate.placements(i + 1)[i])


def test_fake_reports_are_valid_and_varied():
    reports = [simulate.fake_report(_ident(i), 1, 60.0) for i in range(30)]
    for r in reports:
        validate(r)
    assert len({r["system"]["os"]["name"] for r in reports}) >= 4
    assert len({r["hardware"]["vendor"] for r in reports}) >= 3
    assert len({r["hardware"]["serial"] for r in reports}) == 30


def test_simulate_enrols_and_reports_across_agencies(hub):
    done = run("-m", "estate.inventory.hub.cli", "simulate", "--agents", "12", "--hub", hub.address,
               "--interval", "1", "--duration", "5", "--data", str(hub.data), timeout=120)
    assert "running 12 agents" in done.stdout
    hosts = hub.admin_json("hosts")
    assert len(hosts) == 12
    assert len({h["agency"] for h in hosts}) >= 5
    with hub.store() as store:
        assert store.report_count() >= 12
    # A second run reuses the same identities: no new agents.
    run("-m", "estate.inventory.hub.cli", "simulate", "--agents", "12", "--hub", hub.address,
        "--interval", "1", "--duration", "2", "--data", str(hub.data), timeout=120)
    assert len(hub.admin_json("agent", "list")) == 12
