"""Contract tests: every run yields a complete, typed report; failures become errors."""

from __future__ import annotations

import json
import sys
import threading
import time

import psutil
import pytest

from estate.agent.collect import collect_report, collectors
from estate.agent.collect._common import clean
from estate.inventory.report import validate


def test_required_sections_and_types(live_report):
    r = live_report
    for section in ("system", "hardware", "network", "connectivity", "software", "health"):
        assert isinstance(r[section], dict)
    assert r["system"]["hostname"]
    assert r["system"]["os"]["family"] in ("linux", "windows", "macos", "bsd", "other")
    assert r["hardware"]["memory"]["total_bytes"] > 0
    assert r["hardware"]["cpu"]["threads"] >= 1
    assert r["network"]["interfaces"], "at least the loopback interface"
    assert r["errors"] == [], r["errors"]


def test_unknown_is_null_never_a_sentinel(live_report):
    """Walk every leaf: no -1, no empty string for "could not tell"."""
    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        else:
            assert value != "", path
            assert not (isinstance(value, int) and not isinstance(value, bool) and value < 0), path
    walk(live_report, "")


def test_interface_speed_unknown_is_null_not_zero(live_report):
    for nic in live_report["network"]["interfaces"]:
        assert nic["speed_mbps"] is None or nic["speed_mbps"] > 0


def test_software_hash_is_stable_and_order_independent(live_report):
    from estate.agent.collect._common import package_hash

    pkgs = live_report["software"]["packages"]
    assert live_report["software"]["hash"] == package_hash(list(reversed(pkgs)))
    changed = [*pkgs, {"name": "zz-new", "version": "1", "arch": None, "publisher": None}]
    assert package_hash(changed) != live_report["software"]["hash"]


def test_a_hanging_collector_is_cut_off_and_reported():
    release = threading.Event()

    def hangs(problems):
        release.wait(60)  # a hung NFS read, until the test lets it go
        return "never"

    def fails(problems):
        raise OSError("device vanished")

    start = time.monotonic()
    report, _ = collect_report(timeout_s=1.0,
                               extra_collectors={"stuck": hangs, "broken": fails})
    elapsed = time.monotonic() - start
    release.set()
    errors = {e["collector"]: e["reason"] for e in report["errors"]}
    assert errors["stuck"] == "timed out after 1 s"
    assert errors["broken"] == "OSError: device vanished"
    assert elapsed < 30, "the collection waited for the hung collector"
    validate(report)
    assert report["hardware"]["memory"]["total_bytes"] > 0, "the rest is complete"


def test_a_hung_mount_costs_its_own_time_limit_only(monkeypatch):
    from estate.agent.collect import _common

    release = threading.Event()
    real = psutil.disk_usage
    part = psutil.disk_partitions(all=False)[0]

    def slow_usage(path):
        if path == part.mountpoint:
            release.wait(60)
        return real(path)

    monkeypatch.setattr(_common, "VOLUME_TIMEOUT_S", 0.3)
    monkeypatch.setattr(psutil, "disk_usage", slow_usage)
    problems: list[str] = []
    vols = _common.volumes(problems)
    release.set()
    hung = next(v for v in vols if v["mount"] == part.mountpoint)
    assert hung["total_bytes"] is None
    assert any("hung mount" in p for p in problems)


def test_a_failing_platform_source_becomes_an_error(monkeypatch):
    """A missing dpkg-query (or any tool) is reported and the rest of the report stands."""
    import estate.agent.collect as facade

    def no_tool(problems):
        raise FileNotFoundError("dpkg-query")

    monkeypatch.setattr(facade._platform, "software", no_tool)
    report, _ = collect_report()
    validate(report)
    assert report["software"] == {"manager": None, "count": None, "hash": None,
                                  "packages": None}
    assert report["errors"][0]["collector"] == "software"
    assert "dpkg-query" in report["errors"][0]["reason"]


def test_collector_names_are_unique_and_stable():
    assert set(collectors()) >= {"os", "identity", "disks", "volumes", "interfaces",
                                 "software", "dns", "default_gateway"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("To be filled by O.E.M.", None), ("Default string", None), ("0", None),
        ("System Serial Number", None), ("00000000-0000-0000-0000-000000000000", None),
        ("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", None), ("  ", None), (None, None),
        (" PF2ABCDE\n", "PF2ABCDE"), ("Dell Inc.", "Dell Inc."), ("0A", "0A"),
    ],
)
def test_placeholder_identifiers_are_null(raw, expected):
    assert clean(raw) == expected


def test_sequence_and_agent_id_make_the_report_id(live_report):
    report, _ = collect_report(agent_id="a-123", sequence=7)
    assert report["report_id"] == f"a-123:{int(psutil.boot_time())}:7"
    assert report["agent"]["id"] == "a-123"


# --- every field a real machine has, from each OS's captured outputs ---------------------
# A parser that reads a key the OS does not write (`spatial_medium_type` for
# `spsata_medium_type`) yields null as surely as a machine that has no such value: only a
# list of what each captured machine really lacks tells them apart. Every other field the
# OS's parsers fill must have a value on that machine.

# Report objects a platform's parsers fill whole, and single fields they fill; the rest
# (hostname, memory, volumes, NICs...) is psutil's, the same on every OS and checked live.
PARSED_OBJECTS = ("system.os", "system.virtualization", "hardware.bios", "hardware.disks[]",
                  "network.default_gateway", "software.packages[]")
PARSED_FIELDS = ("system.timezone", "system.windows_timezone", "hardware.vendor",
                 "hardware.model", "hardware.serial", "hardware.uuid", "hardware.chassis",
                 "hardware.cpu.model", "network.dns_servers[]")


def _values_at(doc, path: str) -> list | None:
    """The values at a dictionary path (`hardware.disks[].serial`), or None when an object
    on the way lacks the key: the parser never sets it."""
    values = [doc]
    for part in path.split("."):
        many = part.endswith("[]")
        key = part.removesuffix("[]")
        found = []
        for value in values:
            if key not in value:
                return None
            inner = value[key]
            found.extend(inner if many and inner is not None else [inner])
        values = found
    return values


def _assert_every_field_has_a_value(family: str, sections: dict, lacks: dict[str, str],
                                    parsed_fields: tuple[str, ...] = PARSED_FIELDS):
    from estate.inventory.fields import FIELDS

    def parsed(path: str) -> bool:
        parent = path.rsplit(".", 1)[0]
        return path in parsed_fields or parent in PARSED_OBJECTS

    fields = [f.path for f in FIELDS if family in f.platforms and parsed(f.path)
              and f.kind not in ("object", "list")]
    assert set(lacks) <= set(fields), "a field listed as lacking is not one of the parsers'"
    for path in fields:
        values = _values_at(sections, path)
        assert values is not None, f"{path}: the {family} parsers never set it"
        assert values, f"{path}: the fixture has none of these; choose one that has"
        if path in lacks:
            assert None in values, f"{path} has a value now: take it off the list"
        else:
            assert None not in values, f"{path} is null on a machine that has it"


def _windows_sections(name: str, monkeypatch) -> dict:
    from estate.agent.collect import _windows as win
    from tests.conftest import DATA
    from tests.test_windows import FakeWinreg

    doc = win.parse_powershell_json((DATA / "windows" / name).read_text(encoding="utf-8"))
    keys = json.loads((DATA / "windows/registry_uninstall.json").read_text(encoding="utf-8"))
    monkeypatch.setitem(sys.modules, "winreg", FakeWinreg(keys))
    return {
        "system": {"os": win.parse_os(doc), **win.parse_timezone(doc),
                   "virtualization": win.parse_virtualization(doc)},
        "hardware": {**win.parse_identity(doc), "cpu": {"model": win.parse_cpu_model(doc)},
                     "disks": win.parse_disks(doc)},
        "network": {"default_gateway": win.parse_gateway(doc), "dns_servers": win.parse_dns(doc)},
        "software": {"packages": win.software([])[1]},
    }


# The uninstall keys name no architecture (a program's bitness is not among their values).
_REGISTRY_LACKS = {"software.packages[].arch": "not in the uninstall entries"}


@pytest.mark.parametrize(
    ("fixture", "lacks"),
    [
        ("cim_ps51_laptop.json", {}),
        ("cim_ps7_vm.json", {"hardware.uuid": "Hyper-V gave it all zeros",
                             "hardware.disks[].serial": "a virtual disk without one",
                             "hardware.disks[].rotational": "no MSFT_PhysicalDisk answer"}),
        ("cim_ps51_win7_fr_bom.json", {
            "hardware.serial": "VirtualBox says 0", "hardware.chassis": "SMBIOS says other",
            "hardware.disks[].rotational": "Windows 7 has no MSFT_PhysicalDisk"}),
        ("cim_ps7_win11_entreprise_qemu.json", {
            "hardware.serial": "QEMU leaves it empty", "hardware.chassis": "SMBIOS says other"}),
    ],
)
def test_windows_parsers_fill_every_field_the_machine_has(fixture, lacks, monkeypatch):
    _assert_every_field_has_a_value("windows", _windows_sections(fixture, monkeypatch),
                                    {**lacks, **_REGISTRY_LACKS})


def _macos_sections(name: str) -> dict:
    from estate.agent.collect import _macos as mac
    from tests.conftest import DATA

    doc = json.loads((DATA / "macos" / name).read_text(encoding="utf-8"))
    apps = json.loads((DATA / "macos/applications.json").read_text(encoding="utf-8"))
    route = (DATA / "macos/route_get_default.txt").read_text(encoding="utf-8")
    hardware = doc["SPHardwareDataType"][0]
    return {
        "system": {"os": mac.parse_os(doc), "virtualization": mac.parse_virtualization(doc, "0")},
        "hardware": {**mac.parse_identity(doc),
                     "cpu": {"model": hardware.get("chip_type") or hardware.get("cpu_type")},
                     "disks": mac.parse_disks(doc)},
        "network": {"default_gateway": mac.parse_route_get(route)},
        "software": {"packages": mac.parse_applications(apps)},
    }


# The applications fixture holds, on purpose, unsigned apps and an old one without a version
# whose `arch_kind` is `arch_other`.
_APPLICATIONS_LACK = {"software.packages[].version": "an app without a version",
                      "software.packages[].publisher": "unsigned apps name none",
                      "software.packages[].arch": "arch_other names no architecture"}


@pytest.mark.parametrize(
    ("fixture", "lacks"),
    [
        ("profiler_m1_laptop.json", {}),
        ("profiler_intel_imac.json", {"hardware.serial": "blanked by MDM",
                                      "hardware.uuid": "blanked by MDM"}),
    ],
)
def test_macos_parsers_fill_every_field_the_machine_has(fixture, lacks):
    # `arch` is the running Python's platform.machine(), and macOS publishes no firmware date;
    # the time zone and resolvers come from /etc, as on Linux, not from these captures.
    _assert_every_field_has_a_value(
        "macos", _macos_sections(fixture),
        {**lacks, **_APPLICATIONS_LACK, "system.os.arch": "set by os_info, not the parser",
         "hardware.bios.date": "macOS does not publish it"},
        tuple(f for f in PARSED_FIELDS if f not in ("system.timezone", "network.dns_servers[]")))
