"""Windows posture collectors on PowerShell answers shaped as the cmdlets and CIM classes write
them (tests/data/windows/posture), driven through a faked `subprocess.run` and `winreg`, the
OS boundary: the scripts' JSON goes through the same parsing as on Windows."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

import pytest

from estate.agent.collect import _common, _posture
from estate.agent.collect import _posture_windows as pw
from tests.conftest import DATA
from tests.test_windows import FakeWinreg

POSTURE = DATA / "windows" / "posture"
HKLM = "HKEY_LOCAL_MACHINE\\"
SCRIPTS = {pw.ENCRYPTION_SCRIPT: "encryption", pw.FIREWALL_SCRIPT: "firewall",
           pw.MALWARE_SCRIPT: "malware", pw.UPDATES_SCRIPT: "updates",
           pw.PLATFORM_SCRIPT: "platform", pw.ACCOUNTS_SCRIPT: "accounts"}


def _doc(name: str) -> dict[str, Any]:
    return pw.parse_powershell_json((POSTURE / name).read_text(encoding="utf-8"))


class FakePowerShell:
    """`subprocess.run` as Windows answers powershell.exe: each section's script gets the
    fixture given for it (bytes, so a byte order mark stays), an exit status, or a hang."""

    def __init__(self, answers: dict[str, str | tuple[int, bytes, bytes]],
                 hangs: bool = False, missing: bool = False) -> None:
        self.answers, self.hangs, self.missing = answers, hangs, missing
        self.calls: list[str] = []

    def __call__(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess:
        assert args[:4] == ["powershell.exe", "-NoProfile", "-NonInteractive", "-Command"]
        section = SCRIPTS[args[4]]
        self.calls.append(section)
        if self.missing:
            raise FileNotFoundError(2, "No such file or directory", "powershell.exe")
        if self.hangs:
            raise subprocess.TimeoutExpired(args, kw["timeout"])
        answer = self.answers[section]
        if isinstance(answer, tuple):
            return subprocess.CompletedProcess(args, *answer)
        return subprocess.CompletedProcess(args, 0, (POSTURE / answer).read_bytes(), b"")


@pytest.fixture
def windows(monkeypatch):
    """Install a fake PowerShell and registry; returns a function taking both."""

    def use(answers: dict[str, Any], registry: dict[str, dict[str, Any]] | None = None,
            **kw: Any) -> FakePowerShell:
        fake = FakePowerShell(answers, **kw)
        monkeypatch.setattr(_common.subprocess, "run", fake)
        monkeypatch.setitem(sys.modules, "winreg", FakeWinreg(registry or {}))
        return fake
    return use


def _keys(section: str, value: dict[str, Any]) -> None:
    """Every sub-section comes whole, with exactly its keys."""
    assert tuple(value) == _posture.SECTIONS[section]


# --- encryption ---------------------------------------------------------------------------

def test_bitlocker_volumes_fixed_only_with_method_protection_and_progress(windows):
    windows({"encryption": "encryption_laptop.json"})
    result = pw.encryption()
    _keys("encryption", result)
    assert result == {"volumes": [
        {"mount": "C:", "device": "\\\\?\\Volume{3f2a1b4c-0000-0000-0000-100000000000}\\",
         "encrypted": True, "method": "XtsAes128", "protection": "on", "percent": 100.0},
        # Being encrypted: part of it is still in the clear.
        {"mount": "D:", "device": "\\\\?\\Volume{3f2a1b4c-0000-0000-0000-200000000000}\\",
         "encrypted": False, "method": "XtsAes256", "protection": "off", "percent": 47.0},
        # No letter: named by its volume id.
        {"mount": "\\\\?\\Volume{3f2a1b4c-0000-0000-0000-400000000000}\\",
         "device": "\\\\?\\Volume{3f2a1b4c-0000-0000-0000-400000000000}\\",
         "encrypted": False, "method": None, "protection": "off", "percent": 0.0},
    ], "reason": None}


def test_windows_7_removable_drives_by_drive_type_and_a_locked_volume_is_unknown(windows):
    windows({"encryption": "encryption_win7_locked.json"})
    result = pw.encryption()
    assert [(v["mount"], v["encrypted"], v["method"], v["protection"], v["percent"])
            for v in result["volumes"]] == [
        ("C:", True, "Aes128Diffuser", "on", 100.0),
        ("D:", None, "Aes128Diffuser", None, None),
    ]
    assert result["reason"] == ("D:: conversion status unreadable (locked?); "
                                "D:: protection status unknown (locked?)")


@pytest.mark.parametrize(("fixture", "reason"), [
    ("encryption_denied.json", "Win32_EncryptableVolume: access denied (0x80041003)"),
    ("encryption_home.json", "Win32_EncryptableVolume: WMI namespace absent (0x8004100E)"),
])
def test_bitlocker_denied_or_absent_is_unknown_not_unencrypted(windows, fixture, reason):
    windows({"encryption": fixture})
    assert pw.encryption() == {"volumes": None, "reason": reason}


# --- firewall -----------------------------------------------------------------------------

def test_firewall_off_when_one_profile_is_off(windows):
    windows({"firewall": "firewall_public_off.json"})
    result = pw.firewall()
    _keys("firewall", result)
    assert result == {"enabled": False, "product": "windows", "profiles": [
        {"name": "Domain", "enabled": True}, {"name": "Private", "enabled": True},
        {"name": "Public", "enabled": False}], "reason": None}


def test_firewall_on_when_every_profile_is_on_and_the_service_runs(windows):
    windows({"firewall": "firewall_all_on.json"})
    assert pw.firewall()["enabled"] is True


def test_firewall_with_its_service_stopped_is_unknown(windows):
    windows({"firewall": "firewall_service_stopped.json"})
    result = pw.firewall()
    assert (result["enabled"], result["reason"]) == (
        None, "the firewall service (mpssvc) is Stopped")


def test_firewall_cmdlet_missing_on_windows_7(windows):
    windows({"firewall": "firewall_win7.json"})
    assert pw.firewall() == {
        "enabled": None, "product": "windows", "profiles": None,
        "reason": "Get-NetFirewallProfile: cmdlet not available (0x80131501)"}


@pytest.mark.parametrize(("enabled", "state"), [
    ("True", True), ("False", False), ("NotConfigured", None), (1, True), (0, False),
    (2, None), (None, None), (True, True), (False, False),
])
def test_gpo_boolean_by_name_or_number(enabled, state):
    doc = {"Profiles": [{"Name": "Public", "Enabled": enabled}], "Service": "Running"}
    assert pw.parse_firewall(doc)["profiles"] == [{"name": "Public", "enabled": state}]


# --- malware ------------------------------------------------------------------------------

NOW = datetime(2024, 4, 3, 18, 0, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(("state", "decoded"), [
    (397568, (True, True)),    # 0x061100 Defender on, up to date
    (397584, (True, False)),   # 0x061110 on, out of date
    (393472, (False, True)),   # 0x060100 Defender off
    (266240, (True, True)),    # 0x041000 third party on
    (262160, (False, False)),  # 0x040010 off, out of date
    (270336, (False, True)),   # 0x042000 snoozed: not on
    (274432, (False, True)),   # 0x043000 expired: not on
    (397312 | 0x40, (True, None)),  # definitions byte not one of the known values
    (0x065100, (None, True)),  # scanner nibble not one of the known values
    (-1, (None, None)), (1 << 24, (None, None)), ("397568", (None, None)),
    (True, (None, None)), (None, (None, None)),
])
def test_security_center_product_state(state, decoded):
    assert pw.product_state(state) == decoded


def test_defender_in_normal_mode_is_the_active_product(windows, monkeypatch):
    windows({"malware": "malware_defender.json"})
    monkeypatch.setattr(pw.time, "time", lambda: NOW)
    result = pw.malware()
    _keys("malware", result)
    assert result == {
        "product": "Microsoft Defender Antivirus", "enabled": True, "realtime": True,
        "signature_age_days": 1.5,  # 2024-04-02 06:00 to 2024-04-03 18:00
        "products": [{"name": "Windows Defender", "enabled": True, "up_to_date": True}],
        "gatekeeper": None, "xprotect_version": None, "reason": None}


def test_a_third_party_product_takes_over_from_passive_defender():
    result = pw.parse_malware(_doc("malware_third_party.json"), NOW)
    assert result["product"] == "Sophos Anti-Virus"
    assert (result["enabled"], result["realtime"], result["signature_age_days"]) == (
        True, True, None)
    assert result["products"] == [
        {"name": "Windows Defender", "enabled": False, "up_to_date": True},
        {"name": "Sophos Anti-Virus", "enabled": True, "up_to_date": True},
        {"name": "Norton Security Trial", "enabled": False, "up_to_date": False},
        {"name": "Odd Product", "enabled": None, "up_to_date": None},
    ]
    assert result["reason"] == "SecurityCenter2 gives no signature age for Sophos Anti-Virus"


def test_a_server_has_no_security_center_and_defender_is_read_alone():
    result = pw.parse_malware(_doc("malware_server.json"), NOW)
    assert (result["product"], result["enabled"], result["realtime"]) == (
        "Microsoft Defender Antivirus", True, True)
    assert result["signature_age_days"] == 4.42  # 2024-03-30 08:00Z to 2024-04-03 18:00Z
    assert result["products"] == [{"name": "Microsoft Defender Antivirus", "enabled": True,
                                   "up_to_date": None}]
    assert result["reason"] == "SecurityCenter2: a server edition has none"


def test_a_server_without_defender_is_unknown_never_none():
    """A third-party product on a server registers nowhere the agent can read."""
    result = pw.parse_malware(_doc("malware_server_no_defender.json"), NOW)
    _keys("malware", result)
    assert (result["product"], result["enabled"], result["products"]) == (None, None, None)
    assert result["reason"] == (
        "Get-MpComputerStatus: cmdlet not available (0x80131501); SecurityCenter2: a server "
        "edition has none; no product found on and third-party products cannot be listed")


def test_a_client_whose_security_center_lists_nothing_has_none():
    result = pw.parse_malware(_doc("malware_client_none.json"), NOW)
    assert (result["product"], result["enabled"], result["realtime"], result["products"]) == (
        "none", False, False, [])


def test_defender_signature_age_from_its_day_count_when_no_date():
    doc = {"Defender": {"AntivirusEnabled": True, "AntivirusSignatureAge": 6}}
    assert pw.parse_malware(doc, NOW)["signature_age_days"] == 6.0
    never = {"Defender": {"AntivirusEnabled": True, "AntivirusSignatureAge": 65535}}
    result = pw.parse_malware(never, NOW)
    assert result["signature_age_days"] is None
    assert "Defender gives no signature date" in result["reason"]


# --- updates ------------------------------------------------------------------------------

def test_last_update_is_the_newest_hotfix_not_the_latest_definitions(windows, tmp_path):
    windows({"updates": "updates_win11.json"},
            {HKLM + pw.REBOOT_KEYS[1]: {}})  # Component Based Servicing waits for a reboot
    result = pw.updates(tmp_path)
    _keys("updates", result)
    assert (result["last_success"], result["pending"], result["reboot_required"]) == (
        "2024-03-12T00:00:00Z", None, True)
    assert result["reason"] == ("pending updates are counted only by a Windows Update search "
                                "(slow, may use the network)")
    assert result["checked_at"] is not None
    assert (tmp_path / _posture.CACHE_FILE).exists()


def test_without_hotfix_dates_the_registry_last_success_time_is_read(windows, tmp_path):
    windows({"updates": "updates_no_hotfix_dates.json"},
            {HKLM + pw.WINDOWS_UPDATE_KEY + "\\Results\\Install":
             {"LastSuccessTime": "2024-03-13 10:22:31"}})
    result = pw.updates(tmp_path)
    assert (result["last_success"], result["reboot_required"]) == ("2024-03-13T10:22:31Z", False)


def test_no_update_date_anywhere_says_why():
    result = pw.parse_updates(_doc("updates_no_hotfix_dates.json"), (pw.ABSENT, None),
                              [False, None])
    assert (result["last_success"], result["reboot_required"]) == (None, None)
    assert result["reason"].startswith(
        "AutoUpdate: COM object unavailable (0x80040154); no dated hotfix or Windows Update "
        "success found; pending updates")
    assert result["reason"].endswith("reboot-pending registry keys unreadable")


@pytest.mark.parametrize(("raw", "utc"), [
    ("2024-03-13 10:22:31", "2024-03-13T10:22:31Z"), ("1601-01-01 00:00:00", None),
    ("13/03/2024 10:22", None), (pw.ABSENT, None), (None, None), (20240313, None),
])
def test_registry_last_success_time(raw, utc):
    doc: dict[str, Any] = {}
    assert pw.parse_updates(doc, (raw, None), [False, False])["last_success"] == utc


# --- platform -----------------------------------------------------------------------------

def test_uefi_secure_boot_and_tpm_2(windows):
    windows({"platform": "platform_uefi.json"})
    result = pw.platform()
    _keys("platform", result)
    assert result == {"firmware": "uefi", "secure_boot": True, "tpm_present": True,
                      "tpm_version": "2.0", "reason": None}


def test_legacy_bios_has_no_secure_boot_to_tell_and_no_tpm(windows):
    windows({"platform": "platform_bios.json"})
    assert pw.platform() == {
        "firmware": "bios", "secure_boot": None, "tpm_present": False, "tpm_version": None,
        "reason": "legacy BIOS firmware: Secure Boot does not apply; no TPM"}


def test_without_an_administrator_the_registry_tells_secure_boot(windows):
    windows({"platform": "platform_denied.json"},
            {HKLM + pw.SECURE_BOOT_KEY: {"UEFISecureBootEnabled": 1}})
    result = pw.platform()
    assert (result["firmware"], result["secure_boot"], result["tpm_present"]) == (
        "uefi", True, None)
    assert result["reason"] == "TPM: TpmWmiException: Access denied (0x80131500)"


def test_firmware_from_the_registry_when_the_environment_has_none():
    doc = _doc("platform_denied.json")
    del doc["FirmwareType"]
    result = pw.parse_platform(doc, (2, None), (0, None))
    assert (result["firmware"], result["secure_boot"]) == ("uefi", False)
    result = pw.parse_platform({}, (None, "access denied"), (None, "access denied"))
    assert (result["firmware"], result["secure_boot"]) == (None, None)
    assert result["reason"].startswith("firmware type unknown")


# --- accounts -----------------------------------------------------------------------------

def test_french_administrateurs_found_by_sid_and_auto_logon(windows):
    windows({"accounts": "accounts_fr.json"},
            {HKLM + pw.WINLOGON_KEY: {"AutoAdminLogon": "1"}})
    result = pw.accounts()
    _keys("accounts", result)
    assert result == {"admins": [
        "PC-ECOLE-07\\Administrateur", "PC-ECOLE-07\\support", "ACADEMIE\\Admins du domaine",
        "S-1-5-21-1004336348-1177238915-682003330-1104"], "auto_login": True, "reason": None}
    assert "S-1-5-32-544" in pw.ACCOUNTS_SCRIPT and "Administrators" not in pw.ACCOUNTS_SCRIPT


@pytest.mark.parametrize(("registry", "auto_login"), [
    ({}, False),  # no Winlogon value: Windows' default, no auto-logon
    ({"AutoAdminLogon": "0"}, False), ({"AutoAdminLogon": " 1 "}, True),
    ({"AutoAdminLogon": 1}, True),  # a DWORD, as some tools write it
    ({"DefaultUserName": "kiosk"}, False),
])
def test_one_bare_member_and_auto_logon_values(windows, registry, auto_login):
    windows({"accounts": "accounts_single.json"}, {HKLM + pw.WINLOGON_KEY: registry})
    result = pw.accounts()
    assert result == {"admins": ["KIOSK-01\\Administrator"], "auto_login": auto_login,
                      "reason": None}


def test_unreadable_members_and_winlogon_are_unknown():
    doc = {"MembersError": {"Error": "COMException", "HResult": "0x80070035",
                            "Message": "Le chemin réseau n'a pas été trouvé."}}
    assert pw.parse_accounts(doc, (None, "access denied")) == {
        "admins": None, "auto_login": None,
        "reason": "Administrators (S-1-5-32-544): COM object unavailable (0x80070035); "
                  "Winlogon AutoAdminLogon: access denied"}


@pytest.mark.parametrize(("path", "name"), [
    ("WinNT://WORKGROUP/PC01/Jo", "PC01\\Jo"), ("WinNT://CONTOSO/Domain Admins",
                                                "CONTOSO\\Domain Admins"),
    ("WinNT://S-1-12-1-1234-5678", "S-1-12-1-1234-5678"), ("WinNT://", None), (None, None),
])
def test_member_names(path, name):
    assert pw.member_name(path) == name


# --- PowerShell itself fails --------------------------------------------------------------

SECTIONS = (pw.encryption, pw.firewall, pw.malware, pw.platform, pw.accounts)


@pytest.mark.parametrize(("fake", "reason"), [
    ({"hangs": True}, "powershell.exe timed out after 20 s"),
    ({"missing": True}, "powershell.exe not found"),
    ({"answers": dict.fromkeys(SCRIPTS.values(), (1, b"", b"Program 'x' failed\r\n"))},
     "powershell.exe exited 1: Program 'x' failed"),
    ({"answers": dict.fromkeys(SCRIPTS.values(), (0, b"\xef\xbb\xbfWARNING: x", b""))},
     "PowerShell wrote no JSON"),
    ({"answers": dict.fromkeys(SCRIPTS.values(), (0, b"[1]", b""))},
     "PowerShell wrote no JSON object"),
])
def test_every_section_whole_and_unknown_when_powershell_fails(windows, fake, reason):
    windows(fake.pop("answers", {}), **fake)
    for section in SECTIONS:
        result = section()
        _keys(section.__name__, result)
        assert reason in result["reason"], (section.__name__, result["reason"])
        assert not any(v for k, v in result.items() if k not in ("reason", "product")), result


def test_the_module_mirrors_its_siblings():
    """The same names, in the same order, with the same parameters as the Linux module the
    collector switch (agent/collect/__init__.py) calls."""
    import inspect

    from estate.agent.collect import _posture_linux

    assert pw.__all__ == _posture_linux.__all__
    for name in pw.__all__:
        assert list(inspect.signature(getattr(pw, name)).parameters) == \
            list(inspect.signature(getattr(_posture_linux, name)).parameters), name
