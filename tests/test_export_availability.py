"""The availability export (`estate export --report availability`): online share and outages
per host and site from presence history, over real SSH against a real hub.

The hosts enrol and report for real; their presence history is then laid down through the
store's own code at times of the test's choosing (three days back, a ten-hour window), with
enrolment and revocation times moved back to match, so every figure is computed by hand.
"""

from __future__ import annotations

import json
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from estate.inventory.store import iso, utcnow
from tests.harness import Agent, make_report, run
from tests.sshd import keygen

HOSTS = {  # hostname: (agency, site)
    "fire-a": ("Fire & Rescue", "Station 1"),
    "fire-b": ("Fire & Rescue", "Station 1"),
    "fire-e": ("Fire & Rescue", "Station 1"),
    "fire-c": ("Fire & Rescue", "Station 2"),
    "health-d": ("Health Trust", "Ward 9"),
}


@pytest.fixture(scope="module")
def estate(module_hub, tmp_path_factory, live_report):
    """Window [T, T + 10 h], T three days back on the hour:

    - fire-a: online before T; offline T+2h, back T+3h: one outage of 1 h -> 90.0 %.
    - fire-b: online before T; offline T+8h, not back by the end: ongoing, 2 h -> 80.0 %.
    - fire-c: enrolled T+5h; online T+6h; offline T+7h30, back T+8h -> counted 5 h, offline
      1 h (before its first connection) + 30 min -> 70.0 %.
    - fire-e: online before T; offline T+3h; revoked T+4h -> counted 4 h, 1 h off -> 75.0 %.
    - health-d: online before T and throughout -> 100.0 %.
    """
    base = tmp_path_factory.mktemp("availability")
    hub = module_hub
    ids = {}
    for name, (agency, site) in HOSTS.items():
        agent = Agent(hub, base / name, hub.token(agency, site))
        assert agent.send(make_report(live_report, agent.agent_id,
                                      system__hostname=name))[0] == 0
        ids[name] = agent.agent_id
    start = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(days=3)

    def at(hours: float) -> datetime:
        return start + timedelta(hours=hours)

    with hub.store() as store:
        # Enrolled and revoked "then": the hub stamps both with its clock, now.
        with store._transaction():
            for name, agent_id in ids.items():
                enrolled = at(5) if name == "fire-c" else at(-24)
                store.db.execute("UPDATE agents SET enrolled_at = ? WHERE id = ?",
                                 (iso(enrolled), agent_id))
            store.db.execute("UPDATE agents SET revoked_at = ? WHERE id = ?",
                             (iso(at(4)), ids["fire-e"]))
        history = {"fire-a": [(-20, True), (2, False), (3, True)],
                   "fire-b": [(-20, True), (8, False)],
                   "fire-c": [(6, True), (7.5, False), (8, True)],
                   "fire-e": [(-20, True), (3, False)],
                   "health-d": [(-20, True)]}
        for name, changes in history.items():
            for hours, online in changes:
                store.set_presence(ids[name], online, at(hours))
    for name, agencies, role in (("fire.auditor", "Fire & Rescue", "auditor"),
                                 ("chief", "all", "admin")):
        keygen(base / name)
        hub.admin("operator", "add", name, "--key", str(base / f"{name}.pub"), "--role", role,
                  "--agencies", agencies)
    return {"base": base, "hub": hub, "ids": ids, "at": at,
            "window": ("--since", _text(at(0)), "--until", _text(at(10)))}


def _text(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _export(env, operator: str, *args: str, check: bool = True):
    hub = env["hub"]
    return run("-m", "estate.console.cli", "export", "--hub", f"{operator}@{hub.address}", "--key",
               str(env["base"] / operator), "--hub-key", hub.fingerprint, "--report",
               "availability", *args, check=check)


def test_shares_outages_and_sites_are_the_hand_computed_ones(estate, tmp_path):
    at, ids = estate["at"], estate["ids"]
    out = tmp_path / "availability.json"
    _export(estate, "chief", *estate["window"], "-o", str(out))
    doc = json.loads(out.read_text())
    hosts = {r["hostname"]: r for r in doc["rows"]}
    assert list(hosts) == ["fire-a", "fire-b", "fire-e", "fire-c", "health-d"]  # by place
    figures = {name: (r["online_share"], r["offline_s"], r["outages"], r["longest_outage_s"],
                      r["revoked"]) for name, r in hosts.items()}
    assert figures == {"fire-a": (90.0, 3600, 1, 3600, False),
                       "fire-b": (80.0, 7200, 1, 7200, False),
                       "fire-c": (70.0, 5400, 2, 3600, False),
                       "fire-e": (75.0, 3600, 1, 3600, True),
                       "health-d": (100.0, 0, 0, 0, False)}
    assert hosts["fire-c"]["counted_from"] == _text(at(5))  # enrolled mid-window
    assert hosts["fire-e"]["counted_until"] == _text(at(4))  # revoked mid-window
    assert hosts["fire-a"]["agent_id"] == ids["fire-a"]
    outages = [(r["hostname"], r["start"], r["end"], r["duration_s"], r["ongoing"])
               for r in doc["outages"]["rows"]]
    assert outages == [
        ("fire-a", _text(at(2)), _text(at(3)), 3600, False),
        ("fire-b", _text(at(8)), _text(at(10)), 7200, True),  # still offline at the end
        ("fire-e", _text(at(3)), _text(at(4)), 3600, False),  # ended by the revocation
        ("fire-c", _text(at(5)), _text(at(6)), 3600, False),  # enrolled, not yet connected
        ("fire-c", _text(at(7.5)), _text(at(8)), 1800, False),
    ]
    sites = [list(r.values()) for r in doc["sites"]["rows"]]
    assert sites == [["Fire & Rescue", "Station 1", 3, 81.67, 75.0, "fire-e", 3],
                     ["Fire & Rescue", "Station 2", 1, 70.0, 70.0, "fire-c", 2],
                     ["Health Trust", "Ward 9", 1, 100.0, 100.0, "health-d", 0]]
    manifest = json.loads((tmp_path / "availability.json.manifest.json").read_text())
    assert manifest["report"] == "availability" and manifest["rows"] == 5
    assert manifest["tables"] == {"sites": 3, "outages": 5}
    assert (manifest["filters"]["since"], manifest["filters"]["until"]) == \
        (_text(at(0)), _text(at(10)))
    assert doc["about"]["window"] == f"{_text(at(0))} to {_text(at(10))}"
    verified = run("-m", "estate.console.cli", "verify", str(out), "--hub-key",
                   estate["hub"].fingerprint, check=False)
    assert verified.returncode == 0, verified.stderr


def test_an_agency_operator_never_gets_another_agencys_hosts_or_sites(estate, tmp_path):
    health = estate["ids"]["health-d"]
    out = tmp_path / "fire.xlsx"
    _export(estate, "fire.auditor", *estate["window"], "-o", str(out))
    sheets = _xlsx(out)
    assert list(sheets) == ["hosts", "sites", "outages", "Fields", "About"]
    for name in ("hosts", "sites", "outages"):
        assert {row[0] for row in sheets[name][1:]} == {"Fire & Rescue"}, name
    text = json.dumps(sheets, default=str)
    assert "Health Trust" not in text and "Ward 9" not in text and health not in text
    hosts = {row[2]: row for row in sheets["hosts"][1:]}
    assert hosts["fire-a"][6] == 90.0 and hosts["fire-b"][10] is False
    assert sheets["outages"][2][7] is True  # fire-b's outage: ongoing, a boolean cell
    # Asking for the other agency by name gets nothing of it, not a way round the scope.
    other = tmp_path / "other.json"
    _export(estate, "fire.auditor", *estate["window"], "--agency", "Health Trust",
            "-o", str(other))
    doc = json.loads(other.read_text())
    assert doc["rows"] == [] and doc["sites"]["rows"] == [] and doc["outages"]["rows"] == []
    assert health not in other.read_text()


def test_csv_is_the_hosts_table_and_filters_narrow_it(estate, tmp_path):
    out = tmp_path / "station2.csv"
    _export(estate, "chief", *estate["window"], "--site", "Station 2", "-o", str(out))
    lines = out.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0].startswith("agency,site,hostname,host id,counted from,counted until,"
                               "online share")
    assert len(lines) == 2 and lines[1].startswith("Fire & Rescue,Station 2,fire-c,")
    text_filter = tmp_path / "filtered.json"
    _export(estate, "chief", *estate["window"], "--filter", "fire-b", "-o", str(text_filter))
    doc = json.loads(text_filter.read_text())
    assert [r["hostname"] for r in doc["rows"]] == ["fire-b"]
    assert [r["hostname"] for r in doc["outages"]["rows"]] == ["fire-b"]
    assert [r["site"] for r in doc["sites"]["rows"]] == ["Station 1"]


def test_without_since_the_window_is_the_last_30_days(estate, tmp_path):
    out = tmp_path / "default.json"
    _export(estate, "chief", "-o", str(out))
    filters = json.loads(out.read_text())["manifest"]["filters"]
    since, until = (datetime.fromisoformat(filters[k]) for k in ("since", "until"))
    assert until - since == timedelta(days=30)
    hosts = {r["hostname"]: r for r in json.loads(out.read_text())["rows"]}
    # fire-b went offline in the window and (in its seeded history) never came back.
    assert hosts["fire-b"]["outages"] >= 1


@pytest.mark.parametrize(("args", "words"), [
    (("--since", "last tuesday"), ("since: expected a date",)),
    (("--since", "2999-01-01"), ("since:", "in the future")),
    (("--since", "2026-03-02", "--until", "2026-03-01"), ("since: must be before until",)),
    (("--until", "31/03/2026"), ("until: expected a date",)),
    (("--as-of", "2026-03-01"), ("as_of: not for the availability report",)),
])
def test_a_bad_window_is_refused_naming_the_field(estate, tmp_path, args, words):
    out = tmp_path / "bad.csv"
    done = _export(estate, "chief", *args, "-o", str(out), check=False)
    assert done.returncode == 1, done.stdout
    assert "bad_request" in done.stderr
    for word in words:
        assert word in done.stderr
    assert not out.exists()


def test_until_is_for_availability_only(estate, tmp_path):
    hub = estate["hub"]
    done = run("-m", "estate.console.cli", "export", "--hub", f"chief@{hub.address}", "--key",
               str(estate["base"] / "chief"), "--hub-key", hub.fingerprint, "--report",
               "changes", "--until", "2026-03-01", "-o", str(tmp_path / "c.csv"), check=False)
    assert done.returncode == 1 and "until: only for the availability report" in done.stderr


def _xlsx(path: Path) -> dict[str, list[list[object]]]:
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True)
    sheets = {s.title: [[c.value for c in row] for row in s.iter_rows()] for s in book.worksheets}
    book.close()
    return sheets


def test_the_fast_xlsx_rows_of_both_big_sheets_are_what_xlsxwriter_writes(tmp_path,
                                                                          monkeypatch):
    """Availability's hosts and outages sheets skip xlsxwriter's per-cell path (`_FastRows`,
    booleans included): byte for byte what that path writes, hostile text included."""
    from estate.inventory.export import _writers
    from estate.inventory.export._columns import AVAILABILITY, TABLES
    from estate.inventory.export._writers import XlsxWriter

    meta = {"generated_at": "2026-11-30T12:00:00Z"}
    sheet, tables = TABLES["availability"]
    nasty = ["=cmd|' /C calc'!A0", "<r><t>rich</t></r>", " lead", "a & b <c>", "_x0041_",
             "é ü 漢字 🙂", "bell\x07"]

    def book(path: Path) -> dict[str, bytes]:
        writer = XlsxWriter(path, "availability", AVAILABILITY, meta, tables, sheet)
        for i, text in enumerate(nasty * 2):
            writer.row(["Fire", text, text, f"ag-{i}", "2026-11-01T00:00:00.000000Z",
                        "2026-11-01T10:00:00.123456Z", None if i == 3 else 90.0 + i / 7,
                        3600, 1, 3600, i % 2 == 0])
            writer.table_row("outages", ["Fire", text, None, f"ag-{i}",
                                         "2026-11-01T02:00:00.000000Z",
                                         "2026-11-01T03:00:00.500000Z", 3600, i % 3 == 0])
        writer.table_row("sites", ["Fire", "S1", 2, 85.0, 80.0, "=x", 2])
        writer.close({"report": "availability"})
        with zipfile.ZipFile(path) as z:
            return {n: z.read(n) for n in ("xl/worksheets/sheet1.xml",
                                           "xl/worksheets/sheet3.xml")}

    fast = book(tmp_path / "fast.xlsx")
    monkeypatch.setattr(_writers, "FAST_XLSX_REPORTS", frozenset())
    monkeypatch.setattr(_writers, "FAST_XLSX_TABLES", frozenset())
    assert book(tmp_path / "plain.xlsx") == fast

