"""The host filter syntax, shared by the console, the operator API and exports.

Words separated by spaces, all of which must match:
- free text: `dell` matches any text column containing it (case-insensitive);
- `field:value`: that column contains the value (`status:offline`, `os:windows`,
  `agency:fire`, `remote:ready`);
- comparisons on numbers: `disk>90`, `ram>=16` (GiB), `disk<10`, `ram=8`;
- a leading `-` negates a word: `-status:online`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from estate.inventory.errors import EstateError
from estate.inventory.hostlist import COLUMN_KEYS

__all__ = ["FIELDS", "FilterError", "Matcher", "compile_filter", "compile_prepared", "prepare"]

# Names people type, mapped to host-list columns.
FIELDS = {
    "id": "agent_id", "agent": "agent_id", "host": "hostname", "hostname": "hostname",
    "name": "hostname", "agency": "agency", "site": "site", "status": "status", "os": "os",
    "model": "model", "serial": "serial", "cpu": "cpu", "ram": "ram_bytes",
    "disk": "disk_percent", "ip": "ip", "seen": "last_seen", "remote": "remote",
}
_SCALE = {"ram_bytes": 2**30}  # ram is typed in GiB
_TEXT = [i for i, k in enumerate(COLUMN_KEYS) if k not in ("ram_bytes", "disk_percent")]
TEXT_POSITION = {column: pos for pos, column in enumerate(_TEXT)}  # row index -> low index
_WORD = re.compile(r"^(-?)([a-z_]+)(:|>=|<=|>|<|=)(.*)$")

Row = Sequence[Any]
Prepared = tuple[Sequence[Any], list[str], str]
"""A row made ready for filtering: the row, its text columns lower-cased (in `TEXT_COLUMNS`
order, "" for unknown), and all of them in one string. The console prepares each row once, so
a keystroke is one pass of `in` checks."""
Matcher = Callable[[Row], bool]
PreparedMatcher = Callable[[Prepared], bool]


class FilterError(EstateError, ValueError):
    """A filter that cannot be understood; the message names the word and what is wrong."""


def prepare(row: Row) -> Prepared:
    # One lower() over the joined text is several times cheaper than one per column.
    hay = "\x00".join([v if isinstance(v := row[i], str) else "" for i in _TEXT]).lower()
    return row, hay.split("\x00"), hay


def compile_filter(text: str) -> Matcher:
    """A predicate over host-list rows (in `COLUMN_KEYS` order).

    Raises:
        FilterError: an unknown field, or a comparison that is not a number.
    """
    match = compile_prepared(text)
    return lambda row: match(prepare(row))


def compile_prepared(text: str) -> PreparedMatcher:
    """Like `compile_filter`, over rows already passed through `prepare`."""
    if len(text) > 1000:
        raise FilterError("filter is longer than 1000 characters")
    words = [_word(w) for w in text.split()]
    if not words:
        return lambda row: True
    if len(words) == 1:
        return words[0]
    return lambda row: all(w(row) for w in words)


def _word(word: str) -> PreparedMatcher:
    m = _WORD.match(word.lower())
    if not m:
        negate = word.startswith("-") and len(word) > 1
        needle = (word[1:] if negate else word).lower()
        if negate:
            return lambda row: needle not in row[2]
        return lambda row: needle in row[2]
    negate, name, op, value = m.group(1) == "-", m.group(2), m.group(3), m.group(4)
    if name not in FIELDS:
        raise FilterError(f"{word!r}: unknown field {name!r} "
                          f"(fields: {', '.join(sorted(FIELDS))})")
    column = FIELDS[name]
    index = COLUMN_KEYS.index(column)
    if op == ":":
        if index in TEXT_POSITION:
            pos = TEXT_POSITION[index]

            def has(row: Prepared) -> bool:
                return value in row[1][pos] and row[0][index] is not None
        else:
            def has(row: Prepared) -> bool:
                return row[0][index] is not None and value in str(row[0][index])
        return (lambda row: not has(row)) if negate else has
    try:
        number = float(value) * _SCALE.get(column, 1)
    except ValueError:
        raise FilterError(f"{word!r}: {op} needs a number, got {value!r}") from None
    compare: Callable[[float], bool] = {
        ">": lambda x: x > number, "<": lambda x: x < number, ">=": lambda x: x >= number,
        "<=": lambda x: x <= number, "=": lambda x: x == number}[op]

    def test(row: Prepared) -> bool:
        v = row[0][index]
        return isinstance(v, (int, float)) and compare(v)
    return (lambda row: not test(row)) if negate else test
