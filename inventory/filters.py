"""The host filter syntax, shared by the console, the operator API and exports.

Words separated by spaces, all of which must match:
- free text: `dell` matches any text column containing it (case-insensitive);
- `field:value`: that column contains the value (`status:offline`, `os:windows`,
  `agency:fire`, `remote:ready`);
- comparisons on numbers: `disk>90`, `ram>=16` (GiB), `disk<10`, `ram=8`;
- compliance: `fail:WORD`, a failing control whose id or theme contains WORD
  (`fail:encryption`, `fail:firewall`, `fail:malware`); `compliance<80`, `compliance>=N`, the
  share of the host's controls that pass, in percent (hosts not evaluated never match);
- connectivity: `net:ok`, `net:degraded`, `net:down`; `rtt>200`, `rtt<=50`, the round trip
  to the hub in ms (hosts with no round trip measured never match);
- a leading `-` negates a word: `-status:online`, `-fail:firewall`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from estate.inventory.errors import EstateError
from estate.inventory.hostlist import COLUMN_KEYS, HOST_COLUMNS

__all__ = ["FIELDS", "FilterError", "Matcher", "compile_filter", "compile_prepared",
           "one_text_word", "prepare"]

# Names people type, mapped to host-list columns.
FIELDS = {
    "id": "agent_id", "agent": "agent_id", "host": "hostname", "hostname": "hostname",
    "name": "hostname", "agency": "agency", "site": "site", "status": "status", "os": "os",
    "model": "model", "serial": "serial", "cpu": "cpu", "ram": "ram_bytes",
    "disk": "disk_percent", "ip": "ip", "seen": "last_seen", "remote": "remote",
    "compliance": "compliance", "fail": "compliance", "net": "net", "rtt": "net",
}
_SCALE = {"ram_bytes": 2**30}  # ram is typed in GiB
_TEXT = [i for i, c in enumerate(HOST_COLUMNS) if not c.numeric]
# The compliance column holds a summary (`ComplianceSummary`: a tuple in the hub, a JSON list
# in the console); these are the positions the filters read.
COMPLIANCE_SHARE, COMPLIANCE_FAILING = 0, 6
_CONTROL_WORD = re.compile(r"^[a-z0-9_]{1,64}$")
TEXT_POSITION = {column: pos for pos, column in enumerate(_TEXT)}  # row index -> low index
_WORD = re.compile(r"^(-?)([a-z_]+)(:|>=|<=|>|<|=)(.*)$")

_COMPLIANCE = COLUMN_KEYS.index("compliance")
_NOT_EVALUATED = float("nan")  # every comparison with NaN is false: such hosts never match
# The net column holds (state, rtt_ms, worst); its state is its text (free text, `net:`,
# the console's sort), its round trip the number `rtt` compares.
_NET = COLUMN_KEYS.index("net")
_NET_TEXT = _TEXT.index(_NET)
NET_STATES = ("ok", "degraded", "down")

Row = Sequence[Any]
Prepared = tuple[Sequence[Any], list[str], str, float, str, float]
"""A row made ready for filtering: the row, its text columns lower-cased (in `TEXT_COLUMNS`
order, "" for unknown; the net column's state), all of them in one string, its compliance
share (NaN when not evaluated or not a number), its failing controls and themes ("" when none
or unknown) and its hub round trip in ms (NaN when unknown). The console prepares each row
once, so a keystroke is one pass of `in` checks and comparisons."""
Matcher = Callable[[Row], bool]
PreparedMatcher = Callable[[Prepared], bool]


class FilterError(EstateError, ValueError):
    """A filter that cannot be understood; the message names the word and what is wrong."""


def prepare(row: Row) -> Prepared:
    texts = [v if isinstance(v := row[i], str) else "" for i in _TEXT]
    # A hostile or foreign net value (not a list, a state that is not text, a round trip that
    # is not a number) reads as unknown.
    rtt = _NOT_EVALUATED
    net = row[_NET]
    if isinstance(net, (list, tuple)) and len(net) > 1:
        if isinstance(state := net[0], str):
            texts[_NET_TEXT] = state
        if isinstance(got := net[1], (int, float)) and not isinstance(got, bool):
            rtt = got
    # One lower() over the joined text is several times cheaper than one per column.
    hay = "\x00".join(texts).lower()
    # The compliance summary is checked here, once per row, rather than by each filter word
    # on every keystroke. A hostile or foreign value (not a list, a share that is a bool, a
    # failing list that is not text) reads as not evaluated / nothing failing.
    share, failing = _NOT_EVALUATED, ""
    try:
        summary = row[_COMPLIANCE]
    except IndexError:  # a row from before the compliance column
        summary = None
    if isinstance(summary, (list, tuple)) and summary:
        if isinstance(got := summary[COMPLIANCE_SHARE], (int, float)) \
                and not isinstance(got, bool):
            share = got
        if len(summary) > COMPLIANCE_FAILING \
                and isinstance(got := summary[COMPLIANCE_FAILING], str):
            failing = got
    return row, hay.split("\x00"), hay, share, failing, rtt


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
    # Chained closures rather than `all(generator)`: a generator per row costs more than
    # the words' own tests.
    match = words[-1]
    for word in reversed(words[:-1]):
        match = _both(word, match)
    return match


def one_text_word(text: str) -> tuple[int | None, str] | None:
    """When `text` is one word that looks for text, what `compile_prepared` tests a prepared
    row with: (None, needle) for free text, `needle in row[2]`; (position, value) for a
    text field, `value in row[1][position]` (value never empty). None for anything else.

    A caller holding many prepared rows can then test them at C speed (`map`), with the
    same answer as the matcher's.
    """
    words = text.split()
    if len(words) != 1 or len(text) > 1000:
        return None
    word = words[0]
    m = _WORD.match(word.lower())
    if not m:
        return None if word.startswith("-") and len(word) > 1 else (None, word.lower())
    negate, name, op, value = m.group(1) == "-", m.group(2), m.group(3), m.group(4)
    if negate or op != ":" or not value or name not in FIELDS:
        return None
    index = COLUMN_KEYS.index(FIELDS[name])
    if index == _COMPLIANCE or index == _NET or index not in TEXT_POSITION:
        return None
    return TEXT_POSITION[index], value


def _both(first: PreparedMatcher, then: PreparedMatcher) -> PreparedMatcher:
    return lambda row: first(row) and then(row)


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
    if column == "compliance":
        return _compliance(word, negate, name, op, value)
    if column == "net":
        return _net(word, negate, name, op, value)
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


def _compliance(word: str, negate: bool, name: str, op: str,
                value: str) -> PreparedMatcher:
    """`fail:WORD` and `compliance<N`: both read the keys `prepare` took from the row's
    compliance summary, so a keystroke does no checking per row."""
    if name == "fail":
        if op != ":":
            raise FilterError(f"{word!r}: fail takes a control or theme word after a colon, "
                              f"e.g. fail:firewall")
        if not _CONTROL_WORD.match(value):
            raise FilterError(f"{word!r}: fail: needs a control id or theme word (letters, "
                              f"digits and _, up to 64), e.g. fail:encryption")
        # `value` is never empty, so a row with nothing failing ("") never matches.
        if negate:
            return lambda row: value not in row[4]
        return lambda row: value in row[4]
    if op == ":":
        raise FilterError(f"{word!r}: compliance is a percentage to compare, e.g. "
                          f"compliance<80 (for failing controls: fail:WORD)")
    number = _bounded(word, op, value, 100, "compliance is a percentage, 0 to 100")
    # One closure per operator: the share is NaN when not evaluated, which compares false,
    # so those hosts match no comparison and every negated one.
    tests: dict[str, PreparedMatcher]
    if negate:
        tests = {">": lambda row: not row[3] > number, "<": lambda row: not row[3] < number,
                 ">=": lambda row: not row[3] >= number,
                 "<=": lambda row: not row[3] <= number, "=": lambda row: not row[3] == number}
    else:
        tests = {">": lambda row: row[3] > number, "<": lambda row: row[3] < number,
                 ">=": lambda row: row[3] >= number, "<=": lambda row: row[3] <= number,
                 "=": lambda row: row[3] == number}
    return tests[op]


def _bounded(word: str, op: str, value: str, high: float, meaning: str) -> float:
    """The number a comparison names, from 0 to `high`; `meaning` says the range when not."""
    try:
        number = float(value)
    except ValueError:
        raise FilterError(f"{word!r}: {op} needs a number, got {value!r}") from None
    if not 0 <= number <= high:  # also refuses nan
        raise FilterError(f"{word!r}: {meaning}")
    return number


def _net(word: str, negate: bool, name: str, op: str, value: str) -> PreparedMatcher:
    """`net:STATE` (exactly one of NET_STATES) and `rtt<N` / `rtt>N` (ms)."""
    if name == "net":
        if op != ":" or value not in NET_STATES:
            raise FilterError(f"{word!r}: net takes a state after a colon: "
                              f"{', '.join(f'net:{s}' for s in NET_STATES)} (for the round "
                              f"trip to the hub: rtt>200)")
        if negate:
            return lambda row: row[1][_NET_TEXT] != value
        return lambda row: row[1][_NET_TEXT] == value
    if op == ":":
        raise FilterError(f"{word!r}: rtt is the round trip to the hub in ms, to compare, "
                          f"e.g. rtt>200")
    number = _bounded(word, op, value, 3_600_000, "rtt is milliseconds, 0 to 3600000")
    # NaN (no round trip measured) compares false: such hosts match no comparison and every
    # negated one, as compliance does.
    compare: Callable[[float], bool] = {
        ">": lambda x: x > number, "<": lambda x: x < number, ">=": lambda x: x >= number,
        "<=": lambda x: x <= number, "=": lambda x: x == number}[op]
    if negate:
        return lambda row: not compare(row[5])
    return lambda row: compare(row[5])
