"""The hub's command table: one handler for each command the protocol names, and no other."""

from __future__ import annotations

from estate.inventory.hub._commands import HANDLERS
from estate.inventory.protocol import COMMANDS


def test_every_protocol_command_has_one_handler_named_for_it():
    assert sorted(HANDLERS) == sorted(COMMANDS)
    # The handler's own name for its command is what its log lines and audit rows say.
    assert {name: handler.command for name, handler in HANDLERS.items()} == \
        {name: name for name in COMMANDS}
