"""Probe policies the hub hands its agents: set and cleared per agency (site "") or per site of
one (`estate-hub probes ...`, audited), and each place's effective policy.

An agent's effective policy is its agency's probes, then its site's: a site probe replaces the
agency probe of the same name in place, the others follow in their order. At most
`MAX_HUB_PROBES` in all for every (agency, site), checked when a policy is set, so no agent is
ever handed more than it would run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from estate.inventory.errors import EstateError
from estate.inventory.probe_spec import MAX_HUB_PROBES, ProbeSpec, canonical_hash, sift_hub_probes
from estate.inventory.store._audit import AuditLog
from estate.inventory.store._common import iso, utcnow
from estate.inventory.store._records import ProbePolicy

AGENCY_WIDE = ""  # the site of an agency's own policy

Effective = tuple[str, list[ProbeSpec]]
"""A place's effective policy: its canonical hash ("" for none) and its probes, in order."""


class ProbePolicyTooLarge(EstateError, ValueError):
    """Setting this policy would give some (agency, site) more than MAX_HUB_PROBES probes."""


def merge(agency: Sequence[ProbeSpec], site: Sequence[ProbeSpec]) -> list[ProbeSpec]:
    """The agency's probes with the site's of the same name in their place, then the site's
    others: the same order on every hub, so the same hash."""
    by_name = {p.name: p for p in site}
    merged = [by_name.pop(p.name, p) for p in agency]
    return merged + [p for p in site if p.name in by_name]


class ProbeRecords(AuditLog):
    def set_probe_policy(self, agency: str, site: str, probes: Sequence[ProbeSpec],
                         actor: str) -> str:
        """Set (replace) the policy of an agency (`site` "") or one of its sites, audited.

        Args:
            probes: already checked against the hub's limits (`parse_probes(hub=True)`).

        Returns:
            The policy's own hash.

        Raises:
            ProbePolicyTooLarge: with it, an (agency, site) would have more than
                MAX_HUB_PROBES probes; nothing is changed.
        """
        digest = canonical_hash(probes)
        tables = json.dumps([p.as_table() for p in probes], ensure_ascii=False,
                            separators=(",", ":"))
        with self._transaction():
            policies = self._agency_policies(agency)
            policies[site] = list(probes)
            self._check_sizes(agency, policies)
            self.db.execute(
                "INSERT INTO probe_policies (agency, site, probes, hash, set_by, set_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (agency, site) DO UPDATE SET "
                "probes = excluded.probes, hash = excluded.hash, set_by = excluded.set_by, "
                "set_at = excluded.set_at",
                (agency, site, tables, digest, actor, iso(utcnow())))
            self._audit(actor, "probe_policy_set", _target(agency, site),
                        {"agency": agency, "site": site, "hash": digest,
                         "count": len(probes)})
        return digest

    def clear_probe_policy(self, agency: str, site: str, actor: str) -> bool:
        """Remove the policy of an agency (`site` "") or one site; False when there was none.
        An agency's site policies stay when its own is cleared."""
        with self._transaction():
            row = self.db.execute("SELECT hash, probes FROM probe_policies WHERE agency = ? "
                                  "AND site = ?", (agency, site)).fetchone()
            if row is None:
                return False
            self.db.execute("DELETE FROM probe_policies WHERE agency = ? AND site = ?",
                            (agency, site))
            self._audit(actor, "probe_policy_cleared", _target(agency, site),
                        {"agency": agency, "site": site, "hash": row[0],
                         "count": len(json.loads(row[1]))})
        return True

    def probe_policies(self, agency: str | None = None) -> list[ProbePolicy]:
        """Every policy (or one agency's), by agency then site (the agency's own first)."""
        sql = "SELECT agency, site, probes, hash, set_by, set_at FROM probe_policies"
        args: tuple[str, ...] = ()
        if agency is not None:
            sql, args = sql + " WHERE agency = ?", (agency,)
        rows = self.db.execute(sql + " ORDER BY agency, site", args).fetchall()
        return [ProbePolicy(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5]) for r in rows]

    def effective_probe_policies(self) -> dict[tuple[str, str], Effective]:
        """The effective policy of every (agency, site) with a policy of its own, and of every
        agency with one ((agency, "")): a site without a row of its own takes its agency's."""
        agencies: dict[str, dict[str, list[ProbeSpec]]] = {}
        for p in self.probe_policies():
            agencies.setdefault(p.agency, {})[p.site] = _specs(p.probes)
        out: dict[tuple[str, str], Effective] = {}
        for agency, sites in agencies.items():
            base = sites.get(AGENCY_WIDE, [])
            for site, probes in sites.items():
                effective = probes if site == AGENCY_WIDE else merge(base, probes)
                out[(agency, site)] = (canonical_hash(effective), effective)
        return out

    def agent_place(self, agent_id: str) -> tuple[str, str] | None:
        """The agency and site an agent enrolled into; None for an unknown agent."""
        row = self.db.execute(
            "SELECT a.name, s.name FROM agents g JOIN agencies a ON a.id = g.agency_id "
            "JOIN sites s ON s.id = g.site_id WHERE g.id = ?", (agent_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def _agency_policies(self, agency: str) -> dict[str, list[ProbeSpec]]:
        return {p.site: _specs(p.probes) for p in self.probe_policies(agency)}

    @staticmethod
    def _check_sizes(agency: str, policies: dict[str, list[ProbeSpec]]) -> None:
        base = policies.get(AGENCY_WIDE, [])
        for site, probes in sorted(policies.items()):
            if site == AGENCY_WIDE:
                continue
            merged = merge(base, probes)
            if len(merged) > MAX_HUB_PROBES:
                raise ProbePolicyTooLarge(
                    f"agency {agency!r} site {site!r}: its {len(base)} agency probe(s) and "
                    f"{len(probes)} site probe(s) make {len(merged)} (a site probe replaces "
                    f"the agency probe of its name), over the limit of {MAX_HUB_PROBES} an "
                    f"agent runs")


def _specs(tables: list[dict[str, object]]) -> list[ProbeSpec]:
    """A stored policy's probes; any a newer rule refuses is left out, as agents would."""
    return sift_hub_probes(tables)[0]


def _target(agency: str, site: str) -> str:
    return f"{agency}/{site}" if site else agency
