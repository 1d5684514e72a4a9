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
    hypervisor_name,
    run_tool,
)
from estate.agent.collect._windows_zones import WINDOWS_TO_IANA

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
    Select-Object Manufacturer, Version, SMBIOSBIOSVersion, SerialNumber, ReleaseDate
  Enclosure = Get-CimInstance Win32_SystemEnclosure | Select-Object ChassisTypes, SerialNumber
  OperatingSystem = Get-CimInstance Win32_OperatingSystem |
    Select-Object Caption, Version, BuildNumber, OSArchitecture, OperatingSystemSKU, ProductType
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
    return parse_powershell_json(out)


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


def timezone(problems: list[str]) -> dict[str, str | None]:
    return parse_timezone(_cim.get())


# --- parsers (pure, tested on captured output) ---------------------------------------------

def as_list(value: Any) -> list[Any]:
    """PowerShell 5.1 writes a one-item array as the bare item, and no items as null."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def parse_powershell_json(out: str) -> dict[str, Any]:
    """PowerShell's JSON. With the console's encoding set to UTF-8, as SCRIPT sets it,
    Windows PowerShell can write a byte order mark first (`[Text.Encoding]::UTF8` has one),
    which `json.loads` refuses."""
    return json.loads(out.lstrip("\ufeff"))


def parse_os(doc: dict[str, Any]) -> dict[str, Any]:
    os_ = _first(doc.get("OperatingSystem"))
    cv = _first(doc.get("CurrentVersion"))
    # The caption is in the display language ("Windows 7 Professionnel", "Windows 11
    # Entreprise"): shown as it is, while `product` is what the numbers say, in English.
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
        "product": product_name(_build_number(doc), os_.get("ProductType"),
                                os_.get("OperatingSystemSKU")),
    }


# Win32_OperatingSystem.OperatingSystemSKU (GetProductInfo's PRODUCT_* values) to the edition
# as Microsoft's English product names spell it. Editions not listed give no product name,
# and lookups fall back to the caption.
_EDITIONS = {
    1: "Ultimate", 2: "Home Basic", 3: "Home Premium", 4: "Enterprise", 5: "Home Basic N",
    6: "Business", 7: "Standard", 8: "Datacenter", 10: "Enterprise", 11: "Starter",
    12: "Datacenter", 13: "Standard", 14: "Enterprise", 16: "Business N", 17: "Web",
    27: "Enterprise N", 28: "Ultimate N", 48: "Pro", 49: "Pro N", 72: "Enterprise Evaluation",
    79: "Standard Evaluation", 80: "Datacenter Evaluation", 98: "Home N", 99: "Home China",
    100: "Home Single Language", 101: "Home", 103: "Pro with Media Center", 121: "Education",
    122: "Education N", 125: "Enterprise LTSC", 126: "Enterprise N LTSC",
    161: "Pro for Workstations", 162: "Pro for Workstations N", 164: "Pro Education",
    165: "Pro Education N", 175: "Enterprise multi-session", 188: "IoT Enterprise",
    191: "IoT Enterprise LTSC",
}
# Before Windows 8 "Pro" was "Professional" (Windows 7 Professional).
_EDITIONS_BEFORE_8 = {48: "Professional", 49: "Professional N"}
# ProductType 1 is a workstation; 2 (a domain controller) and 3 are servers. Server releases
# share their build with a workstation release, so the build alone does not say which.
_SERVER_BUILDS = {
    6001: "Windows Server 2008", 6002: "Windows Server 2008", 6003: "Windows Server 2008",
    7600: "Windows Server 2008 R2", 7601: "Windows Server 2008 R2",
    9200: "Windows Server 2012", 9600: "Windows Server 2012 R2",
    14393: "Windows Server 2016", 17763: "Windows Server 2019",
    20348: "Windows Server 2022", 26100: "Windows Server 2025",
}


def product_name(build: int | None, product_type: Any, sku: Any) -> str | None:
    """"Windows 7 Professional", "Windows 11 Enterprise", "Windows Server 2019 Standard":
    from the build, ProductType and OperatingSystemSKU, whatever the display language.

    None when a number is missing or not known here (a Server semi-annual release, a new SKU).
    """
    if build is None or not isinstance(sku, int) or sku not in _EDITIONS:
        return None
    if product_type in (2, 3):
        base = _SERVER_BUILDS.get(build)
    elif product_type == 1:
        base = ("Windows 11" if build >= 22000 else "Windows 10" if build >= 10240 else
                "Windows 8.1" if build == 9600 else "Windows 8" if build == 9200 else
                "Windows 7" if build in (7600, 7601) else None)
    else:
        base = None
    if base is None:
        return None
    if build < 9200:
        return f"{base} {_EDITIONS_BEFORE_8.get(sku, _EDITIONS[sku])}"
    if build < 10240 and sku == 101:
        return base  # the core edition of Windows 8 and 8.1 is just "Windows 8.1"
    return f"{base} {_EDITIONS[sku]}"


def _build_number(doc: dict[str, Any]) -> int | None:
    build = str(_first(doc.get("OperatingSystem")).get("BuildNumber") or "").strip()
    return int(build) if build.isdigit() else None


def parse_timezone(doc: dict[str, Any]) -> dict[str, str | None]:
    """The zone's IANA name, by the CLDR mapping of Windows zone ids, and the id itself."""
    windows = clean(doc.get("TimeZone"))
    return {"timezone": WINDOWS_TO_IANA.get(windows) if windows else None,
            "windows_timezone": windows}


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
    bios = _first(doc.get("BIOS"))
    # Win32_BIOS.Version carries the firmware's ACPI OEM id: "BOCHS_ - 1" or "BXPC    - 1" on
    # a QEMU/KVM guest whose vendor and model say nothing of it.
    kind = hypervisor_name(clean(cs.get("Manufacturer")), clean(cs.get("Model")),
                           clean(bios.get("Version")))
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
    build = _build_number(doc)
    swapped_hex = build is not None and build < 9200
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
            "serial": disk_serial(d.get("SerialNumber"), swapped_hex),
            "size_bytes": int(size) if str(size or "").isdigit() else None,
            "rotational": None if solid is None else not solid,
        })
    return result


def disk_serial(raw: Any, swapped_hex: bool) -> str | None:
    """Win32_DiskDrive.SerialNumber, decoded where Windows 7 and Vista hex-encode it.

    Before Windows 8 an ATA disk's serial arrives as the hex of its ATA IDENTIFY words, each
    byte pair swapped: "42566332666666303539622d6632643731622031" is a VirtualBox disk's
    "VB2cff0f95-b2f7db11". It is decoded when it is even-length hex whose swapped bytes are
    printable ASCII; anything else is a real serial and stays. Windows 8 and later give the
    serial itself, and a serial that is hex digits (a USB bridge's "5758413144393341") is
    left alone there.
    """
    serial = clean(raw)
    if not swapped_hex or serial is None or len(serial) % 2 or \
            not re.fullmatch(r"[0-9A-Fa-f]+", serial):
        return serial
    data = bytes.fromhex(serial)
    swapped = bytes(b for pair in zip(data[1::2], data[0::2], strict=True) for b in pair)
    text = swapped.decode("latin-1")
    if not all(" " <= c <= "~" for c in text):
        return serial
    return clean(text)


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
    """Programs as "Apps & features" lists them: named, not system components or updates.

    Each entry carries `scope`: "machine" (HKLM) or "user" (a user's hive).
    """
    seen = set()
    packages = []
    for e in entries:
        name = clean(e.get("DisplayName"))
        if not name or e.get("SystemComponent") == 1 or e.get("ParentKeyName"):
            continue
        version = clean(e.get("DisplayVersion"))
        scope = e.get("scope")
        # The same program is often listed under both registry views, and a per-user one
        # in the hive of every user who installed it.
        key = (name, version, scope)
        if key in seen:
            continue
        seen.add(key)
        packages.append({"name": name[:512], "version": version, "arch": None,
                         "publisher": clean(e.get("Publisher")), "scope": scope})
    return packages


def _first(value: Any) -> dict[str, Any]:
    items = as_list(value)
    return items[0] if items and isinstance(items[0], dict) else {}


def _registry_entries() -> list[dict[str, Any]]:
    """Uninstall entries of the machine and of every loaded user hive.

    As a service the agent runs as LocalSystem, whose HKEY_CURRENT_USER is SYSTEM's own hive:
    per-user installs (Teams, Zoom, VS Code's user setup) are under each user's
    HKEY_USERS\\<SID>. Only the hives of users logged in (or running something) are loaded;
    a user who is away is not read, rather than the agent loading their NTUSER.DAT.
    """
    import importlib

    winreg: Any = importlib.import_module("winreg")  # Windows only
    # A 32-bit Python would otherwise be shown the 32-bit view of HKLM\SOFTWARE twice.
    access = winreg.KEY_READ | winreg.KEY_WOW64_64KEY

    entries = _uninstall_entries(winreg, winreg.HKEY_LOCAL_MACHINE, "", access, "machine")
    for sid in _subkeys(winreg, winreg.HKEY_USERS, "", access):
        # <SID>_Classes is the same user's file associations; .DEFAULT is S-1-5-18 again.
        if sid.endswith("_Classes") or sid == ".DEFAULT":
            continue
        entries += _uninstall_entries(winreg, winreg.HKEY_USERS, sid + "\\", access, "user")
    return entries


def _uninstall_entries(winreg: Any, hive: Any, prefix: str, access: int,
                       scope: str) -> list[dict[str, Any]]:
    entries = []
    for path in UNINSTALL_KEYS:
        # Under a user's hive the key is "Software\\..."; the registry ignores case.
        path = prefix + path
        for name in _subkeys(winreg, hive, path, access):
            try:
                with winreg.OpenKey(hive, f"{path}\\{name}", 0, access) as sub:
                    entries.append({**_values(winreg, sub), "scope": scope})
            except OSError:
                continue  # removed while we read, or not ours to read
    return entries


def _subkeys(winreg: Any, hive: Any, path: str, access: int) -> list[str]:
    try:
        root = winreg.OpenKey(hive, path, 0, access)
    except OSError:
        return []
    with root:
        names = []
        for i in range(winreg.QueryInfoKey(root)[0]):
            try:
                names.append(winreg.EnumKey(root, i))
            except OSError:
                break  # a key removed while we count
        return names


def _values(winreg: Any, key: Any) -> dict[str, Any]:
    values = {}
    for name in ("DisplayName", "DisplayVersion", "Publisher", "SystemComponent",
                 "ParentKeyName"):
        try:
            values[name] = winreg.QueryValueEx(key, name)[0]
        except OSError:
            values[name] = None
    return values
