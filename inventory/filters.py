"""The host filter syntax, shared by the console, the operator API and exports.

Words separated by spaces, all of which must match:
- free text: `dell` matches any text column containing it (case-insensitive);
- `field:value`: that column contains the value (`status:offline`, `os:windows`,
  `agency:fire`);
- comparisons on numbers: `disk>90`, `ram>=16` (GiB), `disk<10`, `ram=8`;
- a leading `-` negates a word: `-status:online`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inventory.hostlist import COLUMN_KEYS

__all__ = ["FIELDS", "FilterError", "Matcher", "compile_filter"]

# Names people type, mapped to host-list columns.
FIELDS = {
    "id": "agent_id", "agent": "agent_id", "host": "hostname", "hostname": "hostname",
    "name": "hostname", "agency": "agency", "site": "site", "status": "status", "os": "os",
    "model": "model", "serial": "serial", "cpu": "cpu", "ram": "ram_bytes",
    "disk": "disk_percent", "ip": "ip", "seen": "last_seen",
}
_SCALE = {"ram_bytes": 2**30}  # ram is typed in GiB
_TEXT = [i for i, k in enumerate(COLUMN_KEYS) if k not in ("ram_bytes", "disk_percent")]
_WORD = re.compile(r"^(-?)([a-z_]+)(:|>=|<=|>|<|=)(.*)$")

Row = Sequence[Any]
Matcher = Callable[[Row], bool]


class FilterError(ValueError):
    """A filter that cannot be understood; the message names the word and what is wrong."""


@dataclass(frozen=True)
class _Word:
    negate: bool
    test: Matcher

    def __call__(self, row: Row) -> bool:
        return self.test(row) != self.negate


def compile_filter(text: str) -> Matcher:
    """A predicate over host-list rows (in `COLUMN_KEYS` order).

    Raises:
        FilterError: an unknown field, or a comparison that is not a number.
    """
    if len(text) > 1000:
        raise FilterError("filter is longer than 1000 characters")
    words = [_word(w) for w in text.split()]
    if not words:
        return lambda row: True
    return lambda row: all(w(row) for w in words)


def _word(word: str) -> _Word:
    m = _WORD.match(word.lower())
    if not m:
        negate = word.startswith("-") and len(word) > 1
        needle = (word[1:] if negate else word).lower()
        return _Word(negate, lambda row: any(
            row[i] is not None and needle in str(row[i]).lower() for i in _TEXT))
    negate, name, op, value = m.group(1) == "-", m.group(2), m.group(3), m.group(4)
    if name not in FIELDS:
        raise FilterError(f"{word!r}: unknown field {name!r} "
                          f"(fields: {', '.join(sorted(FIELDS))})")
    column = FIELDS[name]
    index = COLUMN_KEYS.index(column)
    if op == ":":
        return _Word(negate, lambda row: row[index] is not None
                     and value in str(row[index]).lower())
    try:
        number = float(value) * _SCALE.get(column, 1)
    except ValueError:
        raise FilterError(f"{word!r}: {op} needs a number, got {value!r}") from None
    compare: Callable[[float], bool] = {
        ">": lambda x: x > number, "<": lambda x: x < number, ">=": lambda x: x >= number,
        "<=": lambda x: x <= number, "=": lambda x: x == number}[op]
    return _Word(negate, lambda row: isinstance(row[index], (int, float))
                 and compare(row[index]))
