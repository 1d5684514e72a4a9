"""The facts about a host that lists and exports show, taken from a report once.

The store keeps them beside each host's snapshot (`hosts.facts`, written at ingest), so an
export of 20,000 hosts decodes 20,000 small objects instead of 20,000 whole reports; an export
as of a past date takes them from the stored report of then, with this same function.
"""

from __future__ import annotations

from typing import Any

_LOCAL = ("127.", "::1", "fe80:")


def facts_of(report: dict[str, Any]) -> dict[str, Any]:
    system, hw = report["system"], report["hardware"]
    os = system["os"]
    nics = report["network"]["interfaces"]
    sizes = [d["size_bytes"] for d in hw["disks"] if d["size_bytes"] is not None]
    return {
        "hostname": system["hostname"], "fqdn": system["fqdn"], "serial": hw["serial"],
        "vendor": hw["vendor"], "model": hw["model"], "chassis": hw["chassis"],
        "cpu": hw["cpu"]["model"], "cpu_cores": hw["cpu"]["cores"],
        "ram_bytes": hw["memory"]["total_bytes"],
        "storage_bytes": sum(sizes) if sizes else None,
        "os_family": os["family"], "os_name": os["name"], "os_version": os["version"],
        "os_build": os["build"],
        # English product and edition from the OS's numbers (Windows); older agents and
        # other OSes have none. End-of-support lookups match it before the display name.
        "os_product": os.get("product"),
        "disk_percent": max((v["used_percent"] for v in hw["volumes"]
                             if v["used_percent"] is not None), default=None),
        "ips": [a["address"] for nic in nics for a in nic["addresses"]
                if not a["address"].startswith(_LOCAL)],
        "macs": sorted({nic["mac"] for nic in nics if nic.get("mac")}),
    }
