"""The host list's columns: what the console shows and `hosts` API rows carry, in order.

Titles and units come from the field dictionary where a column is a report field; the rest
(agency, site, status, last seen) are the hub's own facts.
"""

from __future__ import annotations

from dataclasses import dataclass

from estate.inventory.fields import BY_PATH


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    description: str
    numeric: bool = False


def _from_field(key: str, path: str, title: str | None = None, numeric: bool = False) -> Column:
    f = BY_PATH[path]
    return Column(key, title or f.title, f.description, numeric)


HOST_COLUMNS: tuple[Column, ...] = (
    Column("agent_id", "id", "Agent id given at enrolment."),
    _from_field("hostname", "system.hostname"),
    Column("agency", "agency", "Agency, from enrolment."),
    Column("site", "site", "Site, from enrolment."),
    Column("status", "status", "online, offline, stale (no report for two intervals) or "
                               "revoked."),
    Column("net", "net", "Connectivity from the host's probes: ok, degraded (a probe failing, "
                         "or the round trip to the hub over 500 ms) or down (its link, or "
                         "every probe, failing); the worst failing probe and the hub round "
                         "trip in ms."),
    Column("os", "OS", "Operating system name and version."),
    _from_field("model", "hardware.model"),
    _from_field("serial", "hardware.serial"),
    _from_field("cpu", "hardware.cpu.model", "CPU"),
    _from_field("ram_bytes", "hardware.memory.total_bytes", "RAM", numeric=True),
    Column("disk_percent", "disk %", "Use of the fullest volume.", numeric=True),
    Column("ip", "IP", "First address that is not loopback or link-local."),
    Column("last_seen", "last seen", "When the hub last received a report (hub clock, UTC)."),
    Column("remote", "remote", "Remote access (estate ssh): ready (a shell can be opened "
                               "now), allowed (the hub allows it; the agent has not offered "
                               "it), asked (the agent offers it; the hub does not allow it), "
                               "off."),
    Column("compliance", "compliance", "Compliance with the hub's policy: share of controls "
                                       "passing, counts of passed, failed and unknown, and "
                                       "the worst failing control (docs/compliance.md); "
                                       "empty until evaluated.", numeric=True),
)
COLUMN_KEYS = tuple(c.key for c in HOST_COLUMNS)
