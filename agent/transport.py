"""The agent's SSH client to the hub (paramiko): pinned host key, public-key login, commands.

The host key is checked against the pinned fingerprint before authenticating; there is no
known_hosts file and no auto-accept.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from estate.agent.config import parse_hostport
from estate.inventory.errors import EstateError

__all__ = ["CommandResult", "HostKeyMismatch", "HubClient", "HubError", "fingerprint_of"]

# The hub offers modern algorithms only; the agent refuses the legacy ones too.
_DISABLED = {
    "ciphers": ["aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc"],
    "macs": ["hmac-sha1", "hmac-md5", "hmac-sha1-96", "hmac-md5-96"],
    "kex": ["diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1",
            "diffie-hellman-group1-sha1"],
}


class HubError(EstateError):
    """The hub could not be reached or refused us. `retry` says whether trying later helps."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class HostKeyMismatch(HubError):
    def __init__(self, hub: str, expected: str, got: str) -> None:
        super().__init__(
            f"the hub at {hub} presented host key {got}, but this agent pinned {expected}. "
            "Refusing to connect: if the hub was rebuilt, enrol again with a new token; "
            "otherwise something may be intercepting the connection.", retry=False)
        self.expected, self.got = expected, got


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    doc: dict[str, Any]


def fingerprint_of(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class HubClient:
    """One SSH connection to the hub; commands run on new channels of it."""

    def __init__(self, hub: str, hub_key: str, key: paramiko.PKey, user: str,
                 timeout_s: float = 20.0) -> None:
        self.hub, self.hub_key, self.key, self.user = hub, hub_key, key, user
        self.timeout_s = timeout_s
        self.transport: paramiko.Transport | None = None

    def connect(self) -> None:
        """Connect, check the host key, log in.

        Raises:
            HostKeyMismatch: the hub's key is not the pinned one.
            HubError: unreachable, or the login was refused.
        """
        host, port = parse_hostport(self.hub)
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout_s)
        except OSError as exc:
            raise HubError(f"cannot reach the hub at {self.hub}: "
                           f"{exc.strerror or exc}") from None
        transport = paramiko.Transport(sock, disabled_algorithms=_DISABLED)
        transport.banner_timeout = transport.auth_timeout = self.timeout_s
        try:
            transport.start_client(timeout=self.timeout_s)
            got = fingerprint_of(transport.get_remote_server_key())
            if got != self.hub_key:
                raise HostKeyMismatch(self.hub, self.hub_key, got)
            transport.auth_publickey(self.user, self.key)
        except paramiko.AuthenticationException:
            transport.close()
            raise HubError(f"the hub at {self.hub} refused the login of {self.user!r} with "
                           f"key {fingerprint_of(self.key)} (unknown, revoked or not "
                           f"enrolled)", retry=False) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise HubError(f"SSH with the hub at {self.hub} failed: {exc}") from None
        except HubError:
            transport.close()
            raise
        transport.set_keepalive(30)
        self.transport = transport

    def run(self, command: str, payload: bytes) -> CommandResult:
        """Run `command` on a new channel with `payload` as its input.

        Raises:
            HubError: the connection failed or the answer was not JSON.
        """
        if self.transport is None or not self.transport.is_active():
            self.connect()
        assert self.transport is not None
        try:
            chan = self.transport.open_session(timeout=self.timeout_s)
            chan.settimeout(max(self.timeout_s, 60.0))
            chan.exec_command(command)
            try:
                chan.sendall(payload)
                chan.shutdown_write()
            except OSError:
                pass  # the hub answered early (refused, too large): read why below
            out = bytearray()
            while chunk := chan.recv(65536):
                out += chunk
                if len(out) > 1024 * 1024:
                    raise HubError("the hub's answer is unreasonably large")
            status = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HubError(f"the hub connection failed: {exc}") from None
        try:
            doc = json.loads(out.decode("utf-8"))
        except ValueError:
            raise HubError(f"the hub answered {bytes(out[:200])!r}, not JSON") from None
        return CommandResult(status, doc)

    def close(self) -> None:
        if self.transport:
            self.transport.close()
            self.transport = None


def load_key(path: Path) -> paramiko.PKey:
    """The agent's private key (ed25519, OpenSSH format)."""
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise HubError(f"cannot load the agent key {path}: {exc}", retry=False) from None
