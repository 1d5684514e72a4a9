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

from estate.inventory.errors import EstateError
from estate.inventory.sanitise import quoted

MANIFEST_FORMAT = "estate.export-manifest/1"
SIGNATURE_ALGORITHM = "ssh-ed25519"
MAX_MANIFEST_BYTES = 1 << 20  # a real one is under 2 KB


class VerifyError(EstateError):
    """The file or its manifest does not check out; the message says what and where."""


# What `estate verify` reads from a manifest, and of what type: anything else is a clear
# error naming the field, never a traceback. Other members are allowed (and signed).
_STR, _OPT_STR, _COUNT = (str,), (str, type(None)), (int,)
_SHAPE: dict[str, Any] = {
    "format": _STR, "file_format": _STR, "report": _STR, "generated_at": _STR,
    "as_of": _OPT_STR, "estate_version": _STR, "sha256": _STR, "bytes": _COUNT,
    "rows": _COUNT,
    "scope": {"operator": _STR, "role": _STR, "agencies": (str, list)},
    "filters": dict,
    "hub": {"fingerprint": _STR, "public_key": _STR},
    "signature": {"algorithm": _STR, "value": _STR},
}
_TYPE_NAMES = {str: "a string", int: "a whole number", list: "a list", dict: "an object",
               type(None): "null"}


def check_shape(manifest: Any, where: Path) -> dict[str, Any]:
    """The manifest, if every field `estate verify` reads is there with its type.

    Raises:
        VerifyError: naming the first missing or mistyped field (scope.agencies, ...).
    """
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise VerifyError(f"{where}: not an Estate export manifest (format "
                          f"{MANIFEST_FORMAT})")
    _check(manifest, _SHAPE, "", where)
    scope, filters = manifest["scope"], manifest["filters"]
    if isinstance(scope["agencies"], list) and not all(isinstance(a, str)
                                                       for a in scope["agencies"]):
        raise VerifyError(f"{where}: malformed manifest: scope.agencies: expected a list of "
                          f"strings")
    for key, value in filters.items():
        if not isinstance(value, (str, int, type(None))) or isinstance(value, bool):
            raise VerifyError(f"{where}: malformed manifest: filters.{quoted(key, 40)}: "
                              f"expected a string, a number or null")
    if manifest["bytes"] < 0 or manifest["rows"] < 0:
        raise VerifyError(f"{where}: malformed manifest: bytes and rows cannot be negative")
    return manifest


def _check(doc: dict[str, Any], shape: dict[str, Any], prefix: str, where: Path) -> None:
    for key, want in shape.items():
        name = prefix + key
        if key not in doc:
            raise VerifyError(f"{where}: malformed manifest: field {name} is missing")
        value = doc[key]
        if isinstance(want, dict):
            if not isinstance(value, dict):
                raise VerifyError(f"{where}: malformed manifest: field {name}: expected an "
                                  f"object")
            _check(value, want, name + ".", where)
        elif not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
            kinds = (want,) if isinstance(want, type) else want
            expected = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise VerifyError(f"{where}: malformed manifest: field {name}: expected "
                              f"{expected}, got {type(value).__name__}")


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
        with open(manifest_file, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise VerifyError(f"{manifest_file}: not a manifest (over {MAX_MANIFEST_BYTES} "
                              f"bytes)")
        manifest = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise VerifyError(f"{manifest_file}: no manifest (exports are written with one "
                          f"beside them)") from None
    except OSError as exc:
        raise VerifyError(f"{manifest_file}: cannot read ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested too deep
        reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
        raise VerifyError(f"{manifest_file}: not a readable manifest, not JSON "
                          f"({reason})") from None
    manifest = check_shape(manifest, manifest_file)
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise VerifyError(f"{path}: cannot read ({exc.strerror})") from None
    if actual != manifest["sha256"] or path.stat().st_size != manifest["bytes"]:
        raise VerifyError(f"{path}: CHANGED: its SHA-256 is {actual}, the manifest says "
                          f"{quoted(manifest['sha256'], 80)} ({path.stat().st_size} bytes, "
                          f"the manifest says {manifest['bytes']}). This is not the file the "
                          f"hub produced.")
    hub, signature = manifest["hub"], manifest["signature"]
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
                          f"not signed by hub key {quoted(hub['fingerprint'], 80)}")
    return Verified(manifest, fingerprint)
