"""The hub's session relay (inventory/hub/_remote.py): bytes that arrive on one side while
the other side is closing are dropped, not written. asyncssh refuses a write to a closing
channel with BrokenPipeError; raised from the agent's side, it closed the agent's whole
connection (its reports, its remote offer, every other session) whenever an operator closed a
session as the host's sshd was still talking."""

from __future__ import annotations

from estate.inventory.hub._remote import Bridge


class _ClosingChannel:
    """asyncssh's channel once its close has begun: writes are refused as asyncssh does."""

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        raise BrokenPipeError("Channel not open for sending")

    def write_eof(self) -> None:
        raise BrokenPipeError("Channel not open for sending")


class _OpenChannel:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.eof = False

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def write_eof(self) -> None:
        self.eof = True


def test_bytes_for_a_closing_side_are_dropped_and_for_an_open_one_written():
    bridge = Bridge(relay=None, operator_name="alice", agent_id="ag-000000000001")  # type: ignore[arg-type]
    bridge.operator.chan = _ClosingChannel()
    bridge.host.data_received(b"SSH-2.0-OpenSSH_9.2\r\n", None)  # the host's banner, late
    assert bridge.host.eof_received() is True
    assert bridge.host.bytes_in == 21

    opened = _OpenChannel()
    bridge.operator.chan = opened
    bridge.host.data_received(b"more", None)
    bridge.host.eof_received()
    assert (opened.written, opened.eof) == ([b"more"], True)
