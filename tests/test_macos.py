"""macOS parsers on `system_profiler -json` and `route` output (tests/data/macos)."""

from __future__ import annotations

import json

from estate.agent.collect import _macos as mac
from tests.conftest import DATA


def _load(name: str) -> dict:
    return json.loads((DATA / "macos" / name).read_text(encoding="utf-8"))


M1, IMAC, VM = _load("profiler_m1_laptop.json"), _load("profiler_intel_imac.json"), \
    _load("profiler_vm.json")


def test_os():
    assert mac.parse_os(M1) == {"family": "macos", "name": "macOS", "version": "14.4.1",
                                "build": "23E224", "kernel": "23.4.0", "arch": None}
    assert mac.parse_os(IMAC)["version"] == "10.15.7"
    assert mac.parse_os({})["name"] is None


def test_identity():
    assert mac.parse_identity(M1) == {
        "vendor": "Apple Inc.", "model": "MacBookPro18,3", "serial": "FVFGK2ABQ6L4",
        "uuid": "3f5b2a1c-8e4d-5b6a-9c7d-1e2f3a4b5c6d", "chassis": "laptop",
        "bios": {"vendor": "Apple Inc.", "version": "10151.101.3", "date": None},
    }
    imac = mac.parse_identity(IMAC)
    assert (imac["serial"], imac["uuid"], imac["chassis"]) == (None, None, "all-in-one")


def test_disks_nvme_and_sata_under_ports():
    assert mac.parse_disks(IMAC) == [
        {"name": "disk0", "model": "APPLE SSD AP0256N", "serial": "C07123400ABCDEFG",
         "size_bytes": 251000193024, "rotational": None},
        {"name": "disk1", "model": "ST1000DM003-1SB102", "serial": "Z9A0BCDE",
         "size_bytes": 1000204886016, "rotational": True},
    ]
    assert [d["name"] for d in mac.parse_disks(M1)] == ["disk0"]
    assert mac.parse_disks(VM) == []


def test_virtualization():
    assert mac.parse_virtualization(VM, "1") == {"kind": "apple", "type": "vm",
                                                 "source": "system_profiler"}
    assert mac.parse_virtualization(M1, "0")["type"] == "none"
    assert mac.parse_virtualization(M1, "1")["type"] == "vm"


def test_applications():
    apps = mac.parse_applications(_load("applications.json"))
    assert [(a["name"], a["version"], a["publisher"], a["arch"]) for a in apps] == [
        ("Safari", "17.4.1", "Software Signing", "universal"),
        ("Microsoft Word", "16.83", "Microsoft Corporation (UBF8T346G9)", "universal"),
        ("Gestionnaire d’élèves", "2.0 (β)", None, "x86_64"),
        ("Legacy Tool", None, None, None),
    ]


def test_route_get_default():
    text = (DATA / "macos/route_get_default.txt").read_text()
    assert mac.parse_route_get(text) == {"address": "192.168.50.1", "interface": "en0"}
    assert mac.parse_route_get("route: writing to routing socket: not in table\n") is None
