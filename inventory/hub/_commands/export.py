"""`estate-export v1`: an operator's export request in, the file out (`_export.py` makes it)."""

from __future__ import annotations

from estate.inventory.hub._budget import Budget
from estate.inventory.hub._commands.base import BodyCommand
from estate.inventory.protocol import EXPORT_COMMAND, MAX_EXPORT_REQUEST_BYTES


class ExportCommand(BodyCommand):
    command = EXPORT_COMMAND
    limit = MAX_EXPORT_REQUEST_BYTES

    def budget(self) -> Budget:
        return self.ctx.budgets.export  # a reconcile request is large: a budget of its own

    async def run(self, body: bytes) -> None:
        channel = self.channel
        if channel.chan is None:
            return  # the operator went away before the export started
        # Imported here: the export package is loaded by the first export, not at hub start
        # nor by the admin verbs.
        from estate.inventory.hub._export import serve_export

        status, doc = await serve_export(
            self.ctx, body, channel.chan, channel.writable,
            gone=lambda: channel.finished or channel.chan is None or
            self.ctx.access_ended() is not None)
        if doc is not None:
            channel.finish(status, doc)
        else:
            channel.end(status)
