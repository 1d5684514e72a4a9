"""macOS platform implementation: `system_profiler`, `route` and `sysctl`.

The parsers take decoded documents or text so they are tested on captured output under
`tests/data/macos/` on any OS.
"""

from __future__ import annotations

import ipaddress
import json
import platform
import plistlib
import re
import threading
from typing import Any

from estate.agent.collect._common import Cached, ToolTimedOut, clean, hypervisor_name, run_tool
from estate.agent.collect._posix import dns_servers, timezone

__all__ = ["DEFAULT_TIMEOUT_S", "cpu_model", "default_gateway", "disks", "dns_servers", "identity",
           "os_info", "software", "timezone", "virtualization"]

DEFAULT_TIMEOUT_S = 30.0
DATA_TYPES = ("SPHardwareDataType", "SPSoftwareDataType", "SPNVMeDataType",
              "SPSerialATADataType")
PROFILER_TIMEOUT_S = 20.0
# Listing applications walks the disk and takes seconds, so it is a call of its own.
APPS_TIMEOUT_S = 25.0

# system_profiler learnt -json in macOS 10.15; before, `-json` prints its usage and exits 1.
# The first failure of -json switches this process to -xml (the same report as a plist) for
# good: the upgrade that brings -json restarts the machine, and the agent with it.
_json_missing = threading.Event()


def run_profiler(args: list[str], timeout_s: float) -> dict[str, Any]:
    """system_profiler's report on `args` (options and data types) as {data type: items}."""
    if not _json_missing.is_set():
        try:
            out = run_tool(["system_profiler", "-json", *args], timeout_s=timeout_s)
        except ToolTimedOut:
            raise  # a slow machine: the same report as XML would take as long
        except RuntimeError:
            _json_missing.set()
        else:
            return parse_profiler_json(out)
    out = run_tool(["system_profiler", "-xml", *args], timeout_s=timeout_s)
    return parse_profiler_xml(out.encode("utf-8"))


def _profile() -> dict[str, Any]:
    return run_profiler(list(DATA_TYPES), PROFILER_TIMEOUT_S)


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
    doc = run_profiler(["-detailLevel", "mini", "SPApplicationsDataType"], APPS_TIMEOUT_S)
    return "applications", parse_applications(doc)


def default_gateway(problems: list[str]) -> dict[str, Any] | None:
    try:
        out = run_tool(["route", "-n", "get", "default"], timeout_s=3)
    except ToolTimedOut:
        raise
    except RuntimeError as exc:
        # Off every network route says "not in table" and exits non-zero: no default route
        # is an answer, not a failure.
        if "not in table" in str(exc):
            return None
        raise
    return parse_route_get(out)


# --- parsers (pure, tested on captured output) ---------------------------------------------

def parse_profiler_json(text: str) -> dict[str, Any]:
    """`system_profiler -json` output: already {data type: items}."""
    doc = json.loads(text)
    return doc if isinstance(doc, dict) else {}


def parse_profiler_xml(data: bytes) -> dict[str, Any]:
    """`system_profiler -xml` output (a plist: a list of one dict per data type, its entries
    under `_items`) in the shape -json prints: {data type: items}."""
    doc = plistlib.loads(data, fmt=plistlib.FMT_XML)
    result: dict[str, Any] = {}
    for section in doc if isinstance(doc, list) else []:
        if isinstance(section, dict) and isinstance(section.get("_dataType"), str):
            items = section.get("_items")
            result[section["_dataType"]] = items if isinstance(items, list) else []
    return result

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
    hw = _hardware(doc)
    model = str(hw.get("machine_model") or "")
    # Apple's Virtualization framework names its guests "VirtualMac2,1"; the others say who
    # they are in the model (VMware7,1, Parallels-ARM) or, on QEMU/KVM without a borrowed Mac
    # identity, in the CPU or boot ROM ("QEMU Virtual CPU", SeaBIOS "...qemu.org").
    kind = "apple" if model.lower().startswith("virtualmac") else hypervisor_name(
        model, _text(hw.get("machine_name")), _text(hw.get("cpu_type")),
        _text(hw.get("chip_type")), _text(hw.get("boot_rom_version")))
    if kind:
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
            size = drive.get("size_in_bytes")
            result.append({
                "name": drive["bsd_name"],
                "model": clean(drive.get("device_model") or drive.get("_name")),
                "serial": clean(drive.get("device_serial")),
                "size_bytes": size if isinstance(size, int) and size >= 0 else None,
                # NVMe entries carry no medium key: NVMe is flash. SATA ones say "Rotational"
                # or "Solid State" in spsata_medium_type (absent on optical drives and some
                # older releases: unknown).
                "rotational": False if kind == "SPNVMeDataType" else
                _SATA_MEDIUM.get(str(drive.get("spsata_medium_type") or "")),
            })
    return result


_SATA_MEDIUM = {"Rotational": True, "Solid State": False}


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
        packages.append({"name": name[:512], "version": version, "arch": app_arch(app),
                         "publisher": app_publisher(app)})
    return packages


# The report's arch names (as `uname -m` and the Windows collector say them).
_ARCH_KIND = {  # macOS 11 and later
    "arch_arm": "arm64", "arch_i64": "x86_64", "arch_arm_i64": "universal",
    "arch_ios": "arm64", "arch_i32": "x86",
    # 32- and 64-bit Intel in one binary: a 64-bit Mac runs the 64-bit part.
    "arch_i32_i64": "x86_64",
}
_RUNTIME_ENVIRONMENT = {  # before macOS 11; "arch_x86" is resolved by has64BitIntelCode
    "universal": "universal",  # PowerPC and Intel in one binary
    "arch_ppc": "ppc", "classic": "ppc",  # PowerPC only; Mac OS 9 apps for Classic
}


def app_arch(app: dict[str, Any]) -> str | None:
    """An application's architecture from `arch_kind` (macOS 11+) or `runtime_environment`
    and `has64BitIntelCode` (earlier); None for anything else ("arch_other", web apps)."""
    kind = app.get("arch_kind")
    if isinstance(kind, str):
        return _ARCH_KIND.get(kind)
    runtime = app.get("runtime_environment")
    if runtime == "arch_x86":
        return {"yes": "x86_64", "no": "x86"}.get(str(app.get("has64BitIntelCode")))
    return _RUNTIME_ENVIRONMENT.get(runtime) if isinstance(runtime, str) else None


APPLE = "Apple Inc."
"""Apple as a publisher, spelt as system_profiler and Windows spell the company."""
# Leaf certificates only Apple's own software is signed with ("macOS Software Signing" from
# macOS 26). A chain given only from its intermediate or root is Apple's too.
_APPLE_LEAVES = frozenset({"Software Signing", "macOS Software Signing",
                           "Apple Code Signing Certification Authority", "Apple Root CA"})
_DEVELOPER_ID = "Developer ID Application: "
_TEAM_ID = re.compile(r"\s*\([A-Z0-9]{10}\)$")


def app_publisher(app: dict[str, Any]) -> str | None:
    """Who published an application, from its signature and where it came from.

    Apple for Apple's signatures or `obtained_from: apple`; the developer's name from a
    "Developer ID Application: NAME (TEAMID)" leaf; otherwise None, never a certificate's
    name: the Mac App Store re-signs every app it sells with "Apple Mac OS Application
    Signing", whoever wrote it, so that signature does not say who published the app.
    """
    signed = app.get("signed_by")
    leaf = signed[0] if isinstance(signed, list) and signed else None
    if isinstance(leaf, str):
        if leaf.startswith(_DEVELOPER_ID):
            # "Developer ID Application: Foo: Bar (Holdings) (ABCDE12345)" -> "Foo: Bar (Holdings)"
            return clean(_TEAM_ID.sub("", leaf[len(_DEVELOPER_ID):]))
        if leaf in _APPLE_LEAVES:
            return APPLE
    return APPLE if app.get("obtained_from") == "apple" else None


def parse_route_get(text: str) -> dict[str, Any] | None:
    """`route -n get default`: the gateway and interface of the default route, or None.

    A VPN that routes everything (utunN, ipsec0) makes a point-to-point default route with an
    interface and no `gateway:` line: the interface stays and the address is None.
    """
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    interface = clean(values.get("interface"))
    address = _ip_address(values.get("gateway"))
    if address is None and interface is None:
        return None
    return {"address": address, "interface": interface}


def _ip_address(text: str | None) -> str | None:
    """An IP address as written, or None for anything else ("link#14" on a link route)."""
    try:
        return str(ipaddress.ip_address(text or ""))
    except ValueError:
        return None


def _hardware(doc: dict[str, Any]) -> dict[str, Any]:
    return _first(doc.get("SPHardwareDataType"))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _first(value: Any) -> dict[str, Any]:
    return value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}
