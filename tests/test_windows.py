"""Windows parsers on outputs shaped as PowerShell 5.1 and 7 write them (tests/data/windows)."""

from __future__ import annotations

import json

import pytest

from estate.agent.collect import _windows as win
from tests.conftest import DATA

LAPTOP = json.loads((DATA / "windows/cim_ps51_laptop.json").read_text(encoding="utf-8"))
VM = json.loads((DATA / "windows/cim_ps7_vm.json").read_text(encoding="utf-8"))


def test_os_with_display_version_and_ubr():
    assert win.parse_os(LAPTOP) == {"family": "windows", "name": "Windows 11 Pro",
                                    "version": "23H2", "build": "22631.3296",
                                    "kernel": "10.0.22631", "arch": "x86_64"}


def test_server_os_without_display_version():
    os_ = win.parse_os(VM)
    assert (os_["name"], os_["version"], os_["build"]) == (
        "Windows Server 2019 Standard", "1809", "17763")


def test_identity_laptop():
    ident = win.parse_identity(LAPTOP)
    assert ident == {
        "vendor": "LENOVO", "model": "20XWCTO1WW", "serial": "PF2ABCDE",
        "uuid": "4c4c4544-0042-3510-8051-b7c04f4e3332", "chassis": "laptop",
        "bios": {"vendor": "LENOVO", "version": "N32ET86W (1.62 )", "date": "2023-07-14"},
    }


def test_identity_vm_blank_uuid_is_null():
    ident = win.parse_identity(VM)
    assert ident["uuid"] is None
    assert ident["chassis"] == "desktop"
    assert ident["bios"]["date"] == "2023-04-05"


def test_virtualization():
    assert win.parse_virtualization(VM) == {"kind": "microsoft", "type": "vm", "source": "cim"}
    assert win.parse_virtualization(LAPTOP)["type"] == "none"


def test_disks_single_and_several():
    disks = win.parse_disks(LAPTOP)
    assert disks == [
        {"name": "PhysicalDrive0", "model": "SAMSUNG MZVL2512HCJQ-00BL7",
         "serial": "0025_3881_1150_1D2C.", "size_bytes": 512105932800, "rotational": False},
        {"name": "PhysicalDrive1", "model": "WD Elements 25A3 USB Device",
         "serial": "5758413144393341", "size_bytes": 4000752599040, "rotational": True},
    ]
    vm = win.parse_disks(VM)
    assert vm[0]["serial"] is None and vm[0]["rotational"] is None


def test_network_single_object_and_nulls():
    assert win.parse_gateway(LAPTOP) == {"address": "10.20.4.1",
                                         "interface": "Intel(R) Wi-Fi 6 AX201 160MHz — Réseau"}
    assert win.parse_dns(LAPTOP) == ["10.20.0.10", "10.20.0.11"]
    assert win.parse_gateway(VM)["address"] == "172.16.8.1"
    assert win.parse_dns(VM) == ["172.16.0.5"]
    assert win.parse_gateway({}) is None and win.parse_dns({}) == []


def test_cpu_model_bare_object_or_list():
    assert win.parse_cpu_model(LAPTOP).startswith("11th Gen Intel")
    assert win.parse_cpu_model(VM).startswith("Intel(R) Xeon")
    assert win.parse_cpu_model({}) is None


def test_uninstall_entries():
    entries = json.loads((DATA / "windows/uninstall.json").read_text(encoding="utf-8"))
    names = [p["name"] for p in win.parse_uninstall_entries(entries)]
    assert names == ["Mozilla Firefox (x64 en-GB)", "Microsoft 365 Apps for enterprise - en-gb",
                     "7-Zip 23.01 (x64)", "Logiciel de gestion Élève — Écoles",
                     "Sophos Endpoint Agent"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/Date(1689292800000)/", "2023-07-14T00:00:00Z"),
        ("2023-04-05T01:00:00+01:00", "2023-04-05T00:00:00Z"),
        ("20230405120000.000000+060", "2023-04-05T11:00:00Z"),
        ({"value": "/Date(0)/", "DisplayHint": 2}, "1970-01-01T00:00:00Z"),
        ("2023-04-05T01:00:00", None), ("soon", None), (None, None),
    ],
)
def test_cim_dates(raw, expected):
    assert win.cim_datetime(raw) == expected


def test_missing_everything_is_unknown_not_a_crash():
    assert win.parse_identity({})["serial"] is None
    assert win.parse_os({})["name"] is None
    assert win.parse_disks({}) == []
