"""Writing systemd unit files: quoting paths and the writable state folder. Stdlib only.

Shared by the agent's unit (`agent/systemd.py`) and the hub's (`inventory/hub/_systemd.py`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SANDBOX", "STATE_ROOT", "arg", "escape", "state_lines"]

STATE_ROOT = Path("/var/lib")

# The confinement both units share: their own /tmp, no devices, mounts, clock, hostname,
# kernel tunables, modules, logs or cgroups to touch. Each unit adds what differs (user,
# capabilities, which of /home and /proc it may see, its socket families).
SANDBOX = """PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes"""


def state_lines(folder: Path) -> str:
    """The service's writable folder: under /var/lib systemd creates it and gives it to the
    service's user (StateDirectory=); elsewhere it is the one path not made read-only."""
    if folder.is_relative_to(STATE_ROOT) and folder != STATE_ROOT:
        return (f"StateDirectory={escape(str(folder.relative_to(STATE_ROOT)))}\n"
                f"StateDirectoryMode=0700")
    return f"ReadWritePaths={arg(folder)}"


def arg(path: Path) -> str:
    """A path as one unit-file word: quoted when it has spaces."""
    text = escape(str(path))
    return f'"{text}"' if any(c.isspace() for c in text) else text


def escape(text: str) -> str:
    """'%' starts a systemd specifier (%h, %n …); a literal one is written '%%'."""
    return text.replace("%", "%%")
