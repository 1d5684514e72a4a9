"""The shared host filter's compliance words, one test per form: `fail:WORD` (a control id or
a theme word), `compliance<N` / `>=N`, their negations, and the errors that name what is wrong.

Rows are the hub's own (`HostRow` with a `ComplianceSummary` tuple) and the console's (the same
row as JSON lists); both must match alike.
"""

from __future__ import annotations

import json

import pytest

from estate.inventory.compliance import ComplianceSummary
from estate.inventory.filters import FilterError, compile_filter, compile_prepared, prepare
from estate.inventory.store import HostRow

FAILING = ComplianceSummary(62.5, 5, 2, 1, "disk_encryption", "Fixed disks encrypted",
                            "disk_encryption secure_configuration updates_recent "
                            "security_update_management")
PASSING = ComplianceSummary(100.0, 8, 0, 0, None, None, "")
UNKNOWNS = ComplianceSummary(87.5, 7, 0, 1, None, None, "")
NO_RESULTS = ComplianceSummary(None, 0, 0, 0, None, None, "")


def _row(agent_id: str, compliance: ComplianceSummary | None) -> HostRow:
    return HostRow(agent_id, f"pc-{agent_id}", "Schools", "Nord", "online", None, "Windows 11",
                   None, None, None, 8 * 2**30, 40.0, None, "2026-01-01T00:00:00Z", "off",
                   compliance=compliance)


ROWS = [_row("failing", FAILING), _row("passing", PASSING), _row("unknowns", UNKNOWNS),
        _row("no-results", NO_RESULTS), _row("not-evaluated", None)]


def _matching(text: str) -> list[str]:
    hub = [r.agent_id for r in ROWS if compile_filter(text)(r)]
    # The console's rows arrived as JSON: the summary is a list there.
    console_rows = json.loads(json.dumps(ROWS))
    match = compile_prepared(text)
    console = [r[0] for r in console_rows if match(prepare(r))]
    assert hub == console, text
    return hub


@pytest.mark.parametrize(("text", "expected"), [
    ("fail:disk_encryption", ["failing"]),  # a control id
    ("fail:encryption", ["failing"]),  # part of one
    ("fail:security_update_management", ["failing"]),  # a theme id
    ("fail:update", ["failing"]),  # a theme word
    ("fail:FIREWALL", []),  # any case; nothing fails the firewall here
    ("-fail:encryption", ["passing", "unknowns", "no-results", "not-evaluated"]),
])
def test_fail_word_matches_a_failing_control_id_or_theme(text, expected):
    assert _matching(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("compliance<80", ["failing"]),
    ("compliance>=100", ["passing"]),
    ("compliance>=87.5", ["passing", "unknowns"]),
    ("compliance<=62.5", ["failing"]),
    ("compliance>62.5", ["passing", "unknowns"]),
    ("compliance=100", ["passing"]),
    # Not evaluated (or no control applies) is not 0%: such hosts match no comparison...
    ("compliance<100", ["failing", "unknowns"]),
    # ...and every negated one.
    ("-compliance<80", ["passing", "unknowns", "no-results", "not-evaluated"]),
])
def test_compliance_compares_the_passing_share(text, expected):
    assert _matching(text) == expected


def test_compliance_words_combine_with_the_others():
    assert _matching("fail:update compliance<80 status:online") == ["failing"]
    assert _matching("fail:update status:offline") == []


@pytest.mark.parametrize(("text", "message"), [
    ("fail:", r"'fail:': fail: needs a control id or theme word"),
    ("fail:fire-wall", r"'fail:fire-wall': fail: needs a control id or theme word"),
    ("fail:" + "x" * 65, r"up to 64"),
    ("fail>2", r"'fail>2': fail takes a control or theme word after a colon"),
    ("compliance:80", r"'compliance:80': compliance is a percentage to compare, e\.g\. "
                      r"compliance<80"),
    ("compliance<high", r"'compliance<high': < needs a number, got 'high'"),
    ("compliance>=180", r"'compliance>=180': compliance is a percentage, 0 to 100"),
    ("compliance<-1", r"0 to 100"),
    ("compliance<nan", r"0 to 100"),
])
def test_bad_compliance_words_are_refused_with_what_is_wrong(text, message):
    with pytest.raises(FilterError, match=message):
        compile_filter(text)


def test_a_hostile_summary_never_breaks_a_filter():
    """A row whose compliance slot holds anything (a fuzzed or foreign row) matches nothing."""
    odd = ["x", None, "a", "s", "online", None, None, None, None, None, None, None, None, "t",
           "off"]
    for value in (None, "fail:disk", 80, [], ["80"], [True, 1, 1, 1, None, None, 7],
                  ["50", 1, 1, 0, "x", "x", 7], {"share": 10}):
        row = [*odd, value]
        for text in ("fail:disk", "compliance<90", "compliance>=0"):
            assert compile_filter(text)(row) is False, (text, value)
    # A share with no failing list: the share still compares, `fail:` matches nothing.
    row = [*odd, [50.0, 1, 1, 0, "x", "x", None]]
    assert compile_filter("compliance<90")(row) and not compile_filter("fail:x")(row)
