"""Simulated agents, for load tests and demos: many enrolled identities on asyncio.

Each simulated agent is enrolled for real (token flow, its own ed25519 key), pins the hub's
host key, holds one SSH connection, and sends varied, schema-valid reports every interval
(±10%), keeping unacknowledged reports and backing off like the real agent. Identities are kept
in the hub's data folder (`simulated.json`) so a second run reuses them.

For the estate-health tests and benchmarks, a simulator can take chosen agents off the air (a
site's link going down: `take_down`, `bring_up`) and make chosen probes fail on chosen agents
(`fail_probes`); its agents report the built-in probes every real agent runs (hub, gateway,
link) and a file-server probe, all passing unless told.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import random
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from estate.inventory.protocol import ENROL_COMMAND, ENROL_USER, REPORT_COMMAND, ChannelExit

log = logging.getLogger("estate.simulate")
ENROL_ATTEMPTS = 10  # with capped backoff: about two minutes before an enrolment gives up

AGENCIES = {
    "County Council": ["County Hall", "Highways Depot", "Library North", "Library South"],
    "Fire & Rescue": ["Station 1", "Station 12", "Control Room", "Training Centre"],
    "Schools": ["St Mary's Primary", "Oakfield Academy", "École Saint-Éloi", "Riverside High"],
    "Health Trust": ["General Hospital", "Ward 9", "Community Clinic"],
    "Police": ["HQ", "Custody Suite", "North Division"],
    "Ambulance Service": ["Hub A", "Dispatch"],
}
HARDWARE = [  # vendor, model, chassis, cpu, memory GiB
    ("Dell Inc.", "OptiPlex 7090", "desktop", "Intel(R) Core(TM) i5-10505 CPU @ 3.20GHz", 16),
    ("Dell Inc.", "Latitude 5440", "laptop", "13th Gen Intel(R) Core(TM) i5-1345U", 16),
    ("HP", "HP EliteBook 840 G8", "laptop", "11th Gen Intel(R) Core(TM) i7-1185G7", 32),
    ("HP", "HP ProDesk 400 G7", "desktop", "Intel(R) Core(TM) i3-10100 CPU @ 3.60GHz", 8),
    ("LENOVO", "20XWCTO1WW", "laptop", "11th Gen Intel(R) Core(TM) i5-1145G7", 16),
    ("Apple Inc.", "MacBookPro18,3", "laptop", "Apple M1 Pro", 16),
    ("Microsoft Corporation", "Surface Pro 9", "tablet", "12th Gen Intel(R) Core(TM) i5-1245U",
     8),
    ("VMware, Inc.", "VMware Virtual Platform", None, "Intel(R) Xeon(R) Gold 6338", 8),
    ("Microsoft Corporation", "Virtual Machine", "desktop", "AMD EPYC 7763", 32),
]
SYSTEMS = [  # family, name, version, build, kernel, package manager
    ("windows", "Windows 11 Pro", "23H2", "22631.3296", "10.0.22631", "registry"),
    ("windows", "Windows 10 Enterprise", "22H2", "19045.4170", "10.0.19045", "registry"),
    ("windows", "Windows Server 2019 Standard", "1809", "17763.5576", "10.0.17763",
     "registry"),
    ("windows", "Windows Server 2022 Datacenter", "21H2", "20348.2340", "10.0.20348",
     "registry"),
    ("linux", "Ubuntu", "22.04", None, "5.15.0-101-generic", "dpkg"),
    ("linux", "Ubuntu", "24.04", None, "6.8.0-31-generic", "dpkg"),
    ("linux", "Debian GNU/Linux", "12.5", None, "6.1.0-18-amd64", "dpkg"),
    ("linux", "Red Hat Enterprise Linux", "9.3", None, "5.14.0-362.8.1.el9_3.x86_64", "rpm"),
    ("macos", "macOS", "14.4.1", "23E224", "23.4.0", "applications"),
]
PACKAGES = [f"{name}" for name in (
    "firefox", "chrome", "office", "teams", "7zip", "vlc", "acrobat-reader", "zoom", "putty",
    "notepad++", "python3", "openssl", "openssh-client", "curl", "git", "vim", "libreoffice",
    "sophos-endpoint", "crowdstrike-falcon", "citrix-workspace", "anyconnect", "java-runtime",
    "dotnet-runtime", "vcredist", "edge", "onedrive", "sccm-client", "bitlocker-tools",
    "printer-driver", "sql-client", "sap-gui", "arcgis", "mis-client", "libc6", "systemd",
    "bash", "coreutils", "tzdata", "ca-certificates", "gnupg", "perl", "zlib1g")] + [
    f"lib-extra-{i:03d}" for i in range(400)]


@dataclass
class Identity:
    index: int
    agent_id: str
    key: asyncssh.SSHKey
    agency: str
    site: str


@dataclass
class SimStats:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    connected: int = 0
    reconnects: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    # Set to {} to keep each agent's acknowledged report sequence numbers (benchmarks
    # compare them with the store: nothing lost, nothing doubled).
    acked_seqs: dict[str, list[int]] | None = None


def fake_report(ident: Identity, seq: int, interval_s: float,
                rng: random.Random | None = None,
                failing: Collection[str] | None = None) -> dict[str, Any]:
    """A varied, schema-valid report for one simulated machine (stable per identity).

    `failing`: report the built-in probes (`probes`) with these names failing and the rest
    passing; None keeps the one file-server probe that fails at random (what the golden
    files and snapshots were made from).
    """
    r = random.Random(ident.index)  # noqa: S311 - variety, not security
    vendor, model, chassis, cpu, mem_gib = r.choice(HARDWARE)
    family, os_name, version, build, kernel, manager = r.choice(SYSTEMS)
    live = rng or random.Random()  # noqa: S311
    prefix = {"windows": "PC", "linux": "srv", "macos": "mac"}[family]
    hostname = f"{prefix}-{ident.agency.split()[0][:4].lower()}-{ident.index:05d}"
    disk_gb = r.choice([256, 512, 1024])
    disks: list[dict[str, Any]] = [
        {"name": f"disk{d}", "model": r.choice(["Samsung SSD 980", "WDC WD10EZEX",
                                                "KINGSTON SA400", "Msft Virtual Disk"]),
         "serial": f"DS{ident.index:06d}{d}", "size_bytes": disk_gb * 10**9,
         "rotational": r.random() < 0.2} for d in range(r.choice([1, 1, 1, 2, 3]))]
    ip = f"10.{ident.index // 65536 % 256}.{ident.index // 256 % 256}.{ident.index % 256}"
    pkgs = [{"name": p, "version": f"{r.randint(1, 30)}.{r.randint(0, 9)}", "arch": None,
             "publisher": None} for p in sorted(r.sample(PACKAGES, r.randint(40, 250)))]
    lines = sorted(f"{p['name']}\t{p['version']}\t" for p in pkgs)
    sw_hash = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    used = live.uniform(20, 97)
    total = disk_gb * 10**9
    now = time.time()
    return {
        "schema": "estate.report/1",
        "report_id": f"{ident.agent_id}:1:{seq}",
        "collected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "agent": {"id": ident.agent_id, "version": "0.1.0-sim", "interval_s": interval_s,
                  "dropped_reports": None},
        "system": {
            "hostname": hostname, "fqdn": f"{hostname}.{ident.agency.split()[0].lower()}.local",
            "os": {"family": family, "name": os_name, "version": version, "build": build,
                   "kernel": kernel, "arch": "arm64" if "M1" in cpu else "x86_64"},
            "boot_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 86400)),
            "timezone": "Europe/London",
            "virtualization": {"kind": "vmware" if "VMware" in vendor else "none",
                               "type": "vm" if "Virtual" in model else "none",
                               "source": "simulated"},
            "users": [],
        },
        "hardware": {
            "vendor": vendor, "model": model, "serial": f"SIM{ident.index:08d}",
            "uuid": None, "chassis": chassis,
            "bios": {"vendor": vendor, "version": "1.2.3", "date": "2024-01-01"},
            "cpu": {"model": cpu, "cores": 4, "threads": 8, "frequency_mhz": 2400.0},
            "memory": {"total_bytes": mem_gib * 2**30, "swap_total_bytes": 2 * 2**30},
            "disks": disks,
            "volumes": [{"mount": "C:" if family == "windows" else "/", "device": "disk0",
                         "fstype": "NTFS" if family == "windows" else "ext4",
                         "total_bytes": total, "used_bytes": int(total * used / 100),
                         "free_bytes": int(total * (100 - used) / 100),
                         "used_percent": round(used, 1)}],
            "battery": None,
        },
        "network": {
            "interfaces": [{"name": "eth0", "mac": f"02:00:{ident.index >> 24 & 255:02x}:"
                                                    f"{ident.index >> 16 & 255:02x}:"
                                                    f"{ident.index >> 8 & 255:02x}:"
                                                    f"{ident.index & 255:02x}",
                            "addresses": [{"family": "ipv4", "address": ip, "prefix": 16}],
                            "speed_mbps": 1000, "duplex": "full", "mtu": 1500, "up": True,
                            "counters": None}],
            "default_gateway": {"address": "10.0.0.1", "interface": "eth0"},
            "dns_servers": ["10.0.0.53"],
        },
        "connectivity": {
            "probes": [{"name": "file-server", "kind": "tcp", "target": "fs01:445",
                        "ok": live.random() > 0.03, "latency_ms": round(live.uniform(1, 40), 2),
                        "answers": [], "error": None}] if failing is None else
            probes(failing, live),
            "rates": [],
        },
        "software": {"manager": manager, "count": len(pkgs), "hash": sw_hash,
                     "packages": pkgs},
        "health": {"cpu_percent": round(live.uniform(0, 60), 1), "load_1m": None,
                   "load_5m": None, "load_15m": None,
                   "memory_percent": round(live.uniform(20, 90), 1), "swap_percent": 0.0},
        "errors": [],
    }


# The probes a simulated agent runs when told which fail: name, kind, target.
PROBES = (("hub", "hub", "hub.estate.local"), ("gateway", "gateway", "10.0.0.1"),
          ("link", "link", "eth0"), ("file-server", "tcp", "fs01:445"))


def probes(failing: Collection[str], live: random.Random) -> list[dict[str, Any]]:
    """`PROBES` as a report's results: those named in `failing` failed, the others passed."""
    out = []
    for name, kind, target in PROBES:
        ok = name not in failing
        out.append({"name": name, "kind": kind, "target": target, "ok": ok,
                    "latency_ms": round(live.uniform(1, 40), 2) if ok else None,
                    "answers": [], "error": None if ok else "simulated failure",
                    "source": "builtin" if kind != "tcp" else "local"})
    return out


class Simulator:
    """Enrols and runs N simulated agents against a hub."""

    def __init__(self, hub: str, host_key: asyncssh.SSHKey, interval_s: float = 60.0,
                 reconnect_max_s: float = 300.0, start_spread_s: float | None = None,
                 keepalive_s: float = 30.0, sources: tuple[str, ...] = (),
                 max_connecting: int = 0) -> None:
        host, _, port = hub.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        # Pinned like the real agent: only this key is trusted, no known_hosts file.
        self.host_key = asyncssh.import_public_key(host_key.export_public_key())
        self.interval_s = interval_s
        self.reconnect_max_s = reconnect_max_s
        # SSH keepalive from the agent's side, as the real agent's (30 s); 0: none.
        self.keepalive_s = keepalive_s
        # Local addresses connections come from, in turn (e.g. 127.0.1.x): each gives its own
        # range of ephemeral ports, so one machine can hold more than ~28,000 connections.
        self._sources = itertools.cycle(sources) if sources else None
        # Handshakes in progress at once (0: no limit): a generator of many thousand agents
        # paces its logins instead of timing them out in a crowd.
        self._connecting = asyncio.Semaphore(max_connecting) if max_connecting else None
        self.start_spread_s = interval_s if start_spread_s is None else start_spread_s
        self.stats = SimStats()
        self.stop = asyncio.Event()
        self.sent_software: set[str] = set()
        # Agents taken off the air (`take_down`) and the probes failing on each agent
        # (`fail_probes`); an agent's kick wakes it to act on a change at once.
        self.down: set[str] = set()
        self.failing: dict[str, set[str]] = {}
        self._kicks: dict[str, asyncio.Event] = {}
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}  # agent id -> its link

    def take_down(self, agent_ids: Iterable[str]) -> None:
        """These agents drop their connections at once, a report waiting for its answer or
        not (as when a site's link goes), and stay off until `bring_up`."""
        for agent_id in agent_ids:
            self.down.add(agent_id)
            conn = self._conns.get(agent_id)
            if conn is not None:
                conn.close()
            self._kick(agent_id)

    def bring_up(self, agent_ids: Iterable[str]) -> None:
        for agent_id in agent_ids:
            self.down.discard(agent_id)
            self._kick(agent_id)

    def fail_probes(self, agent_ids: Iterable[str], names: Collection[str]) -> None:
        """From their next report (sent at once), these agents' probes `names` fail and
        their others pass; `names` empty: all pass again."""
        for agent_id in agent_ids:
            self.failing[agent_id] = set(names)
            self._kick(agent_id)

    def _kick(self, agent_id: str) -> None:
        self._kicks.setdefault(agent_id, asyncio.Event()).set()

    def _connect(self, user: str, key: asyncssh.SSHKey) -> Any:
        return asyncssh.connect(self.host, self.port, username=user, client_keys=[key],
                                known_hosts=([self.host_key], [], []), agent_path=None,
                                config=None, keepalive_interval=self.keepalive_s,
                                local_addr=(next(self._sources), 0) if self._sources else ())

    async def _open(self, user: str, key: asyncssh.SSHKey) -> asyncssh.SSHClientConnection:
        """A logged-in connection, waiting for a handshake slot first when they are capped."""
        if self._connecting is None:
            return await self._connect(user, key)
        async with self._connecting:
            return await self._connect(user, key)

    async def enrol(self, index: int, token: str, agency: str, site: str) -> Identity:
        key = asyncssh.generate_private_key("ssh-ed25519")
        public = key.export_public_key("openssh").decode().strip()
        rng = random.Random()  # noqa: S311
        for attempt in range(ENROL_ATTEMPTS):
            # The hub's front door refuses part of a burst of new connections from one
            # address (rate and pre-auth budgets): slowed down, not broken, like the agent.
            try:
                async with self._connect(ENROL_USER, key) as conn:
                    res = await conn.run(ENROL_COMMAND, input=json.dumps(
                        {"token": token, "public_key": public, "hostname": f"sim-{index:05d}"}))
                break
            except (OSError, asyncssh.Error, asyncio.TimeoutError):
                if attempt == ENROL_ATTEMPTS - 1:
                    raise
                self.stats.reconnects += 1
                await asyncio.sleep(rng.uniform(0, min(30.0, 2.0 ** attempt)))
        doc = json.loads(str(res.stdout))
        if doc.get("status") != "enrolled":
            raise RuntimeError(f"simulated agent {index} could not enrol: {doc}")
        return Identity(index, doc["agent_id"], key, agency, site)

    async def run_agent(self, ident: Identity, reports: int | None = None,
                        first_report_s: float = 0.0) -> None:
        """Report until stopped (or `reports` are acked), reconnecting with backoff; the
        first report `first_report_s` after the start (math.inf: an idle agent, which only
        holds its connection)."""
        rng = random.Random()  # noqa: S311
        await self._sleep(rng.uniform(0, self.start_spread_s))
        seq, failures = int(time.time() * 1000) % 10**9, 0
        unacked: list[tuple[int, bytes]] = []
        acked = 0
        next_report = time.monotonic() + first_report_s
        kick = self._kicks.setdefault(ident.agent_id, asyncio.Event())
        while not self.stop.is_set() and (reports is None or acked < reports):
            if ident.agent_id in self.down:
                kick.clear()
                await self._until(kick)
                next_report = time.monotonic()  # back on the air: report at once
                continue
            try:
                async with await self._open(ident.agent_id, ident.key) as conn:
                    self.stats.connected += 1
                    self._conns[ident.agent_id] = conn
                    failures = 0
                    try:
                        while not self.stop.is_set() and (reports is None or acked < reports):
                            if ident.agent_id in self.down:
                                break  # its link went down: the connection goes with it
                            if kick.is_set():
                                kick.clear()
                                next_report = time.monotonic()  # its probes changed
                            if time.monotonic() >= next_report:
                                seq += 1
                                unacked.append((seq, self._body(ident, seq, rng)))
                                next_report = time.monotonic() + self.interval_s * \
                                    rng.uniform(0.9, 1.1)
                            while unacked and not self.stop.is_set():
                                self.stats.sent += 1
                                res = await conn.run(REPORT_COMMAND, input=unacked[-1][1],
                                                     encoding=None)
                                if res.exit_status == ChannelExit.OK:
                                    done, _ = unacked.pop()
                                    acked += 1
                                    self.stats.acked += 1
                                    if self.stats.acked_seqs is not None:
                                        self.stats.acked_seqs.setdefault(
                                            ident.agent_id, []).append(done)
                                elif res.exit_status == ChannelExit.TEMPFAIL:
                                    doc = json.loads(res.stdout or b"{}")
                                    await self._sleep(float(doc.get("retry_after", 5)))
                                else:
                                    self.stats.errors += 1
                                    unacked.pop()
                            await self._idle(conn, max(0.0, next_report - time.monotonic()),
                                             kick)
                            if conn.is_closed():
                                raise asyncssh.ConnectionLost("the hub went away")
                    finally:
                        self.stats.connected -= 1
                        self._conns.pop(ident.agent_id, None)
            except (OSError, asyncssh.Error, asyncio.TimeoutError, AttributeError) as exc:
                # asyncssh fails a session request with AttributeError when the connection
                # closes under it (take_down); anywhere else that is a bug to show.
                if isinstance(exc, AttributeError) and ident.agent_id not in self.down:
                    raise
                self.stats.reconnects += 1
                failures += 1
                await self._sleep(rng.uniform(0, min(self.reconnect_max_s, 2 ** failures)))
        self.stats.pending[ident.agent_id] = len(unacked)

    def _body(self, ident: Identity, seq: int, rng: random.Random) -> bytes:
        # Back to back (an interval under a second, for load tests) still claims the least
        # interval a report may.
        report = fake_report(ident, seq, max(1.0, self.interval_s), rng,
                             failing=self.failing.get(ident.agent_id, set()))
        # Like the real agent: the package list only when the hub has not seen it.
        if ident.agent_id in self.sent_software:
            report["software"]["packages"] = None
        else:
            self.sent_software.add(ident.agent_id)
        return json.dumps(report, separators=(",", ":")).encode()

    async def _idle(self, conn: asyncssh.SSHClientConnection, seconds: float,
                    kick: asyncio.Event | None = None) -> None:
        """Wait for the next report, but notice at once when the hub drops the connection
        (or the agent is kicked: taken down, or its probes changed)."""
        waits = [asyncio.ensure_future(self.stop.wait()),
                 asyncio.ensure_future(conn.wait_closed())]
        if kick is not None:
            waits.append(asyncio.ensure_future(kick.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _until(self, kick: asyncio.Event) -> None:
        """Wait for a kick or the stop."""
        waits = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(kick.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass


def load_identities(path: Path) -> list[Identity]:
    if not path.exists():
        return []
    return [Identity(d["index"], d["agent_id"], asyncssh.import_private_key(d["key"]),
                     d["agency"], d["site"]) for d in json.loads(path.read_text())]


def save_identities(path: Path, identities: list[Identity]) -> None:
    doc = [{"index": i.index, "agent_id": i.agent_id,
            "key": i.key.export_private_key().decode(), "agency": i.agency, "site": i.site}
           for i in identities]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.chmod(0o600)
    tmp.replace(path)


def placed_at(n: int, sites: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Agency and site of each of n simulated agents, in turn over `sites`."""
    return [sites[i % len(sites)] for i in range(n)]


def placements(n: int) -> list[tuple[str, str]]:
    """Agency and site of each of n simulated agents, spread over the partnership."""
    agencies = list(AGENCIES)
    out = []
    for i in range(n):
        agency = agencies[i % len(agencies)]
        sites = AGENCIES[agency]
        out.append((agency, sites[(i // len(agencies)) % len(sites)]))
    return out
