"""`estate-agent install-service`: a hardened systemd unit for `estate-agent run`.

`systemd-analyze security` rates this unit 2.0 (see docs/services.md); tests/test_services.py
keeps it at 2.5 or lower and runs a real collection under the parts of it that work without
systemd.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from estate.inventory.unit_file import SANDBOX, arg, escape, state_lines

UNIT_PATH = Path("/etc/systemd/system/estate-agent.service")


def unit_text(config: Path, executable: str | None = None) -> str:
    """The unit file. The config's folder is the service's state (spool, key, status)."""
    exe = executable or shutil.which("estate-agent") or f"{sys.executable} -m estate.agent"
    return f"""[Unit]
Description=Estate inventory agent (reports this machine to the Estate hub over SSH)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={escape(exe)} run --config {arg(config)}
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=10
# Root, because DMI serials (/sys/class/dmi/id/product_serial, mode 0400) are readable by their
# owner only. Root reads them as their owner, so no capability is needed for it: the only one
# kept is CAP_NET_RAW, for the gateway probe's raw ICMP socket where the kernel does not allow
# unprivileged ping sockets (net.ipv4.ping_group_range). The agent never runs commands for
# anyone and opens no device.
User=root
CapabilityBoundingSet=CAP_NET_RAW
NoNewPrivileges=yes
# The spool, key and status.json are nobody else's business.
UMask=0077
{state_lines(config.parent)}
ProtectSystem=strict
# Read-only rather than hidden: hiding /home would make the agent report the empty tmpfs put
# over it instead of the real volume's size.
ProtectHome=read-only
{SANDBOX}
# Not ProtectProc=invisible: with its capabilities dropped the agent could no longer see PID 1,
# and systemd-detect-virt and the container check read /proc/1. Not ProcSubset=pid: psutil
# reads /proc/stat, /proc/meminfo and /proc/net.
RestrictNamespaces=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
# AF_INET/AF_INET6: the hub, probes and the local sshd (remote access); AF_NETLINK: the list of
# interfaces and addresses (getifaddrs); AF_UNIX: name lookups through nscd/systemd-resolved.
# No IPAddressAllow= list: the hub is named by host name, DNS servers and the default gateway
# come from DHCP and move with the machine, and probe targets are the endpoint owner's choice,
# so a list fixed at install time would break probes the day the network changes.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
# What ordinary services need, less the calls that need privilege or change resource limits;
# dpkg-query, rpm and systemd-detect-virt run under the same filter. A refused call fails with
# EPERM (a collector error in the report) instead of killing the agent.
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
MemoryMax=128M
CPUQuota=20%

[Install]
WantedBy=multi-user.target
"""


def service_text(config: Path, executable: str | None = None) -> str:
    """What `install-service --print` shows: the unit."""
    return unit_text(config, executable)


def install(config: Path) -> str:
    """Write the unit; enabling it stays the admin's step, as it always was.

    Raises:
        OSError: the unit cannot be written (not root).
    """
    UNIT_PATH.write_text(unit_text(config))
    return (f"wrote {UNIT_PATH}. Enable and start it with:\n"
            f"  systemctl daemon-reload && systemctl enable --now {UNIT_PATH.stem}")


def uninstall() -> str:
    """Stop and disable the service, remove the unit; the config, key and spool stay.

    Raises:
        OSError: the unit cannot be removed (not root).
    """
    if not UNIT_PATH.exists():
        return f"{UNIT_PATH.name} was not installed: nothing to remove"
    complaint = _systemctl("disable", "--now", UNIT_PATH.name)
    UNIT_PATH.unlink()
    _systemctl("daemon-reload")
    if complaint:  # no running systemd (a container): the file is gone all the same
        return f"removed {UNIT_PATH}; systemctl could not stop it: {complaint}"
    return f"stopped and disabled {UNIT_PATH.stem}, removed {UNIT_PATH} (config kept)"


def _systemctl(*args: str) -> str:
    """Run systemctl; its complaint when it fails, "" when it worked."""
    try:
        done = subprocess.run(["systemctl", *args], capture_output=True, text=True,
                              timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return ""
    words = (done.stderr or done.stdout).strip().splitlines()
    return words[-1] if words else f"exit {done.returncode}"
