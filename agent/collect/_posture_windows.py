"""Windows security posture: one PowerShell call per sub-section, registry values by winreg.

Each PowerShell script reads its sources one by one, each in its own try/catch, and writes
one JSON object: a source that failed leaves `<Source>Error` = {Error, HResult, Message}
beside the others, so an access denial or a missing cmdlet costs that fact alone. The error
kind is the exception's type or the CIM status (InvalidNamespace, AccessDenied, ...), never
its message, which Windows writes in the display language. The parsers take the decoded
JSON and are tested on fixtures under `tests/data/windows/posture/` on any OS.
"""

from __future__ import annotations

import importlib
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from estate.agent.collect._common import clean, run_tool
from estate.agent.collect._posture import cached_updates, empty, join_reasons
from estate.agent.collect._windows import as_list, cim_datetime, parse_powershell_json

__all__ = ["accounts", "encryption", "firewall", "malware", "platform", "updates"]

POWERSHELL_TIMEOUT_S = 20.0
"""One PowerShell per sub-section, six starting at once beside the inventory's own: on a busy
two-core laptop each start alone can take seconds. Under Windows' 30 s collection limit, as
`_windows.POWERSHELL_TIMEOUT_S` is."""

# How each script starts: errors become exceptions (so try/catch sees them), output is UTF-8,
# and Fail turns a caught error into {Error, HResult, Message}. A CimException's type says
# nothing (every CIM failure is one); its NativeErrorCode does.
_PROLOGUE = r"""
$ErrorActionPreference = 'Stop'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
function Fail($e) {
  $x = $e.Exception
  $kind = $x.GetType().Name
  if ($x.GetType().FullName -eq 'Microsoft.Management.Infrastructure.CimException') {
    $kind = [string]$x.NativeErrorCode
  }
  @{ Error = $kind; HResult = ('0x{0:X8}' -f $x.HResult); Message = $x.Message }
}
$r = @{}
"""
_EPILOGUE = "\n$r | ConvertTo-Json -Depth 4 -Compress\n"

# BitLocker's WMI provider, with each volume's DriveType from Win32_Volume (the same DeviceID)
# so removable drives are left out where VolumeType (Windows 8 and later) is missing.
ENCRYPTION_SCRIPT = _PROLOGUE + r"""
try {
  $types = @{}
  foreach ($v in Get-CimInstance Win32_Volume) { $types[$v.DeviceID] = $v.DriveType }
  $r.Volumes = @(Get-CimInstance -Namespace root/cimv2/Security/MicrosoftVolumeEncryption `
      -ClassName Win32_EncryptableVolume | ForEach-Object {
    $m = Invoke-CimMethod -InputObject $_ -MethodName GetEncryptionMethod
    $c = Invoke-CimMethod -InputObject $_ -MethodName GetConversionStatus
    @{ DeviceID = $_.DeviceID; DriveLetter = $_.DriveLetter; VolumeType = $_.VolumeType
       DriveType = $types[$_.DeviceID]; ProtectionStatus = $_.ProtectionStatus
       EncryptionMethod = $m.EncryptionMethod; ConversionStatus = $c.ConversionStatus
       EncryptionPercentage = $c.EncryptionPercentage; ConversionReturn = $c.ReturnValue }
  })
} catch { $r.VolumesError = Fail $_ }
""" + _EPILOGUE

# ActiveStore is the policy in force: local settings merged with Group Policy. Enabled is a
# GpoBoolean enum, which ConvertTo-Json would write as a number: written as its name.
FIREWALL_SCRIPT = _PROLOGUE + r"""
try {
  $r.Profiles = @(Get-NetFirewallProfile -PolicyStore ActiveStore | ForEach-Object {
    @{ Name = [string]$_.Name; Enabled = [string]$_.Enabled } })
} catch { $r.ProfilesError = Fail $_ }
try { $r.Service = [string](Get-Service -Name mpssvc).Status } catch { $r.ServiceError = Fail $_ }
""" + _EPILOGUE

# SecurityCenter2 exists on client editions only; ProductType says which edition this is.
MALWARE_SCRIPT = _PROLOGUE + r"""
try { $r.ProductType = (Get-CimInstance Win32_OperatingSystem).ProductType } catch { }
try {
  $r.Defender = Get-MpComputerStatus | Select-Object AMServiceEnabled, AntivirusEnabled, `
    RealTimeProtectionEnabled, AMRunningMode, AntivirusSignatureAge, `
    AntivirusSignatureLastUpdated, AntivirusSignatureVersion, DefenderSignaturesOutOfDate
} catch { $r.DefenderError = Fail $_ }
try {
  $r.Products = @(Get-CimInstance -Namespace root/SecurityCenter2 -ClassName AntiVirusProduct |
    Select-Object displayName, productState, pathToSignedProductExe)
} catch { $r.ProductsError = Fail $_ }
""" + _EPILOGUE

# Get-HotFix dates are local midnights; Windows Update's COM results are UTC.
UPDATES_SCRIPT = _PROLOGUE + r"""
$utc = "yyyy-MM-dd'T'HH:mm:ss'Z'"
try {
  $last = Get-HotFix | Where-Object { $_.InstalledOn } | Sort-Object InstalledOn -Descending |
    Select-Object -First 1
  $r.HotFix = if ($last) { @{ HotFixID = $last.HotFixID
    InstalledOn = $last.InstalledOn.ToUniversalTime().ToString($utc) } } else { $null }
} catch { $r.HotFixError = Fail $_ }
try {
  $wu = (New-Object -ComObject Microsoft.Update.AutoUpdate).Results
  $r.AutoUpdate = @{ LastInstallationSuccessDate = if ($wu.LastInstallationSuccessDate) {
    ([datetime]$wu.LastInstallationSuccessDate).ToString($utc) } else { $null } }
} catch { $r.AutoUpdateError = Fail $_ }
""" + _EPILOGUE

# Confirm-SecureBootUEFI and Get-Tpm need an administrator (the agent runs as LocalSystem);
# the registry values read beside them do not. $env:firmware_type is set from Windows 8 on.
PLATFORM_SCRIPT = _PROLOGUE + r"""
$r.FirmwareType = $env:firmware_type
try { $r.SecureBoot = Confirm-SecureBootUEFI } catch { $r.SecureBootError = Fail $_ }
try { $r.Tpm = Get-Tpm | Select-Object TpmPresent, TpmReady } catch { $r.TpmError = Fail $_ }
try {
  $r.Win32Tpm = @(Get-CimInstance -Namespace root/cimv2/Security/MicrosoftTpm `
    -ClassName Win32_Tpm | Select-Object SpecVersion, IsEnabled_InitialValue)
} catch { $r.Win32TpmError = Fail $_ }
""" + _EPILOGUE

# The Administrators group by its well-known SID, whatever the display language calls it
# ("Administrateurs", "Administratoren"). Its members through ADSI, which lists every
# member; Get-LocalGroupMember fails outright on a member whose SID no longer resolves.
ACCOUNTS_SCRIPT = _PROLOGUE + r"""
try {
  $sid = New-Object System.Security.Principal.SecurityIdentifier 'S-1-5-32-544'
  $name = $sid.Translate([System.Security.Principal.NTAccount]).Value.Split('\')[-1]
  $r.Group = $name
  $group = [ADSI]"WinNT://$env:COMPUTERNAME/$name,group"
  $r.Members = @($group.Invoke('Members') | ForEach-Object {
    $_.GetType().InvokeMember('ADsPath', 'GetProperty', $null, $_, $null) })
} catch { $r.MembersError = Fail $_ }
""" + _EPILOGUE

WINDOWS_UPDATE_KEY = r"SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update"
REBOOT_KEYS = (
    WINDOWS_UPDATE_KEY + r"\RebootRequired",
    r"SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending",
)
WINLOGON_KEY = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion\Winlogon"
SECURE_BOOT_KEY = r"SYSTEM\CurrentControlSet\Control\SecureBoot\State"
CONTROL_KEY = r"SYSTEM\CurrentControlSet\Control"


# --- collectors -----------------------------------------------------------------------------

def encryption() -> dict[str, Any]:
    doc, failure = _powershell(ENCRYPTION_SCRIPT)
    if doc is None:
        return empty("encryption", f"BitLocker: {failure}")
    return parse_encryption(doc)


def firewall() -> dict[str, Any]:
    doc, failure = _powershell(FIREWALL_SCRIPT)
    if doc is None:
        return {**empty("firewall", f"Get-NetFirewallProfile: {failure}"), "product": "windows"}
    return parse_firewall(doc)


def malware() -> dict[str, Any]:
    doc, failure = _powershell(MALWARE_SCRIPT)
    if doc is None:
        return empty("malware", f"Get-MpComputerStatus, SecurityCenter2: {failure}")
    return parse_malware(doc, time.time())


def updates(cache_dir: Path | None) -> dict[str, Any]:
    return cached_updates(cache_dir, _updates_now)


def platform() -> dict[str, Any]:
    doc, failure = _powershell(PLATFORM_SCRIPT)
    return parse_platform(doc or {}, registry_value(CONTROL_KEY, "PEFirmwareType"),
                          registry_value(SECURE_BOOT_KEY, "UEFISecureBootEnabled"),
                          failure)


def accounts() -> dict[str, Any]:
    doc, failure = _powershell(ACCOUNTS_SCRIPT)
    return parse_accounts(doc or {}, registry_value(WINLOGON_KEY, "AutoAdminLogon"), failure)


def _updates_now() -> dict[str, Any]:
    doc, failure = _powershell(UPDATES_SCRIPT)
    return parse_updates(doc or {}, registry_value(WINDOWS_UPDATE_KEY + r"\Results\Install",
                                                 "LastSuccessTime"),
                         [_key_exists(k) for k in REBOOT_KEYS], failure)


# --- the OS boundary ------------------------------------------------------------------------

def _powershell(script: str) -> tuple[dict[str, Any] | None, str | None]:
    """The script's JSON object, or None and why not."""
    try:
        out = run_tool(["powershell.exe", "-NoProfile", "-NonInteractive", "-Command", script],
                       timeout_s=POWERSHELL_TIMEOUT_S)
    except FileNotFoundError:
        return None, "powershell.exe not found"
    except RuntimeError as exc:  # a time-out, or PowerShell itself failed
        return None, str(exc)
    try:
        doc = parse_powershell_json(out)
    except ValueError:
        return None, "PowerShell wrote no JSON"
    if not isinstance(doc, dict):
        return None, "PowerShell wrote no JSON object"
    return doc, None


ABSENT = "<absent>"
"""A registry key or value that does not exist (as opposed to one we may not read)."""
RegistryValue = tuple[Any, "str | None"]
"""A registry value read: (its data or ABSENT, None), or (None, why it could not be read)."""


def registry_value(path: str, name: str) -> RegistryValue:
    """A value under HKEY_LOCAL_MACHINE: (its data or _ABSENT, None), or (None, why not)."""
    winreg: Any = importlib.import_module("winreg")  # Windows only
    # The 64-bit view whatever the Python: WOW64 redirects a 32-bit one elsewhere.
    access = winreg.KEY_READ | winreg.KEY_WOW64_64KEY
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, path, 0, access) as key:
            return winreg.QueryValueEx(key, name)[0], None
    except FileNotFoundError:
        return ABSENT, None
    except PermissionError:
        return None, "access denied"
    except OSError as exc:
        return None, str(exc.strerror or exc)


def _key_exists(path: str) -> bool | None:
    """Whether a key exists under HKEY_LOCAL_MACHINE; None when it cannot be told."""
    winreg: Any = importlib.import_module("winreg")
    access = winreg.KEY_READ | winreg.KEY_WOW64_64KEY
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, path, 0, access):
            return True
    except FileNotFoundError:
        return False
    except OSError:
        return None


# --- parsers (pure, tested on fixtures) -----------------------------------------------------

def source_error(doc: dict[str, Any], source: str) -> str | None:
    """Why `source` of a script's answer failed, in English whatever the display language;
    None when it did not."""
    failure = doc.get(f"{source}Error")
    if not isinstance(failure, dict):
        return None
    kind = str(failure.get("Error") or "")
    hresult = str(failure.get("HResult") or "")
    text = _ERROR_KINDS.get(kind)
    if text is None:
        message = clean(failure.get("Message")) or "failed"
        text = f"{kind}: {message}" if kind else message
    return f"{text} ({hresult})" if hresult else text


_ERROR_KINDS = {
    "CommandNotFoundException": "cmdlet not available",
    "InvalidNamespace": "WMI namespace absent",
    "InvalidClass": "WMI class absent",
    "AccessDenied": "access denied",
    "UnauthorizedAccessException": "access denied",
    "PlatformNotSupportedException": "not supported on this platform",
    "COMException": "COM object unavailable",
}


# Win32_EncryptableVolume.GetEncryptionMethod, named as Get-BitLockerVolume names them.
_METHODS = {1: "Aes128Diffuser", 2: "Aes256Diffuser", 3: "Aes128", 4: "Aes256",
            5: "Hardware", 6: "XtsAes128", 7: "XtsAes256"}
_PROTECTION = {0: "off", 1: "on"}  # 2 is "unknown": a locked volume
_FULLY_DECRYPTED, _FULLY_ENCRYPTED = 0, 1
_PORTABLE_VOLUME, _REMOVABLE_DRIVE = 2, 2  # VolumeType, Win32_Volume.DriveType


def parse_encryption(doc: dict[str, Any]) -> dict[str, Any]:
    """Fixed volumes and their BitLocker state (removable drives are left out).

    A volume is `encrypted` only when fully encrypted: while encryption (or decryption) is in
    progress or paused part of it is in the clear, and `percent` says how much is not.
    """
    failure = source_error(doc, "Volumes")
    if failure is not None:
        return empty("encryption", f"Win32_EncryptableVolume: {failure}")
    reasons = []
    volumes = []
    for v in as_list(doc.get("Volumes")):
        if not isinstance(v, dict):
            continue
        if v.get("VolumeType") == _PORTABLE_VOLUME or v.get("DriveType") == _REMOVABLE_DRIVE:
            continue
        mount = clean(v.get("DriveLetter")) or clean(v.get("DeviceID")) or "unknown"
        status = v.get("ConversionStatus")
        percent = v.get("EncryptionPercentage")
        if not isinstance(status, int) or v.get("ConversionReturn") not in (0, None):
            # GetConversionStatus fails on a locked volume (FVE_E_LOCKED_VOLUME)
            reasons.append(f"{mount}: conversion status unreadable (locked?)")
            status, percent = None, None
        method = v.get("EncryptionMethod")
        volumes.append({
            "mount": mount[:1024],
            "device": (clean(v.get("DeviceID")) or "")[:1024] or None,
            "encrypted": None if status is None else status == _FULLY_ENCRYPTED,
            "method": _METHODS.get(method) if isinstance(method, int) else None,
            "protection": _PROTECTION.get(v.get("ProtectionStatus")),  # type: ignore[arg-type]
            "percent": float(percent) if isinstance(percent, (int, float))
            and 0 <= percent <= 100 else None,
        })
        if v.get("ProtectionStatus") not in _PROTECTION:
            reasons.append(f"{mount}: protection status unknown (locked?)")
    return {"volumes": volumes[:64], "reason": join_reasons(reasons)}


# GpoBoolean by name as the script writes it; by number (True is 1) as a bare ConvertTo-Json would.
_GPO_BOOLEAN: dict[Any, bool] = {"True": True, "False": False, 1: True, 0: False}


def parse_firewall(doc: dict[str, Any]) -> dict[str, Any]:
    """On when every profile is on and the firewall service runs."""
    failure = source_error(doc, "Profiles")
    if failure is not None:
        return {**empty("firewall", f"Get-NetFirewallProfile: {failure}"), "product": "windows"}
    profiles = [{"name": (clean(p.get("Name")) or "unknown")[:64],
                 "enabled": _GPO_BOOLEAN.get(p.get("Enabled"))}  # NotConfigured: unknown
                for p in as_list(doc.get("Profiles")) if isinstance(p, dict)][:8]
    states = [p["enabled"] for p in profiles]
    service = clean(doc.get("Service"))
    reasons = []
    enabled: bool | None = None
    if not profiles:
        reasons.append("Get-NetFirewallProfile listed no profile")
    elif False in states:
        enabled = False
    elif None in states:
        reasons.append("a profile's state is not configured")
    elif service is not None and service != "Running":
        # Microsoft does not support stopping the service: what it then filters is unknown.
        reasons.append(f"the firewall service (mpssvc) is {service}")
    else:
        enabled = True
    return {"enabled": enabled, "product": "windows", "profiles": profiles,
            "reason": join_reasons(reasons)}


DEFENDER = "Microsoft Defender Antivirus"
_NEVER_UPDATED_DAYS = 65535  # AntivirusSignatureAge when signatures were never updated


def product_state(state: Any) -> tuple[bool | None, bool | None]:
    """(scanner on, signatures up to date) from SecurityCenter2's `productState`.

    Not documented by Microsoft beyond WSC_SECURITY_PROVIDER; the layout every inventory tool
    decodes: the low three bytes are 0xPPSSDD, PP the provider flags, SS the scanner
    (0x10 on, 0x00 off, 0x20 snoozed, 0x30 expired; its low nibble 1 when Microsoft owns the
    product), DD the definitions (0x00 up to date, 0x10 out of date). 397568 = 0x061100:
    Defender, on, up to date.
    """
    if not isinstance(state, int) or isinstance(state, bool) or not 0 <= state < 1 << 24:
        return None, None
    scanner = (state >> 12) & 0xF
    definitions = (state >> 4) & 0xF
    return (scanner == 1 if scanner in (0, 1, 2, 3) else None,
            definitions == 0 if definitions in (0, 1) else None)


def parse_malware(doc: dict[str, Any], now: float) -> dict[str, Any]:
    """The active product: Defender when it runs in normal mode, else the first product
    SecurityCenter2 says is on. "none" only where SecurityCenter2 (client editions) lists
    every product and none is there; on a server a third-party product is not listed."""
    reasons: list[str] = []
    defender = doc["Defender"] if isinstance(doc.get("Defender"), dict) else None
    defender_failure = source_error(doc, "Defender")
    if defender is None:
        reasons.append(f"Get-MpComputerStatus: {defender_failure or 'no answer'}")
    center_failure = source_error(doc, "Products")
    if center_failure is not None:
        server = doc.get("ProductType") in (2, 3)
        reasons.append("SecurityCenter2: " + ("a server edition has none" if server
                                               else center_failure))

    products: list[dict[str, Any]] = []
    for p in as_list(doc.get("Products")) if center_failure is None else []:
        if isinstance(p, dict) and clean(p.get("displayName")):
            on, fresh = product_state(p.get("productState"))
            products.append({"name": clean(p.get("displayName"))[:128],  # type: ignore[index]
                             "enabled": on, "up_to_date": fresh})

    defender_on = None
    if defender is not None:
        mode = clean(defender.get("AMRunningMode"))
        # Passive and EDR block modes: another product is the antivirus, Defender only watches.
        defender_on = defender.get("AntivirusEnabled") is True and mode in (None, "Normal")
        out_of_date = defender.get("DefenderSignaturesOutOfDate")
        if not any("defender" in p["name"].lower() for p in products):
            products.insert(0, {"name": DEFENDER, "enabled": defender_on,
                                "up_to_date": None if not isinstance(out_of_date, bool)
                                else not out_of_date})

    if defender is not None and defender_on:
        age = _signature_age_days(defender, now)
        if age is None:
            reasons.append("Defender gives no signature date")
        realtime = defender.get("RealTimeProtectionEnabled")
        return {"product": DEFENDER, "enabled": True,
                "realtime": realtime if isinstance(realtime, bool) else None,
                "signature_age_days": age, "products": products[:16], "gatekeeper": None,
                "xprotect_version": None, "reason": join_reasons(reasons)}

    active = next((p for p in products if p["enabled"]), None)
    if active is not None:
        # WSC reports a product "on" when its on-access scanning is on (the pre-Vista
        # SecurityCenter called the same flag onAccessScanningEnabled).
        return {"product": active["name"], "enabled": True, "realtime": True,
                "signature_age_days": None, "products": products[:16], "gatekeeper": None,
                "xprotect_version": None,
                "reason": join_reasons([f"SecurityCenter2 gives no signature age for "
                                        f"{active['name']}"])}
    if center_failure is None:
        # SecurityCenter2 lists every registered product, Defender included: none is on.
        first = products[0]["name"] if products else "none"
        return {"product": first, "enabled": False, "realtime": False,
                "signature_age_days": None, "products": products[:16], "gatekeeper": None,
                "xprotect_version": None,
                "reason": join_reasons(["no anti-malware product is on"])}
    return {**empty("malware", join_reasons(
        [*reasons, "no product found on and third-party products cannot be listed"]) or ""),
        "products": products[:16] or None}


def _signature_age_days(defender: dict[str, Any], now: float) -> float | None:
    updated = cim_datetime(defender.get("AntivirusSignatureLastUpdated"))
    if updated is not None:
        at = datetime.strptime(updated, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return round(max(0.0, (now - at.timestamp()) / 86400), 2)
    age = defender.get("AntivirusSignatureAge")
    if isinstance(age, int) and 0 <= age < _NEVER_UPDATED_DAYS:
        return float(age)
    return None


def parse_updates(doc: dict[str, Any], last_success_time: RegistryValue,
                  reboot_keys: list[bool | None], failure: str | None = None) -> dict[str, Any]:
    """The last cumulative update or hotfix installed, and whether one waits for a reboot.

    Get-HotFix comes first: Windows Update's own "last success" moves with every Defender
    definition update, so it would hide a machine months behind on its monthly updates; it
    and the registry's LastSuccessTime (Windows 8.1 and earlier) are used where no hotfix
    has a date.
    """
    reasons = [f"PowerShell: {failure}"] if failure else []
    hotfix = _object(doc, "HotFix")
    last = _utc(hotfix.get("InstalledOn"))
    if last is None:
        wu = _object(doc, "AutoUpdate")
        dates = [d for d in (_utc(wu.get("LastInstallationSuccessDate")),
                             _registry_utc(last_success_time[0])) if d is not None]
        last = max(dates) if dates else None
    if last is None:
        for source in ("HotFix", "AutoUpdate"):
            why = source_error(doc, source)
            if why:
                reasons.append(f"{source}: {why}")
        reasons.append("no dated hotfix or Windows Update success found")
    reasons.append("pending updates are counted only by a Windows Update search (slow, "
                   "may use the network)")
    reboot = None if None in reboot_keys else any(reboot_keys)
    if reboot is None:
        reasons.append("reboot-pending registry keys unreadable")
    return {"last_success": last, "pending": None, "reboot_required": reboot,
            "reason": join_reasons(reasons)}


def _utc(value: Any) -> str | None:
    """A "2024-03-12T23:00:00Z" the scripts write; dates before 2000 are Windows' "never"."""
    text = cim_datetime(value) if isinstance(value, str) else None
    return text if text is not None and text >= "2000" else None


def _registry_utc(value: Any) -> str | None:
    """LastSuccessTime: "2024-03-13 10:22:31", UTC."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at.year >= 2000 else None


_FIRMWARE = {"UEFI": "uefi", "Legacy": "bios"}
_PE_FIRMWARE_TYPE = {1: "bios", 2: "uefi"}


def parse_platform(doc: dict[str, Any], pe_firmware_type: RegistryValue,
                   secure_boot_state: RegistryValue,
                   failure: str | None = None) -> dict[str, Any]:
    """Firmware mode, Secure Boot and the TPM. Where the cmdlets are denied (they want an
    administrator) the registry's PEFirmwareType and UEFISecureBootEnabled still tell."""
    reasons = [f"PowerShell: {failure}"] if failure else []
    firmware = _FIRMWARE.get(str(doc.get("FirmwareType"))) or \
        _PE_FIRMWARE_TYPE.get(pe_firmware_type[0])
    if firmware is None:
        reasons.append("firmware type unknown ($env:firmware_type and PEFirmwareType unset)")

    secure_boot = doc.get("SecureBoot") if isinstance(doc.get("SecureBoot"), bool) else None
    if secure_boot is None and firmware == "uefi" and secure_boot_state[0] in (0, 1):
        secure_boot = secure_boot_state[0] == 1
    if firmware == "bios":
        secure_boot = None
        reasons.append("legacy BIOS firmware: Secure Boot does not apply")
    elif secure_boot is None:
        reasons.append(f"Confirm-SecureBootUEFI: {source_error(doc, 'SecureBoot') or 'no answer'}")

    tpm = _object(doc, "Tpm")
    present = tpm.get("TpmPresent") if isinstance(tpm.get("TpmPresent"), bool) else None
    instances = [t for t in as_list(doc.get("Win32Tpm")) if isinstance(t, dict)]
    if present is None and source_error(doc, "Win32Tpm") is None and "Win32Tpm" in doc:
        present = bool(instances)  # the class has an instance per TPM, none without one
    version = None
    for t in instances:
        # "2.0, 0, 1.59": the TPM family, then the spec's level and revision
        spec = clean(str(t.get("SpecVersion") or "").split(",")[0])
        if spec:
            version = spec[:16]
    if present is None:
        reasons.append("TPM: " + (source_error(doc, "Tpm") or source_error(doc, "Win32Tpm")
                                  or "no answer"))
    elif present and version is None:
        reasons.append("TPM version: " + (source_error(doc, "Win32Tpm") or "not given"))
    elif not present:
        reasons.append("no TPM")
    return {"firmware": firmware, "secure_boot": secure_boot, "tpm_present": present,
            "tpm_version": version, "reason": join_reasons(reasons)}


def parse_accounts(doc: dict[str, Any], auto_admin_logon: RegistryValue,
                   failure: str | None = None) -> dict[str, Any]:
    """Members of the Administrators group (S-1-5-32-544) as DOMAIN\\name, and whether
    Winlogon logs a user on by itself (AutoAdminLogon "1")."""
    reasons = [f"PowerShell: {failure}"] if failure else []
    admins: list[str] | None = None
    why = source_error(doc, "Members")
    if why is not None:
        reasons.append(f"Administrators (S-1-5-32-544): {why}")
    elif "Members" in doc:
        admins = [name for name in (member_name(m) for m in as_list(doc.get("Members")))
                  if name][:256]
    elif not failure:
        reasons.append("Administrators (S-1-5-32-544): no answer")
    value, problem = auto_admin_logon
    auto_login: bool | None = None
    if value == ABSENT:
        auto_login = False  # Winlogon's default
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        auto_login = str(value).strip() == "1"  # REG_SZ as documented; some tools write a DWORD
    else:
        reasons.append(f"Winlogon AutoAdminLogon: {problem or 'unexpected value'}")
    return {"admins": admins, "auto_login": auto_login, "reason": join_reasons(reasons)}


def member_name(ads_path: Any) -> str | None:
    """An ADSI WinNT path as Windows shows the account: "WinNT://WORKGROUP/PC01/Jo" is a
    local account, PC01\\Jo; "WinNT://CONTOSO/Domain Admins" a domain's, CONTOSO\\Domain
    Admins; a SID that no longer resolves ("WinNT://S-1-5-21-...") stays a SID."""
    text = clean(ads_path)
    if text is None:
        return None
    parts = [p for p in text.removeprefix("WinNT://").split("/") if p]
    if not parts:
        return None
    return "\\".join(parts[-2:])[:256]


def _object(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}
