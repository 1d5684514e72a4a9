"""Operating systems' end of vendor support, from the versioned table shipped with Estate."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("end_of_support.json")


@dataclass(frozen=True)
class Support:
    os: str  # the table entry's name
    end_of_support: date
    source: str


@dataclass(frozen=True)
class _Entry:
    name: re.Pattern[str]
    version: re.Pattern[str]
    support: Support


@lru_cache(maxsize=1)
def table() -> tuple[str, tuple[_Entry, ...]]:
    """(table version, entries)."""
    doc = json.loads(TABLE.read_text(encoding="utf-8"))
    entries = tuple(
        _Entry(re.compile(e["name"], re.IGNORECASE), re.compile(e["version"], re.IGNORECASE),
               Support(e["os"], date.fromisoformat(e["end_of_support"]), e["source"]))
        for e in doc["entries"])
    return doc["version"], entries


def os_for_support(os_product: str | None, os_name: str | None) -> str | None:
    """The name the table matches: the English product the agent identified from the OS's
    numbers where it did, else the display name, which a localised Windows writes in its own
    language ("Windows 11 Entreprise")."""
    return os_product or os_name


@lru_cache(maxsize=4096)
def support_of(os_name: str | None, os_version: str | None) -> Support | None:
    """The table's entry for this OS, or None when the table does not know it."""
    if not os_name:
        return None
    for entry in table()[1]:
        if entry.name.search(os_name) and entry.version.search(os_version or ""):
            return entry.support
    return None
