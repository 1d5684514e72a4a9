"""The agent's SSH client to the hub (paramiko): pinned host key, public-key login, commands.

The host key is checked against the pinned fingerprint (or, during a rotation of the hub's
key, the two pinned ones) before authenticating; there is no known_hosts file and no
auto-accept. Reports go over one `estate-report v2` channel per connection (`report`), or
`estate-report v1` on a channel each against a hub that does not know v2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from estate.agent.config import parse_hostport
from estate.inventory.errors import EstateError
from estate.inventory.protocol import (
    ERROR_CODES,
    REPORT_COMMAND,
    REPORT_STREAM_COMMAND,
    ChannelExit,
    busy_retry_after,
)
from estate.inventory.tcp_keepalive import TcpKeepalive, keep_alive

__all__ = ["CommandResult", "HostKeyMismatch", "HubBusy", "HubClient", "HubError",
           "StreamEnded", "fingerprint_of"]

log = logging.getLogger("estate.agent")

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


class HubBusy(HubError):
    """The hub sent us away at login (`busy`: it holds as many agents as it may): come back
    after `retry_after` seconds, to it or, behind a load balancer, to another hub."""

    def __init__(self, hub: str, retry_after: float) -> None:
        super().__init__(f"the hub at {hub} is busy (it holds as many agents as it may)",
                         retry=True)
        self.retry_after = retry_after


class StreamEnded(HubError):
    """The hub ended the connection's report stream without answering the report sent; the
    connection itself is alive. The report is unanswered (not stored as far as the agent
    knows): send it again, on a new stream, which the next `report` opens."""


# A report stream's answers that leave it open (docs/protocol.md, "Report stream"); any other
# error answer ends it, and the next report opens a new one.
STREAM_KEEPS = frozenset({"invalid_report", "need_full", "busy", "store_unavailable"})
MAX_ANSWER_BYTES = 1024 * 1024

# The global request timed as the round trip to the hub (the `hub` probe): OpenSSH's keepalive,
# which any SSH server answers (with a failure when it does not know it).
ROUND_TRIP_REQUEST = "keepalive@openssh.com"

# A hub's `retry_after`, however large it says, is capped: a hub that comes back sooner than
# it thought must not wait for agents gone for hours.
MAX_BUSY_WAIT_S = 900.0


class _Transport(paramiko.Transport):
    """paramiko's Transport, keeping the reason of a disconnect the hub sends.

    paramiko only logs it (`_parse_disconnect`), and a disconnect during the login surfaces as
    "Authentication failed": the reason is what tells a hub that is busy or cannot reach its
    store (retry later) from a key it refused (needs a person). Overriding the private method
    costs only that reason if paramiko renames it: the agent then behaves as before.
    """

    disconnect_reason = ""
    # AES-GCM first (the hub offers it): one AEAD call per packet, where aes-ctr adds an
    # HMAC-SHA256 of every byte, in the agent and the hub: a remote session's MBs pay it.
    _preferred_ciphers = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                          "aes128-ctr", "aes192-ctr", "aes256-ctr")

    def _parse_disconnect(self, m: paramiko.Message) -> None:
        code = m.get_int()
        self.disconnect_reason = m.get_text()
        self._log(logging.INFO, f"Disconnect (code {code}): {self.disconnect_reason}")

    def round_trip_ms(self, timeout_s: float) -> float | None:
        """Time one global request the hub answers: its round trip in ms, None without an
        answer within `timeout_s` (or when the connection ends meanwhile).

        `keepalive@openssh.com` asks for a reply and nothing else: the hub (asyncssh) answers
        any request it does not know with a failure, from its event loop, logging it at debug
        level only. paramiko's own `global_request` waits for the answer without a limit, so
        this sends the same message and waits on its own event, bounded. The event is the one
        paramiko sets on a key exchange's end too: a rekey at that moment makes one short
        reading, no worse.
        """
        message = paramiko.Message()
        message.add_byte(paramiko.common.cMSG_GLOBAL_REQUEST)
        message.add_string(ROUND_TRIP_REQUEST)
        message.add_boolean(True)  # want reply
        done = threading.Event()
        self.completion_event = done
        start = time.perf_counter()
        self._send_user_message(message)
        deadline = start + timeout_s
        while not done.wait(min(0.1, max(0.0, deadline - time.perf_counter()))):
            if not self.active or time.perf_counter() >= deadline:
                return None
        return (time.perf_counter() - start) * 1000


def _sent_away(hub: str, reason: str) -> HubError | None:
    """What a hub's disconnect reason means for the agent, when it means "come back"."""
    wait = busy_retry_after(reason)
    if wait is not None:
        return HubBusy(hub, min(MAX_BUSY_WAIT_S, max(1.0, float(wait))))
    if reason.partition(":")[0] == "store_unavailable":
        return HubError(f"the hub at {hub} cannot check logins now (it cannot reach its "
                        f"store)", retry=True)
    return None


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
                 timeout_s: float = 20.0, hub_key_next: str | None = None) -> None:
        self.hub, self.hub_key, self.key, self.user = hub, hub_key, key, user
        # The second pinned key while the hub's key is rotated (agent/pins.py).
        self.hub_key_next = hub_key_next
        self.timeout_s = timeout_s
        self.transport: paramiko.Transport | None = None
        self.presented_key: str | None = None  # the pinned key the hub presented
        # The connection's report stream (`estate-report v2`), opened by the first report.
        self.stream: paramiko.Channel | None = None
        self._answers = bytearray()  # what the stream sent past the last answer's newline
        # The hub answered v2 with `unknown_command`: v1 for the rest of this connection.
        self.v1_only = False

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
        transport = _Transport(sock, disabled_algorithms=_DISABLED)
        transport.banner_timeout = transport.auth_timeout = self.timeout_s
        # A disconnect's reason counts only from the pinned hub: before its key is checked,
        # anyone on the path can send one (in the clear), e.g. `busy` with a long wait.
        pinned_hub = False
        try:
            transport.start_client(timeout=self.timeout_s)
            got = fingerprint_of(transport.get_remote_server_key())
            if got not in (self.hub_key, self.hub_key_next):
                pinned = self.hub_key + (f" (and {self.hub_key_next}, the hub's next key)"
                                         if self.hub_key_next else "")
                raise HostKeyMismatch(self.hub, pinned, got)
            pinned_hub = True
            transport.auth_publickey(self.user, self.key)
        except paramiko.AuthenticationException:
            transport.close()
            if pinned_hub and (sent_away := _sent_away(self.hub, transport.disconnect_reason)):
                raise sent_away from None
            raise HubError(f"the hub at {self.hub} refused the login of {self.user!r} with "
                           f"key {fingerprint_of(self.key)} (unknown, revoked or not "
                           f"enrolled)", retry=False) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            if pinned_hub and (sent_away := _sent_away(self.hub, transport.disconnect_reason)):
                raise sent_away from None
            raise HubError(f"SSH with the hub at {self.hub} failed: {exc}") from None
        except HubError:
            transport.close()
            raise
        # No SSH keepalive: at 30 s it cost the hub ~13% of a core per 10,000 idle agents
        # (docs/benchmarks.md). The kernel's TCP keepalive finds a hub that vanished (and
        # keeps NAT state of the idle connection) at no cost to either side; each report
        # also tests the connection.
        keep_alive(sock, TcpKeepalive())
        self.transport = transport
        self.presented_key = got
        self.stream, self.v1_only = None, False  # a new connection tries v2 again

    def run(self, command: str, payload: bytes) -> CommandResult:
        """Run `command` on a new channel with `payload` as its input.

        Raises:
            HubError: the connection failed or the answer was not JSON.
        """
        if self.transport is None or not self.transport.is_active():
            self.connect()
        assert self.transport is not None
        try:
            chan = self._exec(command)
            try:
                chan.sendall(payload)
                chan.shutdown_write()
            except (OSError, EOFError):  # paramiko's EOFError: the socket itself was closed
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
        except (ValueError, RecursionError):  # nested past the parser's depth: not JSON either
            raise HubError(f"the hub answered {bytes(out[:200])!r}, not JSON") from None
        return CommandResult(status, doc)

    def report(self, body: bytes) -> CommandResult:
        """Send one report (a body as v1 takes it) and return the hub's answer.

        Over the connection's report stream, stop-and-wait: one frame, then its one-line
        answer, mapped to the exit status v1 would have given (ack 0, else the error code's).
        A hub that answers the stream with `unknown_command` gets this report, and the rest
        on this connection, over v1.

        Raises:
            StreamEnded: the stream ended without an answer; the connection is alive.
            HubError: the connection failed or the answer was not JSON.
        """
        if self.transport is None or not self.transport.is_active():
            self.connect()
        if self.v1_only:
            return self.run(REPORT_COMMAND, body)
        result = self._send_frame(body)
        if result.doc.get("code") == "unknown_command":  # only ever about the exec
            # An older hub: it knows v1 only. Said once a connection; v2 is tried again on
            # the next one, which may be to an upgraded hub.
            log.info("the hub at %s does not know %s: reports go over %s on this "
                     "connection", self.hub, REPORT_STREAM_COMMAND, REPORT_COMMAND)
            self.v1_only = True
            return self.run(REPORT_COMMAND, body)
        return result

    def _send_frame(self, body: bytes) -> CommandResult:
        chan = self._open_stream()
        try:
            try:
                chan.sendall(struct.pack(">I", len(body)) + body)
            except (OSError, EOFError):  # paramiko's EOFError: the socket itself was closed
                pass  # the hub answered early (refused, ended): read why below
            line = self._read_answer(chan)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._close_stream()
            raise HubError(f"the hub connection failed: {exc}") from None
        except HubError:
            self._close_stream()
            raise
        if line is None:
            self._close_stream()
            # A channel closed under us with no exit status is a connection going down
            # (paramiko closes its channels before it marks the transport inactive).
            if chan.exit_status_ready() and self.transport and self.transport.is_active():
                raise StreamEnded(f"the hub ended the report stream (exit status "
                                  f"{chan.recv_exit_status()}) without an answer")
            raise HubError("the hub connection failed: the report stream closed "
                           "without an answer")
        try:
            doc = json.loads(line.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # nested past the parser's depth: not JSON either
            self._close_stream()
            raise HubError(f"the hub answered {bytes(line[:200])!r}, not a JSON "
                           f"object") from None
        if doc.get("status") != "error":
            return CommandResult(ChannelExit.OK, doc)
        code = doc.get("code")
        if not isinstance(code, str):  # a list would not even hash: a bad answer
            self._close_stream()
            raise HubError(f"the hub answered {bytes(line[:200])!r}, an error without a "
                           f"code")
        if code in STREAM_KEEPS:
            return CommandResult(ERROR_CODES[code], doc)
        # The hub ends the stream after this answer: its exit status, as v1 would see it.
        status = ERROR_CODES.get(code)
        if status is None:
            chan.status_event.wait(self.timeout_s)
            status = chan.exit_status if chan.exit_status_ready() else ChannelExit.TEMPFAIL
        self._close_stream()
        return CommandResult(status, doc)

    def _exec(self, command: str) -> paramiko.Channel:
        """A new session channel running `command`; paramiko's errors as they come."""
        assert self.transport is not None
        chan = self.transport.open_session(timeout=self.timeout_s)
        chan.settimeout(max(self.timeout_s, 60.0))
        chan.exec_command(command)
        return chan

    def _open_stream(self) -> paramiko.Channel:
        """The connection's report stream; a new one when there is none or it has ended
        (what an ended stream sent, if anything, belongs to no report of ours)."""
        chan = self.stream
        if chan is not None and not (chan.closed or chan.eof_received
                                     or chan.exit_status_ready() or self._answers
                                     or chan.recv_ready()):
            return chan
        self._close_stream()
        assert self.transport is not None
        try:
            chan = self._exec(REPORT_STREAM_COMMAND)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HubError(f"the hub connection failed: {exc}") from None
        self.stream = chan
        return chan

    def _read_answer(self, chan: paramiko.Channel) -> bytes | None:
        """One answer line from the stream, without its newline; None when the stream ended
        first."""
        while (end := self._answers.find(b"\n")) < 0:
            chunk = chan.recv(65536)
            if not chunk:
                return None
            self._answers += chunk
            if len(self._answers) > MAX_ANSWER_BYTES:
                raise HubError("the hub's answer is unreasonably large")
        line = bytes(self._answers[:end])
        del self._answers[:end + 1]
        return line

    def _close_stream(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        self._answers.clear()

    def round_trip_ms(self, timeout_s: float) -> float | None:
        """The round trip to the hub over this connection, in ms (`_Transport.round_trip_ms`).

        Raises:
            HubError: not connected.
        """
        transport = self.transport
        if not isinstance(transport, _Transport) or not transport.is_active():
            raise HubError(f"not connected to the hub at {self.hub}")
        return transport.round_trip_ms(timeout_s)

    def close(self) -> None:
        self._close_stream()
        if self.transport:
            self.transport.close()
            self.transport = None


def load_key(path: Path) -> paramiko.PKey:
    """The agent's private key (ed25519, OpenSSH format); on Windows refused when anyone but
    SYSTEM and Administrators can read it (what its 0600 mode promises on POSIX)."""
    import sys

    if sys.platform == "win32":
        from estate.agent import winacl

        try:
            winacl.check(path)
        except winacl.KeyAccessError as exc:
            raise HubError(str(exc), retry=False) from None
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(path))
    except (OSError, paramiko.SSHException) as exc:
        raise HubError(f"cannot load the agent key {path}: {exc}", retry=False) from None
