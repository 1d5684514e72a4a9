"""The pinned hub's full host key, for OpenSSH: `estate tunnel`'s fast path.

A console pins the hub by fingerprint. Once a connection has checked the hub's key against
that fingerprint, its full public key is written here (`known_hubs` beside console.toml), so
`estate tunnel` can hand the hub leg to OpenSSH's own `ssh -W` (no Python relay, no asyncssh
import) with `StrictHostKeyChecking=yes` against exactly that key. A line is used only if its
key's fingerprint is still the pinned one. No third-party imports: this runs before every
session.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from estate.console._settings import config_path

FILE_NAME = "known_hubs"


def path() -> Path:
    """Beside console.toml."""
    return config_path().with_name(FILE_NAME)


def alias(address: str) -> str:
    """The name the hub's key is kept under (HostKeyAlias): one per hub address."""
    host, _, port = address.rpartition(":")
    return f"estate-hub-{host.strip('[]')}-{port}"


def fingerprint(public_key_line: str) -> str | None:
    """OpenSSH's SHA256 fingerprint of "ssh-ed25519 AAAA… [comment]", None if malformed."""
    parts = public_key_line.split()
    if len(parts) < 2:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def remember(address: str, public_key_line: str) -> None:
    """Keep the hub's key (already checked against the pin) under its alias."""
    name, file = alias(address), path()
    kept = []
    if file.exists():
        kept = [ln for ln in file.read_text().splitlines() if ln.split(" ", 1)[0] != name]
    line = f"{name} {' '.join(public_key_line.split()[:2])}"
    if line in kept:
        return
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = file.with_name(file.name + ".tmp")
    # \n on every OS: ssh reads this file, and Windows' text mode would write \r\n.
    tmp.write_text("\n".join([*kept, line]) + "\n", newline="\n")
    tmp.chmod(0o600)
    os.replace(tmp, file)


def fingerprints() -> set[str]:
    """Every hub key kept here: each was checked against a pin when it was written."""
    try:
        lines = path().read_text().splitlines()
    except (OSError, ValueError):
        return set()
    return {fp for line in lines if (fp := fingerprint(line.partition(" ")[2]))}


def verified(address: str, pinned: str) -> Path | None:
    """The file, if it holds this hub's key and that key is the pinned one."""
    file, name = path(), alias(address)
    try:
        lines = file.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        found, _, key = line.partition(" ")
        if found == name and fingerprint(key) == pinned:
            return file
    return None
