"""`estate-agent install-service`: a hardened systemd unit for `estate-agent run`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

UNIT_PATH = Path("/etc/systemd/system/estate-agent.service")


def unit_text(config: Path, executable: str | None = None) -> str:
    """The unit file. The config's folder is the service's state (spool, key, status)."""
    exe = executable or shutil.which("estate-agent") or f"{sys.executable} -m agent"
    state = config.parent
    return f"""[Unit]
Description=Estate inventory agent (reports this machine to the Estate hub over SSH)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe} run --config {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=10
# Reading DMI serials and the package database needs root; nothing else does, and the agent
# never runs commands for anyone.
User=root
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=no
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET
CapabilityBoundingSet=CAP_NET_RAW CAP_DAC_READ_SEARCH CAP_SYS_RAWIO
ReadWritePaths={state}
StateDirectory=estate
MemoryMax=128M
CPUQuota=20%

[Install]
WantedBy=multi-user.target
"""


def install(config: Path, target: Path = UNIT_PATH) -> Path:
    target.write_text(unit_text(config))
    return target
