"""Where the console keeps its files on this OS: its config folder and its data folder.

The config folder holds console.toml, keymap.toml and known_hubs; the data folder holds the
embedded default's hub, agent and operator key. Each OS has its own place for them:

    Linux and other POSIX   $XDG_CONFIG_HOME/estate (~/.config/estate)
                            $XDG_DATA_HOME/estate (~/.local/share/estate)
    Windows                 %APPDATA%\\Estate (roams with the user's profile)
                            %LOCALAPPDATA%\\Estate (stays on this machine: a hub's database)
    macOS                   ~/Library/Application Support/Estate, for both

Stdlib only: `estate tunnel` reads known_hubs before every session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["config_dir", "config_dir_shown", "config_file_shown", "data_dir", "data_dir_shown"]

_APP = "Estate"  # the folder's name where the OS's convention is a capitalised product name
_MACOS_SUPPORT = ("Library", "Application Support")


def config_dir() -> Path:
    """The user's folder for console.toml, keymap.toml and known_hubs."""
    if sys.platform == "win32":
        return _windows_folder("APPDATA", "Roaming")
    if sys.platform == "darwin":
        return Path.home().joinpath(*_MACOS_SUPPORT, _APP)
    return _xdg_folder("XDG_CONFIG_HOME", ".config")


def data_dir() -> Path:
    """The user's folder for the embedded default's hub, agent and operator key."""
    if sys.platform == "win32":
        # Local, not roaming: a hub's SQLite database has no place in a roaming profile.
        return _windows_folder("LOCALAPPDATA", "Local")
    if sys.platform == "darwin":
        return Path.home().joinpath(*_MACOS_SUPPORT, _APP)
    return _xdg_folder("XDG_DATA_HOME", ".local", "share")


def config_dir_shown() -> str:
    """config_dir() as --help names it on this OS: the user's own form, not their path."""
    if sys.platform == "win32":
        return f"%APPDATA%\\{_APP}"
    if sys.platform == "darwin":
        return f"~/{'/'.join(_MACOS_SUPPORT)}/{_APP}"
    return "~/.config/estate"


def config_file_shown(name: str) -> str:
    """A file of the config folder as --help names it on this OS."""
    return config_dir_shown() + ("\\" if sys.platform == "win32" else "/") + name


def data_dir_shown() -> str:
    """data_dir() as --help names it on this OS."""
    if sys.platform == "win32":
        return f"%LOCALAPPDATA%\\{_APP}"
    if sys.platform == "darwin":
        return f"~/{'/'.join(_MACOS_SUPPORT)}/{_APP}"
    return "~/.local/share/estate"


def _windows_folder(variable: str, under_appdata: str) -> Path:
    """%variable%\\Estate; without the variable (a stripped environment), where Windows
    puts that folder in the profile."""
    base = os.environ.get(variable)
    return (Path(base) if base else Path.home() / "AppData" / under_appdata) / _APP


def _xdg_folder(variable: str, *default: str) -> Path:
    """$variable/estate, else ~/default/estate (the XDG base directory rules)."""
    base = os.environ.get(variable) or os.path.join(Path.home(), *default)
    return Path(base) / "estate"
