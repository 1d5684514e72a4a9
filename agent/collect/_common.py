"""What psutil sees on every OS, plus helpers shared by the platform modules."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from datetime import datetime, timezone
from functools import partial
from typing import Any, NamedTuple

import psutil

from estate.agent.collect._runner import call_with_timeout

VOLUME_TIMEOUT_S = 2.0
"""statvfs on one mount; a hung NFS server must not eat the whole collection budget."""

_PLACEHOLDERS = {
    "to be filled by o.e.m.", "to be filled by oem", "default string", "default",
    "system serial number", "system product name", "system manufacturer", "system version",
    "chassis serial number", "base board serial number", "not specified", "not applicable",
    "not available", "none", "n/a", "na", "null", "oem", "o.e.m.", "invalid", "unknown",
    "123456789", "1234567890", "0123456789", "serial", "empty",
}


def clean(value: Any) -> str | None:
    """A trimmed string, or None when empty or a placeholder like "To be filled by O.E.M."."""
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    if not text or text.lower() in _PLACEHOLDERS:
        return None
    # All zeros or all F's (with or without dashes/spaces) is a blank UUID or serial.
    bare = text.replace("-", "").replace(" ", "").replace(":", "").lower()
    if bare and (set(bare) <= {"0"} or set(bare) <= {"f"}):
        return None
    return text


def read_text(path: str) -> str | None:
    """A small system file's text (/proc, /sys, /etc), or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def iso_utc(epoch_s: float | None) -> str | None:
    """RFC 3339 UTC with second precision, or None."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ToolTimedOut(RuntimeError):
    """An OS tool ran out of time: worth no retry in another form within the same budget."""


def run_tool(args: list[str], timeout_s: float = 10.0) -> str:
    """Run an OS tool and return its stdout.

    Raises:
        FileNotFoundError: the tool is not installed.
        ToolTimedOut: it ran out of time (a RuntimeError).
        RuntimeError: it failed; the message says how.
    """
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ToolTimedOut(f"{args[0]} timed out after {timeout_s:g} s") from None
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"{args[0]} exited {done.returncode}: {err[-1] if err else ''}")
    return done.stdout.decode("utf-8", "replace")


def package_hash(packages: list[dict[str, Any]]) -> str:
    """A stable SHA-256 over the sorted package list, independent of collection order."""
    lines = sorted(f"{p['name']}\t{p.get('version') or ''}\t{p.get('arch') or ''}"
                   for p in packages)
    return _sha256()("\n".join(lines).encode("utf-8")).hexdigest()


def _sha256() -> Any:
    """SHA-256 from CPython's own module where it has one: `hashlib` loads OpenSSL's
    libcrypto first, about 5 ms of a one-shot `estate-agent collect`. A build without it
    (some FIPS builds) gets hashlib's; the digest is the same either way."""
    try:
        from _sha256 import sha256  # CPython 3.10 and 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython 3.12 and later
        except ImportError:
            from hashlib import sha256
    return sha256


# SMBIOS chassis types (DMTF DSP0134, table 17) that an IT team tells apart.
CHASSIS = {
    3: "desktop", 4: "desktop", 5: "desktop", 6: "desktop", 7: "desktop", 13: "all-in-one",
    15: "desktop", 16: "desktop", 24: "desktop", 35: "desktop", 36: "desktop",
    8: "laptop", 9: "laptop", 10: "laptop", 14: "laptop", 31: "laptop", 32: "laptop",
    11: "handheld", 30: "tablet", 17: "server", 23: "server", 25: "server", 28: "server",
    29: "server", 1: None, 2: None,
}
# Clues a DMI/SMBIOS/CIM/system_profiler vendor, product or BIOS string gives, mapped to the
# name `systemd-detect-virt` prints, so one estate has one name per hypervisor whatever the
# guest's OS. Order matters: the first clue found wins.
_HYPERVISORS = (
    # Proxmox and other QEMU/KVM guests on SeaBIOS say "QEMU", and with an old machine type
    # "Bochs" (vendor/product) or the ACPI OEM ids "BOCHS_"/"BXPC____" (Win32_BIOS.Version).
    # systemd-detect-virt asks CPUID first and says "kvm" for them, so do we.
    ("kvm", "kvm"), ("qemu", "kvm"), ("bochs", "kvm"), ("bxpc", "kvm"),
    ("vmware", "vmware"), ("vmw", "vmware"), ("virtualbox", "oracle"), ("innotek", "oracle"),
    ("microsoft corporation virtual machine", "microsoft"), ("hyper-v", "microsoft"),
    ("xen", "xen"), ("amazon ec2", "amazon"), ("google compute engine", "google"),
    ("parallels", "parallels"), ("bhyve", "bhyve"), ("apple virtualization", "apple"),
)


def chassis_name(smbios_type: int | None) -> str | None:
    """Readable chassis from an SMBIOS chassis type; None for "other"/"unknown"."""
    if smbios_type is None:
        return None
    return CHASSIS.get(smbios_type, "other")


def hypervisor_name(*clues: str | None) -> str | None:
    """The hypervisor that vendor, product or BIOS strings reveal, named as
    `systemd-detect-virt` names it (kvm, vmware, oracle, microsoft, ...); None if none does."""
    text = " ".join(c for c in clues if c).lower()
    for needle, kind in _HYPERVISORS:
        if needle in text:
            return kind
    return None


class Cached:
    """Calls an expensive source once for all collectors of one report.

    PowerShell and system_profiler take a second or more, and several collectors need their
    output; concurrent callers wait for one run, and the result is reused for `ttl_s`. A
    failure is kept like a result: a tool that fails for one section fails for all of them,
    and is run once a report, not once per section.
    """

    def __init__(self, fn: Any, ttl_s: float = 30.0) -> None:
        import threading

        self._fn, self._ttl_s, self._lock = fn, ttl_s, threading.Lock()
        self._at, self._value = -1e18, None
        self._error: Exception | None = None

    def expire(self) -> None:
        """Forget the kept result: the next get() runs the source again."""
        with self._lock:
            self._at = -1e18

    def get(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at > self._ttl_s:
                try:
                    self._value, self._error = self._fn(), None
                except Exception as exc:
                    self._value, self._error = None, exc
                self._at = time.monotonic()
            if self._error is not None:
                # Each caller gets the failure afresh, without the frames of earlier raises.
                raise self._error.with_traceback(None)
            return self._value


# --- identity and sessions ----------------------------------------------------------------

def names(problems: list[str]) -> dict[str, str | None]:
    hostname = socket.gethostname() or None
    fqdn: str | None = socket.getfqdn()
    # getfqdn() falls back to "localhost" or the bare name when DNS and hosts know nothing.
    if not fqdn or fqdn.startswith("localhost") or "." not in fqdn:
        fqdn = hostname if hostname and "." in hostname else None
    short = hostname.split(".", 1)[0] if hostname else None
    return {"hostname": short, "fqdn": fqdn}


def boot_time(problems: list[str]) -> str | None:
    return iso_utc(psutil.boot_time())


def users(problems: list[str]) -> list[dict[str, Any]]:
    return [
        {"name": u.name, "terminal": u.terminal or None, "host": u.host or None,
         "started": iso_utc(u.started)}
        for u in psutil.users()
    ][:256]


# --- hardware -----------------------------------------------------------------------------

def cpu_counts(problems: list[str]) -> dict[str, Any]:
    freq = None
    try:
        f = psutil.cpu_freq()
        if f is not None:
            freq = f.max or f.current or None
    except (OSError, NotImplementedError, RuntimeError) as exc:
        problems.append(f"cpu frequency: {exc}")
    return {
        "cores": psutil.cpu_count(logical=False) or None,
        "threads": psutil.cpu_count(logical=True) or None,
        "frequency_mhz": round(freq, 1) if freq else None,
    }


def memory(problems: list[str]) -> dict[str, int | None]:
    return {
        "total_bytes": psutil.virtual_memory().total,
        "swap_total_bytes": psutil.swap_memory().total,
    }


def volumes(problems: list[str]) -> list[dict[str, Any]]:
    """Mounted file systems with usage; each statvfs has its own time limit."""
    result = []
    seen = set()
    for part in psutil.disk_partitions(all=False):
        mount = part.mountpoint
        # Container runtimes bind-mount single files (/etc/hosts); they are not volumes.
        if mount in seen or not os.path.isdir(mount):
            continue
        seen.add(mount)
        volume: dict[str, Any] = {
            "mount": mount, "device": part.device or None, "fstype": part.fstype or None,
            "total_bytes": None, "used_bytes": None, "free_bytes": None, "used_percent": None,
        }
        try:
            finished, usage = call_with_timeout(partial(psutil.disk_usage, mount),
                                                VOLUME_TIMEOUT_S)
        except OSError as exc:
            problems.append(f"{mount}: {exc.strerror or exc}")
            finished, usage = True, None
        if not finished:
            problems.append(f"{mount}: no answer within {VOLUME_TIMEOUT_S:g} s (hung mount?)")
        elif usage is not None:
            volume.update(total_bytes=usage.total, used_bytes=usage.used,
                          free_bytes=usage.free, used_percent=round(usage.percent, 1))
        result.append(volume)
    return result[:512]


def battery(problems: list[str]) -> dict[str, Any] | None:
    if not hasattr(psutil, "sensors_battery"):
        return None
    b = psutil.sensors_battery()
    if b is None:
        return None
    secs = b.secsleft if isinstance(b.secsleft, int) and b.secsleft >= 0 else None
    return {"percent": round(float(b.percent), 1), "plugged": b.power_plugged,
            "seconds_left": secs}


# --- network ------------------------------------------------------------------------------

_DUPLEX = {psutil.NIC_DUPLEX_FULL: "full", psutil.NIC_DUPLEX_HALF: "half"}


def interfaces(problems: list[str]) -> list[dict[str, Any]]:
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    counters = psutil.net_io_counters(pernic=True)
    result = []
    for name in sorted(set(addrs) | set(stats)):
        mac = None
        addresses = []
        for a in addrs.get(name, []):
            if a.family == psutil.AF_LINK:
                mac = clean(a.address.lower().replace("-", ":"))
            elif a.family in (socket.AF_INET, socket.AF_INET6):
                addresses.append(_address(a))
        st = stats.get(name)
        c = counters.get(name)
        result.append({
            "name": name,
            "mac": mac,
            "addresses": addresses[:256],
            # psutil reports 0 when the driver cannot tell (virtio): that is unknown, not 0.
            "speed_mbps": (st.speed or None) if st else None,
            "duplex": _DUPLEX.get(st.duplex) if st else None,
            "mtu": (st.mtu or None) if st else None,
            "up": st.isup if st else None,
            "counters": {
                "bytes_sent": c.bytes_sent, "bytes_recv": c.bytes_recv,
                "packets_sent": c.packets_sent, "packets_recv": c.packets_recv,
                "errors_in": c.errin, "errors_out": c.errout,
            } if c else None,
        })
    return result[:256]


def _address(a: Any) -> dict[str, Any]:
    family = "ipv4" if a.family == socket.AF_INET else "ipv6"
    address = a.address.split("%", 1)[0]  # drop the IPv6 zone (fe80::1%eth0)
    return {"family": family, "address": address, "prefix": _prefix(a.netmask, family)}


def _prefix(netmask: str | None, family: str) -> int | None:
    """Prefix length from a netmask ("255.255.255.0", "ffff:ffff::"), None if not contiguous."""
    if not netmask:
        return None
    if "/" in netmask:
        return int(netmask.rsplit("/", 1)[1])
    import ipaddress

    try:
        bits = int(ipaddress.ip_address(netmask))
    except ValueError:
        return None
    width = 32 if family == "ipv4" else 128
    ones = bin(bits).count("1")
    return ones if bits == ((1 << ones) - 1) << (width - ones) else None


# --- health and rates ---------------------------------------------------------------------

class Sample(NamedTuple):
    """CPU and traffic counters at one moment, for figures over a window.

    A NamedTuple, not a dataclass: see `_runner.Outcome`."""

    at: float
    cpu_busy_s: float
    cpu_total_s: float
    own_cpu_s: float
    net: dict[str, tuple[int, int]]


def take_sample() -> Sample:
    t = psutil.cpu_times()
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0)
    own = psutil.Process().cpu_times()
    net = {n: (c.bytes_recv, c.bytes_sent)
           for n, c in psutil.net_io_counters(pernic=True).items()}
    return Sample(time.monotonic(), total - idle, total, own.user + own.system, net)


def health(first: Sample, last: Sample) -> dict[str, Any]:
    """Utilisation; CPU is measured over the window with the agent's own CPU time removed."""
    cpu = None
    total = last.cpu_total_s - first.cpu_total_s
    if total > 0:
        busy = (last.cpu_busy_s - first.cpu_busy_s) - (last.own_cpu_s - first.own_cpu_s)
        cpu = round(min(100.0, max(0.0, 100.0 * busy / total)), 1)
    try:
        load = [round(x, 2) for x in psutil.getloadavg()]
    except (OSError, AttributeError):
        load = [None, None, None]
    return {
        "cpu_percent": cpu,
        "load_1m": load[0], "load_5m": load[1], "load_15m": load[2],
        "memory_percent": round(psutil.virtual_memory().percent, 1),
        "swap_percent": round(psutil.swap_memory().percent, 1),
    }


def rates(first: Sample, last: Sample) -> list[dict[str, Any]]:
    window = last.at - first.at
    if window <= 0:
        return []
    out = []
    for name in sorted(set(first.net) & set(last.net)):
        (rx0, tx0), (rx1, tx1) = first.net[name], last.net[name]
        # Counters can wrap or reset (driver reload): a negative delta is unknown, not negative.
        out.append({
            "interface": name,
            "rx_bytes_per_s": round((rx1 - rx0) / window, 1) if rx1 >= rx0 else None,
            "tx_bytes_per_s": round((tx1 - tx0) / window, 1) if tx1 >= tx0 else None,
            "window_s": round(window, 3),
        })
    return out[:256]
