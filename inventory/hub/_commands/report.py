"""`estate-report v1`: an agent's report, charged to its budgets, validated, then stored.

`take_report` is the path every report takes, whichever command carried it: v1 answers its
one body with it, `estate-report v2` (`report_stream.py`) each frame of its stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Refusal:
    """A report not stored: the error answer's code, message and other fields."""

    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)


async def take_report(ctx: Context, body: bytes) -> dict[str, Any] | Refusal:
    """Charge, read, validate and store one report body from `ctx.peer`; the ack once it is
    committed (`next_key`, `probe_policy` as due), or why it was not stored."""
    agent_id = ctx.peer.name
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
        return Refusal("busy", str(exc), {"retry_after": exc.retry_after})
    except Busy as exc:
        return Refusal("busy", str(exc), {"retry_after": exc.retry_after})
    except ReportError as exc:
        log.warning("report from %s refused: %s", agent_id, quoted(str(exc), 300))
        return Refusal("invalid_report", exc.problem, {"path": exc.path})
    try:
        status = await ctx.writer.submit(Incoming(agent_id, report, body, utcnow()))
    except Busy as exc:
        budgets.give_back(agent_id, len(body))  # the hub is behind, not the agent
        return Refusal("busy", str(exc), {"retry_after": exc.retry_after})
    except StoreUnavailable as exc:
        budgets.give_back(agent_id, len(body))
        return Refusal("store_unavailable", str(exc), {"retry_after": 30})
    if status == "need_full":
        # Nothing stored: the same report comes back at once with its list, and counts once.
        budgets.need_full(agent_id, len(body))
        return Refusal("need_full", "this hub holds another package list for this host, or "
                                    "none: send this report again with its package list",
                       {"report_id": report["report_id"]})
    if status == "stored":
        budgets.stored(agent_id, report["agent"].get("interval_s"))
    # Debug only: at 200 reports/s an info line per report would swamp the log.
    log.debug("report %s from %s %s", report["report_id"], agent_id, status)
    # During a rotation of the hub key, the ack names the next key: the agent pins it,
    # told over the connection it already pinned (docs/protocol.md, "Reports").
    ack = {"status": status, "report_id": report["report_id"], **ctx.next_key.announcement()}
    # An agent saying which probe policy it holds is told the one it should, if another.
    if "probe_policy" in report["agent"]:
        policy = await _probe_policy(ctx, agent_id, report["agent"]["probe_policy"])
        if policy is not None:
            ack["probe_policy"] = policy
    _metrics.report_acked(status, received_at)  # counted before the agent can see it
    return ack


async def _probe_policy(ctx: Context, agent_id: str, held: object) -> dict[str, Any] | None:
    """The ack's `probe_policy`, or None; a store that fails here costs the agent its
    policy until a later report, never the ack of this one (it is stored)."""
    try:
        return await ctx.probe_policies.ack(agent_id, held)
    except Exception:
        log_failure(log, "probe policy for %s not read", agent_id)
        return None


class ReportCommand(BodyCommand):
    command = REPORT_COMMAND

    def __init__(self, ctx: Context, channel: Channel) -> None:
        super().__init__(ctx, channel)
        # Every refusal of a report, also those before `run` (a body too large, no budget).
        channel.on_refusal = _metrics.report_refused

    async def run(self, body: bytes) -> None:
        result = await take_report(self.ctx, body)
        if isinstance(result, Refusal):
            self.channel.fail(result.code, result.message, **result.extra)
        else:
            self.channel.finish(ChannelExit.OK, result)
