"""macOS parsers on `system_profiler` (-json and -xml) and `route` output (tests/data/macos),
and the collectors driven through a faked `subprocess.run`, the OS boundary."""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import pytest

from estate.agent.collect import _common
from estate.agent.collect import _macos as mac
from tests.conftest import DATA


def _load(name: str) -> dict:
    return json.loads((DATA / "macos" / name).read_text(encoding="utf-8"))


def _xml(name: str) -> dict:
    return mac.parse_profiler_xml((DATA / "macos" / name).read_bytes())


M1, IMAC, VM = _load("profiler_m1_laptop.json"), _load("profiler_intel_imac.json"), \
    _load("profiler_vm.json")
MOJAVE = _xml("profiler_mojave_imac.xml")


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


def test_disks_nvme_is_solid_state_and_sata_says_its_medium():
    assert mac.parse_disks(IMAC) == [
        {"name": "disk0", "model": "APPLE SSD AP0256N", "serial": "C07123400ABCDEFG",
         "size_bytes": 251000193024, "rotational": False},
        {"name": "disk1", "model": "ST1000DM003-1SB102", "serial": "Z9A0BCDE",
         "size_bytes": 1000204886016, "rotational": True},
        {"name": "disk2", "model": "Samsung SSD 860 EVO 500GB", "serial": "S3Z2NB0K123456X",
         "size_bytes": 500107862016, "rotational": False},
    ]
    assert [(d["name"], d["rotational"]) for d in mac.parse_disks(M1)] == [("disk0", False)]
    assert mac.parse_disks(VM) == []


def test_a_sata_drive_without_a_medium_is_unknown():
    """Optical drives and some older releases give no spsata_medium_type."""
    drive = {"_name": "X", "bsd_name": "disk3", "device_model": "X", "size_in_bytes": 1}
    doc = {"SPSerialATADataType": [{"_name": "AHCI", "_items": [
        drive, {**drive, "bsd_name": "disk4", "spsata_medium_type": "Hybrid"}]}]}
    assert [d["rotational"] for d in mac.parse_disks(doc)] == [None, None]


def test_drives_under_port_levels_are_found():
    doc = {"SPSerialATADataType": [{"_name": "AHCI", "_items": [{"_name": "Port 0", "_items": [
        {"_name": "X", "bsd_name": "disk5", "device_model": "X", "size_in_bytes": 10,
         "spsata_medium_type": "Rotational"}]}]}]}
    assert [(d["name"], d["rotational"]) for d in mac.parse_disks(doc)] == [("disk5", True)]


def test_xml_report_of_macos_before_10_15_reads_like_json():
    assert set(MOJAVE) == {"SPHardwareDataType", "SPSoftwareDataType", "SPNVMeDataType",
                           "SPSerialATADataType"}
    assert MOJAVE["SPNVMeDataType"] == []
    assert mac.parse_os(MOJAVE) == {"family": "macos", "name": "macOS", "version": "10.14.6",
                                    "build": "18G9323", "kernel": "18.7.0", "arch": None}
    assert mac.parse_identity(MOJAVE) == {
        "vendor": "Apple Inc.", "model": "iMac18,3", "serial": "C02VK0ABJ1GJ",
        "uuid": "6a1b2c3d-4e5f-5a6b-8c7d-9e0f1a2b3c4d", "chassis": "all-in-one",
        "bios": {"vendor": "Apple Inc.", "version": "IM183.0161.B00", "date": None},
    }
    assert mac.parse_disks(MOJAVE) == [
        {"name": "disk0", "model": "APPLE SSD SM0032L", "serial": "S2A1NYAJ123456",
         "size_bytes": 28000002048, "rotational": False},
        {"name": "disk1", "model": "APPLE HDD ST1000DM003", "serial": "Z1D4ABCD",
         "size_bytes": 1000204886016, "rotational": True},
    ]


def test_virtualization():
    assert mac.parse_virtualization(VM, "1") == {"kind": "apple", "type": "vm",
                                                 "source": "system_profiler"}
    assert mac.parse_virtualization(M1, "0")["type"] == "none"
    assert mac.parse_virtualization(M1, "1") == {"kind": "unknown", "type": "vm",
                                                 "source": "sysctl:kern.hv_vmm_present"}


@pytest.mark.parametrize(("hardware", "kind"), [
    ({"machine_model": "VMware7,1", "machine_name": "Mac"}, "vmware"),
    ({"machine_model": "Parallels-ARM", "machine_name": "Mac"}, "parallels"),
    # macOS on Proxmox/QEMU without a borrowed Mac identity: named as Linux guests are.
    ({"machine_model": "Standard PC (Q35 + ICH9, 2009)", "cpu_type": "QEMU Virtual CPU"},
     "kvm"),
    ({"machine_model": "iMacPro1,1", "boot_rom_version": "rel-1.16.3-0-ga6ed6b7-prebuilt.qemu.org"},
     "kvm"),
    ({"machine_model": "iMacPro1,1", "machine_name": "iMac Pro", "cpu_type": "BXPC____"},
     "kvm"),
])
def test_hypervisors_have_one_name_per_estate(hardware, kind):
    doc = {"SPHardwareDataType": [hardware]}
    assert mac.parse_virtualization(doc, "1") == {"kind": kind, "type": "vm",
                                                  "source": "system_profiler"}


def test_applications():
    apps = mac.parse_applications(_load("applications.json"))
    assert [(a["name"], a["version"], a["publisher"], a["arch"]) for a in apps] == [
        ("Safari", "17.4.1", "Apple Inc.", "universal"),
        ("Microsoft Word", "16.83", "Microsoft Corporation", "universal"),
        ("Gestionnaire d’élèves", "2.0 (β)", None, "x86_64"),
        ("Legacy Tool", None, None, None),
        # The App Store's signature names Apple whoever wrote the app: publisher unknown.
        ("Microsoft Remote Desktop", "10.9.5", None, "universal"),
        ("Scanner Utility 2009", "1.2.0", "Canon Inc.", "x86"),
        ("Tips", "26.0", "Apple Inc.", "universal"),
    ]


def test_applications_before_macos_11_carry_a_runtime_environment():
    apps = mac.parse_applications(_xml("applications_mojave.xml"))
    assert [(a["name"], a["version"], a["publisher"], a["arch"]) for a in apps] == [
        ("Safari", "12.1.2", "Apple Inc.", "x86_64"),
        ("Microsoft Excel", "16.16.1", "Microsoft Corporation", "x86_64"),
        ("Keynote", "9.1", None, "x86_64"),
        ("Microsoft Lync", "14.4.3", "Microsoft Corporation", "x86"),
        ("Carnet de notes", "3.2", "Éditions Lumière: Outils (Europe)", "x86_64"),
        ("iWeb", "3.0.4", "Apple Inc.", "universal"),
        ("AppleWorks 6", "6.2.9", None, "ppc"),
        ("SimpleText", "1.4", None, "ppc"),
        ("Lecteur maison", "1.0", None, None),  # Intel, but 32 or 64 bits untold
    ]


@pytest.mark.parametrize(("app", "publisher"), [
    ({"signed_by": ["Software Signing", "Apple Code Signing Certification Authority",
                    "Apple Root CA"]}, "Apple Inc."),
    ({"signed_by": ["Apple Code Signing Certification Authority", "Apple Root CA"]},
     "Apple Inc."),
    ({"signed_by": ["Apple Mac OS Application Signing", "Apple Worldwide Developer Relations "
                    "Certification Authority", "Apple Root CA"],
      "obtained_from": "mac_app_store"}, None),
    ({"signed_by": ["Apple Mac OS Application Signing"], "obtained_from": "apple"},
     "Apple Inc."),
    ({"signed_by": ["Developer ID Application: Foo: Bar (Holdings) (0011223344)"]},
     "Foo: Bar (Holdings)"),
    ({"signed_by": ["Developer ID Application: Zoom Video Communications, Inc. (BJ4HAAB9B3)"],
      "obtained_from": "identified_developer"}, "Zoom Video Communications, Inc."),
    ({"signed_by": ["Apple Development: Jo Bloggs (ABCDE12345)"]}, None),
    ({"obtained_from": "apple"}, "Apple Inc."),
    ({"obtained_from": "identified_developer"}, None),
    ({"signed_by": "Software Signing"}, None),  # not the documented list: ignored
    ({}, None),
])
def test_publisher_is_a_company_never_a_certificate(app, publisher):
    assert mac.app_publisher(app) == publisher


@pytest.mark.parametrize(("app", "arch"), [
    ({"arch_kind": "arch_arm"}, "arm64"), ({"arch_kind": "arch_i64"}, "x86_64"),
    ({"arch_kind": "arch_arm_i64"}, "universal"), ({"arch_kind": "arch_i32"}, "x86"),
    ({"arch_kind": "arch_i32_i64"}, "x86_64"), ({"arch_kind": "arch_other"}, None),
    ({"runtime_environment": "arch_x86", "has64BitIntelCode": "yes"}, "x86_64"),
    ({"runtime_environment": "arch_x86", "has64BitIntelCode": "no"}, "x86"),
    ({"runtime_environment": "universal"}, "universal"),
    ({"runtime_environment": "classic"}, "ppc"), ({"runtime_environment": "arch_ppc"}, "ppc"),
    ({"runtime_environment": "something_new"}, None), ({}, None),
])
def test_app_architectures_old_and_new(app, arch):
    assert mac.app_arch(app) == arch


def test_route_get_default():
    text = (DATA / "macos/route_get_default.txt").read_text()
    assert mac.parse_route_get(text) == {"address": "192.168.50.1", "interface": "en0"}
    assert mac.parse_route_get("route: writing to routing socket: not in table\n") is None


def test_a_vpn_default_route_keeps_its_interface():
    text = (DATA / "macos/route_get_vpn.txt").read_text()
    assert mac.parse_route_get(text) == {"address": None, "interface": "utun3"}
    # A route through a link rather than an address names no gateway either.
    assert mac.parse_route_get("gateway: link#14\ninterface: utun0\n") == {
        "address": None, "interface": "utun0"}


def test_a_vpn_route_passes_the_report_schema():
    import random

    from estate.inventory import simulate
    from estate.inventory.report import validate

    ident = simulate.Identity(3, "ag-000000000003", None, "Fire & Rescue", "HQ")  # type: ignore[arg-type]
    report = simulate.fake_report(ident, 1, 300.0, random.Random(1))
    report["network"]["default_gateway"] = {"address": None, "interface": "utun3"}
    validate(report)


# --- the collectors on a faked OS boundary ---------------------------------------------------

USAGE = (DATA / "macos/system_profiler_json_usage.txt").read_bytes()


class FakeMac:
    """`subprocess.run` as one Mac answers it: system_profiler with or without -json, a
    profiler that fails or hangs, sysctl and route. Every call is recorded."""

    def __init__(self, *, json_ok: bool = True, profiler_ok: bool = True,
                 profiler_hangs: bool = False, route: tuple[int, bytes, bytes] | None = None,
                 ) -> None:
        self.json_ok, self.profiler_ok, self.hangs = json_ok, profiler_ok, profiler_hangs
        self.route = route or (0, (DATA / "macos/route_get_default.txt").read_bytes(), b"")
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess:
        self.calls.append(list(args))
        done = subprocess.CompletedProcess
        if args[0] == "sysctl":
            return done(args, 0, b"0\n", b"")
        if args[0] == "route":
            return done(args, *self.route)
        assert args[0] == "system_profiler", args
        if self.hangs:
            raise subprocess.TimeoutExpired(args, kw["timeout"])
        if not self.profiler_ok:
            return done(args, 1, b"", b"system_profiler: could not reach the reporters\n")
        apps = "SPApplicationsDataType" in args
        if args[1] == "-json":
            if not self.json_ok:
                return done(args, 1, USAGE, b"")  # before 10.15: the usage, exit 1
            name = "applications.json" if apps else "profiler_intel_imac.json"
        else:
            assert args[1] == "-xml", args
            name = "applications_mojave.xml" if apps else "profiler_mojave_imac.xml"
        return done(args, 0, (DATA / "macos" / name).read_bytes(), b"")

    def profiler_runs(self, form: str) -> int:
        return sum(1 for c in self.calls if c[:2] == ["system_profiler", form])


@pytest.fixture
def fresh_collection(monkeypatch):
    """A new agent process: nothing cached, -json not yet tried."""
    monkeypatch.setattr(mac, "_json_missing", threading.Event())
    monkeypatch.setattr(mac, "_profiler", _common.Cached(mac._profile))

    def use(fake: FakeMac) -> FakeMac:
        monkeypatch.setattr(_common.subprocess, "run", fake)
        return fake
    return use


PROFILER_SECTIONS = (mac.os_info, mac.identity, mac.cpu_model, mac.disks, mac.virtualization)


def test_macos_before_10_15_falls_back_to_xml_and_tries_json_once(fresh_collection):
    fake = fresh_collection(FakeMac(json_ok=False))
    problems: list[str] = []
    values: list[Any] = [section(problems) for section in PROFILER_SECTIONS]
    manager, packages = mac.software(problems)
    assert packages is not None
    assert problems == []
    assert values[0]["version"] == "10.14.6"
    assert values[1]["model"] == "iMac18,3"
    assert values[2] == "Quad-Core Intel Core i5"
    assert [d["rotational"] for d in values[3]] == [False, True]
    assert values[4]["type"] == "none"
    assert manager == "applications" and packages[0]["arch"] == "x86_64"
    # -json failed once; the hardware report ran once as XML for five sections, the
    # applications straight as XML.
    assert fake.profiler_runs("-json") == 1
    assert fake.profiler_runs("-xml") == 2
    mac.software(problems)
    assert fake.profiler_runs("-json") == 1, "a later collection does not try -json again"


def test_macos_10_15_and_later_use_json(fresh_collection):
    fake = fresh_collection(FakeMac())
    problems: list[str] = []
    assert [d["name"] for d in mac.disks(problems)] == ["disk0", "disk1", "disk2"]
    assert mac.identity(problems)["model"] == "iMac20,1"
    assert len(mac.software(problems)[1] or []) == 7
    assert (fake.profiler_runs("-json"), fake.profiler_runs("-xml")) == (2, 0)


def test_a_failing_profiler_runs_once_a_report_not_once_a_section(fresh_collection):
    fake = fresh_collection(FakeMac(profiler_ok=False))
    for section in PROFILER_SECTIONS:
        with pytest.raises(RuntimeError, match="could not reach the reporters"):
            section([])
    assert (fake.profiler_runs("-json"), fake.profiler_runs("-xml")) == (1, 1)


def test_a_profiler_that_hangs_is_not_run_again_as_xml(fresh_collection):
    fake = fresh_collection(FakeMac(profiler_hangs=True))
    with pytest.raises(_common.ToolTimedOut):
        mac.disks([])
    with pytest.raises(_common.ToolTimedOut):
        mac.identity([])
    assert (fake.profiler_runs("-json"), fake.profiler_runs("-xml")) == (1, 0)
    assert not mac._json_missing.is_set(), "a slow Mac is not taken for an old one"


def test_default_gateway_on_a_vpn_and_off_every_network(fresh_collection):
    vpn = (DATA / "macos/route_get_vpn.txt").read_bytes()
    fresh_collection(FakeMac(route=(0, vpn, b"")))
    assert mac.default_gateway([]) == {"address": None, "interface": "utun3"}
    fresh_collection(FakeMac(route=(1, b"", b"route: writing to routing socket: not in table\n")))
    assert mac.default_gateway([]) is None
    fresh_collection(FakeMac(route=(1, b"", b"route: must be root to alter routing table\n")))
    with pytest.raises(RuntimeError, match="must be root"):
        mac.default_gateway([])
