"""Export manifests: what a file is, who produced it, and the hub's signature over both.

`FILE.manifest.json` carries the file's SHA-256 and size, the report, scope, filters, as-of,
operator, hub key, time, Estate version and row count, signed with the hub's ed25519 host key.
The signature covers the manifest's canonical JSON (sorted keys, no spaces) without its
`signature` member. `verify` recomputes the hash and checks the signature with the public key
the manifest names; whether that key is *your* hub's is a separate check against its pinned
fingerprint.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

MANIFEST_FORMAT = "estate.export-manifest/1"
SIGNATURE_ALGORITHM = "ssh-ed25519"


class VerifyError(Exception):
    """The file or its manifest does not check out; the message says what and where."""


def canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def sign(manifest: dict[str, Any], key: asyncssh.SSHKey) -> dict[str, Any]:
    signature = key.sign(canonical(manifest), SIGNATURE_ALGORITHM.encode())
    return {**manifest, "signature": {"algorithm": SIGNATURE_ALGORITHM,
                                      "value": base64.b64encode(signature).decode()}}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


@dataclass(frozen=True)
class Verified:
    manifest: dict[str, Any]
    fingerprint: str  # of the key that signed


def verify(path: Path, manifest_file: Path | None = None) -> Verified:
    """Check FILE against its manifest: hash, size, then the hub's signature.

    Raises:
        VerifyError: a missing or unreadable manifest, a changed file, or a bad signature.
    """
    manifest_file = manifest_file or manifest_path(path)
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VerifyError(f"{manifest_file}: no manifest (exports are written with one "
                          f"beside them)") from None
    except (OSError, ValueError) as exc:
        raise VerifyError(f"{manifest_file}: not a readable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise VerifyError(f"{manifest_file}: not an Estate export manifest "
                          f"(format {MANIFEST_FORMAT})")
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise VerifyError(f"{path}: cannot read ({exc.strerror})") from None
    if actual != manifest.get("sha256") or path.stat().st_size != manifest.get("bytes"):
        raise VerifyError(f"{path}: CHANGED: its SHA-256 is {actual}, the manifest says "
                          f"{manifest.get('sha256')} ({path.stat().st_size} bytes, the "
                          f"manifest says {manifest.get('bytes')}). This is not the file the "
                          f"hub produced.")
    hub = manifest.get("hub") or {}
    signature = manifest.get("signature") or {}
    try:
        key = asyncssh.import_public_key(hub["public_key"])
        value = base64.b64decode(signature["value"], validate=True)
    except (KeyError, TypeError, ValueError, asyncssh.KeyImportError):
        raise VerifyError(f"{manifest_file}: the manifest has no usable hub key or "
                          f"signature") from None
    fingerprint = key.get_fingerprint("sha256")
    if fingerprint != hub.get("fingerprint") or signature.get("algorithm") != \
            SIGNATURE_ALGORITHM or not key.verify(canonical(manifest), value):
        raise VerifyError(f"{manifest_file}: BAD SIGNATURE: the manifest was changed or was "
                          f"not signed by hub key {hub.get('fingerprint')}")
    return Verified(manifest, fingerprint)
