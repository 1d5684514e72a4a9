"""The console's host model at scale: a load in pages, live updates and the C-speed filter
paths give exactly the rows and the order of the plain definition (every row prepared,
`compile_prepared` over it, a stable sort of every row by the column's key)."""

from __future__ import annotations

import json
import random

import pytest

from estate.console._model import KEY_INDEX, NUMERIC, HostModel
from estate.console._table import SHOWN
from estate.inventory import simulate
from estate.inventory.filters import (
    TEXT_POSITION,
    FilterError,
    compile_prepared,
    one_text_word,
    prepare,
)

FILTERS = ["", "s", "st", "status", "status:", "status:off", "STATUS:Offline", "pc-0001",
           "Fire", "agency:fire", "agency:", "-agency:fire", "-windows", "site:nord", "ip:10.0.1",
           "os:windows agency:fire", "disk>90", "compliance<50", "fail:firewall", "net:degraded",
           "rtt>500", "remote:off", "model:", "serial:sn1", "cpu:intel status:stale", "-"]


def _rows(n: int, seed: int) -> list[list]:
    rng = random.Random(seed)
    rows = []
    for i, (agency, site) in enumerate(simulate.placements(n)):
        rows.append([f"ag-{i:012x}", rng.choice([f"pc-{rng.randrange(n):05d}", "PC-Caps", None]),
                     agency, site, rng.choice(["online", "offline", "stale"]),
                     rng.choice([["ok", 20.0, None], ["degraded", 612.0, "hub"], None, "junk"]),
                     rng.choice(["Windows 11 Pro", "Ubuntu 24.04", None]),
                     rng.choice(["OptiPlex", None, 7]), f"SN{i % 50}", "Intel",
                     rng.choice([8 * 2**30, None]), rng.choice([float(i % 100), None]),
                     f"10.0.{i // 256}.{i % 256}", "2026-01-01T00:00:00Z",
                     rng.choice(["off", "ready"]),
                     rng.choice([None, [float(i % 101), i % 101, 100 - i % 101, 0, "firewall",
                                        "Firewall", "firewall network"],
                                 [True, 1, 1, 0]])])
    return json.loads(json.dumps(rows))  # as the hub's pages arrive


def _expected(rows: list[list], text: str, key: str, reverse: bool) -> list[str]:
    """The plain definition: each row prepared, matched, sorted stably by the key."""
    match = compile_prepared(text)
    prepared = [prepare(r) for r in rows]

    def sort_key(p):
        if key == "compliance":
            return p[3] if p[3] == p[3] else float("inf")
        if key in NUMERIC:
            v = p[0][KEY_INDEX[key]]
            return float("inf") if v is None else v
        return p[1][TEXT_POSITION[KEY_INDEX[key]]] or "\U0010ffff"

    ordered = sorted(prepared, key=sort_key, reverse=reverse)
    return [p[0][0] for p in ordered if match(p)]


@pytest.mark.parametrize("seed", [1])
def test_a_load_in_pages_with_live_updates_orders_and_filters_as_the_definition(seed):
    rows = _rows(1200, seed)
    rng = random.Random(seed)
    model = HostModel()
    model.load([])
    for start in range(0, 800, 100):  # pages, the view refreshed after each
        model.extend(rows[start:start + 100])
        assert [r[0] for r in model.view] == _expected(rows[:start + 100], "", "hostname",
                                                        False)
    # Live updates: changed hosts (their sort key too) and hosts new to the model.
    current = {r[0]: r for r in rows[:800]}
    for row in rng.sample(rows[:800], 150) + rows[800:]:
        changed = list(row)
        changed[1] = rng.choice(["aaa", "zzz", None, row[1]])
        changed[4] = rng.choice(["online", "offline"])
        model.upsert(changed)
        current[changed[0]] = changed
    model.refresh()
    everything = list(current.values())
    for key in [c.key for c in SHOWN]:
        for reverse in (False, True):
            model.sort_by(key, reverse)
            for text in FILTERS:
                try:
                    model.set_filter(text)
                except FilterError:
                    continue
                assert [r[0] for r in model.view] == _expected(everything, text, key,
                                                                reverse), (key, reverse, text)
                assert all(model.rows[r[0]] is r for r in model.view)


def test_one_text_word_says_what_the_matcher_tests():
    rows = _rows(500, 3)
    for text in [*FILTERS, "id:ag-0000", "seen:2026", "ram:8", "-s", "a b"]:
        word = one_text_word(text)
        try:
            match = compile_prepared(text)
        except FilterError:
            continue
        if word is None:
            continue
        position, needle = word
        for p in map(prepare, rows):
            found = needle in (p[2] if position is None else p[1][position])
            assert found == match(p), (text, p[0])
    assert one_text_word("agency:fire") == (TEXT_POSITION[KEY_INDEX["agency"]], "fire")
    assert one_text_word("Fire") == (None, "fire")
    for text in ("-fire", "agency:", "disk>90", "fail:firewall", "net:ok", "a b", ""):
        assert one_text_word(text) is None, text


def test_rows_share_the_text_many_repeat_and_keep_their_values():
    rows = _rows(200, 4)
    model = HostModel()
    model.load(rows)
    agency = KEY_INDEX["agency"]
    fire = [model.rows[r[0]][agency] for r in rows if r[agency] == "Fire & Rescue"]
    assert len(fire) > 1 and all(a is fire[0] for a in fire)
    assert [model.rows[r[0]] for r in rows] == rows
