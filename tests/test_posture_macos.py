"""macOS posture collectors on the tools' output and the plists as macOS writes them
(tests/data/macos/posture), driven through a faked `subprocess.run` and plist paths pointed
at the fixtures, the OS boundary; parsing is the agent's own."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from estate.agent.collect import _common, _macos, _posture
from estate.agent.collect import _posture_macos as pm
from tests.conftest import DATA

POSTURE = DATA / "macos" / "posture"


def _text(name: str) -> bytes:
    """A tool's output: the fixture without its '# ' comment lines."""
    lines = (POSTURE / name).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("# ")).encode()


def _profiler(name: str) -> bytes:
    doc = json.loads((POSTURE / name).read_text(encoding="utf-8"))
    doc.pop("//")
    return json.dumps(doc).encode()


class FakeTools:
    """`subprocess.run` as one Mac answers: each tool (by its first argument) gives
    (exit status, stdout, stderr), is missing, or hangs. Every call is recorded."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess:
        self.calls.append(list(args))
        answer = self.answers.get(args[0], "missing")
        if answer == "missing":
            raise FileNotFoundError(2, "No such file or directory", args[0])
        if answer == "hangs":
            raise subprocess.TimeoutExpired(args, kw["timeout"])
        return subprocess.CompletedProcess(args, *answer)


@pytest.fixture
def mac(monkeypatch, tmp_path):
    """Install the fake tools; the plist paths point at missing files unless a test sets
    them."""
    monkeypatch.setattr(_macos, "_json_missing", threading.Event())
    for name in ("ALF_PLIST", "LOGINWINDOW_PLIST", "INSTALL_HISTORY_PLIST",
                 "SOFTWARE_UPDATE_PLIST"):
        monkeypatch.setattr(pm, name, str(tmp_path / "absent" / name))
    monkeypatch.setattr(pm, "XPROTECT_BUNDLES", ())
    monkeypatch.setattr(pm, "_root_device", lambda: "/dev/disk3s1s1")

    def use(answers: dict[str, Any] | FakeTools) -> FakeTools:
        fake = answers if isinstance(answers, FakeTools) else FakeTools(answers)
        monkeypatch.setattr(_common.subprocess, "run", fake)
        return fake
    return use


def _keys(section: str, value: dict[str, Any]) -> None:
    assert tuple(value) == _posture.SECTIONS[section]


# --- FileVault ----------------------------------------------------------------------------

@pytest.mark.parametrize(("fixture", "encrypted", "percent"), [
    ("fdesetup_on.txt", True, 100.0), ("fdesetup_off.txt", False, 0.0),
    ("fdesetup_deferred.txt", False, 0.0),  # on only after the next restart
    ("fdesetup_encrypting.txt", False, 42.5), ("fdesetup_decrypting.txt", False, 70.0),
])
def test_filevault(mac, fixture, encrypted, percent):
    mac({"fdesetup": (0, _text(fixture), b"")})
    result = pm.encryption()
    _keys("encryption", result)
    assert result == {"volumes": [{"mount": "/", "device": "/dev/disk3s1s1",
                                   "encrypted": encrypted, "method": "FileVault",
                                   "protection": None, "percent": percent}], "reason": None}


def test_filevault_unknown_answers_and_a_missing_fdesetup(mac):
    mac({"fdesetup": (0, b"Something new.\n", b"")})
    result = pm.encryption()
    assert result["volumes"][0]["encrypted"] is None
    assert result["reason"] == "fdesetup said: Something new."
    mac({})
    assert pm.encryption() == {"volumes": None, "reason": "fdesetup: fdesetup not found"}
    mac({"fdesetup": (1, b"", b"Error: Unable to read the volume.\n")})
    assert pm.encryption() == {"volumes": None, "reason":
                               "fdesetup: exited 1: Error: Unable to read the volume."}


# --- firewall -----------------------------------------------------------------------------

@pytest.mark.parametrize(("fixture", "enabled"), [
    ("socketfilterfw_enabled.txt", True), ("socketfilterfw_disabled.txt", False),
    ("socketfilterfw_block_all.txt", True),
])
def test_application_firewall(mac, fixture, enabled):
    mac({pm.SOCKETFILTERFW: (0, _text(fixture), b"")})
    result = pm.firewall()
    _keys("firewall", result)
    assert result == {"enabled": enabled, "product": "macos", "profiles": [], "reason": None}


@pytest.mark.parametrize(("text", "enabled"), [
    (b"Firewall is enabled.\n", True), (b"Firewall is disabled.\n", False),
    (b"Firewall is enabled. (State = 7)\n", None), (b"", None),
])
def test_firewall_sentence_without_a_state(text, enabled):
    assert pm.parse_socketfilterfw(text.decode())["enabled"] is enabled


def test_firewall_from_the_alf_plist_when_the_tool_is_missing(mac, monkeypatch):
    mac({})
    assert pm.firewall()["reason"].startswith("socketfilterfw: ")
    assert pm.firewall()["enabled"] is None
    monkeypatch.setattr(pm, "ALF_PLIST", str(POSTURE / "alf.plist"))
    assert pm.firewall() == {"enabled": True, "product": "macos", "profiles": [],
                             "reason": None}
    assert pm.parse_alf_plist({"globalstate": 0})["enabled"] is False
    assert pm.parse_alf_plist({"globalstate": True})["enabled"] is None
    assert pm.parse_alf_plist([1])["enabled"] is None


# --- Gatekeeper and XProtect --------------------------------------------------------------

NOW = datetime(2024, 4, 3, 18, 0, tzinfo=timezone.utc).timestamp()


def _bundle(root: Path, fixture: str, written: float) -> str:
    contents = root / "Contents"
    contents.mkdir(parents=True)
    shutil.copy(POSTURE / fixture, contents / "Info.plist")
    os.utime(contents / "Info.plist", (written, written))
    return str(root)


def test_xprotect_newest_bundle_and_gatekeeper(mac, monkeypatch, tmp_path):
    mac({"spctl": (0, _text("spctl_enabled.txt"), b"")})
    monkeypatch.setattr(pm.time, "time", lambda: NOW)
    monkeypatch.setattr(pm, "XPROTECT_BUNDLES", (
        str(tmp_path / "missing"),
        # A copy macOS no longer updates comes first: the newest version is the one in use.
        _bundle(tmp_path / "old", "XProtect_Info_old.plist", NOW - 40 * 86400),
        _bundle(tmp_path / "new", "XProtect_Info.plist", NOW - 1.5 * 86400)))
    result = pm.malware()
    _keys("malware", result)
    assert result == {
        "product": "XProtect", "enabled": True, "realtime": None, "signature_age_days": 1.5,
        "products": [{"name": "XProtect", "enabled": True, "up_to_date": None}],
        "gatekeeper": True, "xprotect_version": "2192",
        "reason": "XProtect scans what is opened and run; there is no real-time switch"}


def test_gatekeeper_disabled_exits_1_and_is_an_answer(mac):
    mac({"spctl": (1, _text("spctl_disabled.txt"), b"")})
    result = pm.malware()
    assert result["gatekeeper"] is False
    assert (result["product"], result["xprotect_version"]) == (None, None)
    assert "no XProtect bundle with a version" in result["reason"]


def test_spctl_missing_or_silent(mac):
    mac({})
    assert pm.malware()["gatekeeper"] is None
    assert pm.malware()["reason"].startswith("spctl not found; ")
    mac({"spctl": (2, b"", b"spctl: unrecognized option\n")})
    result = pm.malware()
    assert result["gatekeeper"] is None
    assert result["reason"].startswith("spctl: exited 2: spctl: unrecognized option")


# --- updates ------------------------------------------------------------------------------

def test_last_os_update_and_pending_from_the_last_background_check(mac, monkeypatch, tmp_path):
    mac({})
    monkeypatch.setattr(pm, "INSTALL_HISTORY_PLIST", str(POSTURE / "InstallHistory.plist"))
    monkeypatch.setattr(pm, "SOFTWARE_UPDATE_PLIST", str(POSTURE / "SoftwareUpdate.plist"))
    result = pm.updates(tmp_path)
    _keys("updates", result)
    # XProtect and Gatekeeper data, an App Store app and a hand-installed package came later.
    assert (result["last_success"], result["pending"], result["reboot_required"]) == (
        "2024-03-28T18:40:55Z", 2, None)
    assert result["reason"] == "macOS keeps no pending-restart flag"
    assert result["checked_at"] is not None


def test_binary_plists_are_read_as_macos_stores_them(tmp_path):
    history = plistlib.loads((POSTURE / "InstallHistory.plist").read_bytes())
    (tmp_path / "h.plist").write_bytes(plistlib.dumps(history, fmt=plistlib.FMT_BINARY))
    doc, why = pm.read_plist(str(tmp_path / "h.plist"))
    assert why is None and doc == history
    (tmp_path / "bad.plist").write_bytes(b"bplist00\x00garbage")
    assert pm.read_plist(str(tmp_path / "bad.plist")) == (None, f"{tmp_path}/bad.plist: "
                                                                "not a plist")


def test_updates_never_checked_and_no_history():
    prefs = plistlib.loads((POSTURE / "SoftwareUpdate_never_checked.plist").read_bytes())
    result = pm.parse_updates(None, "/Library/Receipts/InstallHistory.plist absent", prefs,
                              None)
    assert (result["last_success"], result["pending"]) == (None, None)
    assert result["reason"] == ("/Library/Receipts/InstallHistory.plist absent; Software "
                                "Update has not recorded a check; macOS keeps no "
                                "pending-restart flag")
    only_apps = [{"date": datetime(2024, 1, 1), "displayName": "Pages",
                  "processName": "appstoreagent"}]
    assert pm.parse_updates(only_apps, None, {"RecommendedUpdates": []}, None)["pending"] == 0
    assert pm.parse_updates(only_apps, None, {}, None)["reason"].startswith(
        "no OS update in the install history")


# --- platform -----------------------------------------------------------------------------

@pytest.mark.parametrize(("fixture", "expected"), [
    ("profiler_bridge_t2.json", {"firmware": "uefi", "secure_boot": True, "tpm_present": False,
                                 "tpm_version": None, "reason": None}),
    ("profiler_bridge_m1_reduced.json", {
        "firmware": None, "secure_boot": True, "tpm_present": False, "tpm_version": None,
        "reason": "Apple M1 boots with iBoot, neither UEFI nor BIOS"}),
    ("profiler_bridge_m2_permissive.json", {
        "firmware": None, "secure_boot": False, "tpm_present": False, "tpm_version": None,
        "reason": "Apple M2 boots with iBoot, neither UEFI nor BIOS"}),
    ("profiler_bridge_none.json", {
        "firmware": "uefi", "secure_boot": None, "tpm_present": False, "tpm_version": None,
        "reason": "no T2 or Apple silicon boot controller: no Secure Boot to read"}),
])
def test_boot_policy(mac, fixture, expected):
    fake = mac({"system_profiler": (0, _profiler(fixture), b"")})
    result = pm.platform()
    _keys("platform", result)
    assert result == expected
    assert fake.calls == [["system_profiler", "-json", "SPHardwareDataType",
                           "SPiBridgeDataType"]]


def test_boot_policy_before_macos_10_15_is_read_as_xml(mac):
    """system_profiler -json prints its usage and exits 1 before 10.15; -xml has it."""
    doc = json.loads(_profiler("profiler_bridge_t2.json"))
    xml = plistlib.dumps([{"_dataType": k, "_items": v} for k, v in doc.items()])

    class OldProfiler(FakeTools):
        def __call__(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess:
            self.calls.append(list(args))
            if args[1] == "-json":
                return subprocess.CompletedProcess(args, 1, b"Usage: system_profiler", b"")
            return subprocess.CompletedProcess(args, 0, xml, b"")

    fake = mac(OldProfiler({}))
    assert pm.platform()["secure_boot"] is True
    assert [c[1] for c in fake.calls] == ["-json", "-xml"]


@pytest.mark.parametrize(("value", "secure"), [
    ("Full Security", True), ("Medium Security", True), ("No Security", False),
    ("Sécurité maximale", None),  # a localised value: unknown, never matched loosely
])
def test_boot_policy_values(value, secure):
    doc = {"SPHardwareDataType": [{"cpu_type": "Intel"}],
           "SPiBridgeDataType": [{"ibridge_secure_boot": value}]}
    assert pm.parse_platform(doc)["secure_boot"] is secure


def test_system_profiler_missing_or_hanging(mac):
    mac({})
    assert pm.platform() == {"firmware": None, "secure_boot": None, "tpm_present": False,
                             "tpm_version": None, "reason": "system_profiler not found"}
    mac({"system_profiler": "hangs"})
    assert pm.platform()["reason"] == "system_profiler: system_profiler timed out after 10 s"


# --- accounts -----------------------------------------------------------------------------

@pytest.mark.parametrize(("fixture", "admins"), [
    ("dscl_admin.txt", ["root", "localadmin", "support"]),
    ("dscl_admin_wrapped.txt", ["root", "admin.école", "jdupont_adm"]),
    ("dscl_admin_empty.txt", []),
])
def test_admin_group_members(mac, monkeypatch, fixture, admins):
    fake = mac({"dscl": (0, _text(fixture), b"")})
    monkeypatch.setattr(pm, "LOGINWINDOW_PLIST", str(POSTURE / "loginwindow.plist"))
    result = pm.accounts()
    _keys("accounts", result)
    assert result == {"admins": admins, "auto_login": False, "reason": None}
    assert fake.calls == [["dscl", ".", "-read", "/Groups/admin", "GroupMembership"]]


def test_auto_login_user_and_a_missing_loginwindow_plist(mac, monkeypatch):
    mac({"dscl": (0, _text("dscl_admin.txt"), b"")})
    assert pm.accounts()["auto_login"] is False  # never written: no auto-login
    monkeypatch.setattr(pm, "LOGINWINDOW_PLIST", str(POSTURE / "loginwindow_autologin.plist"))
    assert pm.accounts()["auto_login"] is True


def test_unreadable_admin_group_and_loginwindow_are_unknown(mac, monkeypatch, tmp_path):
    mac({"dscl": (56, b"", b"DS Error: -14136 (eDSRecordNotFound)\n")})
    (tmp_path / "lw.plist").write_bytes(b"not a plist")
    monkeypatch.setattr(pm, "LOGINWINDOW_PLIST", str(tmp_path / "lw.plist"))
    assert pm.accounts() == {"admins": None, "auto_login": None, "reason":
                             "dscl: exited 56: DS Error: -14136 (eDSRecordNotFound); "
                             f"{tmp_path}/lw.plist: not a plist"}
    mac({"dscl": "hangs"})
    assert pm.accounts()["reason"].startswith("dscl: dscl timed out after 10 s")


def test_the_module_mirrors_its_siblings():
    """The same names, in the same order, with the same parameters as the Linux module the
    collector switch (agent/collect/__init__.py) calls."""
    import inspect

    from estate.agent.collect import _posture_linux

    assert pm.__all__ == _posture_linux.__all__
    for name in pm.__all__:
        assert list(inspect.signature(getattr(pm, name)).parameters) == \
            list(inspect.signature(getattr(_posture_linux, name)).parameters), name
