"""The hub's probe policy as the agent holds it: taken from an ack, kept in the state folder,
run within the hub limits, each probe at its own interval.

The hub sends a policy in the ack of a report whose `agent.probe_policy` (the hash the agent
holds) differs from the agency's and site's effective one. The agent enforces the limits of
inventory/probe_spec.py whatever the hub says: a probe that breaks one is dropped, logged,
and never run; the rest run. The hash reported stays the hub's, so the hub does not send the
same policy again with every ack.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estate.inventory.private_files import write_private
from estate.inventory.probe_spec import ProbeSpec, sift_hub_probes

if TYPE_CHECKING:
    from estate.agent.probes import HubRoundTrip

__all__ = ["POLICY_FILE", "ProbePolicy"]

log = logging.getLogger("estate.agent")

POLICY_FILE = "probe_policy.json"
_HASH = re.compile(r"[0-9a-f]{64}")
MAX_LOGGED_DROPS = 16  # a hostile hub's policy must not flood the agent's log
# 16 probes within the hub limits take a few kilobytes saved; a larger file is not one the
# agent wrote, and is not read whole into memory at start to learn that.
MAX_POLICY_FILE_BYTES = 64 * 1024


class ProbePolicy:
    """The hub probes this agent runs, and the hash of the policy they came in.

    Args:
        state_dir: the agent's private folder, where the policy survives restarts.
        enabled: agent.toml's `accept_hub_probes`; when false there is no policy at all:
            reports carry no `agent.probe_policy` (so the hub sends none) and none runs.
    """

    def __init__(self, state_dir: Path, enabled: bool) -> None:
        self.path = state_dir / POLICY_FILE
        self.enabled = enabled
        self.hash = ""
        self.probes: tuple[ProbeSpec, ...] = ()
        # name -> (monotonic time it last ran, its result), for probes with an interval.
        self.last: dict[str, tuple[float, dict[str, Any]]] = {}
        if enabled:
            self._load()

    @property
    def reported_hash(self) -> str | None:
        """What the report's `agent.probe_policy` says: None (absent) when disabled."""
        return self.hash if self.enabled else None

    def receive(self, policy: object) -> None:
        """Take the ack's `probe_policy` ({"hash": H, "probes": [...]}), keep what fits the
        hub limits, save it; ignored (and logged) when disabled or malformed."""
        if not self.enabled:
            log.warning("the hub sent a probe policy, but accept_hub_probes is false: ignored")
            return
        if not isinstance(policy, dict) or not isinstance(policy.get("hash"), str) \
                or not (policy["hash"] == "" or _HASH.fullmatch(policy["hash"])):
            log.warning("the hub sent a probe policy that is not one (no valid hash): ignored")
            return
        probes, dropped = sift_hub_probes(policy.get("probes", []))
        for reason in dropped[:MAX_LOGGED_DROPS]:
            log.warning("hub probe dropped, over the agent's limits: %s", reason)
        if len(dropped) > MAX_LOGGED_DROPS:
            log.warning("... and %d more hub probes dropped", len(dropped) - MAX_LOGGED_DROPS)
        self._take(policy["hash"], probes)
        log.info("probe policy %s from the hub: %d probe(s) to run, %d dropped",
                 self.hash[:12] or "(none)", len(self.probes), len(dropped))
        self._save()

    def prober(self, hub: str | None, local: tuple[ProbeSpec, ...], report_interval_s: float,
               hub_round_trip: HubRoundTrip | None, now: float | None = None) -> Any:
        """What `collect_report(probes=...)` takes: the built-in, local and hub probes of one
        report. A hub probe with an interval longer than the report interval runs on the first
        report after its interval has passed; the reports in between repeat its last result
        (the hub's verdict would otherwise see it vanish and come back). No probe waits longer
        than half the report interval."""
        # Late: the probes load the collectors (psutil), which `estate-agent status` needs not.
        from estate.agent.probes import builtin_probes, merge_probes, run_probes

        now = time.monotonic() if now is None else now
        effective = merge_probes(builtin_probes(hub, hub_rtt=hub_round_trip is not None),
                                 local, self.probes if self.enabled else ())
        due = [p.source != "hub" or self._due(p, now, report_interval_s) for p in effective]
        to_run = tuple(_within(p, report_interval_s / 2)
                       for p, run in zip(effective, due, strict=True) if run)

        def run(network: dict[str, Any]) -> list[dict[str, Any]]:
            fresh = iter(run_probes(to_run, network, hub_round_trip))
            results = []
            for p, ran in zip(effective, due, strict=True):
                if ran:
                    result = next(fresh)
                    if p.source == "hub":
                        self.last[p.name] = (now, result)
                else:
                    result = self.last[p.name][1]
                results.append(result)
            return results

        return run

    def _due(self, p: ProbeSpec, now: float, report_interval_s: float) -> bool:
        # Clamped to the report interval: never faster than the agent reports.
        if p.interval_s is None or p.interval_s <= report_interval_s:
            return True
        last = self.last.get(p.name)
        return last is None or now - last[0] >= p.interval_s

    def _take(self, policy_hash: str, probes: list[ProbeSpec]) -> None:
        self.hash, self.probes = policy_hash, tuple(probes)
        names = {p.name for p in probes}
        self.last = {k: v for k, v in self.last.items() if k in names}

    def _load(self) -> None:
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_POLICY_FILE_BYTES + 1)
            if len(data) > MAX_POLICY_FILE_BYTES:
                log.warning("the saved probe policy %s is too large to be one (over %d bytes): "
                            "the hub sends it again", self.path, MAX_POLICY_FILE_BYTES)
                return
            doc = json.loads(data.decode("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("cannot read the saved probe policy %s (%s): the hub sends it again",
                        self.path, exc)
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("hash"), str) \
                or not (doc["hash"] == "" or _HASH.fullmatch(doc["hash"])):
            log.warning("the saved probe policy %s is not one: the hub sends it again",
                        self.path)
            return
        # The limits again: the file is the agent's own, but the rules may have tightened.
        probes, dropped = sift_hub_probes(doc.get("probes", []))
        for reason in dropped[:MAX_LOGGED_DROPS]:
            log.warning("saved hub probe dropped, over the agent's limits: %s", reason)
        self._take(doc["hash"], probes)

    def _save(self) -> None:
        doc = {"hash": self.hash, "probes": [p.as_table() for p in self.probes]}
        try:
            write_private(self.path, json.dumps(doc, indent=1).encode())
        except OSError as exc:  # it still runs; after a restart the hub sends it again
            log.warning("cannot save the probe policy to %s: %s", self.path, exc)


def _within(p: ProbeSpec, longest_s: float) -> ProbeSpec:
    """`p` with its timeout cut to `longest_s`. The report waits for its probes: an agent
    reporting every second whose gateway drops pings (2 s timeout) would report every 2-3 s,
    and the hub shows a host stale after two missed intervals."""
    return p if p.timeout_s <= longest_s else p._replace(timeout_s=longest_s)
