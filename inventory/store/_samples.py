"""The store's samples: one small row per stored report (when it came, the agent's clock skew,
its probe results, its id), kept `--retention-days`. They are what the console's sparklines
draw and how a resent report is known; the reports that may show something new also keep
their body in `reports` (`_hosts.py`), for `--history-days`.

A sample is keyed by host and time in microseconds since 1970 (an integer: 8 bytes where ISO
text takes 27, in the row and in its key), the table clustered on that key on SQLite, and
partitioned by day on PostgreSQL (`_partitions.py`).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from estate.inventory.store._changes import ChangeRecords
from estate.inventory.store._common import from_us, iso, to_us
from estate.inventory.store._records import RecentReport

# A resent report (its ack was lost) comes back within this long of when it was collected,
# or of when it was first received, if the agent's clock is behind: how far back a
# report's id is looked for.
RESEND_WINDOW = timedelta(days=2)
# The days of samples that keep their resend index on PostgreSQL (`_partitions.py`): today,
# the window's days before it, and one more for a report collected a while before it came.
RESEND_INDEXED_DAYS = RESEND_WINDOW.days + 2
_PRUNE_AGENTS = 200  # agents whose expired samples one query lists
_SAME_TIME_TRIES = 64  # microseconds a sample may move on (tests store reports at one time)
# This agent's report with this id, received since: a resend. One probe of the index on
# (agent_id, report_id): on SQLite the table's (migration 15); on PostgreSQL each recent
# day's (`_partitions.py`), since for the whole retention it would cost more bytes than the
# store's growth target leaves; on an older day, a range of the host's samples since.
_RESENT = "SELECT 1 FROM samples WHERE agent_id = ? AND received_us >= ? AND report_id = ?"


def compact_probes(report: dict[str, Any]) -> str:
    """A report's probe results as a sample keeps them: [[name, ok, latency_ms], ...]."""
    probes = (report.get("connectivity") or {}).get("probes") or []
    return json.dumps([[p.get("name"), p.get("ok"), p.get("latency_ms")] for p in probes],
                      ensure_ascii=False, separators=(",", ":"))


def probe_figures(stored: str | None) -> list[dict[str, Any]]:
    """A sample's probe results as the API shows them: {name, ok, latency_ms} each."""
    try:
        return [{"name": p[0], "ok": p[1], "latency_ms": p[2]} for p in json.loads(stored or "[]")]
    except (ValueError, TypeError, IndexError, KeyError):
        return []


def _without_agent(report_id: str, agent_id: str) -> str:
    """A report id as a sample keeps it: without its agent's id (":BOOT:SEQUENCE"), which
    every id the hub accepts starts with; 15 bytes a row. A full id never starts with ":"."""
    return report_id[len(agent_id):] if report_id.startswith(f"{agent_id}:") else report_id


def _with_agent(stored: str, agent_id: str) -> str:
    return agent_id + stored if stored.startswith(":") else stored


def _collected(received: datetime, skew: float | None) -> str:
    """When the agent said it collected the report: received time plus its clock skew (a
    sample keeps the skew, not the text), to the second as agents write it."""
    at = received + timedelta(microseconds=round((skew or 0) * 1_000_000))
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at.microsecond == 0 else iso(at)


def _resend_since(collected_at: datetime, received_at: datetime) -> int:
    """Since when (microseconds) a report's id is looked for among its host's samples."""
    # In microseconds, not datetimes: a report "collected" on 0001-01-01 is valid, and two
    # days before it would overflow (and fail every report of its batch).
    return to_us(min(collected_at, received_at)) - RESEND_WINDOW // timedelta(microseconds=1)


# `_insert_sample`'s statement for many reports (PostgreSQL), answering the agents whose
# sample it wrote; the first part of the unchanged reports' one statement (`_hosts.py`). Its
# parameters are arrays, a column each (`sample_columns`): one statement text whatever the
# count, prepared once. The resend check is a subquery with LIMIT, run per row through the
# key's index: as an anti-join the planner could hash the whole table.
INSERT_SAMPLES = (
    "INSERT INTO samples (agent_id, received_us, clock_skew_s, report_id, probes) "
    "SELECT v.agent_id, v.received_us, v.clock_skew_s, v.report_id, v.probes "
    "FROM unnest(?::TEXT[], ?::BIGINT[], ?::DOUBLE PRECISION[], ?::TEXT[], ?::TEXT[], "
    "?::BIGINT[]) AS v (agent_id, received_us, clock_skew_s, report_id, probes, since) "
    "WHERE (SELECT 1 FROM samples s WHERE s.agent_id = v.agent_id AND "
    "s.received_us >= v.since AND s.report_id = v.report_id LIMIT 1) IS NULL "
    "ON CONFLICT DO NOTHING RETURNING agent_id")


def sample_columns(samples: list[tuple[Any, ...]]) -> list[list[Any]]:
    """`INSERT_SAMPLES`'s parameters for these samples (each `_insert_sample`'s arguments)."""
    rows = [(agent_id, to_us(received_at), skew, _without_agent(report_id, agent_id),
             compact_probes(report), _resend_since(collected_at, received_at))
            for agent_id, report_id, collected_at, received_at, skew, report in samples]
    return [list(column) for column in zip(*rows, strict=True)]


class SampleRecords(ChangeRecords):
    # Expired samples are pruned host by host (SQLite): the next host to look at, and the
    # horizon of the last full pass (done once per prune, not once per chunk).
    _prune_cursor = ""
    _pruned_to: datetime | None = None

    def _insert_sample(self, agent_id: str, report_id: str, collected_at: datetime,
                       received_at: datetime, skew: float, report: dict[str, Any]) -> bool:
        """A report's sample, unless this agent's report with this id was stored already
        (within the window an agent resends in: one range of the host's own samples); one
        statement for both. False: it was (a resend)."""
        since = _resend_since(collected_at, received_at)
        received_us, probes = to_us(received_at), compact_probes(report)
        stored_id = _without_agent(report_id, agent_id)
        for _ in range(_SAME_TIME_TRIES):
            cur = self.db.execute(
                "INSERT INTO samples (agent_id, received_us, clock_skew_s, report_id, probes) "
                f"SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS ({_RESENT}) ON CONFLICT DO NOTHING",
                (agent_id, received_us, skew, stored_id, probes, agent_id, since, stored_id))
            if cur.rowcount:
                return True
            if self.db.execute(_RESENT, (agent_id, since, stored_id)).fetchone():
                return False
            # Another report of the host came in the same microsecond: the next one free.
            received_us += 1
        raise RuntimeError(f"no free sample time for {agent_id} near {iso(received_at)}")

    def _insert_samples(self, samples: list[tuple[Any, ...]]) -> set[str]:
        """The samples of reports of distinct agents (each `_insert_sample`'s arguments),
        each unless a resend, on SQLite (PostgreSQL inserts them with `INSERT_SAMPLES`, in
        one statement with their hosts' update). The agents whose sample was written."""
        return {s[0] for s in samples if self._insert_sample(*s)}

    def _recent_samples(self, agent_id: str, limit: int) -> list[RecentReport]:
        rows = self.db.execute(
            "SELECT report_id, received_us, clock_skew_s, probes FROM samples "
            "WHERE agent_id = ? ORDER BY received_us DESC LIMIT ?", (agent_id, limit))
        out = []
        for r in rows:
            received = from_us(r[1])
            out.append(RecentReport(_with_agent(r[0], agent_id), iso(received),
                                    _collected(received, r[2]), r[2], probe_figures(r[3])))
        return out

    def _sample_count(self, agent_id: str | None) -> int:
        if agent_id is None:
            return int(self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM samples WHERE agent_id = ?",
                                   (agent_id,)).fetchone()[0])

    def _prune_samples(self, before: datetime, budget: int) -> int:
        """Delete up to `budget` samples from before `before`, host by host (each a range of
        the table's key, never a scan past the rows that stay), inside the caller's
        transaction; the next call goes on where this one stopped. The rows deleted."""
        if self._pruned_to == before:
            return 0  # this horizon's pass is done
        deleted, bound = 0, to_us(before)
        while True:
            agents = [r[0] for r in self.db.execute(
                "SELECT id FROM agents WHERE id > ? ORDER BY id LIMIT ?",
                (self._prune_cursor, _PRUNE_AGENTS))]
            for agent_id in agents:
                room = budget - deleted
                cur = self.db.execute(
                    "DELETE FROM samples WHERE agent_id = ? AND received_us IN (SELECT "
                    "received_us FROM samples WHERE agent_id = ? AND received_us < ? "
                    "ORDER BY received_us LIMIT ?)", (agent_id, agent_id, bound, room))
                deleted += cur.rowcount
                if cur.rowcount == room:
                    return deleted  # this host may have more: the next call starts with it
                self._prune_cursor = agent_id
            if len(agents) < _PRUNE_AGENTS:
                self._prune_cursor, self._pruned_to = "", before
                return deleted
