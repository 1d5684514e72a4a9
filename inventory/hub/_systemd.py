"""`estate-hub install-service`: a confined systemd unit for `estate-hub serve`.

`systemd-analyze security` rates it 1.1, or 1.4 on a port below 1024 (see docs/services.md);
tests/test_services.py keeps it at 2.5 or lower.

The same unit runs `serve --workers N` (added to ExecStart= with a PostgreSQL --store): the
parent is the main process and restarts its workers itself; the stop signal reaches the whole
control group, and each worker stores what it queued; LimitNOFILE= is per process, so each
worker has its own; @system-service allows the fork, exec and kill the parent needs.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from estate.inventory.unit_file import SANDBOX, STATE_ROOT, arg, escape, state_lines

__all__ = ["DATA_DIR", "UNIT_PATH", "USER", "install", "unit_text"]

UNIT_PATH = Path("/etc/systemd/system/estate-hub.service")
DATA_DIR = STATE_ROOT / "estate-hub"
USER = "estate-hub"
# One descriptor per agent connection (15,000-20,000 endpoints, some held by other hubs), plus
# operators, hub-to-hub links, the store's database files and its WAL: the usual 1,024 would
# refuse agents long before the hub is busy.
OPEN_FILES = 65536


def unit_text(listen: str, data: Path = DATA_DIR, executable: str | None = None) -> str:
    """The unit file for a hub listening on `listen` (HOST:PORT) with its data in `data`.

    A port below 1024 keeps CAP_NET_BIND_SERVICE (and so cannot use PrivateUsers=, whose
    capabilities do not count in the host's network namespace); any other port keeps none.
    """
    exe = (executable or shutil.which("estate-hub")
           or f"{sys.executable} -m estate.inventory.hub.cli")
    port = int(listen.rpartition(":")[2])
    if port and port < 1024:
        privilege = ("# Binding a port below 1024 is the one privilege kept.\n"
                     "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"
                     "AmbientCapabilities=CAP_NET_BIND_SERVICE")
    else:
        privilege = ("CapabilityBoundingSet=\n"
                     "# Every other user is 'nobody' inside the hub's user namespace.\n"
                     "PrivateUsers=yes")
    return f"""[Unit]
Description=Estate hub (the SSH gateway and store of the estate's inventory)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={escape(exe)} serve --data {arg(data)} --listen {escape(listen)}
Restart=on-failure
RestartSec=5
# SIGTERM makes the hub store what is queued before it exits.
TimeoutStopSec=60
# Its own system user: admin verbs run as it too (sudo -u {USER} estate-hub … --data …), so
# every file in the data folder stays the hub's.
User={USER}
Group={USER}
{state_lines(data)}
UMask=0077
LimitNOFILE={OPEN_FILES}
{privilege}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
{SANDBOX}
ProtectProc=invisible
# Not ProcSubset=pid: process metrics (CPU, RSS per connection) need /proc/stat's boot time.
RestrictNamespaces=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RemoveIPC=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
# AF_INET/AF_INET6: agents, operators, other hubs, PostgreSQL and mail; AF_UNIX: PostgreSQL's
# local socket and name lookups. No IPAddressAllow= list: agents connect from anywhere.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def install(listen: str, data: Path = DATA_DIR, target: Path = UNIT_PATH) -> Path:
    target.write_text(unit_text(listen, data))
    return target
