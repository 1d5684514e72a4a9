"""The field dictionary: every field of report `estate.report/1`, described once.

Validation (`estate.inventory.report`), export headers, the console's column titles and
`docs/report.md` are all derived from this table, so a field is added here or nowhere.

Paths use dots for object members and `[]` for list items: `hardware.disks[].size_bytes`.
Stdlib only: the agent imports this through `estate.inventory.report`.
"""

from __future__ import annotations

from typing import NamedTuple

ALL = ("linux", "windows", "macos")
LINUX = ("linux",)
POSIX = ("linux", "macos")
WINDOWS = ("windows",)
MACOS = ("macos",)

# Kinds of value. "object" and "list" are containers; the rest are leaves.
KINDS = ("str", "int", "float", "bool", "datetime", "object", "list")


class Field(NamedTuple):
    """One field of the report. A NamedTuple, not a dataclass: the agent's one-shot
    `estate-agent collect` validates through this table, and `dataclasses` imports `inspect`.

    Attributes:
        path: dotted path; `[]` marks the items of a list.
        kind: one of KINDS.
        description: what the value means, for operators and auditors.
        unit: unit of a number ("bytes", "ms", "%", "MHz", "Mbit/s", "s"), else None.
        platforms: where the agent can fill it.
        nullable: whether `null` ("could not tell") is allowed.
        exported: whether inventory exports carry it as a column.
        max_len: longest string accepted (characters).
        max_items: longest list accepted.
        minimum / maximum: range of a number.
        choices: the only strings accepted, when the set is closed.
        optional: may be absent, read as null: a field added after agents that do not send
            it were released, so their reports stay valid. A new agent sends it wherever
            its OS has the value (`platforms`).
    """

    path: str
    kind: str
    description: str
    unit: str | None = None
    platforms: tuple[str, ...] = ALL
    nullable: bool = True
    exported: bool = False
    max_len: int = 256
    max_items: int = 0
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False

    @property
    def title(self) -> str:
        """Column title: the last path segment, readable."""
        leaf = self.path.rsplit(".", 1)[-1].replace("[]", "")
        return leaf.replace("_", " ")


def _f(path: str, kind: str, description: str, **kw: object) -> Field:
    return Field(path, kind, description, **kw)  # type: ignore[arg-type]


NONNEG = {"minimum": 0}
PERCENT = {"minimum": 0, "maximum": 100, "unit": "%"}
BYTES = {"minimum": 0, "unit": "bytes"}

FIELDS: tuple[Field, ...] = (
    _f("schema", "str", "Report schema name and version.", nullable=False,
       choices=("estate.report/1",)),
    _f("report_id", "str", "Unique id of this report: agent id, boot epoch, sequence.",
       nullable=False, max_len=128),
    _f("collected_at", "datetime", "When the agent collected the report (agent clock, UTC).",
       nullable=False),
    _f("agent", "object", "The reporting agent.", nullable=False),
    _f("agent.id", "str", "Agent id given at enrolment; null before enrolment.", max_len=64),
    _f("agent.version", "str", "Estate agent version.", nullable=False, max_len=32),
    _f("agent.interval_s", "float", "Seconds between reports; the hub calls a host stale "
       "after two intervals without one.", unit="s", minimum=1, maximum=86400),
    _f("agent.dropped_reports", "int", "Reports the agent's spool dropped (full or too old) "
       "since it last told the hub.", minimum=0),
    _f("agent.probe_policy", "str", "SHA-256 (hex) of the hub's probe policy the agent holds, "
       "empty when none; absent when the agent does not take probes from the hub "
       "(accept_hub_probes = false) or predates them.", max_len=64, optional=True),
    # --- system -------------------------------------------------------------------------
    _f("system", "object", "Operating system and session facts.", nullable=False),
    _f("system.hostname", "str", "Short host name.", exported=True, max_len=255),
    _f("system.fqdn", "str", "Fully qualified domain name.", exported=True, max_len=255),
    _f("system.os", "object", "Operating system.", nullable=False),
    _f("system.os.family", "str", "OS family.", exported=True,
       choices=("linux", "windows", "macos", "bsd", "other")),
    _f("system.os.name", "str", "OS product name (e.g. Debian GNU/Linux, Windows 11 Pro).",
       exported=True),
    _f("system.os.version", "str", "OS version (e.g. 12, 23H2, 14.4).", exported=True, max_len=64),
    _f("system.os.build", "str", "OS build number where the OS has one.", exported=True,
       max_len=64),
    _f("system.os.kernel", "str", "Kernel release.", max_len=128),
    _f("system.os.arch", "str", "Machine architecture (x86_64, arm64, ...).", max_len=32),
    _f("system.os.product", "str",
       "Product and edition in English, identified from the OS's numbers rather than its "
       "localised name (e.g. Windows 11 Enterprise for Windows 11 Entreprise); what "
       "end-of-support lookups match. Null when the numbers are not known.",
       platforms=WINDOWS, max_len=128, optional=True),
    _f("system.boot_time", "datetime", "When the OS last booted (UTC).", exported=True),
    _f("system.timezone", "str", "Configured time zone (IANA name where known).", max_len=64),
    _f("system.windows_timezone", "str",
       "Windows' own id of the time zone (e.g. GMT Standard Time), which `system.timezone` "
       "gives as its IANA name (CLDR mapping).", platforms=WINDOWS, max_len=64, optional=True),
    _f("system.virtualization", "object", "Whether the OS runs in a VM or container.",
       nullable=False),
    _f("system.virtualization.kind", "str",
       "Hypervisor or container technology (kvm, vmware, docker, ...); 'none' on bare metal.",
       exported=True, max_len=64),
    _f("system.virtualization.type", "str", "vm, container or none.",
       choices=("vm", "container", "none")),
    _f("system.virtualization.source", "str",
       "How it was detected; 'heuristic:' marks a last-resort guess.", max_len=64),
    _f("system.users", "list", "Users logged in now.", nullable=False, max_items=256),
    _f("system.users[]", "object", "A login session.", nullable=False),
    _f("system.users[].name", "str", "User name.", nullable=False, max_len=128),
    _f("system.users[].terminal", "str", "Terminal or session.", max_len=64),
    _f("system.users[].host", "str", "Remote host the session came from.", max_len=255),
    _f("system.users[].started", "datetime", "When the session started (UTC)."),
    # --- hardware -----------------------------------------------------------------------
    _f("hardware", "object", "Hardware facts.", nullable=False),
    _f("hardware.vendor", "str", "System manufacturer.", exported=True, max_len=128),
    _f("hardware.model", "str", "System model.", exported=True, max_len=128),
    _f("hardware.serial", "str", "System serial number; null when absent or a placeholder.",
       exported=True, max_len=128),
    _f("hardware.uuid", "str", "SMBIOS system UUID; null when absent or a placeholder.",
       exported=True, max_len=64),
    _f("hardware.chassis", "str", "Chassis type (desktop, laptop, server, ...).", exported=True,
       max_len=64),
    _f("hardware.bios", "object", "Firmware.", nullable=False),
    _f("hardware.bios.vendor", "str", "Firmware vendor.", max_len=128),
    _f("hardware.bios.version", "str", "Firmware version.", exported=True, max_len=128),
    _f("hardware.bios.date", "str", "Firmware release date as the firmware states it.",
       max_len=32),
    _f("hardware.cpu", "object", "Processor.", nullable=False),
    _f("hardware.cpu.model", "str", "Processor model name.", exported=True),
    _f("hardware.cpu.cores", "int", "Physical cores.", exported=True, minimum=1, maximum=65536),
    _f("hardware.cpu.threads", "int", "Logical processors.", exported=True, minimum=1,
       maximum=65536),
    _f("hardware.cpu.frequency_mhz", "float", "Maximum (else current) clock.", unit="MHz",
       minimum=0, maximum=100000),
    _f("hardware.memory", "object", "Memory.", nullable=False),
    _f("hardware.memory.total_bytes", "int", "Installed memory visible to the OS.",
       exported=True, **BYTES),
    _f("hardware.memory.swap_total_bytes", "int", "Swap or page file size.", **BYTES),
    _f("hardware.disks", "list", "Physical disks.", nullable=False, max_items=256),
    _f("hardware.disks[]", "object", "A physical disk.", nullable=False),
    _f("hardware.disks[].name", "str", "Device name (sda, nvme0n1, PhysicalDrive0).",
       nullable=False, max_len=128),
    _f("hardware.disks[].model", "str", "Disk model.", max_len=128),
    _f("hardware.disks[].serial", "str", "Disk serial number.", max_len=128),
    _f("hardware.disks[].size_bytes", "int", "Capacity.", **BYTES),
    _f("hardware.disks[].rotational", "bool", "True for spinning disks, false for SSDs."),
    _f("hardware.volumes", "list", "Mounted file systems.", nullable=False, max_items=512),
    _f("hardware.volumes[]", "object", "A mounted file system.", nullable=False),
    _f("hardware.volumes[].mount", "str", "Mount point or drive letter.", nullable=False,
       max_len=1024),
    _f("hardware.volumes[].device", "str", "Block device or source.", max_len=1024),
    _f("hardware.volumes[].fstype", "str", "File system type.", max_len=32),
    _f("hardware.volumes[].total_bytes", "int", "Size.", **BYTES),
    _f("hardware.volumes[].used_bytes", "int", "Space used.", **BYTES),
    _f("hardware.volumes[].free_bytes", "int", "Space available to users.", **BYTES),
    _f("hardware.volumes[].used_percent", "float", "Share used.", **PERCENT),
    _f("hardware.battery", "object", "Battery; null when the machine has none."),
    _f("hardware.battery.percent", "float", "Charge.", **PERCENT),
    _f("hardware.battery.plugged", "bool", "On mains power."),
    _f("hardware.battery.seconds_left", "int", "Estimated time left on battery.", unit="s",
       minimum=0),
    # --- network ------------------------------------------------------------------------
    _f("network", "object", "Network configuration.", nullable=False),
    _f("network.interfaces", "list", "Network interfaces.", nullable=False, max_items=256),
    _f("network.interfaces[]", "object", "A network interface.", nullable=False),
    _f("network.interfaces[].name", "str", "Interface name.", nullable=False, max_len=128),
    _f("network.interfaces[].mac", "str", "Hardware address; null when none.", max_len=64),
    _f("network.interfaces[].addresses", "list", "Addresses on the interface.", nullable=False,
       max_items=256),
    _f("network.interfaces[].addresses[]", "object", "An address.", nullable=False),
    _f("network.interfaces[].addresses[].family", "str", "Address family.", nullable=False,
       choices=("ipv4", "ipv6")),
    _f("network.interfaces[].addresses[].address", "str", "The address.", nullable=False,
       max_len=64),
    _f("network.interfaces[].addresses[].prefix", "int", "Prefix length.", minimum=0,
       maximum=128),
    _f("network.interfaces[].speed_mbps", "int", "Link speed; null when unknown (virtio).",
       unit="Mbit/s", minimum=1, maximum=10_000_000),
    _f("network.interfaces[].duplex", "str", "Duplex mode.", choices=("full", "half")),
    _f("network.interfaces[].mtu", "int", "MTU.", unit="bytes", minimum=0, maximum=1_000_000),
    _f("network.interfaces[].up", "bool", "Interface is up."),
    _f("network.interfaces[].counters", "object", "Traffic counters since boot."),
    _f("network.interfaces[].counters.bytes_sent", "int", "Bytes sent.", **BYTES),
    _f("network.interfaces[].counters.bytes_recv", "int", "Bytes received.", **BYTES),
    _f("network.interfaces[].counters.packets_sent", "int", "Packets sent.", **NONNEG),
    _f("network.interfaces[].counters.packets_recv", "int", "Packets received.", **NONNEG),
    _f("network.interfaces[].counters.errors_in", "int", "Receive errors.", **NONNEG),
    _f("network.interfaces[].counters.errors_out", "int", "Transmit errors.", **NONNEG),
    _f("network.default_gateway", "object", "IPv4 default route; null when none."),
    _f("network.default_gateway.address", "str",
       "Gateway address; null on a point-to-point route (a VPN's utun on macOS).", max_len=64),
    _f("network.default_gateway.interface", "str", "Interface of the route.", max_len=128),
    _f("network.dns_servers", "list", "Configured DNS resolvers.", nullable=False, max_items=32),
    _f("network.dns_servers[]", "str", "A resolver address.", nullable=False, max_len=64),
    # --- connectivity -------------------------------------------------------------------
    _f("connectivity", "object", "Probe results and traffic rates.", nullable=False),
    # 4 built-in + 64 local + 16 from the hub, with room to spare.
    _f("connectivity.probes", "list", "Probe results: the built-in ones, then the agent "
       "config's, then the hub policy's.", nullable=False, max_items=96),
    _f("connectivity.probes[]", "object", "One probe result.", nullable=False),
    _f("connectivity.probes[].name", "str", "Probe name: hub, gateway, hub-dns or link for "
       "the built-in probes, else from the agent config or the hub policy.",
       nullable=False, max_len=64),
    _f("connectivity.probes[].kind", "str", "Probe kind: hub is the round trip to the hub "
       "over the agent's own connection, link the default-route interface's link state.",
       nullable=False, choices=("tcp", "dns", "gateway", "icmp", "hub", "link")),
    _f("connectivity.probes[].target", "str", "What was probed.", max_len=255),
    _f("connectivity.probes[].ok", "bool", "Whether the probe succeeded; null when it could "
       "not run here (e.g. ICMP not permitted for the agent's user), with the reason in "
       "error."),
    _f("connectivity.probes[].latency_ms", "float", "Round trip or resolution time.",
       unit="ms", minimum=0, maximum=3_600_000),
    _f("connectivity.probes[].answers", "list", "DNS answers.", nullable=False, max_items=64),
    _f("connectivity.probes[].answers[]", "str", "An address.", nullable=False, max_len=64),
    _f("connectivity.probes[].error", "str", "Why the probe failed or could not run.",
       max_len=512),
    _f("connectivity.probes[].source", "str", "Where the probe comes from: built into the "
       "agent, its config (local) or the hub's policy.", choices=("builtin", "local", "hub"),
       max_len=16, optional=True),
    _f("connectivity.rates", "list", "Interface traffic rates between two samples.",
       nullable=False, max_items=256),
    _f("connectivity.rates[]", "object", "Rates of one interface.", nullable=False),
    _f("connectivity.rates[].interface", "str", "Interface name.", nullable=False,
       max_len=128),
    _f("connectivity.rates[].rx_bytes_per_s", "float", "Receive rate.", unit="bytes/s",
       minimum=0),
    _f("connectivity.rates[].tx_bytes_per_s", "float", "Transmit rate.", unit="bytes/s",
       minimum=0),
    _f("connectivity.rates[].window_s", "float", "Sampling window.", unit="s", minimum=0),
    # --- software -----------------------------------------------------------------------
    _f("software", "object", "Installed software.", nullable=False),
    _f("software.manager", "str", "Package source (dpkg, rpm, registry, applications).",
       max_len=32),
    _f("software.count", "int", "Number of installed packages.", minimum=0),
    _f("software.hash", "str", "SHA-256 of the sorted package list; changes when it changes.",
       max_len=64),
    _f("software.packages", "list",
       "Installed packages; null when unchanged since the last acknowledged report.",
       max_items=100_000),
    _f("software.packages[]", "object", "A package.", nullable=False),
    _f("software.packages[].name", "str", "Package name.", nullable=False, max_len=512),
    _f("software.packages[].version", "str", "Installed version.", max_len=256),
    _f("software.packages[].arch", "str", "Architecture.", max_len=32),
    _f("software.packages[].publisher", "str", "Publisher (Windows, macOS).", max_len=256),
    _f("software.packages[].scope", "str",
       "Installed for the whole machine, or for one user only (Windows per-user installs, "
       "from a loaded user hive).", platforms=WINDOWS, choices=("machine", "user"),
       max_len=16, optional=True),
    # --- security -----------------------------------------------------------------------
    # Posture facts for compliance (issue 18). Added after agents that do not send them, so
    # the section may be absent; inside it every member is sent, null with the sub-section's
    # `reason` when the agent could not tell. None is exported: the compliance report carries
    # them.
    _f("security", "object", "Security posture: encryption, firewall, malware protection, "
       "updates, platform and accounts; null or absent when the agent does not collect it.",
       optional=True),
    _f("security.encryption", "object", "Disk encryption of fixed volumes."),
    _f("security.encryption.volumes", "list", "Fixed volumes and their encryption.",
       max_items=64),
    _f("security.encryption.volumes[]", "object", "A fixed volume.", nullable=False),
    _f("security.encryption.volumes[].mount", "str", "Mount point or drive letter.",
       nullable=False, max_len=1024),
    _f("security.encryption.volumes[].device", "str", "Block device or volume id.",
       max_len=1024),
    _f("security.encryption.volumes[].encrypted", "bool",
       "Whether the volume sits on an encrypted layer (LUKS/dm-crypt, BitLocker, FileVault)."),
    _f("security.encryption.volumes[].method", "str",
       "Encryption method (luks1, luks2, plain, XtsAes128, FileVault, ...).", max_len=64),
    _f("security.encryption.volumes[].protection", "str",
       "BitLocker protection status: on when its protectors are active.", platforms=WINDOWS,
       choices=("on", "off")),
    _f("security.encryption.volumes[].percent", "float", "Share of the volume encrypted.",
       **PERCENT),
    _f("security.encryption.reason", "str", "Why a fact of this sub-section is null.",
       max_len=512),
    _f("security.firewall", "object", "Host firewall."),
    _f("security.firewall.enabled", "bool",
       "On for every profile (Windows), globally (macOS), or rules loaded and the service "
       "active (Linux)."),
    _f("security.firewall.product", "str",
       "Firewall in charge (nftables, iptables, firewalld, ufw, windows, macos).", max_len=64),
    _f("security.firewall.profiles", "list", "Firewall profiles (Windows: Domain, Private, "
       "Public); empty elsewhere.", max_items=8),
    _f("security.firewall.profiles[]", "object", "A firewall profile.", nullable=False),
    _f("security.firewall.profiles[].name", "str", "Profile name.", nullable=False,
       max_len=64),
    _f("security.firewall.profiles[].enabled", "bool", "Whether the profile is on."),
    _f("security.firewall.reason", "str", "Why a fact of this sub-section is null.",
       max_len=512),
    _f("security.malware", "object", "Malware protection."),
    _f("security.malware.product", "str",
       "The active anti-malware product; 'none' when none was found.", max_len=128),
    _f("security.malware.enabled", "bool", "Whether the active product is on."),
    _f("security.malware.realtime", "bool", "Whether real-time (on-access) scanning is on."),
    _f("security.malware.signature_age_days", "float", "Age of the product's signatures.",
       unit="days", minimum=0),
    _f("security.malware.products", "list", "Every anti-malware product the OS knows of.",
       max_items=16),
    _f("security.malware.products[]", "object", "An anti-malware product.", nullable=False),
    _f("security.malware.products[].name", "str", "Product name.", nullable=False,
       max_len=128),
    _f("security.malware.products[].enabled", "bool", "Whether the product is on."),
    _f("security.malware.products[].up_to_date", "bool",
       "Whether the product says its signatures are up to date."),
    _f("security.malware.gatekeeper", "bool", "Whether Gatekeeper (app assessment) is on.",
       platforms=MACOS),
    _f("security.malware.xprotect_version", "str", "XProtect signature version.",
       platforms=MACOS, max_len=64),
    _f("security.malware.reason", "str", "Why a fact of this sub-section is null.",
       max_len=512),
    _f("security.updates", "object", "OS updates, refreshed at most daily."),
    _f("security.updates.last_success", "datetime",
       "When updates were last installed successfully (UTC)."),
    _f("security.updates.pending", "int", "Updates pending, where the OS says so cheaply.",
       minimum=0),
    _f("security.updates.reboot_required", "bool", "Whether an update waits for a reboot."),
    _f("security.updates.checked_at", "datetime",
       "When the agent last refreshed these facts (UTC)."),
    _f("security.updates.reason", "str", "Why a fact of this sub-section is null.",
       max_len=512),
    _f("security.platform", "object", "Boot chain and security hardware."),
    _f("security.platform.firmware", "str", "Firmware mode.", choices=("uefi", "bios")),
    _f("security.platform.secure_boot", "bool", "Whether Secure Boot is on."),
    _f("security.platform.tpm_present", "bool", "Whether a TPM is present."),
    _f("security.platform.tpm_version", "str", "TPM specification version (e.g. 2.0).",
       max_len=16),
    _f("security.platform.reason", "str", "Why a fact of this sub-section is null.",
       max_len=512),
    _f("security.accounts", "object", "Local accounts."),
    _f("security.accounts.admins", "list", "Local accounts with administrator rights.",
       max_items=256),
    _f("security.accounts.admins[]", "str", "An account name.", nullable=False, max_len=256),
    _f("security.accounts.auto_login", "bool", "Whether a user is logged in automatically "
       "at boot."),
    _f("security.accounts.reason", "str", "Why a fact of this sub-section is null.",
       max_len=512),
    # --- health -------------------------------------------------------------------------
    _f("health", "object", "Load and utilisation.", nullable=False),
    _f("health.cpu_percent", "float", "CPU busy over the sampling window.", **PERCENT),
    _f("health.load_1m", "float", "Load average, 1 minute.", minimum=0),
    _f("health.load_5m", "float", "Load average, 5 minutes.", minimum=0),
    _f("health.load_15m", "float", "Load average, 15 minutes.", minimum=0),
    _f("health.memory_percent", "float", "Memory in use.", **PERCENT),
    _f("health.swap_percent", "float", "Swap in use.", **PERCENT),
    # --- errors -------------------------------------------------------------------------
    _f("errors", "list", "Collectors that failed or timed out.", nullable=False, max_items=64),
    _f("errors[]", "object", "A collector failure.", nullable=False),
    _f("errors[].collector", "str", "Collector name.", nullable=False, max_len=64),
    _f("errors[].reason", "str", "What went wrong.", nullable=False, max_len=1024),
)

BY_PATH: dict[str, Field] = {f.path: f for f in FIELDS}


def children(path: str) -> list[Field]:
    """Direct members of the object at `path` ("" for the top level)."""
    prefix = f"{path}." if path else ""
    return [
        f for f in FIELDS
        if f.path.startswith(prefix) and "." not in f.path[len(prefix):]
        and not f.path.endswith("[]")
    ]


def exported_fields() -> list[Field]:
    """Fields that inventory exports carry, in dictionary order."""
    return [f for f in FIELDS if f.exported]


def markdown_table() -> str:
    """The dictionary as the Markdown table in docs/report.md (a test keeps them equal)."""
    rows = ["| field | type | unit | platforms | exported | description |",
            "|---|---|---|---|---|---|"]
    for f in FIELDS:
        kind = f.kind + ("" if f.nullable else ", required") + (", may be absent"
                                                                  if f.optional else "")
        if f.choices:
            kind += f" ({' / '.join(f.choices)})"
        rows.append(f"| `{f.path}` | {kind} | {f.unit or ''} | {', '.join(f.platforms)} | "
                    f"{'yes' if f.exported else ''} | {f.description} |")
    return "\n".join(rows) + "\n"
