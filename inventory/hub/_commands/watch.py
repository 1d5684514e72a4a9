"""`estate-watch v1`: an operator's live feed of host, presence and change events in their
scope (`_watch.py` fans them out)."""

from __future__ import annotations

import logging

from estate.inventory.hub._commands.base import Handler
from estate.inventory.hub._watch import Watcher
from estate.inventory.protocol import WATCH_COMMAND

log = logging.getLogger("estate.hub")


class WatchCommand(Handler):
    command = WATCH_COMMAND
    watcher: Watcher | None = None

    def start(self) -> None:
        ctx, chan = self.ctx, self.channel.chan
        assert ctx.peer.operator is not None and chan is not None
        if (refusal := self._refusal()) is not None:
            self.channel.fail("too_many_watchers", refusal,
                              retry_after=30)
            return
        self.watcher = Watcher(chan, ctx.peer.agencies, ctx.peer.name)
        ctx.watch.watchers.add(self.watcher)
        chan.write(b'{"type": "hello"}\n')

    def _refusal(self) -> str | None:
        """Why one more watch may not be opened (each is a copy of every event), or None."""
        settings, name, watchers = self.ctx.settings, self.ctx.peer.name, self.ctx.watch.watchers
        if len(watchers) >= settings.max_watchers:
            limit, what = settings.max_watchers, "on this hub"
        elif sum(w.operator == name for w in watchers) >= settings.watchers_per_operator:
            limit, what = settings.watchers_per_operator, f"for operator {name}"
        else:
            return None
        log.warning("conn %s operator %s refused watch: %d open %s, the limit",
                    self.ctx.peer.address, name, limit, what)
        self.ctx.audit.record(self.ctx.peer.source, self.ctx.peer.actor, "channel_refused", None,
                              {"code": "too_many_watchers", "limit": limit})
        return f"at most {limit} watches may be open {what}; close one and retry"

    def eof(self) -> None:
        self.channel.end()  # a watch has no input; its end is the client's goodbye

    def closed(self) -> None:
        if self.watcher is not None:
            self.ctx.watch.watchers.discard(self.watcher)
            self.watcher = None
