"""macOS security posture: fdesetup, the application firewall, Gatekeeper and XProtect, the
install history, the admin group, loginwindow's auto-login and the boot policy.

The parsers take the tools' text or the decoded plists, and are tested on fixtures under
`tests/data/macos/posture/` on any OS. These command-line tools print English whatever the
user's language; system_profiler's values follow the locale, which a launchd daemon does not
set, so the agent reads them in English.
"""

from __future__ import annotations

import os
import plistlib
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from estate.agent.collect._common import clean, iso_utc
from estate.agent.collect._macos import run_profiler
from estate.agent.collect._posture import cached_updates, empty, join_reasons

__all__ = ["accounts", "encryption", "firewall", "malware", "platform", "updates"]

TOOL_TIMEOUT_S = 10.0
"""Each tool answers in well under a second; a busy Mac gets slack under macOS's 30 s
collection limit."""
SOCKETFILTERFW = "/usr/libexec/ApplicationFirewall/socketfilterfw"
ALF_PLIST = "/Library/Preferences/com.apple.alf.plist"
LOGINWINDOW_PLIST = "/Library/Preferences/com.apple.loginwindow.plist"
INSTALL_HISTORY_PLIST = "/Library/Receipts/InstallHistory.plist"
SOFTWARE_UPDATE_PLIST = "/Library/Preferences/com.apple.SoftwareUpdate.plist"
# Where XProtect's bundle lives: macOS 15 updates it under /var/protected; 10.15 to 14 under
# /Library/Apple; earlier releases under /System. The newest version found is the one in use.
XPROTECT_BUNDLES = (
    "/private/var/protected/xprotect/XProtect.bundle",
    "/Library/Apple/System/Library/CoreServices/XProtect.bundle",
    "/System/Library/CoreServices/XProtect.bundle",
)


# --- collectors -----------------------------------------------------------------------------

def encryption() -> dict[str, Any]:
    code, out, why = _tool(["fdesetup", "status"])
    if why is not None or code != 0:
        return empty("encryption", f"fdesetup: {why or _exit(code, out)}")
    return parse_fdesetup(out, _root_device())


def firewall() -> dict[str, Any]:
    code, out, why = _tool([SOCKETFILTERFW, "--getglobalstate"])
    if why is None and code == 0:
        return parse_socketfilterfw(out)
    # Before macOS 15 the same state is in the application firewall's preferences.
    prefs, prefs_why = read_plist(ALF_PLIST)
    if prefs is not None:
        return parse_alf_plist(prefs)
    return {**empty("firewall", f"socketfilterfw: {why or _exit(code, out)}; {prefs_why}"),
            "product": "macos", "profiles": []}


def malware() -> dict[str, Any]:
    code, out, why = _tool(["spctl", "--status"])
    # spctl exits 1 when assessments are disabled: the answer is in its output either way.
    gatekeeper = parse_spctl(out) if why is None else None
    spctl_why = why or (None if gatekeeper is not None else f"spctl: {_exit(code, out)}")
    bundles = []
    for bundle in XPROTECT_BUNDLES:
        info, _ = read_plist(f"{bundle}/Contents/Info.plist")
        if info is not None:
            bundles.append((info, _mtime(f"{bundle}/Contents/Info.plist")))
    return parse_malware(gatekeeper, spctl_why, bundles, time.time())


def updates(cache_dir: Path | None) -> dict[str, Any]:
    return cached_updates(cache_dir, _updates_now)


def _updates_now() -> dict[str, Any]:
    history, history_why = read_plist(INSTALL_HISTORY_PLIST)
    prefs, prefs_why = read_plist(SOFTWARE_UPDATE_PLIST)
    return parse_updates(history, history_why, prefs, prefs_why)


def platform() -> dict[str, Any]:
    try:
        doc = run_profiler(["SPHardwareDataType", "SPiBridgeDataType"], TOOL_TIMEOUT_S)
    except FileNotFoundError:
        return {**empty("platform", "system_profiler not found"), "tpm_present": False}
    except (RuntimeError, ValueError) as exc:  # ValueError: output that does not parse
        return {**empty("platform", f"system_profiler: {exc}"), "tpm_present": False}
    return parse_platform(doc)


def accounts() -> dict[str, Any]:
    code, out, why = _tool(["dscl", ".", "-read", "/Groups/admin", "GroupMembership"])
    admins, admins_why = (None, f"dscl: {why}") if why is not None else parse_dscl(code, out)
    prefs, prefs_why = read_plist(LOGINWINDOW_PLIST)
    return parse_accounts(admins, admins_why, prefs, prefs_why)


# --- the OS boundary ------------------------------------------------------------------------

def _tool(args: list[str]) -> tuple[int, str, str | None]:
    """(exit status, stdout and stderr, None), or (-1, "", why it did not run). Unlike
    run_tool a non-zero exit is an answer: spctl says "disabled" with status 1."""
    try:
        done = subprocess.run(args, capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return -1, "", f"{args[0]} not found"
    except subprocess.TimeoutExpired:
        return -1, "", f"{args[0]} timed out after {TOOL_TIMEOUT_S:g} s"
    except OSError as exc:
        return -1, "", f"{args[0]}: {exc.strerror or exc}"
    text = (done.stdout + b"\n" + done.stderr).decode("utf-8", "replace").strip()
    return done.returncode, text, None


def _exit(code: int, out: str) -> str:
    last = out.strip().splitlines()[-1:] or [""]
    return f"exited {code}: {last[0][:200]}"


def read_plist(path: str) -> tuple[Any, str | None]:
    """A plist file (XML or binary) decoded, or (None, why not)."""
    try:
        with open(path, "rb") as f:
            return plistlib.load(f), None
    except FileNotFoundError:
        return None, f"{path} absent"
    except PermissionError:
        return None, f"{path}: permission denied"
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    except (plistlib.InvalidFileException, ValueError, TypeError, OverflowError):
        return None, f"{path}: not a plist"


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _root_device() -> str | None:
    """The device of the startup volume, from the mount table."""
    import psutil

    for part in psutil.disk_partitions(all=False):
        if part.mountpoint == "/":
            return part.device or None
    return None


# --- parsers (pure, tested on fixtures) -----------------------------------------------------

_PROGRESS = re.compile(r"(Encryption|Decryption) in progress:.*?Percent completed = "
                       r"([0-9]+(?:\.[0-9]+)?)")


def parse_fdesetup(text: str, device: str | None) -> dict[str, Any]:
    """`fdesetup status`: FileVault of the startup volume.

    "FileVault is On." / "FileVault is Off." (with ", but will be enabled after the next
    restart." when deferred), or "Encryption in progress: Percent completed = 42.5" (and
    "Decryption ..."). A conversion in progress is not encrypted yet (or no longer).
    """
    volume: dict[str, Any] = {"mount": "/", "device": device, "encrypted": None,
                              "method": "FileVault", "protection": None, "percent": None}
    reasons = [] if device else ["startup volume's device not in the mount table"]
    progress = _PROGRESS.search(text)
    if progress:
        done = float(progress.group(2))
        volume["encrypted"] = False
        volume["percent"] = min(100.0, done) if progress.group(1) == "Encryption" \
            else max(0.0, 100.0 - done)
    elif re.search(r"FileVault is On\b", text):
        volume.update(encrypted=True, percent=100.0)
    elif re.search(r"FileVault is Off\b", text):
        volume.update(encrypted=False, percent=0.0)
    else:
        reasons.append(f"fdesetup said: {(clean(text) or 'nothing')[:200]}")
    return {"volumes": [volume], "reason": join_reasons(reasons)}


def parse_socketfilterfw(text: str) -> dict[str, Any]:
    """`socketfilterfw --getglobalstate`: "Firewall is enabled. (State = 1)"; 2 is "block
    all incoming connections", on as well; 0 is off. Older releases print the sentence
    without the state."""
    state = re.search(r"State = (\d+)", text)
    enabled: bool | None
    if state:
        enabled = {0: False, 1: True, 2: True}.get(int(state.group(1)))
    elif re.search(r"\bis enabled\b|\bblocking all\b", text):
        enabled = True
    elif re.search(r"\bis disabled\b", text):
        enabled = False
    else:
        enabled = None
    reason = None if enabled is not None else \
        f"socketfilterfw said: {(clean(text) or 'nothing')[:200]}"
    return {"enabled": enabled, "product": "macos", "profiles": [], "reason": reason}


def parse_alf_plist(prefs: Any) -> dict[str, Any]:
    """com.apple.alf.plist's `globalstate`: 0 off, 1 on, 2 block all."""
    state = prefs.get("globalstate") if isinstance(prefs, dict) else None
    if isinstance(state, int) and not isinstance(state, bool) and state in (0, 1, 2):
        return {"enabled": state != 0, "product": "macos", "profiles": [], "reason": None}
    return {"enabled": None, "product": "macos", "profiles": [],
            "reason": f"{ALF_PLIST}: no globalstate"}


def parse_spctl(text: str) -> bool | None:
    """`spctl --status`: "assessments enabled" or "assessments disabled"."""
    if re.search(r"assessments enabled", text):
        return True
    if re.search(r"assessments disabled", text):
        return False
    return None


def parse_malware(gatekeeper: bool | None, gatekeeper_why: str | None,
                  bundles: list[tuple[Any, float | None]], now: float) -> dict[str, Any]:
    """XProtect, macOS's built-in scanner, and Gatekeeper.

    XProtect cannot be turned off short of disabling System Integrity Protection, and scans
    what is opened or run rather than every file written: `realtime` stays unknown. Its
    signatures' age is the age of the bundle's Info.plist, which each update rewrites.
    """
    reasons = [gatekeeper_why] if gatekeeper is None and gatekeeper_why else []
    best: tuple[int, str, float | None] | None = None
    for info, mtime in bundles:
        version = clean(info.get("CFBundleShortVersionString")) if isinstance(info, dict) \
            else None
        if version and version.isdigit() and (best is None or int(version) > best[0]):
            best = (int(version), version, mtime)
    reasons.append("XProtect scans what is opened and run; there is no real-time switch")
    if best is None:
        reasons.append("no XProtect bundle with a version")
        return {"product": None, "enabled": None, "realtime": None,
                "signature_age_days": None, "products": None, "gatekeeper": gatekeeper,
                "xprotect_version": None, "reason": join_reasons(reasons)}
    _, version, mtime = best
    age = round(max(0.0, (now - mtime) / 86400), 2) if mtime is not None else None
    if age is None:
        reasons.append("XProtect's Info.plist has no modification time")
    return {"product": "XProtect", "enabled": True, "realtime": None,
            "signature_age_days": age,
            "products": [{"name": "XProtect", "enabled": True, "up_to_date": None}],
            "gatekeeper": gatekeeper, "xprotect_version": version[:64],
            "reason": join_reasons(reasons)}


# Software Update's background data installs (XProtect and MRT definitions, Gatekeeper's
# lists, ...) come every few days: they are not the OS being updated.
_CONFIG_DATA = re.compile(r"ConfigData$|Compatibility Data$|^XProtect|^MRT|^Gatekeeper|"
                          r"^Bluetooth|^Rosetta|^Background Task|^Apple Silicon|Payloads$")
_UPDATERS = {"softwareupdated", "Software Update", "macOS Installer", "OS X Installer"}


def parse_updates(history: Any, history_why: str | None, prefs: Any,
                  prefs_why: str | None) -> dict[str, Any]:
    """The last OS update from /Library/Receipts/InstallHistory.plist (every install, each
    with its date in UTC and the process that ran it), and the updates pending as Software
    Update's last background check left them (no new check: that would use the network)."""
    reasons = []
    last = None
    if isinstance(history, list):
        dates = [item["date"] for item in history
                 if isinstance(item, dict) and isinstance(item.get("date"), datetime)
                 and item.get("processName") in _UPDATERS
                 and not _CONFIG_DATA.search(str(item.get("displayName") or ""))]
        if dates:
            newest = max(d if d.tzinfo else d.replace(tzinfo=timezone.utc) for d in dates)
            last = iso_utc(newest.timestamp())
        else:
            reasons.append("no OS update in the install history")
    else:
        reasons.append(history_why or "install history is not a list")
    pending = None
    if isinstance(prefs, dict):
        count = prefs.get("LastRecommendedUpdatesAvailable")
        listed = prefs.get("RecommendedUpdates")
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            pending = count
        elif isinstance(listed, list):
            pending = len(listed)
        else:
            reasons.append("Software Update has not recorded a check")
    else:
        reasons.append(prefs_why or "Software Update's preferences are not a dictionary")
    reasons.append("macOS keeps no pending-restart flag")
    return {"last_success": last, "pending": pending, "reboot_required": None,
            "reason": join_reasons(reasons)}


# ibridge_secure_boot: T2 Macs say Full/Medium/No Security, Apple silicon Full/Reduced/
# Permissive Security. Medium and Reduced still verify what boots (signed by Apple, older
# releases allowed); No and Permissive do not.
_SECURE_BOOT = {"Full Security": True, "Medium Security": True, "Reduced Security": True,
                "No Security": False, "Permissive Security": False}


def parse_platform(doc: dict[str, Any]) -> dict[str, Any]:
    """Boot policy from `system_profiler SPiBridgeDataType` (T2 and Apple silicon).

    Intel Macs boot Apple's EFI ("uefi" here); Apple silicon boots iBoot, which is neither.
    No Mac has a TPM: the T2 or Apple silicon's Secure Enclave does that work.
    """
    reasons = []
    hardware = _first(doc.get("SPHardwareDataType"))
    bridge = _first(doc.get("SPiBridgeDataType"))
    chip = str(hardware.get("chip_type") or "")
    firmware = None
    if chip.startswith("Apple "):
        reasons.append(f"{chip} boots with iBoot, neither UEFI nor BIOS")
    elif hardware:
        firmware = "uefi"
    else:
        reasons.append("system_profiler gave no hardware overview")
    secure_boot = None
    value = clean(bridge.get("ibridge_secure_boot"))
    if value is not None:
        secure_boot = _SECURE_BOOT.get(value)
        if secure_boot is None:
            reasons.append(f"unknown boot policy {value[:64]!r}")
    elif bridge:
        reasons.append("the boot controller gives no Secure Boot policy")
    else:
        reasons.append("no T2 or Apple silicon boot controller: no Secure Boot to read")
    return {"firmware": firmware, "secure_boot": secure_boot, "tpm_present": False,
            "tpm_version": None, "reason": join_reasons(reasons)}


def parse_dscl(code: int, text: str) -> tuple[list[str] | None, str | None]:
    """`dscl . -read /Groups/admin GroupMembership`: "GroupMembership: root alice", the
    names on continuation lines when they are long; "No such key" when it is empty."""
    if "No such key" in text:
        return [], None
    if code != 0:
        return None, f"dscl: {_exit(code, text)}"
    match = re.search(r"^GroupMembership:(.*(?:\n[ \t].*)*)", text, re.MULTILINE)
    if not match:
        return None, f"dscl said: {(clean(text) or 'nothing')[:200]}"
    return [n[:256] for n in dict.fromkeys(match.group(1).split())][:256], None


def parse_accounts(admins: list[str] | None, admins_why: str | None, prefs: Any,
                   prefs_why: str | None) -> dict[str, Any]:
    """The admin group's members, and whether loginwindow logs a user in by itself
    (`autoLoginUser` set in its preferences; the file missing means no one is)."""
    reasons = [admins_why] if admins is None and admins_why else []
    auto_login: bool | None
    if isinstance(prefs, dict):
        auto_login = bool(clean(prefs.get("autoLoginUser")))
    elif prefs_why is not None and prefs_why.endswith(" absent"):
        auto_login = False  # never written: no setting made, auto-login off
    else:
        auto_login = None
        reasons.append(prefs_why or "loginwindow preferences are not a dictionary")
    return {"admins": admins, "auto_login": auto_login, "reason": join_reasons(reasons)}


def _first(value: Any) -> dict[str, Any]:
    return value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}
