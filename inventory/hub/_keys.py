"""The hub's ed25519 host key: created on first start, pinned by every agent."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

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


def fingerprint(key: asyncssh.SSHKey) -> str:
    """OpenSSH-style SHA256 fingerprint ("SHA256:base64"), as `ssh-keygen -l` prints it."""
    return key.get_fingerprint("sha256")
