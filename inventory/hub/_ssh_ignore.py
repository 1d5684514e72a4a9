"""asyncssh's empty MSG_IGNORE before every packet, kept only where it protects something.

asyncssh (2.24 here) sends an empty SSH_MSG_IGNORE before every packet it sends once
encryption is on, whatever the cipher: RFC 4251 section 9.3.1's countermeasure to the
chosen-plaintext attack on CBC, whose next packet's IV is the last ciphertext block already on
the wire. CTR, GCM and chacha20-poly1305 have no such chaining and the hub allows no CBC cipher
(`_server.ENCRYPTION_ALGS`); an empty packet sent in the same instant as the real one hides no
size or timing either. It is not free: its own padding, encryption and socket write, per
packet. Relaying a copy, that was one extra packet per 32 KiB to the agent and per window
adjust to the operator; measured alone, 36 to 210 us each (AES to chacha20; docs/benchmarks.md).

asyncssh has no setting for it, so the hub wraps `SSHConnection.send_packet`: an empty
MSG_IGNORE (asyncssh's own, from that line) is not sent when the connection's send cipher is
known and is not CBC. Everything else, including any MSG_IGNORE with content and every packet
of a CBC connection, goes through unchanged.
"""

from __future__ import annotations

from typing import Any

from asyncssh.connection import SSHConnection

_MSG_IGNORE = 2  # RFC 4253 section 11.2
_EMPTY_STRING = b"\0\0\0\0"  # uint32 length 0
_installed = False


def needs_ignore(send_cipher: str | None) -> bool:
    """Whether an empty MSG_IGNORE before a packet protects anything with this send cipher:
    only CBC's (or an unknown one's, to be safe)."""
    return send_cipher is None or send_cipher.endswith("-cbc") or "-cbc@" in send_cipher


def skip_needless_ignores() -> None:
    """Install the wrapper once for this process (the hub's connections and links)."""
    global _installed
    if _installed:
        return
    send_packet = SSHConnection.send_packet

    def send_packet_without_needless_ignore(self: SSHConnection, pkttype: int, *args: bytes,
                                            **kwargs: Any) -> None:
        if pkttype == _MSG_IGNORE and args == (_EMPTY_STRING,) and \
                not needs_ignore(self.get_extra_info("send_cipher")):
            return
        send_packet(self, pkttype, *args, **kwargs)

    SSHConnection.send_packet = send_packet_without_needless_ignore  # type: ignore[method-assign]
    _installed = True
