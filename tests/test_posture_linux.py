"""Linux security posture: the collectors cross-checked against the OS's own tools on this
machine, their parsers fed the tools' output shapes, and the daily updates cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from estate.agent.collect import _posture
from estate.agent.collect import _posture_linux as linux
from estate.agent.collect._posture import SECTIONS
from estate.inventory.fields import BY_PATH
from tests.conftest import DATA

FIXTURES = DATA / "linux" / "posture"
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _run(*args: str, check: bool = True) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=120).stdout


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def _text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


# --- the whole section, live ----------------------------------------------------------------

@on_linux
@pytest.mark.linux
def test_every_null_has_a_reason(live_report):
    """Every Linux field of every sub-section is a value, or null with the sub-section's
    reason; fields of other OSes (BitLocker protection, Gatekeeper) are null here."""
    security = live_report["security"]
    assert set(security) == set(SECTIONS)
    for name, keys in SECTIONS.items():
        section = security[name]
        assert tuple(section) == keys, name
        nulls = []
        for key, value in section.items():
            field = BY_PATH[f"security.{name}.{key}"]
            if "linux" not in field.platforms:
                assert value is None, f"{name}.{key} is not a Linux fact"
            elif value is None and key != "reason":
                nulls.append(key)
            if isinstance(value, list) and value and isinstance(value[0], dict):
                for item in value:
                    for k, v in item.items():
                        if v is None and "linux" in BY_PATH[f"{field.path}[].{k}"].platforms:
                            nulls.append(f"{key}[].{k}")
        # A volume that is not encrypted has no method: that null is the answer itself.
        nulls = [n for n in nulls if n != "volumes[].method"]
        if nulls:
            assert section["reason"], f"{name}: {nulls} are null without a reason"
    assert not [e for e in live_report["errors"] if e["collector"].startswith("security.")]


# --- encryption against lsblk and /sys/block/dm-* ----------------------------------------

@on_linux
@pytest.mark.linux
@pytest.mark.skipif(shutil.which("lsblk") is None, reason="lsblk not installed")
def test_encryption_against_lsblk():
    """Every volume lsblk shows mounted from a fixed disk is listed, and it is encrypted
    exactly when lsblk puts a `crypt` device under it."""
    volumes = {v["mount"]: v for v in linux.encryption()["volumes"]}
    tree = json.loads(_run("lsblk", "--json", "--inverse", "-o", "NAME,KNAME,TYPE,MOUNTPOINT"))
    mounts = {mount: fstype for _, mount, fstype in
              linux.parse_mounts(_text("/proc/self/mounts"))}

    def walk(device, mounted_at=None):
        mount = device.get("mountpoint") or mounted_at
        crypt = device["type"] == "crypt" or any(walk(c, mount) for c in
                                                 device.get("children", []))
        return crypt

    checked = 0
    for device in tree["blockdevices"]:
        mount = device.get("mountpoint")
        if (not mount or mount not in mounts or mounts[mount] not in linux._BLOCK_FSTYPES
                or device["kname"].startswith(("loop", "zram"))):
            continue
        if mount not in volumes:
            # lsblk names one device per mount; a bind mount of it is listed once, by us too.
            continue
        assert volumes[mount]["encrypted"] is walk(device), mount
        checked += 1
    assert checked or not volumes, "lsblk shows none of the volumes listed"
    assert "/" in volumes or mounts.get("/") not in linux._BLOCK_FSTYPES


@on_linux
@pytest.mark.linux
def test_encryption_against_dm_uuids():
    """A volume is encrypted exactly when a dm device with a CRYPT- uuid lies under it."""
    crypt = set()
    for name in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{name}/dm/uuid") as f:
                if f.read().startswith("CRYPT-"):
                    crypt.add(name)
        except OSError:
            pass
    for volume in linux.encryption()["volumes"]:
        if volume["encrypted"] is None:
            continue
        kname = linux.block_name(volume["device"], volume["mount"])
        under = _lower_devices(kname)
        assert volume["encrypted"] is bool(under & crypt), volume


def _lower_devices(kname: str) -> set[str]:
    seen, todo = set(), [kname]
    while todo:
        name = todo.pop()
        seen.add(name)
        try:
            todo += [n for n in os.listdir(f"/sys/class/block/{name}/slaves") if n not in seen]
        except OSError:
            pass
    return seen


def _fake_block(root, name, uuid=None, slaves=()):
    d = root / name
    (d / "slaves").mkdir(parents=True)
    if uuid:
        (d / "dm").mkdir()
        (d / "dm" / "uuid").write_text(uuid + "\n")
    for s in slaves:
        (d / "slaves" / s).mkdir()


@pytest.mark.parametrize(
    ("uuid", "method"),
    [("CRYPT-LUKS2-2f2a6b3a9c1e4b1d8f0e1a2b3c4d5e6f-luks-2f2a", "luks2"),
     ("CRYPT-LUKS1-0123456789abcdef0123456789abcdef-sda3_crypt", "luks1"),
     ("CRYPT-PLAIN-swap", "plain"), ("CRYPT-BITLK-0000-usb", "bitlk")],
)
def test_crypt_method_under_lvm(tmp_path, uuid, method):
    """LVM on LUKS (Debian's encrypted-install layout): the root LV's dm device has an LVM
    uuid, its slave the CRYPT- one."""
    _fake_block(tmp_path, "sda3")
    _fake_block(tmp_path, "dm-0", uuid, slaves=("sda3",))
    _fake_block(tmp_path, "dm-1", "LVM-Jx3k9PqZ7c0b", slaves=("dm-0",))
    assert linux.crypt_method("dm-1", str(tmp_path)) == method
    assert linux.crypt_method("sda3", str(tmp_path)) is None


def test_crypt_method_plain_lvm_is_not_encrypted(tmp_path):
    _fake_block(tmp_path, "nvme0n1p3")
    _fake_block(tmp_path, "dm-0", "LVM-abc", slaves=("nvme0n1p3",))
    assert linux.crypt_method("dm-0", str(tmp_path)) is None


def test_mounts_are_unescaped_and_listed_once():
    text = ("/dev/mapper/vg-root / ext4 rw 0 0\n/dev/sda1 /boot/efi vfat rw 0 0\n"
            "/dev/sdb1 /mnt/my\\040disk ext4 rw 0 0\n/dev/mapper/vg-root / ext4 rw 0 0\n")
    assert linux.parse_mounts(text) == [("/dev/mapper/vg-root", "/", "ext4"),
                                        ("/dev/sda1", "/boot/efi", "vfat"),
                                        ("/dev/sdb1", "/mnt/my disk", "ext4")]


# --- firewall -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "reader", "filtering", "chain"),
    [("nft_ruleset_input_drop.json", linux.parse_nft_json, True, "input"),
     ("nft_ruleset_docker_only.json", linux.parse_nft_json, False, "DOCKER"),
     ("iptables_save_ufw.txt", linux.parse_iptables_save, True, "ufw-user-input"),
     ("iptables_save_docker.txt", linux.parse_iptables_save, False, "DOCKER")],
)
def test_firewall_rules_on_the_input_hook(name, reader, filtering, chain):
    """Docker's forward rules are no host firewall; an input drop policy or rule is."""
    found, chains = reader(_fixture(name))
    assert found is filtering
    assert chain in chains


def test_nft_json_that_is_not_nfts():
    with pytest.raises(ValueError, match="no nftables list"):
        linux.parse_nft_json('{"error": 1}')


@on_linux
@pytest.mark.linux
def test_firewall_against_the_tools():
    """With nft or iptables-save here, the collector agrees with them; without them (this
    machine's usual case), it says unknown and names the missing tools."""
    fw = linux.firewall()
    if _process_running("firewalld"):
        assert (fw["enabled"], fw["product"]) == (True, "firewalld")
        return
    tools = [t for t in ("nft", "iptables-save") if shutil.which(t)]
    if not tools:
        assert (fw["enabled"], fw["product"]) == (None, None)
        assert fw["reason"] == "nft not found; iptables-save not found; firewalld is not running"
        return
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True,
                         check=False, timeout=30) if "nft" in tools else None
    if nft is not None and nft.returncode == 0:
        text = nft.stdout
        filtering = "hook input" in text and ("policy drop" in text or _nft_input_rules(text))
        assert fw["enabled"] is (filtering or fw["product"] in ("ufw", "iptables")), text


def _nft_input_rules(text: str) -> bool:
    """Whether an input-hook chain in `nft list ruleset`'s text has a rule line."""
    in_input = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("chain "):
            in_input = False
        elif "hook input" in line:
            in_input = True
        elif in_input and line and line != "}" and not line.startswith("type "):
            return True
    return False


def _process_running(name: str) -> bool:
    return name in _proc_comms()


def _proc_comms() -> set[str]:
    """Process names from /proc itself, not psutil."""
    names = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    names.add(f.read().strip())
            except OSError:
                pass
    return names


# --- malware --------------------------------------------------------------------------------

@on_linux
@pytest.mark.linux
def test_malware_against_packages_and_processes():
    """"none" exactly when no known scanner's package or files are here; a running clamd
    (per /proc) makes ClamAV the active product."""
    mw = linux.malware()
    installed = [s["name"] for s in linux.SCANNERS
                 if any(os.path.exists(p) for p in s["installed"])]
    for package, name in (("clamav-daemon", "ClamAV"), ("falcon-sensor", "CrowdStrike Falcon"),
                          ("mdatp", "Microsoft Defender")):
        if shutil.which("dpkg-query") and _run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}",
                                               package, check=False).startswith("ii"):
            assert name in installed, package
    if not installed:
        assert (mw["product"], mw["enabled"], mw["realtime"], mw["products"]) == (
            "none", False, False, [])
        assert mw["reason"].startswith("no known scanner installed (looked for ClamAV")
        return
    assert [p["name"] for p in mw["products"]] == installed
    if "clamd" in _proc_comms():
        assert (mw["product"], mw["enabled"]) == ("ClamAV", True)


def test_mdatp_health_shape():
    health = linux.parse_mdatp_health(_fixture("mdatp_health.txt"))
    assert health["real_time_protection_enabled"] == "true"
    assert health["definitions_updated_minutes_ago"] == "2160"
    assert health["definitions_status"] == "up_to_date"
    assert health["product_expiration"] == "Dec 29, 2026 at 09:48:37 PM"


def test_mdatp_fills_realtime_age_and_up_to_date(monkeypatch):
    monkeypatch.setattr(linux, "run_tool", lambda args, timeout_s: _fixture("mdatp_health.txt"))
    out = {"realtime": None, "signature_age_days": None,
           "products": [{"name": "Microsoft Defender", "enabled": True, "up_to_date": None}]}
    linux._mdatp(out, [])
    assert out["realtime"] is True
    assert out["signature_age_days"] == 1.5
    assert out["products"][0]["up_to_date"] is True


def test_clamav_signature_age_from_the_cvd_header(tmp_path):
    header = "ClamAV-VDB:14 Nov 2026 09-23 +0000:27456:2069845:90:X:X:raynman:1731576180"
    (tmp_path / "daily.cvd").write_bytes(header.encode().ljust(512, b" "))
    built = linux.parse_cvd_time(header)
    assert built == 1794648180.0  # 2026-11-14T09:23:00Z
    assert linux.clamav_signature_age([], str(tmp_path), now=built + 1.5 * 86400) == 1.5
    reasons: list[str] = []
    assert linux.clamav_signature_age(reasons, str(tmp_path / "none")) is None
    assert reasons and "no daily database" in reasons[0]


def test_a_running_scanner_is_the_active_product(monkeypatch, tmp_path):
    clamd = tmp_path / "clamd"
    clamd.write_text("")
    scanners = ({**linux.SCANNERS[0], "installed": (str(clamd),)}, *linux.SCANNERS[1:])
    monkeypatch.setattr(linux, "SCANNERS", scanners)
    monkeypatch.setattr(linux, "CLAMAV_DB", str(tmp_path))
    monkeypatch.setattr(linux._processes, "get", lambda: frozenset({"clamd", "bash"}))
    mw = linux.malware()
    assert (mw["product"], mw["enabled"], mw["realtime"]) == ("ClamAV", True, False)
    assert mw["products"] == [{"name": "ClamAV", "enabled": True, "up_to_date": None}]
    assert "no daily database" in mw["reason"]
    monkeypatch.setattr(linux._processes, "get", lambda: frozenset({"bash"}))
    mw = linux.malware()
    assert (mw["product"], mw["enabled"], mw["realtime"]) == ("ClamAV", False, False)
    assert "installed but not running" in mw["reason"]


# --- updates --------------------------------------------------------------------------------

def test_apt_history_ignores_installs_and_failed_upgrades():
    when = linux.parse_apt_history(_fixture("apt_history.log"))
    assert when == time.mktime((2026, 11, 20, 10, 0, 9, 0, 0, -1))


def test_dpkg_log_newest_upgrade():
    assert linux.parse_dpkg_log(_fixture("dpkg.log")) == time.mktime(
        (2026, 11, 20, 10, 0, 5, 0, 0, -1))


@pytest.mark.parametrize("text", [
    "2026-11-20 10:00:05", "2026-03-29 02:30:00", "2026-10-25 02:30:00",  # DST gap, overlap
    "2026-12-31 23:59:60", "2026-1-5 3:04:05",  # strptime's alone: a leap second, no padding
    "2026-02-30 00:00:00", "2026-11-20 10:00:05.5", "2026-11-20T10:00:05", "garbage"])
@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris"])
def test_log_times_read_as_strptime_reads_them(monkeypatch, text, zone):
    """Log times in their usual form skip time.strptime (a few ms of import in a one-shot
    collection); every form reads as strptime reads it, None where it fails."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        expected = time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        expected = None
    stamp = text.replace(" ", "T") + "Z"  # the update cache's form
    try:
        datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
        stamp_ok = len(stamp) == 20
    except ValueError:
        stamp_ok = False
    try:
        assert linux._local_time(text.split()) == expected
        assert _posture._is_utc_time(stamp) == stamp_ok
    finally:
        monkeypatch.undo()
        time.tzset()


def test_pending_counts_upgrades_not_new_dependencies():
    assert linux.count_apt_simulation(_fixture("apt_simulate.txt")) == 2
    assert linux.count_check_update(_fixture("dnf_check_update.txt")) == 3


@on_linux
@pytest.mark.linux
def test_updates_against_dpkg_log_and_apt_list():
    """last_success (from apt's history) is the end of the run whose upgrade dpkg's log
    records last; pending is what `apt list --upgradable` lists; the reboot flag is the
    file's presence."""
    if not shutil.which("apt-get"):
        facts = linux.updates_now()
        assert facts["reason"], facts
        return
    facts = linux.updates_now()
    dpkg = linux.parse_dpkg_log(_text(linux.DPKG_LOG)) if os.path.exists(
        linux.DPKG_LOG) else None
    if dpkg is None:
        assert facts["last_success"] is None or os.path.exists(linux.APT_HISTORY)
    elif facts["last_success"] is not None:
        from datetime import datetime

        last = datetime.strptime(facts["last_success"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=__import__("datetime").timezone.utc).timestamp()
        assert 0 <= last - dpkg < 6 * 3600, (facts["last_success"], dpkg)
    import glob

    if glob.glob(f"{linux.APT_LISTS}/*_Packages*"):
        listed = _run("apt", "list", "--upgradable", check=False).splitlines()
        assert facts["pending"] == sum("upgradable from" in line for line in listed)
    else:
        assert facts["pending"] is None and "no package lists" in facts["reason"]
    reasons: list[str] = []
    flag = linux.reboot_required(reasons)
    if os.path.exists("/var/run/reboot-required"):
        assert flag is True
    elif flag is None:
        assert reasons[0].startswith("reboot_required: no /run/reboot-required")


def test_reboot_required_flag_and_newer_kernel(tmp_path):
    flag = tmp_path / "reboot-required"
    modules = tmp_path / "modules"
    running = os.uname().release
    (modules / running).mkdir(parents=True)
    reasons: list[str] = []
    assert linux.reboot_required(reasons, str(flag), str(modules)) is False
    (modules / "9.9.9-new").mkdir()  # installed after boot: its mtime is now
    assert linux.reboot_required(reasons, str(flag), str(modules)) is True
    (modules / "9.9.9-new").rmdir()
    flag.write_text("*** System restart required ***\n")
    assert linux.reboot_required(reasons, str(flag), str(modules)) is True
    assert reasons == []


# --- the daily cache ------------------------------------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def fresh_cache(monkeypatch):
    monkeypatch.setattr(_posture, "_memory", {})
    monkeypatch.setattr(_posture, "_running", {})
    monkeypatch.setattr(_posture, "_may_refresh", [True])


def _counting_refresh(calls: list[int]):
    def refresh():
        calls.append(1)
        return {"last_success": "2026-11-20T10:00:09Z", "pending": len(calls),
                "reboot_required": None, "reason": None}
    return refresh


def test_cache_refreshes_at_most_daily_and_survives_a_restart(tmp_path, fresh_cache,
                                                               monkeypatch):
    calls: list[int] = []
    clock = _Clock()
    first = _posture.cached_updates(tmp_path, _counting_refresh(calls), now=clock)
    assert first == {"last_success": "2026-11-20T10:00:09Z", "pending": 1,
                     "reboot_required": None, "checked_at": "2027-01-15T08:00:00Z",
                     "reason": None}
    clock.now += 86_399
    assert _posture.cached_updates(tmp_path, _counting_refresh(calls), now=clock) == first
    monkeypatch.setattr(_posture, "_memory", {})  # a restarted agent reads the file
    assert _posture.cached_updates(tmp_path, _counting_refresh(calls), now=clock) == first
    assert len(calls) == 1
    clock.now += 1
    again = _posture.cached_updates(tmp_path, _counting_refresh(calls), now=clock)
    assert again["pending"] == 2 and len(calls) == 2
    assert again["checked_at"] == "2027-01-16T08:00:00Z"


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"version": 99}', b"\xff\xfe",
     json.dumps({"version": 1, "checked_at_epoch": "soon", "pending": 1}).encode(),
     json.dumps({"version": 1, "checked_at_epoch": 1_800_000_000, "pending": -3}).encode(),
     json.dumps({"version": 1, "checked_at_epoch": 1_800_000_000, "pending": True}).encode(),
     json.dumps({"version": 1, "checked_at_epoch": 1_800_000_000,
                 "last_success": "yesterday"}).encode(),
     # from the future: the clock was set back
     json.dumps({"version": 1, "checked_at_epoch": 1_900_000_000, "pending": 7}).encode()],
)
def test_a_corrupt_cache_is_ignored_and_rebuilt(tmp_path, fresh_cache, content):
    (tmp_path / _posture.CACHE_FILE).write_bytes(content)
    calls: list[int] = []
    out = _posture.cached_updates(tmp_path, _counting_refresh(calls), now=_Clock())
    assert calls == [1] and out["pending"] == 1
    rebuilt = json.loads((tmp_path / _posture.CACHE_FILE).read_text())
    assert rebuilt["pending"] == 1 and rebuilt["checked_at_epoch"] == 1_800_000_000.0


def test_the_cache_follows_no_link_and_waits_on_no_fifo(tmp_path, fresh_cache):
    """Whoever could plant files in the state folder: a FIFO at the cache's name must not
    hang the collector (open would wait for a writer), a link at the temporary file's name
    must not have the agent (root) truncate the file it points to."""
    os.mkfifo(tmp_path / _posture.CACHE_FILE)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / f".{_posture.CACHE_FILE}.{os.getpid()}.tmp").symlink_to(victim)
    calls: list[int] = []
    done: list[dict] = []
    worker = threading.Thread(target=lambda: done.append(_posture.cached_updates(
        tmp_path, _counting_refresh(calls), now=_Clock())), daemon=True)
    worker.start()
    worker.join(10)
    assert done and done[0]["pending"] == 1, "the collector hung on the FIFO"
    assert victim.read_text() == "precious"


def test_a_slow_refresh_does_not_hold_the_report(tmp_path, fresh_cache):
    release = threading.Event()

    def slow():
        release.wait(30)
        return {"last_success": None, "pending": 4, "reboot_required": None, "reason": None}

    out = _posture.cached_updates(tmp_path, slow, now=_Clock(), wait_s=0.1)
    assert out["pending"] is None and out["checked_at"] is None
    assert "still running" in out["reason"]
    release.set()
    _posture.wait_for_refresh(30)
    assert _posture.cached_updates(tmp_path, slow, now=_Clock())["pending"] == 4


def test_a_cache_folder_that_takes_no_writes_keeps_it_in_memory(tmp_path, fresh_cache):
    calls: list[int] = []
    missing = tmp_path / "gone"
    for _ in range(3):
        assert _posture.cached_updates(missing, _counting_refresh(calls),
                                       now=_Clock())["pending"] == 1
    assert calls == [1] and not missing.exists()


def test_a_one_shot_command_reads_the_cache_and_starts_no_refresh(tmp_path, fresh_cache,
                                                                  monkeypatch):
    calls: list[int] = []
    clock = _Clock()
    _posture.one_shot()
    out = _posture.cached_updates(tmp_path, _counting_refresh(calls), now=clock)
    assert calls == [] and out["pending"] is None and out["checked_at"] is None
    assert out["reason"].startswith("not checked yet: the agent service")
    monkeypatch.setattr(_posture, "_may_refresh", [True])  # the service, same folder
    _posture.cached_updates(tmp_path, _counting_refresh(calls), now=clock)
    monkeypatch.setattr(_posture, "_memory", {})
    _posture.one_shot()
    clock.now += 2 * 86_400  # a day-old cache is still better than none
    out = _posture.cached_updates(tmp_path, _counting_refresh(calls), now=clock)
    assert calls == [1] and out["pending"] == 1
    assert out["checked_at"] == "2027-01-15T08:00:00Z"


@on_linux
@pytest.mark.linux
def test_a_one_shot_linux_report_reads_the_logs_now(tmp_path, fresh_cache):
    _posture.one_shot()
    out = linux.updates(tmp_path)
    assert out["pending"] is None and "not checked yet" in out["reason"]
    if shutil.which("apt-get"):
        assert out["last_success"] == linux.last_apt_upgrade([])


def test_a_failing_refresh_reads_as_unknown_with_the_reason(tmp_path, fresh_cache):
    def broken():
        raise OSError("disk gone")

    out = _posture.cached_updates(tmp_path, broken, now=_Clock())
    assert out["pending"] is None and out["reason"] == "OSError: disk gone"
    assert out["checked_at"] == "2027-01-15T08:00:00Z"


# --- platform -------------------------------------------------------------------------------

@on_linux
@pytest.mark.linux
def test_platform_against_sys_firmware_and_mokutil():
    p = linux.platform()
    if os.path.isdir("/sys/firmware/efi"):
        assert p["firmware"] == "uefi"
        if shutil.which("mokutil"):
            sb = _run("mokutil", "--sb-state", check=False)
            if "SecureBoot enabled" in sb:
                assert p["secure_boot"] is True
            elif "SecureBoot disabled" in sb:
                assert p["secure_boot"] is False
    elif os.path.isdir("/sys/firmware/acpi"):
        assert (p["firmware"], p["secure_boot"]) == ("bios", False)
    if os.path.isdir("/sys/class/tpm") and any(
            n.startswith("tpm") and not n.startswith("tpmrm")
            for n in os.listdir("/sys/class/tpm")):
        assert p["tpm_present"] is True
    elif p["tpm_present"] is None:
        assert "tpm: neither" in p["reason"]
    elif p["tpm_present"] is False:
        assert p["tpm_version"] is None and "tpm_version: no TPM" in p["reason"]


def test_secure_boot_from_the_efi_variable(tmp_path):
    var = tmp_path / linux.SECURE_BOOT_VAR
    var.write_bytes(b"\x06\x00\x00\x00\x01")
    assert linux.secure_boot_state("uefi", [], str(tmp_path)) is True
    var.write_bytes(b"\x06\x00\x00\x00\x00")
    assert linux.secure_boot_state("uefi", [], str(tmp_path)) is False
    assert linux.secure_boot_state("bios", [], str(tmp_path)) is False


def test_secure_boot_without_the_variable_asks_mokutil(tmp_path, monkeypatch):
    monkeypatch.setattr(linux, "run_tool", lambda args, timeout_s: "SecureBoot enabled\n")
    assert linux.secure_boot_state("uefi", [], str(tmp_path)) is True

    def missing(args, timeout_s):
        raise FileNotFoundError("mokutil")

    monkeypatch.setattr(linux, "run_tool", missing)
    reasons: list[str] = []
    assert linux.secure_boot_state("uefi", reasons, str(tmp_path)) is None
    assert reasons == [f"secure_boot: no SecureBoot variable in {tmp_path}; mokutil not found"]
    assert linux.parse_mokutil("SecureBoot disabled\nPlatform is in Setup Mode\n") is False


def test_firmware_mode_from_sys_firmware(tmp_path):
    (tmp_path / "acpi").mkdir()
    assert linux.firmware_mode([], str(tmp_path)) == "bios"
    (tmp_path / "efi").mkdir()
    assert linux.firmware_mode([], str(tmp_path)) == "uefi"
    reasons: list[str] = []
    assert linux.firmware_mode(reasons, str(tmp_path / "absent")) is None and reasons


@pytest.mark.parametrize(
    ("files", "acpi", "expected"),
    [({"tpm0/tpm_version_major": "2\n"}, [], (True, "2.0")),
     ({"tpm0/tpm_version_major": "1\n"}, [], (True, "1.2")),
     ({"tpm0/device/caps": "Manufacturer: 0x49465800\nTCG version: 1.2\n"}, [], (True, "1.2")),
     ({"tpmrm0/x": ""}, ["PNP0A08:00"], (False, None)),
     ({}, ["MSFT0101:00", "PNP0A08:00"], (True, "2.0"))],
)
def test_tpm_from_sys_class_tpm_or_acpi(tmp_path, files, acpi, expected):
    tpm, acpi_dir = tmp_path / "tpm", tmp_path / "acpi"
    tpm.mkdir()
    acpi_dir.mkdir()
    for name in acpi:
        (acpi_dir / name).mkdir()
    for path, text in files.items():
        (tpm / path).parent.mkdir(parents=True, exist_ok=True)
        (tpm / path).write_text(text)
    assert linux.tpm_state([], str(tpm), str(acpi_dir)) == expected


# --- accounts -------------------------------------------------------------------------------

@on_linux
@pytest.mark.linux
def test_admins_against_getent():
    """uid 0 accounts from /etc/passwd, and the members of sudo, wheel and admin as getent
    lists them (by name, or by primary group)."""
    expected = set()
    passwd = _text("/etc/passwd").splitlines()
    for line in passwd:
        parts = line.strip().split(":")
        if len(parts) > 3 and parts[2] == "0":
            expected.add(parts[0])
    gids = set()
    for group in linux.ADMIN_GROUPS:
        entry = _run("getent", "group", group, check=False).strip()
        if entry:
            _, _, gid, members = entry.split(":")
            gids.add(gid)
            expected |= {m for m in members.split(",") if m}
    for line in passwd:
        parts = line.strip().split(":")
        if len(parts) > 3 and parts[3] in gids:
            expected.add(parts[0])
    assert linux.accounts()["admins"] == sorted(expected)


def test_admin_accounts_from_passwd_and_group():
    passwd = ("root:x:0:0:root:/root:/bin/bash\ntoor:x:0:0::/root:/bin/sh\n"
              "alice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:27::/home/bob:/bin/bash\n"
              "carol:x:1002:1002::/home/carol:/bin/bash\n+@netgroup::::::\n")
    group = ("root:x:0:\nsudo:x:27:alice\nwheel:x:10:carol,dave\nadm:x:4:carol,syslog\n"
             "users:x:100:bob\n")
    assert linux.admin_accounts(passwd, group) == ["alice", "bob", "carol", "dave", "root",
                                                   "toor"]


@on_linux
@pytest.mark.linux
def test_auto_login_against_the_display_managers_configs():
    configs = [p for p in ("/etc/gdm3/custom.conf", "/etc/gdm/custom.conf",
                           "/etc/lightdm/lightdm.conf", "/etc/sddm.conf")
               if os.path.exists(p)]
    auto = linux.accounts()["auto_login"]
    if not configs and not linux._expand(linux.GETTY_DROPINS + linux.LIGHTDM_CONF[2:]
                                          + linux.SDDM_CONF[2:]):
        assert auto is False
    for path in configs:
        text = _text(path)
        if "AutomaticLoginEnable=true" in text or "\nautologin-user=" in text.replace(" ", ""):
            assert auto is True


@pytest.mark.parametrize(
    ("parser", "text", "expected"),
    [(linux.gdm_autologin, "[daemon]\nAutomaticLoginEnable=True\nAutomaticLogin=kiosk\n", True),
     (linux.gdm_autologin, "[daemon]\n# AutomaticLoginEnable=true\nWaylandEnable=false\n",
      None),
     (linux.gdm_autologin, "[daemon]\nAutomaticLoginEnable=false\nTimedLoginEnable=true\n",
      True),
     (linux.gdm_autologin, "[daemon]\nAutomaticLoginEnable=false\n", False),
     (linux.lightdm_autologin, "[Seat:*]\nautologin-user=kiosk\nautologin-user-timeout=0\n",
      True),
     (linux.lightdm_autologin, "[Seat:*]\nautologin-user=\n", False),
     (linux.lightdm_autologin, "[SeatDefaults]\n#autologin-user=kiosk\n", None),
     (linux.sddm_autologin, "[Autologin]\nUser=kiosk\nSession=plasma\n", True),
     (linux.sddm_autologin, "[Autologin]\nRelogin=false\n", None),
     (linux.getty_autologin, "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin "
                             "pi --noclear %I $TERM\n", True),
     (linux.getty_autologin, "[Service]\nExecStart=-/sbin/agetty -o '-p -- \\\\u' "
                             "--noclear - $TERM\n", False)],
)
def test_auto_login_config_shapes(parser, text, expected):
    assert parser(text) is expected


# --- wiring ---------------------------------------------------------------------------------

def test_a_hanging_security_tool_costs_only_its_sub_section(monkeypatch):
    import estate.agent.collect as facade
    from estate.agent.collect import collect_report
    from estate.inventory.report import validate

    release = threading.Event()

    def hangs():
        release.wait(60)
        return {}

    monkeypatch.setattr(facade._posture_platform, "firewall", hangs)
    report, _ = collect_report(timeout_s=1.0)
    release.set()
    validate(report)
    assert report["security"]["firewall"] == {"enabled": None, "product": None,
                                              "profiles": None,
                                              "reason": "timed out after 1 s"}
    assert {"collector": "security.firewall", "reason": "timed out after 1 s"} in (
        report["errors"])
    assert report["security"]["accounts"]["admins"], "the other sub-sections are complete"


def test_a_report_without_security_stays_valid(report):
    """Agents released before it do not send it; the hub reads it as null."""
    from estate.inventory.report import validate

    report.pop("security")
    assert validate(report) is report
    report["security"] = None
    assert validate(report) is report
