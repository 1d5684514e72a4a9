"""`estate-report v1`: an agent's report, charged to its budgets, validated, then stored."""

from __future__ import annotations

import logging
from typing import Any

from estate.inventory.hub import _metrics
from estate.inventory.hub._commands.base import BodyCommand, Channel
from estate.inventory.hub._context import Context
from estate.inventory.hub._ingest import OverBudget
from estate.inventory.hub._tasks import log_failure
from estate.inventory.hub._writer import Busy, StoreUnavailable
from estate.inventory.protocol import REPORT_COMMAND, ChannelExit
from estate.inventory.report import ReportError
from estate.inventory.sanitise import quoted
from estate.inventory.store import Incoming, utcnow

log = logging.getLogger("estate.hub")


class ReportCommand(BodyCommand):
    command = REPORT_COMMAND

    def __init__(self, ctx: Context, channel: Channel) -> None:
        super().__init__(ctx, channel)
        # Every refusal of a report, also those before `run` (a body too large, no budget).
        channel.on_refusal = _metrics.report_refused

    async def run(self, body: bytes) -> None:
        ctx, agent_id = self.ctx, self.ctx.peer.name
        budgets = ctx.ingest.budgets
        received_at = _metrics.report_received()
        try:
            # Charged to the agent before it is decompressed or parsed (on a worker thread).
            report = await ctx.ingest.accept(body, agent_id)
        except OverBudget as exc:
            if exc.first:  # once per throttled episode, not per refusal
                log.warning("reports from %s throttled: %s", agent_id, exc)
            ctx.audit.record(ctx.peer.source, ctx.peer.actor, "report_throttled",
                             agent_id, {"code": "busy", "budget": exc.budget})
            self.channel.fail("busy", str(exc),
                              retry_after=exc.retry_after)
            return
        except Busy as exc:
            self.channel.fail("busy", str(exc),
                              retry_after=exc.retry_after)
            return
        except ReportError as exc:
            log.warning("report from %s refused: %s", agent_id, quoted(str(exc), 300))
            self.channel.fail("invalid_report", exc.problem, path=exc.path)
            return
        try:
            status = await ctx.writer.submit(Incoming(agent_id, report, body, utcnow()))
        except Busy as exc:
            budgets.give_back(agent_id, len(body))  # the hub is behind, not the agent
            self.channel.fail("busy", str(exc),
                              retry_after=exc.retry_after)
            return
        except StoreUnavailable as exc:
            budgets.give_back(agent_id, len(body))
            self.channel.fail("store_unavailable", str(exc),
                              retry_after=30)
            return
        if status == "stored":
            budgets.stored(agent_id, report["agent"].get("interval_s"))
        # Debug only: at 200 reports/s an info line per report would swamp the log.
        log.debug("report %s from %s %s", report["report_id"], agent_id, status)
        # During a rotation of the hub key, the ack names the next key: the agent pins it,
        # told over the connection it already pinned (docs/protocol.md, "Reports").
        ack = {"status": status, "report_id": report["report_id"],
               **ctx.next_key.announcement()}
        # An agent saying which probe policy it holds is told the one it should, if another.
        if "probe_policy" in report["agent"]:
            policy = await self._probe_policy(agent_id, report["agent"]["probe_policy"])
            if policy is not None:
                ack["probe_policy"] = policy
        _metrics.report_acked(status, received_at)  # counted before the agent can see it
        self.channel.finish(ChannelExit.OK, ack)

    async def _probe_policy(self, agent_id: str, held: object) -> dict[str, Any] | None:
        """The ack's `probe_policy`, or None; a store that fails here costs the agent its
        policy until a later report, never the ack of this one (it is stored)."""
        try:
            return await self.ctx.probe_policies.ack(agent_id, held)
        except Exception:
            log_failure(log, "probe policy for %s not read", agent_id)
            return None
