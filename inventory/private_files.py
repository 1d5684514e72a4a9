"""Private data folders and files: 0700 folders, 0600 files, no symlinks followed.

The hub's folder holds the token table, the audit log and its host key; the agent's holds its
key, its spool of reports and its status. Another local user must read none of it, so every
file is created 0600 (whatever the umask) and a folder that group or others can enter is
refused, with the fix in the message, unless the operator says otherwise
(`--allow-open-data-dir`: the process default set by `allow_open_dirs`).

Stdlib only: the agent (which may import only `estate.inventory.report` and
`estate.inventory.sanitise` besides) and the hub both use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from estate.inventory.errors import EstateError

__all__ = ["OPEN_DIR_FLAG", "OpenDataDir", "allow_open_dirs", "private_dir", "private_file",
           "restrict_umask", "write_private"]

OPEN_DIR_FLAG = "--allow-open-data-dir"
# POSIX modes mean nothing on Windows; there the folder's ACL (set by the installer) decides.
_POSIX = os.name == "posix"
_allow_open = False


class OpenDataDir(EstateError):
    """A data folder other users can enter; the message names it and the fix."""


def restrict_umask() -> None:
    """Files and folders this process creates are its user's alone (0600/0700)."""
    if _POSIX:
        os.umask(0o077)


def allow_open_dirs(allowed: bool) -> None:
    """The operator accepted an open data folder (OPEN_DIR_FLAG): check, but do not refuse."""
    global _allow_open
    _allow_open = allowed


def private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing; refused if group or others may enter it.

    Raises:
        OpenDataDir: the folder is group- or world-accessible (or not a folder) and
            `allow_open_dirs(True)` was not called.
    """
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _POSIX:
            os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; this one is not
        return path
    if not path.is_dir():
        raise OpenDataDir(f"{path}: not a folder")
    mode = stat.S_IMODE(path.stat().st_mode)
    if _POSIX and mode & 0o077 and not _allow_open:
        raise OpenDataDir(
            f"data folder {path} is open to other users (mode {mode:04o}); its files include "
            f"keys and tokens. Fix: chmod 700 {path} (or pass {OPEN_DIR_FLAG} if its parent "
            f"already keeps others out)")
    return path


def private_file(folder: Path, name: str) -> Path:
    """`folder/name` in a private folder, created empty and 0600 if missing, else narrowed
    to 0600: SQLite gives its -wal and -shm files the database file's mode."""
    path = private_dir(folder) / name
    flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        if _POSIX and stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)  # a file from before files were made private
    finally:
        os.close(fd)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically, through a new 0600 file beside it.

    The temporary file is created with O_EXCL|O_NOFOLLOW, so a planted file or symlink in its
    place is refused rather than written through.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileExistsError:  # left by a killed process with our pid: ours to remove
        tmp.unlink()
        fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
