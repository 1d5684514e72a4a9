"""The agent's configuration file (`agent.toml`): reading and strict validation."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

from estate.inventory.errors import EstateError
from estate.inventory.probe_spec import ProbeSpec, ProbeSpecError, parse_hostport, parse_probes

__all__ = ["AgentConfig", "ConfigError", "ProbeConfig", "SpoolConfig", "default_path",
           "is_fingerprint", "load", "parse_hostport"]

# An OpenSSH SHA256 fingerprint of a key, as the hub announces its next key.
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


class ConfigError(EstateError, ValueError):
    """A config file that cannot be used; the message names the file, key and problem."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")
        self.file, self.key, self.problem = file, key, problem


# A probe of agent.toml: the shared spec (inventory/probe_spec.py), by its older name.
ProbeConfig = ProbeSpec


# NamedTuples, not dataclasses: `estate-agent collect` reads the config, and `dataclasses`
# imports `inspect` (tests/test_cli.py). A changed copy is `cfg._replace(...)`.
class SpoolConfig(NamedTuple):
    path: Path | None = None  # default: spool.db next to the config
    max_reports: int = 1000
    max_bytes: int = 50 * 1024 * 1024
    max_age_s: float = 7 * 86400


class AgentConfig(NamedTuple):
    """Validated settings; defaults describe an agent that is not enrolled yet."""

    path: Path | None = None
    agent_id: str | None = None
    hub: str | None = None
    hub_key: str | None = None
    # A second pinned hub key, during a rotation of the hub's key (agent/pins.py).
    hub_key_next: str | None = None
    key_file: Path | None = None
    interval_s: float = 300.0
    collector_timeout_s: float | None = None
    start_delay_s: float = 60.0
    reconnect_max_s: float = 300.0
    backlog_rate: float = 2.0
    spool: SpoolConfig = SpoolConfig()
    probes: tuple[ProbeConfig, ...] = ()
    # Probes an admin sets on the hub for an agency or site (in the ack); the endpoint owner
    # may refuse them.
    accept_hub_probes: bool = True
    # Off by default: offering this machine's sshd through the hub is the endpoint owner's call.
    remote_access: bool = False
    remote_access_target: tuple[str, int] = ("127.0.0.1", 22)

    def state_dir(self) -> Path:
        """Where the service keeps its spool and status: beside the config file."""
        return self.path.parent if self.path else Path.cwd()


def default_path() -> Path:
    """$ESTATE_AGENT_CONFIG, else the machine's agent.toml when run as root (an elevated
    administrator or the service on Windows), else this user's.

    The key, spool and status.json live beside it (`AgentConfig.state_dir`).
    """
    env = os.environ.get("ESTATE_AGENT_CONFIG")
    if env:
        return Path(env)
    return _config_dir(machine=_privileged()) / "agent.toml"


def _config_dir(machine: bool) -> Path:
    """Each OS's own place for a service's or a user's settings."""
    if sys.platform == "win32":
        if machine:
            return Path(os.environ.get("ProgramData") or r"C:\ProgramData", "Estate")
        # Local, not Roaming (%APPDATA%): the key names this machine and must not follow
        # the user to another one.
        local = os.environ.get("LOCALAPPDATA") or os.path.join(Path.home(), "AppData", "Local")
        return Path(local, "Estate")
    if sys.platform == "darwin":
        home = Path("/") if machine else Path.home()
        return home / "Library" / "Application Support" / "Estate"
    if machine:
        return Path("/etc/estate")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "estate"


def _privileged() -> bool:
    """Root on POSIX; on Windows an elevated administrator or LocalSystem (the service)."""
    if hasattr(os, "geteuid"):
        return os.geteuid() == 0
    try:
        import ctypes

        return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # not Windows after all, or shell32 unavailable
        return False


def load(path: Path) -> AgentConfig:
    """Read and validate a config file.

    Raises:
        ConfigError: unreadable, not TOML, an unknown key, a wrong type or a bad value.
    """
    if sys.version_info >= (3, 11):
        import tomllib  # here, not at the top: without a config file it is not needed
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib

    name = str(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(name, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "", f"not valid TOML ({exc})") from None
    return from_dict(doc, name, path)


def from_dict(doc: dict[str, Any], name: str = "agent.toml",
              path: Path | None = None) -> AgentConfig:
    r = _Reader(doc, name, "")
    r.only("agent_id", "hub", "hub_key", "hub_key_next", "key_file", "interval",
           "collector_timeout", "start_delay", "reconnect_max", "backlog_rate", "spool",
           "probes", "accept_hub_probes", "remote_access", "remote_access_target")
    hub = r.text("hub", max_len=300)
    if hub is not None:
        try:
            parse_hostport(hub)
        except ValueError as exc:
            raise ConfigError(name, "hub", str(exc)) from None
    hub_key = r.text("hub_key", max_len=128)
    hub_key_next = r.text("hub_key_next", max_len=128, pattern_ok=is_fingerprint,
                          pattern_help="a key fingerprint, SHA256: and 43 characters")
    if hub_key_next is not None and hub_key_next == hub_key:
        raise ConfigError(name, "hub_key_next", "the same key as hub_key")
    if hub_key_next is not None and hub_key is None:
        raise ConfigError(name, "hub_key_next", "set without hub_key")
    key_file = r.text("key_file", max_len=4096)
    key_path = None
    if key_file is not None:
        key_path = Path(key_file)
        if not key_path.is_absolute() and path is not None:
            key_path = path.parent / key_path  # relative to the config file, not the cwd
    target = r.text("remote_access_target", max_len=300) or "127.0.0.1:22"
    try:
        remote_target = parse_hostport(target)
    except ValueError as exc:
        raise ConfigError(name, "remote_access_target", str(exc)) from None
    try:
        probes = parse_probes(doc.get("probes", []), "probes", hub=False)
    except ProbeSpecError as exc:
        raise ConfigError(name, exc.path, exc.problem) from None
    return AgentConfig(
        path=path,
        agent_id=r.text("agent_id", max_len=64, pattern_ok=_is_agent_id,
                        pattern_help="letters, digits, '.', '_' or '-'"),
        hub=hub,
        hub_key=hub_key,
        hub_key_next=hub_key_next,
        key_file=key_path,
        interval_s=r.number("interval", 300.0, 1, 86400) or 300.0,
        collector_timeout_s=r.number("collector_timeout", None, 0.5, 300),
        start_delay_s=r.number("start_delay", 60.0, 0, 3600) or 0.0,
        reconnect_max_s=r.number("reconnect_max", 300.0, 1, 3600) or 300.0,
        backlog_rate=r.number("backlog_rate", 2.0, 0.01, 1000, unit="reports per second")
        or 2.0,
        spool=_spool(doc.get("spool", {}), name, path),
        probes=tuple(probes),
        accept_hub_probes=r.flag("accept_hub_probes", default=True),
        remote_access=r.flag("remote_access"),
        remote_access_target=remote_target,
    )


def _spool(table: Any, name: str, path: Path | None) -> SpoolConfig:
    if not isinstance(table, dict):
        raise ConfigError(name, "spool", "expected a table ([spool])")
    r = _Reader(table, name, "spool")
    r.only("path", "max_reports", "max_bytes", "max_age")
    spool_path = r.text("path", max_len=4096)
    resolved = None
    if spool_path:
        resolved = Path(spool_path)
        if not resolved.is_absolute() and path is not None:
            resolved = path.parent / resolved
    default = SpoolConfig()
    return SpoolConfig(
        path=resolved,
        max_reports=int(r.number("max_reports", default.max_reports, 1, 1_000_000,
                                 unit="reports") or default.max_reports),
        max_bytes=int(r.number("max_bytes", default.max_bytes, 64 * 1024, 2**40,
                               unit="bytes") or default.max_bytes),
        max_age_s=r.number("max_age", default.max_age_s, 60, 365 * 86400) or default.max_age_s,
    )


def is_fingerprint(value: object) -> bool:
    """Whether `value` is an OpenSSH SHA256 key fingerprint ("SHA256:" and 43 base64)."""
    return isinstance(value, str) and _FINGERPRINT.fullmatch(value) is not None


def _is_agent_id(value: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "._-") for c in value)


class _Reader:
    """Typed access to one TOML table that names the key path in every error."""

    def __init__(self, table: dict[str, Any], file: str, prefix: str) -> None:
        self.table, self.file, self.prefix = table, file, prefix

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, f"{self.prefix}.{key}" if self.prefix else key, problem)

    def only(self, *allowed: str) -> None:
        for key in self.table:
            if key not in allowed:
                raise self.error(key, f"unknown key (expected one of: {', '.join(allowed)})")

    def text(self, key: str, *, max_len: int = 256, required: bool = False,
             pattern_ok: Any = None, pattern_help: str = "") -> str | None:
        value = self.table.get(key)
        if value is None:
            if required:
                raise self.error(key, "required")
            return None
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {type(value).__name__} {value!r}")
        if not value or len(value) > max_len:
            raise self.error(key, f"expected 1 to {max_len} characters")
        if pattern_ok and not pattern_ok(value):
            raise self.error(key, f"expected {pattern_help}, got {value!r}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def number(self, key: str, default: float | None, low: float, high: float,
               unit: str = "seconds") -> float | None:
        value = self.table.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:
            raise self.error(key, f"expected a number of {unit} from {low:g} to {high:g}, "
                                  f"got {value!r}")
        return float(value)
