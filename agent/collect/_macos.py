"""macOS platform implementation: `system_profiler -json`, `route` and `sysctl`.

The parsers take decoded JSON or text so they are tested on captured output under
`tests/data/macos/` on any OS.
"""

from __future__ import annotations

import json
import platform
from typing import Any

from estate.agent.collect._common import Cached, clean, run_tool
from estate.agent.collect._posix import dns_servers, timezone

__all__ = ["DEFAULT_TIMEOUT_S", "cpu_model", "default_gateway", "disks", "dns_servers", "identity",
           "os_info", "software", "timezone", "virtualization"]

DEFAULT_TIMEOUT_S = 30.0
DATA_TYPES = ("SPHardwareDataType", "SPSoftwareDataType", "SPNVMeDataType",
              "SPSerialATADataType")
# Listing applications walks the disk and takes seconds, so it is a call of its own.
APPS_TIMEOUT_S = 25.0


def _profile() -> dict[str, Any]:
    return json.loads(run_tool(["system_profiler", "-json", *DATA_TYPES], timeout_s=20))


_profiler = Cached(_profile)


def os_info(problems: list[str]) -> dict[str, Any]:
    info = parse_os(_profiler.get())
    info["arch"] = platform.machine() or None
    return info


def virtualization(problems: list[str]) -> dict[str, Any]:
    try:
        hv = run_tool(["sysctl", "-n", "kern.hv_vmm_present"], timeout_s=3).strip()
    except RuntimeError as exc:
        problems.append(str(exc))
        hv = ""
    return parse_virtualization(_profiler.get(), hv)


def identity(problems: list[str]) -> dict[str, Any]:
    return parse_identity(_profiler.get())


def cpu_model(problems: list[str]) -> str | None:
    hw = _hardware(_profiler.get())
    return clean(hw.get("chip_type") or hw.get("cpu_type"))


def disks(problems: list[str]) -> list[dict[str, Any]]:
    return parse_disks(_profiler.get())


def software(problems: list[str]) -> tuple[str | None, list[dict[str, Any]] | None]:
    out = run_tool(["system_profiler", "-json", "-detailLevel", "mini",
                    "SPApplicationsDataType"], timeout_s=APPS_TIMEOUT_S)
    return "applications", parse_applications(json.loads(out))


def default_gateway(problems: list[str]) -> dict[str, Any] | None:
    return parse_route_get(run_tool(["route", "-n", "get", "default"], timeout_s=3))


# --- parsers (pure, tested on captured output) ---------------------------------------------

def parse_os(doc: dict[str, Any]) -> dict[str, Any]:
    sw = _first(doc.get("SPSoftwareDataType"))
    # "macOS 14.4.1 (23E224)"; older releases say "macOS 10.15.7 (19H2026)" or "OS X".
    text = clean(sw.get("os_version")) or ""
    name, version, build = text, None, None
    if "(" in text and text.endswith(")"):
        text, build = text[:-1].rsplit("(", 1)
        text = text.strip()
    parts = text.rsplit(" ", 1)
    if len(parts) == 2 and parts[1][:1].isdigit():
        name, version = parts
    kernel = clean(sw.get("kernel_version"))
    return {
        "family": "macos",
        "name": name or None,
        "version": version,
        "build": build,
        "kernel": kernel.split(" ", 1)[-1] if kernel else None,  # "Darwin 23.4.0"
        "arch": None,
    }


def parse_virtualization(doc: dict[str, Any], hv_vmm_present: str) -> dict[str, Any]:
    model = (_hardware(doc).get("machine_model") or "").lower()
    for needle, kind in (("virtualmac", "apple"), ("vmware", "vmware"),
                         ("parallels", "parallels")):
        if needle in model:
            return {"kind": kind, "type": "vm", "source": "system_profiler"}
    if hv_vmm_present == "1":
        return {"kind": "unknown", "type": "vm", "source": "sysctl:kern.hv_vmm_present"}
    return {"kind": "none", "type": "none", "source": "sysctl:kern.hv_vmm_present"}


def parse_identity(doc: dict[str, Any]) -> dict[str, Any]:
    hw = _hardware(doc)
    name = clean(hw.get("machine_name")) or ""
    chassis = ("laptop" if name.startswith("MacBook") else
               "all-in-one" if name.startswith("iMac") else
               "desktop" if name.startswith("Mac") else None)
    uuid = clean(hw.get("platform_UUID"))
    return {
        "vendor": "Apple Inc." if hw else None,
        "model": clean(hw.get("machine_model")),
        "serial": clean(hw.get("serial_number")),
        "uuid": uuid.lower() if uuid else None,
        "chassis": chassis,
        "bios": {"vendor": "Apple Inc." if hw else None,
                 "version": clean(hw.get("boot_rom_version")), "date": None},
    }


def parse_disks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    result = []
    for kind in ("SPNVMeDataType", "SPSerialATADataType"):
        for drive in _drives(doc.get(kind) or []):
            medium = drive.get("spatial_medium_type") or drive.get("medium_type")
            size = drive.get("size_in_bytes")
            result.append({
                "name": drive["bsd_name"],
                "model": clean(drive.get("device_model") or drive.get("_name")),
                "serial": clean(drive.get("device_serial")),
                "size_bytes": size if isinstance(size, int) and size >= 0 else None,
                "rotational": None if medium is None else medium == "rotational",
            })
    return result


def _drives(items: list[Any]) -> list[dict[str, Any]]:
    """Drives sit under controllers (NVMe) or controllers and ports (SATA): walk down."""
    found = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("bsd_name") and "size_in_bytes" in item and "device_model" in item:
            found.append(item)
        else:
            found.extend(_drives(item.get("_items") or []))
    return found


def parse_applications(doc: dict[str, Any]) -> list[dict[str, Any]]:
    packages = []
    seen = set()
    for app in doc.get("SPApplicationsDataType") or []:
        name = clean(app.get("_name"))
        if not name:
            continue
        version = clean(app.get("version"))
        if (name, version) in seen:
            continue
        seen.add((name, version))
        signed = app.get("signed_by") or []
        publisher = signed[0] if isinstance(signed, list) and signed else None
        if isinstance(publisher, str) and publisher.startswith("Developer ID Application: "):
            publisher = publisher[len("Developer ID Application: "):]
        packages.append({"name": name[:512], "version": version,
                         "arch": _APP_ARCH.get(app.get("arch_kind") or ""),
                         "publisher": clean(publisher)})
    return packages


_APP_ARCH = {"arch_arm": "arm64", "arch_i64": "x86_64", "arch_arm_i64": "universal",
             "arch_ios": "arm64", "arch_other": None}


def parse_route_get(text: str) -> dict[str, Any] | None:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    gateway = values.get("gateway")
    if not gateway:
        return None
    return {"address": gateway, "interface": values.get("interface") or None}


def _hardware(doc: dict[str, Any]) -> dict[str, Any]:
    return _first(doc.get("SPHardwareDataType"))


def _first(value: Any) -> dict[str, Any]:
    return value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}
