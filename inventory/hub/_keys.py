"""The hub's ed25519 host key: created on first start, pinned by every agent."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

from estate.inventory.private_files import write_private

HOST_KEY_FILE = "host_key_ed25519"


def load_or_create_host_key(data_dir: Path) -> tuple[asyncssh.SSHKey, bool]:
    """Load the host key from `data_dir`, creating it (0600) when missing.

    Returns:
        (key, created)
    """
    path = data_dir / HOST_KEY_FILE
    if path.exists():
        return asyncssh.read_private_key(str(path)), False
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="estate-hub")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return key, True


def read_host_key(path: Path) -> asyncssh.SSHKey:
    """An ed25519 private key from `path` (OpenSSH format, no passphrase).

    Raises:
        ValueError: unreadable, not a private key, protected by a passphrase, or not ed25519;
            the message names the file.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        key = asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError(f"{path} is not an unencrypted OpenSSH private key ({exc})") from None
    if key.algorithm != b"ssh-ed25519":
        raise ValueError(f"{path} is an {key.algorithm.decode()} key; a hub's host key is "
                         f"ssh-ed25519")
    return key


def write_new_private_key(path: Path, key: asyncssh.SSHKey, overwrite: bool) -> None:
    """Write `key` to `path`, 0600 from its first byte; an existing file is replaced only
    when `overwrite` (atomically), else FileExistsError."""
    if overwrite:
        write_private(path, key.export_private_key())
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())


def fingerprint(key: asyncssh.SSHKey) -> str:
    """OpenSSH-style SHA256 fingerprint ("SHA256:base64"), as `ssh-keygen -l` prints it."""
    return key.get_fingerprint("sha256")
