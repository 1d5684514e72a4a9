"""Linux platform implementation."""

from __future__ import annotations

import os
import shutil
import socket
import struct
from typing import Any

from estate.agent.collect._common import (
    chassis_name,
    clean,
    hypervisor_name,
    read_text,
    run_tool,
)
from estate.agent.collect._posix import dns_servers, timezone

__all__ = ["DEFAULT_TIMEOUT_S", "cpu_model", "default_gateway", "disks", "dns_servers", "identity",
           "os_info", "software", "timezone", "virtualization"]

DEFAULT_TIMEOUT_S = 5.0

DMI = "/sys/class/dmi/id"
SYS_BLOCK = "/sys/block"
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")

_UNAME = os.uname()  # what platform.release() and .machine() read; fixed while the agent runs
_CONTAINERS = {"docker", "podman", "lxc", "lxc-libvirt", "systemd-nspawn", "openvz", "rkt",
               "wsl", "proot", "pouch", "container-other"}
def os_info(problems: list[str]) -> dict[str, Any]:
    rel = parse_os_release(_read_first(OS_RELEASE) or "")
    version = rel.get("VERSION_ID")
    # Debian's point release (12.5) lives only in /etc/debian_version; auditors want it.
    debian = (read_text("/etc/debian_version") or "").strip()
    if rel.get("ID") == "debian" and version and debian.startswith(version + "."):
        version = debian
    return {
        "family": "linux",
        "name": rel.get("NAME") or "Linux",
        "version": version,
        "build": rel.get("BUILD_ID"),
        # Not platform.release() and .machine(): `platform` is a large import for a one-shot
        # collection, and they read os.uname() (blanking "unknown") all the same.
        "kernel": _known(_UNAME.release),
        "arch": _known(_UNAME.machine),
    }


def _known(value: str) -> str | None:
    return value if value and value != "unknown" else None


def parse_os_release(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().isidentifier():
            values[key.strip()] = value.strip().strip("\"'")
    return values


_virtualization_cache: dict[str, Any] = {}


def virtualization(problems: list[str]) -> dict[str, Any]:
    # A machine does not move between hypervisors while the agent runs: detect once.
    if not _virtualization_cache:
        found = _detect_virtualization(problems)
        if not problems:
            _virtualization_cache.update(found)
        return found
    return dict(_virtualization_cache)


def _detect_virtualization(problems: list[str]) -> dict[str, Any]:
    if shutil.which("systemd-detect-virt"):
        try:
            kind = run_tool(["systemd-detect-virt"], timeout_s=3).strip()
        except RuntimeError as exc:
            # It exits 1 and prints "none" on bare metal.
            kind = "none" if "exited 1" in str(exc) else ""
            if not kind:
                problems.append(str(exc))
        if kind:
            vtype = "none" if kind == "none" else "container" if kind in _CONTAINERS else "vm"
            return {"kind": kind, "type": vtype, "source": "systemd-detect-virt"}
    product = " ".join(filter(None, (read_text(f"{DMI}/sys_vendor"),
                                     read_text(f"{DMI}/product_name"))))
    hypervisor = hypervisor_name(product)
    if hypervisor:
        return {"kind": hypervisor, "type": "vm", "source": "dmi"}
    if " hypervisor " in f" {_cpu_flags()} ":
        return {"kind": "unknown", "type": "vm", "source": "cpuinfo"}
    # Last resort, and labelled as such: these files can be present for other reasons.
    if os.path.exists("/.dockerenv"):
        return {"kind": "docker", "type": "container", "source": "heuristic:/.dockerenv"}
    cgroup = read_text("/proc/1/cgroup") or ""
    for needle in ("docker", "kubepods", "lxc", "containerd"):
        if needle in cgroup:
            return {"kind": needle, "type": "container", "source": "heuristic:cgroup"}
    return {"kind": "none", "type": "none", "source": "dmi" if product else None}


def identity(problems: list[str]) -> dict[str, Any]:
    if not os.path.isdir(DMI):
        return _device_tree_identity()
    values = {}
    for name in ("sys_vendor", "product_name", "product_serial", "product_uuid", "bios_vendor",
                 "bios_version", "bios_date", "chassis_type"):
        try:
            with open(f"{DMI}/{name}", encoding="utf-8", errors="replace") as f:
                values[name] = f.read()
        except PermissionError:
            problems.append(f"{DMI}/{name}: permission denied (readable by root only)")
        except OSError:
            pass  # absent on this firmware: unknown
    try:
        chassis = chassis_name(int(values.get("chassis_type", "").strip()))
    except ValueError:
        chassis = None
    return {
        "vendor": clean(values.get("sys_vendor")),
        "model": clean(values.get("product_name")),
        "serial": clean(values.get("product_serial")),
        "uuid": (clean(values.get("product_uuid")) or "").lower() or None,
        "chassis": chassis,
        "bios": {"vendor": clean(values.get("bios_vendor")),
                 "version": clean(values.get("bios_version")),
                 "date": clean(values.get("bios_date"))},
    }


def _device_tree_identity() -> dict[str, Any]:
    """ARM boards (Raspberry Pi and the like) have a device tree instead of DMI."""
    model = clean(read_text("/proc/device-tree/model"))
    return {
        "vendor": None, "model": model,
        "serial": clean(read_text("/proc/device-tree/serial-number")),
        "uuid": None, "chassis": None,
        "bios": {"vendor": None, "version": None, "date": None},
    }


def cpu_model(problems: list[str]) -> str | None:
    for line in (read_text("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
            return clean(value)
    import platform

    return clean(platform.processor())


def disks(problems: list[str]) -> list[dict[str, Any]]:
    """Physical disks: block devices backed by a device (not loop, zram, dm or md)."""
    result = []
    try:
        names = sorted(os.listdir(SYS_BLOCK))
    except OSError as exc:
        problems.append(f"{SYS_BLOCK}: {exc.strerror}")
        return []
    for name in names:
        base = f"{SYS_BLOCK}/{name}"
        if not os.path.exists(f"{base}/device"):
            continue
        sectors = read_text(f"{base}/size")
        rotational = read_text(f"{base}/queue/rotational")
        result.append({
            "name": name,
            "model": clean(read_text(f"{base}/device/model")),
            # SCSI/SATA expose device/serial; virtio and NVMe expose serial on the disk itself.
            "serial": clean(read_text(f"{base}/device/serial") or read_text(f"{base}/serial")),
            # /sys/block/*/size counts 512-byte sectors whatever the disk's sector size.
            "size_bytes": int(sectors) * 512 if sectors and sectors.strip().isdigit() else None,
            "rotational": rotational.strip() == "1" if rotational else None,
        })
    return result[:256]


# The package databases; when neither changed since the last run, neither did the packages.
_PACKAGE_DBS = ("/var/lib/dpkg/status", "/var/lib/rpm/rpmdb.sqlite", "/var/lib/rpm/Packages")
_software_cache: dict[str, Any] = {}


def software(problems: list[str]) -> tuple[str | None, list[dict[str, Any]] | None]:
    stamp = _package_db_stamp()
    if stamp is not None and _software_cache.get("stamp") == stamp:
        return _software_cache["result"]  # type: ignore[no-any-return]
    if shutil.which("dpkg-query"):
        out = run_tool(["dpkg-query", "-W", "-f",
                        "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"])
        result: tuple[str | None, list[dict[str, Any]] | None] = ("dpkg", parse_dpkg(out))
    elif shutil.which("rpm"):
        out = run_tool(["rpm", "-qa", "--queryformat",
                        "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{ARCH}\n"])
        result = ("rpm", parse_rpm(out))
    else:
        problems.append("no package manager found (looked for dpkg-query and rpm)")
        return None, None
    _software_cache.update(stamp=stamp, result=result)
    return result


def _package_db_stamp() -> tuple[str, int, int] | None:
    """(path, mtime, size) of the package database, to skip re-reading an unchanged one."""
    for path in _PACKAGE_DBS:
        try:
            st = os.stat(path)
        except OSError:
            continue
        return path, st.st_mtime_ns, st.st_size
    return None


def parse_dpkg(out: str) -> list[dict[str, Any]]:
    packages = []
    for line in out.splitlines():
        parts = line.split("\t")
        # "ii " is installed; "rc " (removed, config files left) is not.
        if len(parts) == 4 and parts[0].startswith("ii"):
            packages.append({"name": parts[1], "version": parts[2] or None,
                             "arch": parts[3] or None, "publisher": None})
    return packages


def parse_rpm(out: str) -> list[dict[str, Any]]:
    packages = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0]:
            version = parts[1][2:] if parts[1].startswith("0:") else parts[1]
            arch = None if parts[2] == "(none)" else parts[2]
            packages.append({"name": parts[0], "version": version, "arch": arch,
                             "publisher": None})
    return packages


def default_gateway(problems: list[str]) -> dict[str, Any] | None:
    return parse_proc_net_route(read_text("/proc/net/route") or "")


def parse_proc_net_route(text: str) -> dict[str, Any] | None:
    """The IPv4 default route with the lowest metric, from /proc/net/route."""
    best = None
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8 or f[1] != "00000000" or f[7] != "00000000":
            continue
        flags, gateway, metric = int(f[3], 16), int(f[2], 16), int(f[6])
        if not flags & 0x2 or not gateway:  # RTF_GATEWAY
            continue
        # The kernel writes the address in host byte order as hex.
        address = socket.inet_ntoa(struct.pack("=I", gateway))
        if best is None or metric < best[0]:
            best = (metric, {"address": address, "interface": f[0]})
    return best[1] if best else None


def _cpu_flags() -> str:
    for line in (read_text("/proc/cpuinfo") or "").splitlines():
        if line.startswith("flags"):
            return line.partition(":")[2]
    return ""




def _read_first(paths: tuple[str, ...]) -> str | None:
    for p in paths:
        text = read_text(p)
        if text is not None:
            return text
    return None
