"""Compliance: a policy of controls over hosts' reported facts, and each host's result per
control (pass, fail or unknown, with the fact and the reason).

The hub loads the policy at start (`estate-hub serve --policy FILE`, else the shipped
`default_policy.toml`), evaluates every report as the store writes it (`_hosts.py`), and keeps
each result's history; exports, the API and the console read what the store kept.
"""

from estate.inventory.compliance._evaluate import (
    FAIL,
    OUTCOMES,
    PASS,
    UNKNOWN,
    ComplianceSummary,
    Result,
    evaluate,
    summarise,
    summarise_outcomes,
)
from estate.inventory.compliance._policy import (
    DEFAULT_POLICY,
    KINDS,
    SEVERITIES,
    THEMES,
    Control,
    Policy,
    PolicyError,
    load_policy,
    parse_policy,
)

__all__ = ["DEFAULT_POLICY", "FAIL", "KINDS", "OUTCOMES", "PASS", "SEVERITIES", "THEMES",
           "UNKNOWN", "ComplianceSummary", "Control", "Policy", "PolicyError", "Result",
           "evaluate", "load_policy", "parse_policy", "summarise",
           "summarise_outcomes"]
