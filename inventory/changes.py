"""Change detection: typed events from comparing a host's new snapshot with its last one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from estate.inventory.errors import EstateError

__all__ = ["KINDS", "MAX_CHANGES", "MAX_CHANGE_BYTES", "MAX_SOFTWARE_CHANGES",
           "MAX_VALUE_BYTES", "Change", "TooLarge", "bounded", "cut", "diff", "software_changes",
           "state_changes", "state_digest"]

# Memory totals move by a few MB between kernels (reserved memory); a DIMM is far more.
MEMORY_TOLERANCE = 0.02

# One report may not turn into more change rows than this. An agent alternating two
# 100,000-package lists wrote 200,000 rows per report and stalled every other agent's ack;
# the full lists stay in the stored report, so a summary loses nothing an auditor needs.
MAX_SOFTWARE_CHANGES = 100
MAX_CHANGES = 200
# Counting events is not enough: 200 `ip_changed` events of 100 long addresses each wrote
# 13 KB a value, 2.6 MB a report, kept 400 days. So each old or new value is cut past
# MAX_VALUE_BYTES (saying how much was left out), and past MAX_CHANGE_BYTES of values in one
# report the rest is summarised. The full values stay in the stored report.
MAX_VALUE_BYTES = 1024
MAX_CHANGE_BYTES = 64 * 1024
_SOFTWARE_KINDS = {"software_installed": "installed", "software_removed": "removed",
                   "software_updated": "updated"}

KINDS = {
    "hostname_changed": "Host name changed",
    "memory_changed": "Installed memory changed",
    "cpu_changed": "Processor changed",
    "disk_added": "Disk added",
    "disk_removed": "Disk removed",
    "disk_resized": "Disk size changed",
    "serial_changed": "System serial number changed",
    "uuid_changed": "System UUID changed",
    "model_changed": "System vendor or model changed",
    "bios_changed": "Firmware version changed",
    "os_changed": "Operating system replaced",
    "os_upgraded": "Operating system version changed",
    "kernel_changed": "Kernel changed",
    "nic_added": "Network interface added",
    "nic_removed": "Network interface removed",
    "mac_changed": "MAC address changed",
    "ip_changed": "IP addresses changed",
    "software_installed": "Software installed",
    "software_removed": "Software removed",
    "software_updated": "Software updated",
    "software_changed": "Software changed (package list not available, or too many "
                        "changes to list one by one)",
    "changes_summarised": "More changes than one report may record (counted by kind)",
}


class TooLarge(EstateError):
    """A read of the change history would be over its byte budget (see Store.scoped_changes)."""


@dataclass(frozen=True)
class Change:
    """One change event; values are JSON-friendly (str, int, list) or None."""

    kind: str
    subject: str | None
    old: Any
    new: Any

    def old_text(self) -> str | None:
        return _text(self.old)

    def new_text(self) -> str | None:
        return _text(self.new)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def diff(old: dict[str, Any], new: dict[str, Any],
         old_packages: list[dict[str, Any]] | None,
         new_packages: list[dict[str, Any]] | None) -> list[Change]:
    """Changes from snapshot `old` to `new` (both full reports without package lists).

    Args:
        old_packages / new_packages: the package lists; None when unknown. When the
            software hash changed but a list is missing, one `software_changed` is emitted.
    """
    return bounded(state_changes(old, new) + software_changes(
        (old.get("software") or {}).get("hash"), (new.get("software") or {}).get("hash"),
        old_packages, new_packages))


def cut(text: str | None, limit: int = MAX_VALUE_BYTES) -> str | None:
    """`text` if it is at most `limit` bytes of UTF-8, else its start and how much is left out."""
    if text is None:
        return None
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", "ignore")  # never half a character
    left = len(data) - len(kept.encode("utf-8", "surrogatepass"))
    return f"{kept}… [{left} more bytes in the stored report]"


def _cut_values(c: Change, limit: int) -> Change:
    old, new = c.old_text(), c.new_text()
    cut_old, cut_new = cut(old, limit), cut(new, limit)
    if cut_old is old and cut_new is new:
        return c  # nothing cut: the values keep their types
    return Change(c.kind, c.subject, cut_old, cut_new)


def _size(c: Change) -> int:
    return sum(len(t.encode("utf-8", "surrogatepass"))
               for t in (c.subject, c.old_text(), c.new_text()) if t is not None)


def bounded(changes: list[Change], max_software: int = MAX_SOFTWARE_CHANGES,
            max_total: int = MAX_CHANGES, max_value: int = MAX_VALUE_BYTES,
            max_bytes: int = MAX_CHANGE_BYTES) -> list[Change]:
    """The events one report records: at most `max_total`, software summarised past a point.

    More than `max_software` software events become one `software_changed` event whose new
    value counts them (`installed`, `removed`, `updated`). Each old and new value is cut past
    `max_value` bytes. Past `max_total` events in all, or past `max_bytes` bytes of subjects
    and values, the rest become one `changes_summarised` event whose new value counts them
    by kind.
    """
    software = [c for c in changes if c.kind in _SOFTWARE_KINDS]
    if len(software) > max_software:
        counts = dict.fromkeys(_SOFTWARE_KINDS.values(), 0)
        for c in software:
            counts[_SOFTWARE_KINDS[c.kind]] += 1
        changes = [c for c in changes if c.kind not in _SOFTWARE_KINDS]
        changes.append(Change("software_changed", "summary", None, counts))
    changes = [_cut_values(c, max_value) for c in changes]
    # Over `max_total`, one place is left for the summary.
    stop = len(changes) if len(changes) <= max_total else max_total - 1
    size = 0
    for i in range(stop):
        size += _size(changes[i])
        if size > max_bytes:
            stop = i
            break
    if stop == len(changes):
        return changes
    kept, rest = changes[:stop], changes[stop:]
    by_kind: dict[str, int] = {}
    for c in rest:
        by_kind[c.kind] = by_kind.get(c.kind, 0) + 1
    return [*kept, Change("changes_summarised", None, None, by_kind)]


def state_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Changes of system, hardware and network between two snapshots."""
    changes = list(_system(old, new))
    changes += _hardware(old.get("hardware") or {}, new.get("hardware") or {})
    changes += _network(old.get("network") or {}, new.get("network") or {})
    return changes


def software_changes(old_hash: str | None, new_hash: str | None,
                     old_packages: list[dict[str, Any]] | None,
                     new_packages: list[dict[str, Any]] | None) -> list[Change]:
    if old_hash == new_hash or new_hash is None:
        return []
    if old_packages is not None and new_packages is not None:
        return _software(old_packages, new_packages)
    if old_hash is not None:
        return [Change("software_changed", None, old_hash, new_hash)]
    return []


def state_digest(report: dict[str, Any]) -> str:
    """A digest of exactly what `state_changes` compares.

    Equal digests mean no state change, so the hub can skip loading and comparing the last
    snapshot for the vast majority of reports (nothing changed since five minutes ago).
    """
    import hashlib

    system, hardware, network = report["system"], report["hardware"], report["network"]
    key = [
        system.get("hostname"), system.get("os"),
        (hardware.get("memory") or {}).get("total_bytes"),
        {k: (hardware.get("cpu") or {}).get(k) for k in ("model", "cores", "threads")},
        hardware.get("serial"), hardware.get("uuid"), hardware.get("vendor"),
        hardware.get("model"), (hardware.get("bios") or {}).get("version"),
        [_disk_text(d) for d in hardware.get("disks") or []],
        [(i["name"], i.get("mac"), _addresses(i)) for i in network.get("interfaces") or []],
    ]
    text = json.dumps(key, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _system(old: dict[str, Any], new: dict[str, Any]) -> Iterator[Change]:
    o, n = old.get("system") or {}, new.get("system") or {}
    if o.get("hostname") != n.get("hostname"):
        yield Change("hostname_changed", None, o.get("hostname"), n.get("hostname"))
    oos, nos = o.get("os") or {}, n.get("os") or {}
    if (oos.get("family"), oos.get("name")) != (nos.get("family"), nos.get("name")):
        yield Change("os_changed", None, _os_text(oos), _os_text(nos))
    elif (oos.get("version"), oos.get("build")) != (nos.get("version"), nos.get("build")):
        yield Change("os_upgraded", nos.get("name"), _os_text(oos), _os_text(nos))
    if oos.get("kernel") != nos.get("kernel"):
        yield Change("kernel_changed", None, oos.get("kernel"), nos.get("kernel"))


def _os_text(os_: dict[str, Any]) -> str | None:
    parts = [os_.get("name"), os_.get("version")]
    if os_.get("build"):
        parts.append(f"(build {os_['build']})")
    text = " ".join(str(p) for p in parts if p)
    return text or None


def _hardware(o: dict[str, Any], n: dict[str, Any]) -> Iterator[Change]:
    om = (o.get("memory") or {}).get("total_bytes")
    nm = (n.get("memory") or {}).get("total_bytes")
    if om and nm and abs(nm - om) > MEMORY_TOLERANCE * om:
        yield Change("memory_changed", None, om, nm)
    ocpu, ncpu = o.get("cpu") or {}, n.get("cpu") or {}
    keys = ("model", "cores", "threads")
    if [ocpu.get(k) for k in keys] != [ncpu.get(k) for k in keys]:
        yield Change("cpu_changed", None, {k: ocpu.get(k) for k in keys},
                     {k: ncpu.get(k) for k in keys})
    for field, kind in (("serial", "serial_changed"), ("uuid", "uuid_changed")):
        if o.get(field) != n.get(field):
            yield Change(kind, None, o.get(field), n.get(field))
    if (o.get("vendor"), o.get("model")) != (n.get("vendor"), n.get("model")):
        yield Change("model_changed", None, f"{o.get('vendor')} {o.get('model')}",
                     f"{n.get('vendor')} {n.get('model')}")
    ob, nb = (o.get("bios") or {}).get("version"), (n.get("bios") or {}).get("version")
    if ob != nb:
        yield Change("bios_changed", None, ob, nb)
    yield from _disks(o.get("disks") or [], n.get("disks") or [])


def _disk_key(d: dict[str, Any]) -> str:
    # A serial follows the disk if it moves to another port; the name is the fallback.
    return f"serial:{d['serial']}" if d.get("serial") else f"name:{d.get('name')}"


def _disks(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> Iterator[Change]:
    o = {_disk_key(d): d for d in old}
    n = {_disk_key(d): d for d in new}
    for key in sorted(n.keys() - o.keys()):
        yield Change("disk_added", n[key].get("name"), None, _disk_text(n[key]))
    for key in sorted(o.keys() - n.keys()):
        yield Change("disk_removed", o[key].get("name"), _disk_text(o[key]), None)
    for key in sorted(o.keys() & n.keys()):
        if o[key].get("size_bytes") != n[key].get("size_bytes"):
            yield Change("disk_resized", n[key].get("name"), o[key].get("size_bytes"),
                         n[key].get("size_bytes"))


def _disk_text(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d.get(k) for k in ("name", "model", "serial", "size_bytes")}


def _network(o: dict[str, Any], n: dict[str, Any]) -> Iterator[Change]:
    oi = {i["name"]: i for i in o.get("interfaces") or []}
    ni = {i["name"]: i for i in n.get("interfaces") or []}
    for name in sorted(ni.keys() - oi.keys()):
        yield Change("nic_added", name, None, ni[name].get("mac"))
    for name in sorted(oi.keys() - ni.keys()):
        yield Change("nic_removed", name, oi[name].get("mac"), None)
    for name in sorted(oi.keys() & ni.keys()):
        if oi[name].get("mac") != ni[name].get("mac"):
            yield Change("mac_changed", name, oi[name].get("mac"), ni[name].get("mac"))
        oa, na = _addresses(oi[name]), _addresses(ni[name])
        if oa != na:
            yield Change("ip_changed", name, oa, na)


def _addresses(nic: dict[str, Any]) -> list[str]:
    return sorted(f"{a['address']}/{a.get('prefix')}" for a in nic.get("addresses") or [])


def _software(old: list[dict[str, Any]], new: list[dict[str, Any]],
              limit: int = MAX_SOFTWARE_CHANGES) -> list[Change]:
    """One event per package, or past `limit` of them the summary `bounded` would make,
    counted without building (and sorting) 200,000 events first."""
    def index(pkgs: list[dict[str, Any]]) -> dict[str, str | None]:
        return {f"{p['name']}:{p['arch']}" if p.get("arch") else p["name"]: p.get("version")
                for p in pkgs}

    o, n = index(old), index(new)
    installed, removed = n.keys() - o.keys(), o.keys() - n.keys()
    updated = [name for name in o.keys() & n.keys() if o[name] != n[name]]
    if len(installed) + len(removed) + len(updated) > limit:
        return [Change("software_changed", "summary", None,
                       {"installed": len(installed), "removed": len(removed),
                        "updated": len(updated)})]
    return ([Change("software_installed", name, None, n[name]) for name in sorted(installed)]
            + [Change("software_removed", name, o[name], None) for name in sorted(removed)]
            + [Change("software_updated", name, o[name], n[name])
               for name in sorted(updated)])
