"""`estate-agent install-service` on macOS: a launchd daemon that runs `estate-agent run`."""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from estate.inventory.errors import EstateError

LABEL = "org.estate.agent"
PLIST_PATH = Path(f"/Library/LaunchDaemons/{LABEL}.plist")
LOG_DIR = Path("/Library/Logs/Estate")
LAUNCHCTL = "/bin/launchctl"
# launchd's own floor is 10 s; the systemd unit waits the same (RestartSec=10).
THROTTLE_S = 10


class LaunchdError(EstateError):
    """launchctl refused; the message carries its words and the command."""


def plist(config: Path, executable: str | None = None) -> dict[str, Any]:
    """The daemon's property list: root, started at boot, restarted whenever it exits."""
    log = str(LOG_DIR / "agent.log")
    return {
        "Label": LABEL,
        # The interpreter the agent was installed into, not a script on PATH: launchd runs
        # daemons with a bare PATH, and a venv's python finds its packages by its own path.
        "ProgramArguments": [executable or sys.executable, "-m", "estate.agent", "run",
                             "--config", str(config)],
        "RunAtLoad": True,
        # Restart=always, as on Linux: `run` exits only when told to or on a fault.
        "KeepAlive": True,
        "ThrottleInterval": THROTTLE_S,
        # The agent logs to stderr (one line per event); launchd appends both streams here.
        "StandardOutPath": log,
        "StandardErrorPath": log,
        # The log names the hub and its errors: as private as the config folder (UMask=0077).
        "Umask": 0o077,
    }


def service_text(config: Path, executable: str | None = None) -> str:
    """The plist as `install` writes it (what `install-service --print` shows)."""
    return plistlib.dumps(plist(config, executable), sort_keys=False).decode()


def install(config: Path) -> str:
    """Write the plist (0644 root:wheel, as launchd demands) and load it into the system domain.

    Raises:
        OSError: the plist or the log folder cannot be written (not root).
        LaunchdError: launchctl refused to load it.
    """
    LOG_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    _write_root_file(PLIST_PATH, service_text(config).encode())
    if _loaded():  # bootstrap refuses a label already loaded: an upgrade replaces it
        _launchctl("bootout", f"system/{LABEL}")
    # A past `launchctl disable` persists across reboots and makes bootstrap fail ("Service
    # is disabled"); installing is asking for it to run.
    _launchctl("enable", f"system/{LABEL}")
    _launchctl("bootstrap", "system", str(PLIST_PATH))
    return f"installed and started {LABEL} ({PLIST_PATH}); logs in {LOG_DIR}"


def uninstall() -> str:
    """Stop the daemon, unload it and remove its plist; the config, key and logs stay.

    Raises:
        OSError: the plist cannot be removed (not root).
        LaunchdError: launchctl refused to unload it.
    """
    loaded = _loaded()
    if loaded:
        _launchctl("bootout", f"system/{LABEL}")
    existed = PLIST_PATH.exists()
    PLIST_PATH.unlink(missing_ok=True)
    if not loaded and not existed:
        return f"{LABEL} was not installed: nothing to remove"
    return f"stopped {LABEL} and removed {PLIST_PATH} (config and logs in {LOG_DIR} kept)"


def _write_root_file(path: Path, data: bytes) -> None:
    """Replace `path` in one step with a 0644 root:wheel file: launchd ignores a daemon plist
    that is group- or world-writable or not owned by root."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # the umask (0077 in the CLI) must not narrow it
        os.chown(tmp, 0, 0)  # wheel is gid 0 on macOS
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _loaded() -> bool:
    """Whether the system domain has the label loaded (`launchctl print` exits 0)."""
    return _launchctl("print", f"system/{LABEL}", check=False).returncode == 0


def _launchctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [LAUNCHCTL, *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchdError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        words = (done.stderr or done.stdout).strip().splitlines()
        raise LaunchdError(f"{' '.join(argv)} failed (exit {done.returncode})"
                           + (f": {words[-1]}" if words else ""))
    return done
