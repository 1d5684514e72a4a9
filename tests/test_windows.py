"""Windows parsers on outputs shaped as PowerShell 5.1 and 7 write them (tests/data/windows)."""

from __future__ import annotations

import json
import sys
import zoneinfo
from datetime import date
from typing import Any

import pytest

from estate.agent.collect import _windows as win
from estate.agent.collect._common import hypervisor_name
from estate.agent.collect._windows_zones import WINDOWS_TO_IANA
from estate.inventory.export._eos import support_of
from tests.conftest import DATA


def _cim(name: str) -> dict[str, Any]:
    # Read as the agent reads PowerShell's output: UTF-8 text, a byte order mark and all.
    return win.parse_powershell_json((DATA / "windows" / name).read_text(encoding="utf-8"))


LAPTOP = _cim("cim_ps51_laptop.json")
VM = _cim("cim_ps7_vm.json")
WIN7_FR = _cim("cim_ps51_win7_fr_bom.json")
WIN11_FR_QEMU = _cim("cim_ps7_win11_entreprise_qemu.json")


def test_os_with_display_version_and_ubr():
    assert win.parse_os(LAPTOP) == {"family": "windows", "name": "Windows 11 Pro",
                                    "version": "23H2", "build": "22631.3296",
                                    "kernel": "10.0.22631", "arch": "x86_64",
                                    "product": "Windows 11 Pro"}


def test_server_os_without_display_version():
    os_ = win.parse_os(VM)
    assert (os_["name"], os_["version"], os_["build"], os_["product"]) == (
        "Windows Server 2019 Standard", "1809", "17763", "Windows Server 2019 Standard")


# --- PowerShell's byte order mark ----------------------------------------------------------

def test_powershell_output_with_a_byte_order_mark_is_read():
    text = (DATA / "windows/cim_ps51_win7_fr_bom.json").read_text(encoding="utf-8")
    assert text.startswith("\ufeff"), "the fixture keeps the BOM PowerShell wrote"
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert win.parse_powershell_json(text)["TimeZone"] == "Romance Standard Time"
    assert win.parse_powershell_json(text.removeprefix("\ufeff")) == WIN7_FR


# --- localised captions: edition and version from numbers ----------------------------------

def test_localised_windows_7_is_identified_from_its_numbers():
    os_ = win.parse_os(WIN7_FR)
    assert os_ == {"family": "windows", "name": "Windows 7 Professionnel",
                   "version": "6.1.7601", "build": "7601", "kernel": "6.1.7601",
                   "arch": "x86_64", "product": "Windows 7 Professional"}


def test_french_enterprise_edition_is_identified_from_its_numbers():
    os_ = win.parse_os(WIN11_FR_QEMU)
    assert (os_["name"], os_["product"], os_["version"], os_["build"]) == (
        "Windows 11 Entreprise", "Windows 11 Enterprise", "23H2", "22631.4169")


@pytest.mark.parametrize(
    ("fixture", "caption_alone", "os", "end"),
    [
        # The caption is what the table matched before: a localised one matched nothing.
        (WIN7_FR, "Windows 7", "Windows 7", date(2020, 1, 14)),
        (WIN11_FR_QEMU, None, "Windows 11 23H2 (Enterprise, Education)", date(2026, 11, 10)),
        (LAPTOP, "Windows 11 23H2 (Home, Pro)", "Windows 11 23H2 (Home, Pro)",
         date(2025, 11, 11)),
    ],
)
def test_end_of_support_is_found_for_localised_windows(fixture, caption_alone, os, end):
    from estate.inventory.export._source import _os_for_support

    os_ = win.parse_os(fixture)
    by_caption = support_of(os_["name"], os_["version"])
    assert (by_caption.os if by_caption else None) == caption_alone
    facts = {"os_name": os_["name"], "os_product": os_["product"]}
    support = support_of(_os_for_support(facts), os_["version"])
    assert support is not None and (support.os, support.end_of_support) == (os, end)


def test_end_of_support_falls_back_to_the_caption_without_a_product():
    """Reports from older agents, Linux and macOS have no product: the name is matched."""
    from estate.inventory.export._source import _os_for_support

    assert _os_for_support({"os_name": "Windows 10 Pro"}) == "Windows 10 Pro"
    assert _os_for_support({"os_name": "Windows 10 Pro", "os_product": None}) == \
        "Windows 10 Pro"


@pytest.mark.parametrize(
    ("build", "product_type", "sku", "product"),
    [
        (7601, 1, 48, "Windows 7 Professional"),
        (7601, 1, 4, "Windows 7 Enterprise"),
        (7601, 1, 3, "Windows 7 Home Premium"),
        (7601, 3, 7, "Windows Server 2008 R2 Standard"),
        (9200, 1, 48, "Windows 8 Pro"),
        (9600, 1, 101, "Windows 8.1"),
        (9600, 1, 4, "Windows 8.1 Enterprise"),
        (10240, 1, 125, "Windows 10 Enterprise LTSC"),
        (19045, 1, 121, "Windows 10 Education"),
        (21999, 1, 48, "Windows 10 Pro"),
        (22000, 1, 101, "Windows 11 Home"),
        (26100, 1, 164, "Windows 11 Pro Education"),
        (14393, 3, 8, "Windows Server 2016 Datacenter"),
        (17763, 2, 13, "Windows Server 2019 Standard"),  # a domain controller, Server Core
        (20348, 3, 7, "Windows Server 2022 Standard"),
        (18363, 3, 13, None),  # a semi-annual Server release has no product name of its own
        (22631, 1, 9999, None),  # an edition not in the table: the caption is matched
        (22631, 1, None, None),
        (None, 1, 48, None),
        (22631, None, 48, None),
        (6002, 1, 48, None),  # Vista: PowerShell 2 at most, no CIM; not identified
    ],
)
def test_product_from_numbers(build, product_type, sku, product):
    assert win.product_name(build, product_type, sku) == product


# --- time zone ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("doc", "zones"),
    [
        (LAPTOP, {"timezone": "Europe/London", "windows_timezone": "GMT Standard Time"}),
        (VM, {"timezone": "Europe/Berlin", "windows_timezone": "W. Europe Standard Time"}),
        (WIN7_FR, {"timezone": "Europe/Paris", "windows_timezone": "Romance Standard Time"}),
        ({"TimeZone": "UTC"}, {"timezone": "Etc/UTC", "windows_timezone": "UTC"}),
        # A zone newer than the table: the id is kept, the IANA name is unknown.
        ({"TimeZone": "Mars Standard Time"},
         {"timezone": None, "windows_timezone": "Mars Standard Time"}),
        ({}, {"timezone": None, "windows_timezone": None}),
    ],
)
def test_windows_zone_reported_as_iana_with_the_windows_id_beside_it(doc, zones):
    assert win.parse_timezone(doc) == zones


def test_every_mapped_zone_is_a_real_iana_zone():
    """Checked against this machine's tz database, so a typo or a made-up name fails."""
    known = zoneinfo.available_timezones()
    assert len(WINDOWS_TO_IANA) >= 140
    assert sorted(v for v in WINDOWS_TO_IANA.values() if v not in known) == []


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
    assert win.parse_virtualization(WIN7_FR) == {"kind": "oracle", "type": "vm",
                                                 "source": "cim"}


@pytest.mark.parametrize(
    ("computer_system", "bios_version"),
    [
        ({"Manufacturer": "QEMU", "Model": "Standard PC (Q35 + ICH9, 2009)"}, "BOCHS  - 1"),
        ({"Manufacturer": "Bochs", "Model": "Bochs"}, "BOCHS  - 1"),  # an old machine type
        # Proxmox lets an admin set SMBIOS vendor and model (licensing); the firmware's ACPI
        # OEM id, in Win32_BIOS.Version, still gives it away.
        ({"Manufacturer": "Dell Inc.", "Model": "OptiPlex 7090"}, "BOCHS_ - 1"),
        ({"Manufacturer": "Dell Inc.", "Model": "OptiPlex 7090"}, "BXPC    - 1"),
    ],
)
def test_qemu_and_bochs_guests_are_kvm_as_systemd_names_it(computer_system, bios_version):
    doc = {"ComputerSystem": computer_system, "BIOS": {"Version": bios_version}}
    assert win.parse_virtualization(doc) == {"kind": "kvm", "type": "vm", "source": "cim"}


@pytest.mark.parametrize(
    ("clues", "kind"),
    [
        (("Bochs", "Bochs"), "kvm"), (("QEMU", "Standard PC (i440FX + PIIX, 1996)"), "kvm"),
        ((None, None, "BXPC    - 1"), "kvm"), (("Red Hat", "KVM"), "kvm"),
        (("VMware, Inc.", "VMware7,1"), "vmware"), (("innotek GmbH", "VirtualBox"), "oracle"),
        (("Microsoft Corporation", "Virtual Machine"), "microsoft"),
        (("Xen", "HVM domU"), "xen"), (("Amazon EC2", "m5.large"), "amazon"),
        (("Dell Inc.", "OptiPlex 7090", "DELL   - 1072009"), None), ((), None),
    ],
)
def test_one_hypervisor_name_for_every_os(clues, kind):
    """The shared normaliser (Linux DMI, macOS and Windows use it) says what
    systemd-detect-virt says."""
    assert hypervisor_name(*clues) == kind


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


def test_windows_7_hex_encoded_disk_serials_are_decoded():
    assert [(d["model"], d["serial"]) for d in win.parse_disks(WIN7_FR)] == [
        ("VBOX HARDDISK ATA Device", "VB2cff0f95-b2f7db11"),
        ("Generic USB Flash Disk USB Device", "1234567890ABCDEF"),
    ]
    # Windows 10 and 11 give the serial itself, even when it is hex digits.
    assert [d["serial"] for d in win.parse_disks(WIN11_FR_QEMU)] == ["drive-scsi0"]


@pytest.mark.parametrize(
    ("raw", "before_windows_8", "serial"),
    [
        ("42566332666666303539622d6632643731622031", True, "VB2cff0f95-b2f7db11"),
        ("42566332666666303539622d6632643731622031", False,
         "42566332666666303539622d6632643731622031"),
        ("2020202057202d44435734433145333535343736", True, "WD-WCC4E1534567"),
        ("5758413144393341", False, "5758413144393341"),  # Windows 10: a real hex serial
        ("1234567890ABCDEF", True, "1234567890ABCDEF"),  # swapped, not printable: real
        ("WD-WCC4E1234567", True, "WD-WCC4E1234567"),  # not hex
        ("425663326", True, "425663326"),  # odd length
        ("2020202020202020", True, None),  # blanks: no serial
        (None, True, None),
    ],
)
def test_disk_serial_decoding(raw, before_windows_8, serial):
    assert win.disk_serial(raw, before_windows_8) == serial


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


class FakeWinreg:
    """The `winreg` module over a registry given as {"HIVE\\key\\path": {value: data}}.

    Only the calls the collector makes, with the real module's behaviour: key names are
    case-insensitive, a missing key or value raises FileNotFoundError, keys are context
    managers, and OpenKey takes (key, sub_key, reserved, access).
    """

    HKEY_LOCAL_MACHINE, HKEY_USERS, HKEY_CURRENT_USER = "HKEY_LOCAL_MACHINE", "HKEY_USERS", \
        "HKEY_CURRENT_USER"
    KEY_READ, KEY_WOW64_64KEY = 0x20019, 0x0100

    class Key:
        def __init__(self, name: str) -> None:
            self.name, self.subkeys, self.values = name, {}, {}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def __init__(self, keys: dict[str, dict[str, Any]]) -> None:
        self.hives = {h: self.Key(h) for h in (self.HKEY_LOCAL_MACHINE, self.HKEY_USERS,
                                                self.HKEY_CURRENT_USER)}
        self.accesses: list[int] = []
        for path, values in keys.items():
            hive, *parts = path.split("\\")
            node = self.hives[hive]
            for part in parts:
                node = node.subkeys.setdefault(part.lower(), self.Key(part))
            node.values.update(values)

    def OpenKey(self, key, sub_key, reserved=0, access=0x20019):
        self.accesses.append(access)
        node = self.hives[key] if isinstance(key, str) else key
        for part in filter(None, sub_key.split("\\")):
            if part.lower() not in node.subkeys:
                raise FileNotFoundError(2, "The system cannot find the file specified")
            node = node.subkeys[part.lower()]
        return node

    def QueryInfoKey(self, key):
        return len(key.subkeys), len(key.values), 0

    def EnumKey(self, key, index):
        names = [k.name for k in key.subkeys.values()]
        if index >= len(names):
            raise OSError(259, "No more data is available")
        return names[index]

    def QueryValueEx(self, key, name):
        if name not in key.values:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        value = key.values[name]
        return value, 4 if isinstance(value, int) else 1  # REG_DWORD, REG_SZ


def test_per_user_installs_are_read_from_every_loaded_user_hive(monkeypatch):
    keys = json.loads((DATA / "windows/registry_uninstall.json").read_text(encoding="utf-8"))
    fake = FakeWinreg(keys)
    monkeypatch.setitem(sys.modules, "winreg", fake)
    manager, packages = win.software([])
    assert manager == "registry"
    assert [(p["name"], p["version"], p["scope"]) for p in packages] == [
        ("Mozilla Firefox (x64 en-GB)", "125.0.2", "machine"),
        ("7-Zip 23.01 (x64)", "23.01", "machine"),
        ("Google Chrome", "124.0.6367.91", "machine"),
        # Teams is in two users' hives: one package. Chrome is also a user's own copy.
        ("Microsoft Teams classic", "1.6.00.4472", "user"),
        ("Microsoft Visual Studio Code (User)", "1.88.1", "user"),
        ("Zoom Workplace", "6.0.2 (37814)", "user"),
        ("Google Chrome", "124.0.6367.91", "user"),
    ]
    assert packages[-1] == {"name": "Google Chrome", "version": "124.0.6367.91", "arch": None,
                            "publisher": "Google LLC", "scope": "user"}
    # The 64-bit view whatever the Python: a 32-bit one would read WOW6432Node twice.
    assert fake.accesses and all(a & fake.KEY_WOW64_64KEY for a in fake.accesses)


def test_a_registry_without_user_hives_or_uninstall_keys(monkeypatch):
    monkeypatch.setitem(sys.modules, "winreg", FakeWinreg({}))
    assert win.software([]) == ("registry", [])


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
