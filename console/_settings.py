"""The console's settings: console.toml and the connection flags, read into frozen records.

console.toml is checked as strictly as agent.toml: an unknown key, or a value of the wrong
type, is an error that names the file, the key and the problem. Flags win over the file.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from estate.console._paths import config_dir
from estate.inventory.errors import EstateError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["HUB_FORM", "KEYS", "ConfigError", "ConsoleConfig", "HubSettings", "PinnedHub",
           "config_path", "load", "load_config"]

KEYS = ("hub", "key", "hub_key", "theme", "ssh_args")
HUB_FORM = re.compile(r"^(?P<user>[a-z][a-z0-9._-]{0,31})@(?P<address>\[?[^@\s]+\]?:\d{1,5})$")


class ConfigError(EstateError, ValueError):
    """A console.toml, keymap or connection flag that cannot be used; the message says which
    and why."""


@dataclass(frozen=True)
class ConsoleConfig:
    """What console.toml says; every key is optional."""

    path: Path
    hub: str | None = None  # USER@HOST:PORT
    key: Path | None = None
    hub_key: str | None = None
    theme: str | None = None
    ssh_args: tuple[str, ...] = ()  # for `estate ssh`: passed to ssh before its own options


@dataclass(frozen=True)
class PinnedHub:
    """A hub to log in to: where, as whom, with which key, and the host key it must show."""

    address: str  # HOST:PORT
    user: str
    hub_key: str  # SHA256:… fingerprint
    key: Path | None = None  # None: ssh-agent, else ~/.ssh keys


@dataclass(frozen=True)
class HubSettings:
    """The hub the flags or console.toml name, whose host key may not be pinned yet."""

    address: str
    user: str
    hub_key: str | None = None
    key: Path | None = None

    def pinned(self) -> PinnedHub | None:
        """This hub, if its key is pinned."""
        return self.pin(self.hub_key) if self.hub_key else None

    def pin(self, hub_key: str) -> PinnedHub:
        return PinnedHub(self.address, self.user, hub_key, self.key)


def config_path() -> Path:
    """$ESTATE_CONSOLE_CONFIG, else console.toml in the user's config folder (`_paths`)."""
    return Path(os.environ.get("ESTATE_CONSOLE_CONFIG") or config_dir() / "console.toml")


def load_config(path: Path | None = None) -> ConsoleConfig:
    """console.toml, checked; with no file, a config that says nothing.

    Raises:
        ConfigError: unreadable, not TOML, an unknown key or a value of the wrong type.
    """
    path = config_path() if path is None else path
    if not path.exists():
        return ConsoleConfig(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for name in doc:
        if name not in KEYS:
            raise ConfigError(f"{path}: {name}: unknown key (expected {', '.join(KEYS)})")
    hub = _text(doc, path, "hub", "a string \"USER@HOST:PORT\"")
    if hub is not None and not HUB_FORM.match(hub):
        raise ConfigError(f"{path}: hub: expected USER@HOST:PORT, got {hub!r}")
    key = _text(doc, path, "key", "a string: the path of your private key")
    ssh_args = doc.get("ssh_args", [])
    if not isinstance(ssh_args, list) or not all(isinstance(a, str) for a in ssh_args):
        raise ConfigError(f"{path}: ssh_args: expected a list of strings, e.g. "
                          f'["-o", "ServerAliveInterval=30"]')
    return ConsoleConfig(
        path=path, hub=hub, key=Path(key).expanduser() if key else None,
        hub_key=_text(doc, path, "hub_key", "a string: the hub's fingerprint, SHA256:…"),
        theme=_text(doc, path, "theme", "a string: a Textual theme name"),
        ssh_args=tuple(ssh_args))


def load(hub: str | None = None, key: Path | None = None,
         hub_key: str | None = None) -> tuple[ConsoleConfig, HubSettings | None]:
    """console.toml, and the hub to connect to: each flag given, else console.toml's value.
    No hub in either means the embedded default (None).

    Raises:
        ConfigError: console.toml cannot be used, --hub is malformed, or the key file does
            not exist.
    """
    config = load_config()
    hub = hub or config.hub
    if not hub:
        return config, None
    m = HUB_FORM.match(hub)
    if not m:
        raise ConfigError(f"hub: expected USER@HOST:PORT, got {hub!r}")
    key = key or config.key
    if key is not None and not key.exists():
        raise ConfigError(f"key: {key} does not exist")
    return config, HubSettings(address=m.group("address"), user=m.group("user"),
                               hub_key=hub_key or config.hub_key, key=key)


def _text(doc: dict[str, Any], path: Path, name: str, expected: str) -> str | None:
    """A key whose value must be a non-empty string, if it is there."""
    value = doc.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{path}: {name}: expected {expected}, got {value!r}")
    return value
