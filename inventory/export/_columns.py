"""Each report's columns: name, order, type, unit and description.

Columns that are report fields take their description and unit from the field dictionary
(`estate.inventory.fields`); the rest are the hub's own facts and say so here, once. The XLSX
"Fields" sheet and the JSON `columns` member are these definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

from estate.inventory.fields import BY_PATH

# A column's `type` says how its values are typed in XLSX and JSON: text, int (a whole
# number), bytes (a whole number of bytes), float, datetime (UTC), date, or bool.


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    type: str
    description: str
    unit: str | None = None


def _field(key: str, path: str, title: str, type_: str = "text") -> Column:
    f = BY_PATH[path]
    return Column(key, title, type_, f"{f.description} (report field {path})", f.unit)


HOST_ID = Column("agent_id", "host id", "text", "The host's agent id, given at enrolment.")
AGENCY = Column("agency", "agency", "text", "Agency, from the agent's enrolment.")
SITE = Column("site", "site", "text", "Site, from the agent's enrolment.")
HOSTNAME = _field("hostname", "system.hostname", "hostname")
SERIAL = _field("serial", "hardware.serial", "serial")
OS_NAME = _field("os_name", "system.os.name", "OS")
OS_VERSION = _field("os_version", "system.os.version", "OS version")
OS_BUILD = _field("os_build", "system.os.build", "OS build")
END_OF_SUPPORT = Column("end_of_support", "OS end of support", "date",
                        "Last day of the vendor's security support for this OS version, from "
                        "Estate's end-of-support table; empty when the table does not know "
                        "the OS.")
SUPPORTED = Column("supported", "supported", "bool",
                   "Whether the OS was within vendor support on the export's date (as-of "
                   "date if given); empty when unknown.")
LAST_SEEN = Column("last_seen", "last seen", "datetime",
                   "When the hub last received a report from the host (hub clock, UTC).")
STATUS = Column("status", "status", "text",
                "online (agent connected), offline, stale (no report for two intervals) or "
                "revoked, at the export's date (as-of date if given).")

INVENTORY = (
    HOST_ID, AGENCY, SITE, HOSTNAME,
    _field("fqdn", "system.fqdn", "FQDN"),
    SERIAL,
    _field("vendor", "hardware.vendor", "vendor"),
    _field("model", "hardware.model", "model"),
    _field("chassis", "hardware.chassis", "chassis"),
    _field("cpu", "hardware.cpu.model", "CPU"),
    _field("cpu_cores", "hardware.cpu.cores", "CPU cores", "int"),
    _field("ram_bytes", "hardware.memory.total_bytes", "RAM", "bytes"),
    Column("storage_bytes", "storage", "bytes",
           "Total capacity of the host's physical disks (sum of report field "
           "hardware.disks[].size_bytes).", "bytes"),
    _field("os_family", "system.os.family", "OS family"),
    OS_NAME, OS_VERSION, OS_BUILD, END_OF_SUPPORT, SUPPORTED,
    Column("ip_addresses", "IP addresses", "text",
           "Addresses of the host's interfaces, except loopback and link-local, separated by "
           "'; ' (report field network.interfaces[].addresses[].address)."),
    Column("mac_addresses", "MAC addresses", "text",
           "Hardware addresses of the host's interfaces, separated by '; ' (report field "
           "network.interfaces[].mac)."),
    Column("first_seen", "first seen", "datetime",
           "When the hub received the host's first report (hub clock, UTC)."),
    LAST_SEEN, STATUS,
)

CHANGES = (
    Column("at", "time", "datetime", "When the hub received the report that showed the change "
                                      "(hub clock, UTC)."),
    HOST_ID, HOSTNAME, AGENCY,
    Column("kind", "change", "text", "What changed: memory_changed, disk_added, disk_removed, "
                                     "serial_changed, os_upgraded, ip_changed, mac_changed, "
                                     "software_added, software_removed, software_updated, ..."),
    Column("subject", "subject", "text", "What the change is about (a disk, an interface, a "
                                         "package), when it has one."),
    Column("old_value", "old value", "text", "The value before the change."),
    Column("new_value", "new value", "text", "The value after the change."),
)

STALE = (
    HOST_ID, AGENCY, SITE, HOSTNAME, SERIAL, LAST_SEEN,
    Column("days_unseen", "days unseen", "int",
           "Whole days between the last report and the export's date.", "days"),
    Column("last_ip", "last IP", "text", "The first IP address of the host's last report."),
    STATUS,
)

UNSUPPORTED = (
    HOST_ID, AGENCY, SITE, HOSTNAME, SERIAL, OS_NAME, OS_VERSION, OS_BUILD,
    Column("support_entry", "table entry", "text",
           "The entry of Estate's end-of-support table the OS matched."),
    END_OF_SUPPORT,
    Column("days_past", "days past end", "int",
           "Whole days between the end of support and the export's date.", "days"),
    Column("eos_source", "source", "text", "Where the end-of-support date comes from."),
    LAST_SEEN, STATUS,
)

RECONCILE = (
    Column("outcome", "outcome", "text",
           "in both; in both, conflicting (see conflicts); register only (never seen); "
           "register only (not seen for N days); estate only (seen but not in the register)."),
    Column("register_line", "register line", "int",
           "Line of the register file the row comes from (the header is line 1).", None),
    Column("register_asset_tag", "register asset tag", "text", "Asset tag in the register."),
    Column("register_serial", "register serial", "text", "Serial number in the register."),
    Column("register_hostname", "register hostname", "text", "Hostname in the register."),
    Column("register_mac", "register MAC", "text", "MAC address in the register."),
    Column("matched_by", "matched by", "text",
           "Which register column matched the host: serial, hostname or mac."),
    HOST_ID, AGENCY, SITE, HOSTNAME, SERIAL, LAST_SEEN,
    Column("conflicts", "conflicts", "text",
           "Fields where the register and the estate disagree: field: register value / "
           "estate value, separated by '; '."),
)

def _count(key: str, title: str, description: str) -> Column:
    return Column(key, title, "int", description + " Summary rows only.")


# Per host and control, then a summary row per site and per agency (`level` tells which).
COMPLIANCE = (
    Column("level", "level", "text",
           "host: one host's result for one control; site or agency: the summary of the "
           "hosts of that site or agency."),
    HOST_ID, AGENCY, SITE, HOSTNAME,
    Column("control", "control", "text", "The control's id in the policy."),
    Column("title", "control title", "text", "The control's title in the policy."),
    Column("theme", "theme", "text",
           "Cyber Essentials theme: firewalls, secure_configuration, user_access_control, "
           "malware_protection or security_update_management."),
    Column("severity", "severity", "text", "critical, high, medium or low."),
    Column("outcome", "outcome", "text",
           "pass, fail, or unknown (a fact the control reads was not reported)."),
    Column("fact", "fact", "text", "The fact(s) the control read, as the host reported them."),
    Column("reason", "reason", "text", "Why the control passed, failed or is unknown."),
    Column("since", "since", "datetime",
           "When the host's result for this control last changed to this outcome (hub clock, "
           "UTC)."),
    _count("hosts", "hosts", "Hosts evaluated."),
    _count("compliant", "compliant hosts", "Hosts with no failed and no unknown control."),
    _count("passed", "passed", "Results that pass, over every host and control."),
    _count("failed", "failed", "Results that fail."),
    _count("unknown", "unknown", "Results that are unknown."),
    Column("share", "share passing", "float",
           "passed / (passed + failed + unknown), in percent. Summary rows only.", "%"),
)

def _share(key: str, title: str, description: str) -> Column:
    return Column(key, title, "float", description + " In percent, two decimals; empty when "
                                                      "no time was counted.", "%")


def _seconds(key: str, title: str, description: str) -> Column:
    return Column(key, title, "int", description + " Whole seconds.", "s")


_COUNTED = ("Counted from the window's start, or the host's enrolment if later, to the "
            "window's end, or its revocation if sooner (hub clock, UTC).")

# Availability in a window [since, until] from presence history: online while the agent's SSH
# connection to a hub was up. Three tables: hosts (the report's own rows, and the CSV), sites
# and outages.
AVAILABILITY = (
    AGENCY, SITE, HOSTNAME, HOST_ID,
    Column("counted_from", "counted from", "datetime", _COUNTED),
    Column("counted_until", "counted until", "datetime", _COUNTED),
    _share("online_share", "online share", "Share of the counted time the host was online."),
    _seconds("offline_s", "time offline", "Counted time the host was offline."),
    Column("outages", "outages", "int", "Outages in the counted time (see the outages table)."),
    _seconds("longest_outage_s", "longest outage", "The longest of them; 0 when none."),
    Column("revoked", "revoked", "bool",
           "Whether the host's key was revoked by the window's end: it is counted until then."),
)

AVAILABILITY_SITES = (
    AGENCY, SITE,
    Column("hosts", "hosts", "int", "Hosts of the site counted in the window."),
    _share("average_share", "average online share", "The mean of its hosts' online shares."),
    _share("worst_share", "worst online share", "The lowest of its hosts' online shares."),
    Column("worst_host", "worst host", "text", "The hostname (else host id) with the lowest "
                                               "share; the first by name on a tie."),
    Column("outages", "outages", "int", "Outages of its hosts in the window."),
)

AVAILABILITY_OUTAGES = (
    AGENCY, SITE, HOSTNAME, HOST_ID,
    Column("start", "start", "datetime",
           "When the host went offline, or the start of its counted time if it was offline "
           "then (hub clock, UTC)."),
    Column("end", "end", "datetime",
           "When it came back online, or the end of its counted time if it had not (hub "
           "clock, UTC)."),
    _seconds("duration_s", "duration", "end - start."),
    Column("ongoing", "ongoing", "bool",
           "Whether the host was still offline at the window's end (not revoked)."),
)

REPORTS: dict[str, tuple[Column, ...]] = {
    "inventory": INVENTORY, "changes": CHANGES, "stale": STALE, "unsupported": UNSUPPORTED,
    "reconcile": RECONCILE, "compliance": COMPLIANCE, "availability": AVAILABILITY,
}


@dataclass(frozen=True)
class Table:
    name: str  # its XLSX sheet and JSON member
    columns: tuple[Column, ...]


# Reports of more than one table: the name of their own rows' table (REPORTS; its XLSX sheet),
# then their further tables. XLSX writes each table on a sheet of its own and JSON each in a
# member of its own; CSV holds one table, the report's own rows.
TABLES: dict[str, tuple[str, tuple[Table, ...]]] = {
    "availability": ("hosts", (Table("sites", AVAILABILITY_SITES),
                               Table("outages", AVAILABILITY_OUTAGES))),
}
