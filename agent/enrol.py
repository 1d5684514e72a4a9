"""`estate-agent enrol`: create the agent's key, register it with a token, write the config."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from estate.agent import winacl
from estate.agent.config import ConfigError, load, parse_hostport
from estate.inventory.errors import EstateError
from estate.inventory.private_files import private_dir, write_private
from estate.inventory.protocol import ENROL_COMMAND, ENROL_USER, ChannelExit
from estate.inventory.sanitise import quoted

KEY_NAME = "agent_key"
TOKEN_PREFIX = "EST1"  # noqa: S105 - a format marker, not a secret
_MANAGED_KEYS = ("agent_id", "hub", "hub_key", "hub_key_next", "key_file")


class EnrolFailed(EstateError):
    """Enrolment did not happen; the message says why and what to do."""


def parse_token(token: str) -> tuple[tuple[str, ...], str | None]:
    """The hub key fingerprints and (if the token carries one) the hub address.

    Same format as `inventory/hub/_tokens.py`:
    EST1.<id>.<secret>.<fingerprint>[,<fingerprint>][.<address>]; two fingerprints during a
    rotation of the hub's key: the key being retired, then the key rotated to.

    Raises:
        EnrolFailed: not a token.
    """
    parts = token.strip().split(".")
    if len(parts) not in (4, 5) or parts[0] != TOKEN_PREFIX or not all(parts[1:4]):
        raise EnrolFailed("that is not an Estate enrolment token (it starts with EST1.); "
                          "ask the hub's administrator for one: estate-hub token create")
    fingerprints = tuple(f"SHA256:{fp}" for fp in parts[3].split(","))
    if len(fingerprints) > 2 or "SHA256:" in fingerprints or \
            len(set(fingerprints)) != len(fingerprints):
        raise EnrolFailed("the token's hub keys are damaged (it names one or two)")
    address = None
    if len(parts) == 5:
        try:
            padded = parts[4] + "=" * (-len(parts[4]) % 4)
            address = base64.urlsafe_b64decode(padded).decode()
        except (ValueError, UnicodeDecodeError):
            raise EnrolFailed("the token's hub address is damaged") from None
    return fingerprints, address


def ensure_key(path: Path) -> tuple[Any, str]:
    """Load the agent's ed25519 key, or create it (0600; on Windows readable by SYSTEM and
    Administrators only) with its .pub beside it.

    Returns:
        (paramiko key, OpenSSH public key line)

    Raises:
        EnrolFailed: on Windows, the key is readable by others, or this process could not
            read the key it would create (not elevated).
    """
    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    windows = sys.platform == "win32"
    if not path.exists():
        if windows:
            with _key_acl_refused():
                winacl.require_administrator()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        # O_BINARY: on Windows os.open files are text mode by default, \n written as \r\n.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                if windows:  # before the key is in it: the folder's inherited ACL lets Users read
                    with _key_acl_refused():
                        winacl.protect(path)
                f.write(pem)
        except BaseException:
            path.unlink(missing_ok=True)  # an empty or unprotected key must not be found later
            raise
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH)
        path.with_name(path.name + ".pub").write_bytes(public + b" estate-agent\n")
    elif windows:
        with _key_acl_refused():
            winacl.check(path)
    key = paramiko.Ed25519Key.from_private_key_file(str(path))
    return key, f"{key.get_name()} {key.get_base64()}"


@contextlib.contextmanager
def _key_acl_refused() -> Iterator[None]:
    """The key's Windows ACL refused (estate.agent.winacl): an EnrolFailed, one line."""
    try:
        yield
    except winacl.KeyAccessError as exc:
        raise EnrolFailed(str(exc)) from None


def enrol(token: str, hub: str | None, config_path: Path) -> dict[str, Any]:
    """Enrol with the hub and write `config_path`.

    Returns:
        The hub's answer: agent_id, agency, site.

    Raises:
        EnrolFailed: with a message for the person running the command.
    """
    from estate.agent.transport import HubClient, HubError

    pinned, token_hub = parse_token(token)
    # A token made during a rotation names the retiring key, then the next: either may be
    # presented, and the next stays pinned until the hub presents it (agent/pins.py).
    retiring, following = pinned[0], pinned[1] if len(pinned) > 1 else None
    hub = hub or token_hub
    if not hub:
        raise EnrolFailed("no hub address: pass --hub HOST:PORT (this token does not carry one)")
    try:
        parse_hostport(hub)
    except ValueError as exc:
        raise EnrolFailed(f"--hub: {exc}") from None
    if config_path.exists():
        try:
            load(config_path)
        except ConfigError as exc:
            raise EnrolFailed(f"the existing config is broken, fix or move it first: {exc}") \
                from None
    # Raises OpenDataDir before the private key is written where others could read it.
    private_dir(config_path.parent)
    key_path = config_path.parent / KEY_NAME
    key, public_line = ensure_key(key_path)
    client = HubClient(hub, retiring, key, ENROL_USER, hub_key_next=following)
    request = {"token": token.strip(), "public_key": public_line,
               "hostname": socket.gethostname()}
    try:
        result = client.run(ENROL_COMMAND, json.dumps(request).encode())
    except HubError as exc:
        raise EnrolFailed(str(exc)) from None
    finally:
        client.close()
    if result.exit_status != ChannelExit.OK or result.doc.get("status") != "enrolled":
        # The hub's words, quoted: escapes in them must not reach the terminal.
        raise EnrolFailed(f"the hub refused enrolment: {quoted(result.doc.get('message'))} "
                          f"({quoted(result.doc.get('code'), 40)})")
    pins = {"hub_key": retiring, "hub_key_next": following} \
        if following and client.presented_key == retiring else \
        {"hub_key": client.presented_key or retiring}
    write_config(config_path, {"agent_id": result.doc["agent_id"], "hub": hub, **pins,
                               "key_file": KEY_NAME})
    return result.doc


def write_config(path: Path, values: dict[str, str]) -> None:
    """Set the enrolment keys at the top of the config, keeping everything else as it was."""
    kept = ""
    if path.exists():
        pattern = re.compile(rf"^\s*({'|'.join(_MANAGED_KEYS)})\s*=")
        kept = "".join(line for line in path.read_text(encoding="utf-8").splitlines(True)
                       if not pattern.match(line))
    head = "# Written by `estate-agent enrol`.\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    kept = kept.replace("# Written by `estate-agent enrol`.\n", "")
    private_dir(path.parent)
    write_private(path, (head + kept).encode("utf-8"))
