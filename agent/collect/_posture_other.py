"""Any other OS: no security posture is collected; every sub-section says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from estate.agent.collect._posture import empty

__all__ = ["accounts", "encryption", "firewall", "malware", "platform", "updates"]

_REASON = "not collected on this OS"


def encryption() -> dict[str, Any]:
    return empty("encryption", _REASON)


def firewall() -> dict[str, Any]:
    return empty("firewall", _REASON)


def malware() -> dict[str, Any]:
    return empty("malware", _REASON)


def updates(cache_dir: Path | None) -> dict[str, Any]:
    return empty("updates", _REASON)


def platform() -> dict[str, Any]:
    return empty("platform", _REASON)


def accounts() -> dict[str, Any]:
    return empty("accounts", _REASON)
