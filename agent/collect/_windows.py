"""Windows platform implementation: CIM through one PowerShell call, packages from the registry.

The parsers take the decoded JSON so they are tested on captured output under
`tests/data/windows/` on any OS. Windows PowerShell 5.1 turns a one-item array into a bare
object and dates into "/Date(ms)/"; PowerShell 7 writes ISO dates: both are handled.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from datetime import timezone as _timezone
from typing import Any

from estate.agent.collect._common import (
    Cached,
    chassis_name,
    clean,
    hypervisor_from_product,
    run_tool,
)

__all__ = ["DEFAULT_TIMEOUT_S", "cpu_model", "default_gateway", "disks", "dns_servers", "identity",
           "os_info", "software", "timezone", "virtualization"]

DEFAULT_TIMEOUT_S = 30.0
_UTC = _timezone.utc  # `timezone` is this module's collector of that name
POWERSHELL_TIMEOUT_S = 25.0

# One PowerShell start costs ~0.5-1 s, so every CIM class is read in a single call.
SCRIPT = r"""
$ErrorActionPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$cv = Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
@{
  ComputerSystem = Get-CimInstance Win32_ComputerSystem |
    Select-Object Manufacturer, Model, Domain, DNSHostName, PCSystemType, HypervisorPresent
  Product = Get-CimInstance Win32_ComputerSystemProduct | Select-Object UUID, IdentifyingNumber
  BIOS = Get-CimInstance Win32_BIOS |
    Select-Object Manufacturer, SMBIOSBIOSVersion, SerialNumber, ReleaseDate
  Enclosure = Get-CimInstance Win32_SystemEnclosure | Select-Object ChassisTypes, SerialNumber
  OperatingSystem = Get-CimInstance Win32_OperatingSystem |
    Select-Object Caption, Version, BuildNumber, OSArchitecture
  CurrentVersion = $cv | Select-Object DisplayVersion, ReleaseId, UBR
  Processor = @(Get-CimInstance Win32_Processor |
    Select-Object Name, NumberOfCores, NumberOfLogicalProcessors, MaxClockSpeed)
  DiskDrive = @(Get-CimInstance Win32_DiskDrive |
    Select-Object Index, DeviceID, Model, SerialNumber, Size, MediaType)
  PhysicalDisk = @(Get-CimInstance -Namespace root/Microsoft/Windows/Storage MSFT_PhysicalDisk |
    Select-Object DeviceId, MediaType)
  NetworkAdapterConfiguration = @(Get-CimInstance Win32_NetworkAdapterConfiguration `
    -Filter 'IPEnabled=True' | Select-Object Description, DefaultIPGateway, DNSServerSearchOrder)
  TimeZone = (Get-TimeZone).Id
} | ConvertTo-Json -Depth 4 -Compress
"""

UNINSTALL_KEYS = (
    r"SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall",
    r"SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall",
)


def _powershell() -> dict[str, Any]:
    out = run_tool(["powershell.exe", "-NoProfile", "-NonInteractive", "-Command", SCRIPT],
                   timeout_s=POWERSHELL_TIMEOUT_S)
    return json.loads(out)


_cim = Cached(_powershell)


def os_info(problems: list[str]) -> dict[str, Any]:
    return parse_os(_cim.get())


def virtualization(problems: list[str]) -> dict[str, Any]:
    return parse_virtualization(_cim.get())


def identity(problems: list[str]) -> dict[str, Any]:
    return parse_identity(_cim.get())


def cpu_model(problems: list[str]) -> str | None:
    return parse_cpu_model(_cim.get())


def disks(problems: list[str]) -> list[dict[str, Any]]:
    return parse_disks(_cim.get())


def software(problems: list[str]) -> tuple[str | None, list[dict[str, Any]] | None]:
    return "registry", parse_uninstall_entries(_registry_entries())


def default_gateway(problems: list[str]) -> dict[str, Any] | None:
    return parse_gateway(_cim.get())


def dns_servers(problems: list[str]) -> list[str]:
    return parse_dns(_cim.get())


def timezone(problems: list[str]) -> str | None:
    return clean(_cim.get().get("TimeZone"))


# --- parsers (pure, tested on captured output) ---------------------------------------------

def as_list(value: Any) -> list[Any]:
    """PowerShell 5.1 writes a one-item array as the bare item, and no items as null."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def parse_os(doc: dict[str, Any]) -> dict[str, Any]:
    os_ = _first(doc.get("OperatingSystem"))
    cv = _first(doc.get("CurrentVersion"))
    caption = clean(os_.get("Caption"))
    if caption and caption.startswith("Microsoft "):
        caption = caption[len("Microsoft "):]
    build = clean(os_.get("BuildNumber"))
    if build and cv.get("UBR") is not None:
        build = f"{build}.{cv['UBR']}"
    arch = (os_.get("OSArchitecture") or "").lower()
    return {
        "family": "windows",
        "name": caption,
        "version": clean(cv.get("DisplayVersion")) or clean(cv.get("ReleaseId"))
        or clean(os_.get("Version")),
        "build": build,
        "kernel": clean(os_.get("Version")),
        "arch": "arm64" if "arm" in arch else "x86_64" if "64" in arch else
        "x86" if "32" in arch else None,
    }


def cim_datetime(value: Any) -> str | None:
    """"/Date(1700000000000)/" (PowerShell 5.1), ISO 8601 (7.x), or a CIM DMTF string."""
    if isinstance(value, dict):  # 5.1 sometimes wraps it: {"value": "/Date(...)/", ...}
        value = value.get("value") or value.get("DateTime")
    if not isinstance(value, str):
        return None
    m = re.match(r"^/Date\((-?\d+)([+-]\d{4})?\)/$", value)
    if m:
        dt = datetime.fromtimestamp(int(m.group(1)) / 1000, tz=_UTC)
    elif re.match(r"^\d{14}\.\d{6}[+-]\d{3}$", value):
        dt = datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=_UTC)
        dt -= timedelta(minutes=int(value[21:]))
    else:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            return None  # local time of unknown offset: unknown, not a guess
    return dt.astimezone(_UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_virtualization(doc: dict[str, Any]) -> dict[str, Any]:
    cs = _first(doc.get("ComputerSystem"))
    kind = hypervisor_from_product(f"{cs.get('Manufacturer') or ''} {cs.get('Model') or ''}")
    if kind:
        return {"kind": kind, "type": "vm", "source": "cim"}
    # HypervisorPresent is also true on a Hyper-V host, so it only says "unknown".
    if cs.get("HypervisorPresent") is True:
        return {"kind": "unknown", "type": None, "source": "cim:HypervisorPresent"}
    return {"kind": "none", "type": "none", "source": "cim"}


def parse_identity(doc: dict[str, Any]) -> dict[str, Any]:
    cs = _first(doc.get("ComputerSystem"))
    product = _first(doc.get("Product"))
    bios = _first(doc.get("BIOS"))
    enclosure = _first(doc.get("Enclosure"))
    types = [t for t in as_list(enclosure.get("ChassisTypes")) if isinstance(t, int)]
    uuid = clean(product.get("UUID"))
    return {
        "vendor": clean(cs.get("Manufacturer")),
        "model": clean(cs.get("Model")),
        "serial": clean(bios.get("SerialNumber")) or clean(product.get("IdentifyingNumber"))
        or clean(enclosure.get("SerialNumber")),
        "uuid": uuid.lower() if uuid else None,
        "chassis": chassis_name(types[0]) if types else None,
        "bios": {
            "vendor": clean(bios.get("Manufacturer")),
            "version": clean(bios.get("SMBIOSBIOSVersion")),
            "date": (cim_datetime(bios.get("ReleaseDate")) or "")[:10] or None,
        },
    }


def parse_cpu_model(doc: dict[str, Any]) -> str | None:
    cpus = as_list(doc.get("Processor"))
    return clean(cpus[0].get("Name")) if cpus else None


_MEDIA = {3: False, 4: True, 5: True}  # MSFT_PhysicalDisk.MediaType: HDD, SSD, SCM


def parse_disks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    kinds = {str(d.get("DeviceId")): d.get("MediaType")
             for d in as_list(doc.get("PhysicalDisk"))}
    result = []
    for d in as_list(doc.get("DiskDrive")):
        index = d.get("Index")
        if index is None:
            m = re.search(r"(\d+)$", d.get("DeviceID") or "")
            index = int(m.group(1)) if m else None
        solid = _MEDIA.get(kinds.get(str(index)))  # type: ignore[arg-type]
        size = d.get("Size")
        result.append({
            "name": f"PhysicalDrive{index}" if index is not None else
            clean(d.get("DeviceID")) or "unknown",
            "model": clean(d.get("Model")),
            "serial": clean(d.get("SerialNumber")),
            "size_bytes": int(size) if str(size or "").isdigit() else None,
            "rotational": None if solid is None else not solid,
        })
    return result


def parse_gateway(doc: dict[str, Any]) -> dict[str, Any] | None:
    for nic in as_list(doc.get("NetworkAdapterConfiguration")):
        for gw in as_list(nic.get("DefaultIPGateway")):
            if isinstance(gw, str) and "." in gw:
                return {"address": gw, "interface": clean(nic.get("Description"))}
    return None


def parse_dns(doc: dict[str, Any]) -> list[str]:
    servers: list[str] = []
    for nic in as_list(doc.get("NetworkAdapterConfiguration")):
        for s in as_list(nic.get("DNSServerSearchOrder")):
            if isinstance(s, str) and s not in servers:
                servers.append(s)
    return servers[:32]


def parse_uninstall_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Programs as "Apps & features" lists them: named, not system components or updates."""
    seen = set()
    packages = []
    for e in entries:
        name = clean(e.get("DisplayName"))
        if not name or e.get("SystemComponent") == 1 or e.get("ParentKeyName"):
            continue
        version = clean(e.get("DisplayVersion"))
        key = (name, version)
        if key in seen:  # the same program is often listed under both registry views
            continue
        seen.add(key)
        packages.append({"name": name[:512], "version": version, "arch": None,
                         "publisher": clean(e.get("Publisher"))})
    return packages


def _first(value: Any) -> dict[str, Any]:
    items = as_list(value)
    return items[0] if items and isinstance(items[0], dict) else {}


def _registry_entries() -> list[dict[str, Any]]:
    import importlib

    winreg: Any = importlib.import_module("winreg")  # Windows only

    entries = []
    for hive in (winreg.HKEY_LOCAL_MACHINE, winreg.HKEY_CURRENT_USER):
        for path in UNINSTALL_KEYS:
            try:
                root = winreg.OpenKey(hive, path)
            except OSError:
                continue
            with root:
                for i in range(winreg.QueryInfoKey(root)[0]):
                    try:
                        with winreg.OpenKey(root, winreg.EnumKey(root, i)) as sub:
                            entries.append(_values(winreg, sub))
                    except OSError:
                        continue
    return entries


def _values(winreg: Any, key: Any) -> dict[str, Any]:
    values = {}
    for name in ("DisplayName", "DisplayVersion", "Publisher", "SystemComponent",
                 "ParentKeyName"):
        try:
            values[name] = winreg.QueryValueEx(key, name)[0]
        except OSError:
            values[name] = None
    return values
