"""Linux security posture: disk encryption, firewall, malware scanner, updates, platform and
admin accounts, from /sys, /etc and the OS's own tools.

Each function returns one sub-section of the report's `security` section whole: null where
the machine does not say, and the sub-section's `reason` says why. Reading /sys and /etc costs
microseconds; the only slow query (counting pending updates) runs at most daily, cached.
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from estate.agent.collect._common import Cached, iso_utc, read_text, run_tool
from estate.agent.collect._posture import cached_updates, join_reasons

__all__ = ["accounts", "encryption", "firewall", "malware", "platform", "updates"]

SYS_BLOCK = "/sys/class/block"
SYS_DEV_BLOCK = "/sys/dev/block"
MOUNTS = "/proc/self/mounts"
TOOL_TIMEOUT_S = 4.0
"""Each tool of a sub-section gets less than the collectors' 5 s limit, so a hanging tool
costs its own sub-section a reason, not a timeout."""

# --- encryption ---------------------------------------------------------------------------

# File systems whose source is a block device of this machine; network and virtual ones are
# not volumes an auditor means by "fixed disks".
_BLOCK_FSTYPES = {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "vfat",
                  "exfat", "ntfs", "ntfs3", "hfsplus", "bcachefs", "nilfs2"}
# Kernel name prefixes that are not a disk of the machine (snap images, compressed RAM).
_NOT_FIXED = ("loop", "zram", "ram", "nbd", "sr")
# dm-crypt names its devices' uuid "CRYPT-<TYPE>-..." (cryptsetup's lib/utils_crypt.h).
_CRYPT_METHODS = {"LUKS1": "luks1", "LUKS2": "luks2", "PLAIN": "plain", "BITLK": "bitlk",
                  "TCRYPT": "tcrypt", "LOOPAES": "loopaes", "FVAULT2": "fvault2"}


def encryption() -> dict[str, Any]:
    reasons: list[str] = []
    try:
        with open(MOUNTS, encoding="utf-8", errors="replace") as f:
            mounts = parse_mounts(f.read())
    except OSError as exc:
        return {"volumes": None, "reason": f"{MOUNTS}: {exc.strerror or exc}"}
    volumes = []
    for source, mount, fstype in mounts:
        if fstype == "zfs":
            volumes.append(_volume(mount, source, None, None))
            reasons.append(f"{mount}: ZFS dataset, its encryption is not read")
            continue
        if fstype not in _BLOCK_FSTYPES or not source.startswith("/dev/"):
            continue
        kname = block_name(source, mount)
        if kname is None:
            volumes.append(_volume(mount, source, None, None))
            reasons.append(f"{mount}: {source} not found in {SYS_DEV_BLOCK}")
            continue
        if kname.startswith(_NOT_FIXED) or _removable(kname):
            continue
        method = crypt_method(kname)
        volumes.append(_volume(mount, source, method is not None, method))
    return {"volumes": volumes[:64], "reason": join_reasons(reasons)}


def _volume(mount: str, device: str, encrypted: bool | None, method: str | None
            ) -> dict[str, Any]:
    # dm-crypt encrypts the whole device or nothing of it.
    percent = None if encrypted is None else 100.0 if encrypted else 0.0
    return {"mount": mount[:1024], "device": device[:1024], "encrypted": encrypted,
            "method": method, "protection": None, "percent": percent}


def parse_mounts(text: str) -> list[tuple[str, str, str]]:
    """(source, mount point, fstype) from /proc/mounts, first mount of each point only."""
    seen, out = set(), []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        source, mount, fstype = (_unescape(parts[0]), _unescape(parts[1]), parts[2])
        if mount not in seen:
            seen.add(mount)
            out.append((source, mount, fstype))
    return out


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in mount fields as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def block_name(source: str, mount: str, sys_dev_block: str = SYS_DEV_BLOCK,
               sys_block: str = SYS_BLOCK) -> str | None:
    """The kernel name (sda2, dm-1, nvme0n1p3) of the block device behind a mount."""
    candidates = []
    try:
        st = os.stat(source)
        if st.st_rdev:
            candidates.append(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    except OSError:
        pass
    try:
        # /dev/root and a btrfs subvolume's anonymous device have no node of their own.
        st = os.stat(mount)
        candidates.append(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    except OSError:
        pass
    for number in candidates:
        target = os.path.realpath(f"{sys_dev_block}/{number}")
        if os.path.isdir(target):
            return os.path.basename(target)
    # /dev/mapper/name links to ../dm-N
    name = os.path.basename(os.path.realpath(source))
    return name if os.path.isdir(f"{sys_block}/{name}") else None


def crypt_method(kname: str, sys_block: str = SYS_BLOCK, depth: int = 0) -> str | None:
    """The dm-crypt method under a block device (LVM on LUKS, LUKS on RAID...), else None."""
    if depth > 8:  # stacks are a few layers deep; a loop in /sys is not followed forever
        return None
    uuid = read_text(f"{sys_block}/{kname}/dm/uuid") or ""
    if uuid.startswith("CRYPT-"):
        kind = uuid.split("-", 2)[1] if uuid.count("-") >= 2 else ""
        return _CRYPT_METHODS.get(kind.upper(), kind.lower() or "dm-crypt")
    try:
        lower = sorted(os.listdir(f"{sys_block}/{kname}/slaves"))
    except OSError:
        lower = []
    if not lower and os.path.exists(f"{sys_block}/{kname}/partition"):
        # A partition of an encrypted device-mapper disk (rare, but then it is encrypted).
        parent = os.path.basename(os.path.dirname(os.path.realpath(f"{sys_block}/{kname}")))
        if parent != kname:
            lower = [parent]
    for name in lower:
        method = crypt_method(name, sys_block, depth + 1)
        if method is not None:
            return method
    return None


def _removable(kname: str, sys_block: str = SYS_BLOCK) -> bool:
    disk = kname
    if os.path.exists(f"{sys_block}/{kname}/partition"):
        disk = os.path.basename(os.path.dirname(os.path.realpath(f"{sys_block}/{kname}")))
    return (read_text(f"{sys_block}/{disk}/removable") or "").strip() == "1"


# --- firewall -----------------------------------------------------------------------------

UFW_CONF = "/etc/ufw/ufw.conf"


def _process_names() -> frozenset[str]:
    names = set()
    for proc in psutil.process_iter(["name"]):
        name = proc.info.get("name")
        if name:
            names.add(name)
    return frozenset(names)


# The firewall and malware sub-sections both look at the running processes: read them once.
_processes = Cached(_process_names, ttl_s=10.0)


def firewall() -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": None, "product": None, "profiles": [], "reason": None}
    try:
        running = _processes.get()
    except (OSError, psutil.Error) as exc:
        running, out["reason"] = frozenset(), f"process list: {exc}"
    if "firewalld" in running:
        # firewalld loads its zones' rules whenever it runs; its default zone refuses what
        # no service opened.
        out.update(enabled=True, product="firewalld", reason=None)
        return out
    tool_reasons: list[str] = [out["reason"]] if out["reason"] else []
    rules: dict[str, bool] = {}
    chains: set[str] = set()
    for product, reader in (("nftables", _nft_rules), ("iptables", _iptables_rules)):
        try:
            has_input_rules, names = reader()
        except FileNotFoundError:
            tool_reasons.append(f"{_TOOLS[product]} not found")
            continue
        except (RuntimeError, ValueError) as exc:
            tool_reasons.append(_short(exc))
            continue
        rules[product] = has_input_rules
        chains |= names
        if has_input_rules:
            break
    reasons: list[str] = []
    if _ufw_enabled() and (any(c.startswith("ufw-") for c in chains) or not rules):
        out["product"] = "ufw"
        out["enabled"] = True if rules else None
        if not rules:
            reasons += [*tool_reasons, "ufw is enabled in its config, but its rules could "
                                       "not be read"]
    elif rules:
        found = [p for p, has in rules.items() if has]
        out["enabled"] = bool(found)
        out["product"] = found[0] if found else None
        if not found:
            reasons.append(f"no firewall: no rule and no drop policy on the input hook "
                           f"({', '.join(_TOOLS[p] for p in rules)}); firewalld not running")
    else:
        reasons += [*tool_reasons, "firewalld is not running"]
    out["reason"] = join_reasons(reasons)
    return out


_TOOLS = {"nftables": "nft", "iptables": "iptables-save"}


def _nft_rules() -> tuple[bool, set[str]]:
    return parse_nft_json(run_tool([_which("nft"), "-j", "list", "ruleset"],
                                   timeout_s=TOOL_TIMEOUT_S))


def _iptables_rules() -> tuple[bool, set[str]]:
    return parse_iptables_save(run_tool([_which("iptables-save")], timeout_s=TOOL_TIMEOUT_S))


def _which(tool: str) -> str:
    """The tool's path; a PATH lookup costs microseconds, a failed exec a fork.

    Raises:
        FileNotFoundError: not installed.
    """
    import shutil

    # The agent runs as a service with a minimal PATH; these live in sbin.
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(tool)
    return found


def parse_nft_json(text: str) -> tuple[bool, set[str]]:
    """Whether an input-hook chain filters anything (a rule, or a drop policy), and every
    chain's name, from `nft -j list ruleset`.

    Raises:
        ValueError: not the JSON nft writes.
    """
    doc = json.loads(text)
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError("nft: no nftables list in its JSON")
    inputs, names, filtering = set(), set(), False
    for item in items:
        chain = item.get("chain") if isinstance(item, dict) else None
        if isinstance(chain, dict):
            names.add(str(chain.get("name")))
            if chain.get("hook") == "input" and chain.get("type", "filter") == "filter":
                inputs.add((chain.get("family"), chain.get("table"), chain.get("name")))
                filtering |= chain.get("policy") == "drop"
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if isinstance(rule, dict) and (rule.get("family"), rule.get("table"),
                                       rule.get("chain")) in inputs:
            filtering = True
    return filtering, names


def parse_iptables_save(text: str) -> tuple[bool, set[str]]:
    """Whether the filter table's INPUT chain has a rule or a DROP policy, and every chain's
    name, from `iptables-save`."""
    table, filtering, names = "", False, set()
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            names.add(name)
            if table == "filter" and name == "INPUT" and rest.split()[:1] in (["DROP"],
                                                                              ["REJECT"]):
                filtering = True
        elif table == "filter" and line.startswith("-A INPUT "):
            filtering = True
    return filtering, names


def _ufw_enabled() -> bool:
    conf = read_text(UFW_CONF) or ""
    return any(line.strip().replace(" ", "").lower() == "enabled=yes"
               for line in conf.splitlines())


# --- malware protection -------------------------------------------------------------------

# Scanners known on Linux: the files that show one is installed (binary, install folder or
# Debian package list) and the process names that show it runs. Process names are what
# /proc/PID/comm says: the kernel cuts them to 15 characters.
SCANNERS: tuple[dict[str, Any], ...] = (
    {"name": "ClamAV", "installed": ("/usr/sbin/clamd", "/usr/bin/clamd",
                                     "/var/lib/dpkg/info/clamav-daemon.list"),
     "daemons": {"clamd"}, "on_access": {"clamonacc"}},
    {"name": "Sophos", "installed": ("/opt/sophos-spl", "/opt/sophos-av"),
     "daemons": {"sophos_threat_d", "sophos_threat_detector", "savd", "sophosspl"},
     "on_access": {"soapd"}},
    {"name": "ESET", "installed": ("/opt/eset/eea", "/opt/eset/efs", "/opt/eset/esets"),
     "daemons": {"oaeventd", "scand", "esets_daemon"}, "on_access": {"oaeventd"}},
    {"name": "CrowdStrike Falcon", "installed": ("/opt/CrowdStrike/falconctl",
                                                 "/var/lib/dpkg/info/falcon-sensor.list"),
     "daemons": {"falcon-sensor", "falcond"}, "on_access": None},
    {"name": "Microsoft Defender", "installed": ("/opt/microsoft/mdatp", "/usr/bin/mdatp",
                                                 "/var/lib/dpkg/info/mdatp.list"),
     "daemons": {"wdavdaemon"}, "on_access": None},
)
CLAMAV_DB = "/var/lib/clamav"


def malware() -> dict[str, Any]:
    reasons: list[str] = []
    try:
        running = _processes.get()
    except (OSError, psutil.Error) as exc:
        return {"product": None, "enabled": None, "realtime": None,
                "signature_age_days": None, "products": None, "gatekeeper": None,
                "xprotect_version": None, "reason": f"process list: {exc}"}
    found = []
    for scanner in SCANNERS:
        if any(os.path.exists(p) for p in scanner["installed"]):
            found.append((scanner, bool(scanner["daemons"] & running)))
    out: dict[str, Any] = {"product": "none", "enabled": False, "realtime": False,
                           "signature_age_days": None,
                           "products": [{"name": s["name"], "enabled": on, "up_to_date": None}
                                        for s, on in found],
                           "gatekeeper": None, "xprotect_version": None, "reason": None}
    if not found:
        out["reason"] = ("no known scanner installed (looked for "
                         f"{', '.join(s['name'] for s in SCANNERS)})")
        return out
    active, on = next(((s, r) for s, r in found if r), found[0])
    out.update(product=active["name"], enabled=on, realtime=None)
    if not on:
        out["realtime"] = False
        reasons.append(f"{active['name']} is installed but not running")
    elif active["on_access"] is not None:
        out["realtime"] = bool(active["on_access"] & running)
    elif active["name"] == "CrowdStrike Falcon":
        out["realtime"] = True  # the sensor protects in real time whenever it runs
    if active["name"] == "ClamAV":
        out["signature_age_days"] = clamav_signature_age(reasons)
    elif active["name"] == "Microsoft Defender":
        _mdatp(out, reasons)
    else:
        reasons.append(f"{active['name']}: signature age not read (no local signature file "
                       "this agent knows)")
    if out["realtime"] is None:
        reasons.append(f"{active['name']}: on-access state not read")
    if any(p["up_to_date"] is None for p in out["products"]):
        reasons.append("products[].up_to_date: the scanner does not say")
    out["reason"] = join_reasons(reasons)
    return out


def clamav_signature_age(reasons: list[str], db: str = CLAMAV_DB,
                         now: float | None = None) -> float | None:
    """Days since ClamAV's newest daily database was built, from its header
    ("ClamAV-VDB:14 Nov 2026 09-23 +0000:27456:..."), else the file's time."""
    newest = None
    for name in ("daily.cld", "daily.cvd"):
        path = f"{db}/{name}"
        try:
            with open(path, "rb") as f:
                header = f.read(512).decode("ascii", "replace")
            built = parse_cvd_time(header) or os.stat(path).st_mtime
        except OSError:
            continue
        newest = built if newest is None else max(newest, built)
    if newest is None:
        reasons.append(f"ClamAV: no daily database in {db}")
        return None
    age = ((now if now is not None else time.time()) - newest) / 86400
    return round(max(0.0, age), 2)


def parse_cvd_time(header: str) -> float | None:
    parts = header.split(":")
    if len(parts) < 3 or parts[0] != "ClamAV-VDB":
        return None
    try:
        return datetime.strptime(parts[1].strip(), "%d %b %Y %H-%M %z").timestamp()
    except ValueError:
        return None


def _mdatp(out: dict[str, Any], reasons: list[str]) -> None:
    try:
        health = parse_mdatp_health(run_tool(["mdatp", "health"], timeout_s=TOOL_TIMEOUT_S))
    except (FileNotFoundError, RuntimeError) as exc:
        reasons.append(_short(exc))
        return
    realtime = health.get("real_time_protection_enabled")
    out["realtime"] = realtime == "true" if realtime in ("true", "false") else None
    minutes = health.get("definitions_updated_minutes_ago", "")
    if minutes.isdigit():
        out["signature_age_days"] = round(int(minutes) / 1440, 2)
    status = health.get("definitions_status")
    for product in out["products"]:
        if product["name"] == "Microsoft Defender" and status:
            product["up_to_date"] = status == "up_to_date"


def parse_mdatp_health(text: str) -> dict[str, str]:
    """`mdatp health`'s "key : value" lines, values unquoted."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().replace("_", "").isalnum():
            values[key.strip()] = value.strip().strip('"')
    return values


# --- updates ------------------------------------------------------------------------------

APT_HISTORY = "/var/log/apt/history.log"
DPKG_LOG = "/var/log/dpkg.log"
APT_LISTS = "/var/lib/apt/lists"
REBOOT_REQUIRED = "/run/reboot-required"
NOTIFY_REBOOT = "/usr/share/update-notifier/notify-reboot-required"
MODULES = "/lib/modules"
UPDATES_TIMEOUT_S = 120.0
"""The daily count runs apart from the report, so it may take its time."""
# ... and at the lowest CPU priority, so it never competes with the machine's own work.
_NICE = ("nice", "-n", "19") if os.path.exists("/usr/bin/nice") else ()


def updates(cache_dir: Path | None) -> dict[str, Any]:
    section = cached_updates(cache_dir, updates_now)
    # A reboot flag is one stat: read live, so a reboot shows on the next report.
    reasons = [section["reason"]] if section["reason"] else []
    if section["checked_at"] is None:
        # Never checked here (a one-shot command, or the first check still running): the
        # logs are cheap to read now; only the pending count waits for the daily check.
        section["last_success"] = last_apt_upgrade(reasons) if _apt() else None
    section["reboot_required"] = reboot_required(reasons)
    section["reason"] = join_reasons(reasons)
    return section


def updates_now() -> dict[str, Any]:
    """Read update facts afresh (the daily refresh): no network, only local metadata."""
    reasons: list[str] = []
    if _apt():
        last = last_apt_upgrade(reasons)
        pending = apt_pending(reasons)
    elif os.path.exists("/usr/bin/rpm"):
        last = last_rpm_install(reasons)
        pending = dnf_pending(reasons)
    else:
        last, pending = None, None
        reasons.append("no apt or rpm found")
    return {"last_success": last, "pending": pending, "reboot_required": None,
            "reason": join_reasons(reasons)}


def _apt() -> bool:
    return os.path.exists("/usr/bin/apt-get") or os.path.exists(APT_HISTORY)


def last_apt_upgrade(reasons: list[str]) -> str | None:
    """End of the newest apt run that upgraded a package without error (apt's history,
    rotated files included), else the newest upgrade in dpkg's log."""
    for path in sorted(glob.glob(APT_HISTORY + "*"), key=_rotation):
        text = _read_log(path)
        if text is None:
            continue
        when = parse_apt_history(text)
        if when is not None:
            return iso_utc(when)
    when = parse_dpkg_log(_read_log(DPKG_LOG) or "")
    if when is not None:
        return iso_utc(when)
    reasons.append(f"no upgrade recorded in {APT_HISTORY} or {DPKG_LOG}")
    return None


def _rotation(path: str) -> int:
    """history.log first, then history.log.1, .2.gz, ...: newest first."""
    suffix = path[len(APT_HISTORY):].lstrip(".").split(".")[0]
    return int(suffix) if suffix.isdigit() else 0


def _read_log(path: str) -> str | None:
    try:
        if path.endswith(".gz"):
            import gzip  # only for rotated logs: most collections read the current one

            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                return f.read()
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (OSError, EOFError):
        return None


def parse_apt_history(text: str) -> float | None:
    """Epoch of the End-Date of the newest history entry with an Upgrade line and no Error.

    apt writes its times in the machine's local time ("End-Date: 2026-12-01  14:47:26").
    """
    newest = None
    for block in text.split("\n\n"):
        fields = {}
        for line in block.strip().splitlines():
            key, sep, value = line.partition(": ")
            if sep:
                fields[key] = value
        if "Upgrade" in fields and "Error" not in fields and "End-Date" in fields:
            when = _local_time(fields["End-Date"].split())
            if when is not None and (newest is None or when > newest):
                newest = when
    return newest


def parse_dpkg_log(text: str) -> float | None:
    """Epoch of the newest "upgrade" action in dpkg's log (local time)."""
    newest = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "upgrade":
            when = _local_time(parts[:2])
            if when is not None and (newest is None or when > newest):
                newest = when
    return newest


_PLAIN_LOCAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")


def _local_time(parts: list[str]) -> float | None:
    text = " ".join(parts[:2])
    if _PLAIN_LOCAL_TIME.fullmatch(text):
        # The form apt and dpkg write, read without time.strptime, whose first call imports
        # _strptime (a few ms of a one-shot collection). Anything else, such as a leap
        # second, still goes to strptime below, so the answer is the same.
        try:
            return time.mktime(datetime.fromisoformat(text).timetuple())
        except (ValueError, OverflowError):
            pass
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None



def apt_pending(reasons: list[str]) -> int | None:
    """Upgrades apt would install from the package lists it already has (no download)."""
    if not glob.glob(f"{APT_LISTS}/*_Packages*"):
        reasons.append(f"no package lists in {APT_LISTS} (apt-get update never ran)")
        return None
    try:
        out = run_tool([*_NICE, "apt-get", "--simulate", "--quiet", "-o",
                        "Debug::NoLocking=1", "dist-upgrade"], timeout_s=UPDATES_TIMEOUT_S)
    except (FileNotFoundError, RuntimeError) as exc:
        reasons.append(f"pending: {_unniced(exc, 'apt-get')}")
        return None
    return count_apt_simulation(out)


def count_apt_simulation(text: str) -> int:
    """Installed packages an `apt-get --simulate dist-upgrade` would upgrade: its "Inst"
    lines that name the installed version in brackets ("Inst bash [5.2.15-2+b8] (...)");
    a new dependency has none."""
    return sum(1 for line in text.splitlines() if _APT_UPGRADE.match(line))


_APT_UPGRADE = re.compile(r"Inst \S+ \[")


def last_rpm_install(reasons: list[str]) -> str | None:
    try:
        out = run_tool([*_NICE, "rpm", "-qa", "--queryformat", "%{INSTALLTIME}\n"],
                       timeout_s=UPDATES_TIMEOUT_S)
    except (FileNotFoundError, RuntimeError) as exc:
        reasons.append(f"last_success: {_unniced(exc, 'rpm')}")
        return None
    times = [int(t) for t in out.split() if t.isdigit()]
    if not times:
        reasons.append("last_success: rpm listed no install time")
        return None
    return iso_utc(max(times))


def dnf_pending(reasons: list[str]) -> int | None:
    """Updates in dnf's (or yum's) cached metadata; -C never downloads."""
    import shutil
    import subprocess

    tool = shutil.which("dnf") or shutil.which("yum")
    if tool is None:
        reasons.append("pending: neither dnf nor yum found")
        return None
    try:
        # run_tool keeps no output for a non-zero exit, and check-update's 100 means "listed".
        done = subprocess.run([*_NICE, tool, "-C", "-q", "check-update"], capture_output=True,
                              timeout=UPDATES_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        reasons.append(f"pending: {os.path.basename(tool)}: {_short(exc)}")
        return None
    if done.returncode not in (0, 100):
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reasons.append(f"pending: {os.path.basename(tool)} exited {done.returncode}: "
                       f"{err[-1][:200] if err else ''}")
        return None
    return count_check_update(done.stdout.decode("utf-8", "replace"))


def count_check_update(text: str) -> int:
    """Package lines ("name.arch  version  repo") before any "Obsoleting Packages" list."""
    count = 0
    for line in text.splitlines():
        if line.startswith("Obsoleting"):
            break
        parts = line.split()
        if len(parts) == 3 and "." in parts[0] and not line.startswith(" "):
            count += 1
    return count


def reboot_required(reasons: list[str], flag: str = REBOOT_REQUIRED,
                    modules: str = MODULES) -> bool | None:
    """Whether an installed update waits for a reboot.

    Debian and Ubuntu packages leave /run/reboot-required; without that mechanism, a kernel
    installed after boot (its /lib/modules folder newer than the boot) tells it.
    """
    if os.path.exists(flag):
        return True
    running = os.uname().release
    try:
        boot = psutil.boot_time()
        newer = [name for name in os.listdir(modules) if name != running
                 and os.stat(f"{modules}/{name}").st_mtime > boot]
    except OSError:
        newer = None
    if newer:
        return True
    if newer is not None and os.path.isdir(f"{modules}/{running}"):
        return False
    if os.path.exists(NOTIFY_REBOOT):
        return False  # the flag's writer is installed and wrote nothing
    reasons.append(f"reboot_required: no {flag} and the running kernel {running} is not "
                   f"among {modules}")
    return None


# --- platform -----------------------------------------------------------------------------

SYS_FIRMWARE = "/sys/firmware"
SYS_TPM = "/sys/class/tpm"
ACPI_DEVICES = "/sys/bus/acpi/devices"
EFIVARS = "/sys/firmware/efi/efivars"
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
# ACPI ids of TPM devices: MSFT0101 is a TPM 2.0 (TCG ACPI spec); PNP0C31 and ATM1200 etc.
# are TPM 1.2 chips.
_TPM2_ACPI = ("MSFT0101",)
_TPM12_ACPI = ("PNP0C31", "ATM1200", "BCM0101", "NSC1200", "IFX0102", "SMO1200")


def platform() -> dict[str, Any]:
    reasons: list[str] = []
    firmware = firmware_mode(reasons)
    secure_boot = secure_boot_state(firmware, reasons)
    present, version = tpm_state(reasons)
    return {"firmware": firmware, "secure_boot": secure_boot, "tpm_present": present,
            "tpm_version": version, "reason": join_reasons(reasons)}


def firmware_mode(reasons: list[str], sys_firmware: str = SYS_FIRMWARE) -> str | None:
    if os.path.isdir(f"{sys_firmware}/efi"):
        return "uefi"
    if os.path.isdir(f"{sys_firmware}/devicetree"):
        reasons.append("firmware: a device-tree board, neither UEFI nor BIOS")
        return None
    if os.path.isdir(f"{sys_firmware}/acpi") or os.path.isdir(f"{sys_firmware}/memmap"):
        return "bios"  # the kernel makes /sys/firmware/efi whenever it booted from UEFI
    reasons.append(f"firmware: {sys_firmware} says neither (not mounted?)")
    return None


def secure_boot_state(firmware: str | None, reasons: list[str],
                      efivars: str = EFIVARS) -> bool | None:
    if firmware == "bios":
        return False  # Secure Boot is a UEFI feature
    if firmware is None:
        reasons.append("secure_boot: firmware mode unknown")
        return None
    try:
        with open(f"{efivars}/{SECURE_BOOT_VAR}", "rb") as f:
            data = f.read(8)
    except OSError:
        data = b""
    if len(data) >= 5:  # 4 bytes of attributes, then the value
        return data[4] == 1
    try:
        return parse_mokutil(run_tool(["mokutil", "--sb-state"], timeout_s=TOOL_TIMEOUT_S))
    except (FileNotFoundError, RuntimeError) as exc:
        detail = "mokutil not found" if isinstance(exc, FileNotFoundError) else _short(exc)
        reasons.append(f"secure_boot: no SecureBoot variable in {efivars}; {detail}")
        return None


def parse_mokutil(text: str) -> bool | None:
    """`mokutil --sb-state`: "SecureBoot enabled" or "SecureBoot disabled"."""
    for line in text.lower().splitlines():
        if line.startswith("secureboot "):
            if "enabled" in line:
                return True
            if "disabled" in line:
                return False
    return None


def tpm_state(reasons: list[str], sys_tpm: str = SYS_TPM,
              acpi: str = ACPI_DEVICES) -> tuple[bool | None, str | None]:
    try:
        chips = sorted(n for n in os.listdir(sys_tpm) if n.startswith("tpm")
                       and not n.startswith("tpmrm"))
    except OSError:
        chips = None
    if chips:
        major = (read_text(f"{sys_tpm}/{chips[0]}/tpm_version_major") or "").strip()
        if major == "2":
            return True, "2.0"
        if major == "1":
            return True, "1.2"
        caps = read_text(f"{sys_tpm}/{chips[0]}/device/caps") or ""
        match = re.search(r"TCG version: (\d+\.\d+)", caps)
        if match:
            return True, match.group(1)
        reasons.append(f"tpm_version: {sys_tpm}/{chips[0]} does not say")
        return True, None
    try:
        devices = os.listdir(acpi)
    except OSError:
        devices = []
    if any(d.startswith(_TPM2_ACPI) for d in devices):
        reasons.append("tpm: in ACPI, no TPM driver loaded")
        return True, "2.0"
    if any(d.startswith(_TPM12_ACPI) for d in devices):
        reasons.append("tpm: in ACPI, no TPM driver loaded")
        return True, "1.2"
    if chips is not None or devices:
        # The driver class or the ACPI table would list one.
        reasons.append("tpm_version: no TPM")
        return False, None
    reasons.append(f"tpm: neither {sys_tpm} nor {acpi} to look in")
    return None, None


# --- accounts -----------------------------------------------------------------------------

USERS_FILE = "/etc/passwd"
GROUPS_FILE = "/etc/group"
ADMIN_GROUPS = ("sudo", "wheel", "admin")
"""Groups that distributions' sudoers grant root: Debian/Ubuntu sudo (and admin before
Ubuntu 12.04), Red Hat/SUSE/Arch wheel."""


def accounts() -> dict[str, Any]:
    reasons: list[str] = []
    passwd, group = read_text(USERS_FILE), read_text(GROUPS_FILE)
    admins: list[str] | None = None
    if passwd is None or group is None:
        reasons.append(f"admins: {USERS_FILE if passwd is None else GROUPS_FILE} unreadable")
    else:
        admins = admin_accounts(passwd, group)[:256]
    return {"admins": admins, "auto_login": auto_login(reasons),
            "reason": join_reasons(reasons)}


def admin_accounts(passwd: str, group: str) -> list[str]:
    """Accounts with uid 0, and the members of the admin groups (listed, or by their primary
    group), sorted."""
    gids: set[str] = set()
    names: set[str] = set()
    for line in group.splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] in ADMIN_GROUPS:
            if parts[2].isdigit():
                gids.add(parts[2])
            names.update(m.strip() for m in parts[3].split(",") if m.strip())
    for line in passwd.splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] and not parts[0].startswith(("+", "-")):
            if parts[2] == "0" or parts[3] in gids:
                names.add(parts[0])
    return sorted(n[:256] for n in names)


# Display managers' config files, and the key that names a user to log in automatically.
GDM_CONF = ("/etc/gdm3/custom.conf", "/etc/gdm3/daemon.conf", "/etc/gdm/custom.conf")
LIGHTDM_CONF = ("/usr/share/lightdm/lightdm.conf.d/*.conf", "/etc/lightdm/lightdm.conf",
                "/etc/lightdm/lightdm.conf.d/*.conf")
SDDM_CONF = ("/usr/lib/sddm/sddm.conf.d/*.conf", "/etc/sddm.conf", "/etc/sddm.conf.d/*.conf")
GETTY_DROPINS = ("/etc/systemd/system/getty@*.service.d/*.conf",
                 "/etc/systemd/system/serial-getty@*.service.d/*.conf",
                 "/etc/systemd/system/getty@*.service")


def auto_login(reasons: list[str]) -> bool | None:
    """Whether a display manager or a getty logs a user in without a password."""
    unreadable = []
    found = False
    for patterns, check in ((GDM_CONF, gdm_autologin), (LIGHTDM_CONF, lightdm_autologin),
                            (SDDM_CONF, sddm_autologin), (GETTY_DROPINS, getty_autologin)):
        # Later files override earlier ones: the last that says decides for its manager.
        verdict = None
        for path in _expand(patterns):
            text = read_text(path)
            if text is None:
                unreadable.append(path)
                continue
            said = check(text)
            if said is not None:
                verdict = said
        found = found or bool(verdict)
    if found:
        return True
    if unreadable:
        reasons.append(f"auto_login: cannot read {', '.join(unreadable[:4])}")
        return None
    return False


def _expand(patterns: Iterable[str]) -> list[str]:
    out = []
    for pattern in patterns:
        out.extend(sorted(glob.glob(pattern)) if "*" in pattern else
                   [pattern] if os.path.exists(pattern) else [])
    return out


def parse_ini(text: str) -> dict[str, dict[str, str]]:
    """Sections of an INI-style file, tolerant of duplicates and keys outside a section."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key.strip()] = value.strip()
    return sections


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1", "yes")


def gdm_autologin(text: str) -> bool | None:
    daemon = parse_ini(text).get("daemon", {})
    keys = ("AutomaticLoginEnable", "TimedLoginEnable")
    if not any(k in daemon for k in keys):
        return None
    return any(_true(daemon.get(k)) for k in keys)


def lightdm_autologin(text: str) -> bool | None:
    said = None
    for name, values in parse_ini(text).items():
        if name.startswith("Seat") and "autologin-user" in values:
            said = bool(values["autologin-user"]) or bool(said)
    return said


def sddm_autologin(text: str) -> bool | None:
    section = parse_ini(text).get("Autologin")
    if section is None or "User" not in section:
        return None
    return bool(section["User"])


def getty_autologin(text: str) -> bool | None:
    exec_lines = [line for line in text.splitlines() if line.strip().startswith("ExecStart=")]
    if not exec_lines:
        return None
    # A drop-in first empties ExecStart=, then sets its own: the last one is what runs.
    return "--autologin" in exec_lines[-1] or " -a " in f" {exec_lines[-1]} "


# --- helpers ------------------------------------------------------------------------------

def _unniced(exc: BaseException, tool: str) -> str:
    """run_tool names the program it ran: `nice`, for the tool nice ran."""
    text = _short(exc)
    return tool + text[4:] if _NICE and text.startswith("nice") else text


def _short(exc: BaseException) -> str:
    return str(exc).strip()[:200] or type(exc).__name__


