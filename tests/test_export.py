"""`estate export` and `estate verify` over real SSH against a real hub with history."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from estate.agent import __version__
from estate.inventory.export._register import RegisterError, parse_register
from tests.harness import Agent, make_report, run, wait_for
from tests.sshd import keygen


@pytest.fixture(scope="module")
def estate(module_hub, tmp_path_factory, live_report):
    """Two agencies; the Fire host's memory grows from 8 to 16 GiB at `upgraded_at`."""
    base = tmp_path_factory.mktemp("export")
    hub = module_hub
    fire = Agent(hub, base / "fire", hub.token("Fire & Rescue", "Station 1"))
    health = Agent(hub, base / "health", hub.token("Health Trust", "Ward 9"))
    memory = {"total_bytes": 8 * 2**30, "swap_total_bytes": None}
    assert fire.send(make_report(live_report, fire.agent_id, system__hostname="fire-pc",
                                 hardware__memory=memory))[0] == 0
    assert health.send(make_report(live_report, health.agent_id,
                                   system__hostname="health-pc"))[0] == 0
    # The hub's clock is the history's clock, to the second: `before` is a second after the
    # first reports and a second before the upgrade.
    stored_at = _second()
    before = wait_for(lambda: _second() > stored_at and _second(), timeout=5, interval=0.02,
                      what="the next second")
    wait_for(lambda: _second() > before, timeout=5, interval=0.02, what="the next second")
    assert fire.send(make_report(live_report, fire.agent_id, system__hostname="fire-pc",
                                 hardware__memory={**memory,
                                                   "total_bytes": 16 * 2**30}))[0] == 0
    for name, agencies, role in (("fire.auditor", "Fire & Rescue", "auditor"),
                                 ("chief", "all", "admin")):
        keygen(base / name)
        hub.admin("operator", "add", name, "--key", str(base / f"{name}.pub"), "--role", role,
                  "--agencies", agencies)
    return {"base": base, "hub": hub, "fire": fire, "health": health, "before": before}


def _second() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _export(env, operator: str, *args: str, check: bool = True):
    hub = env["hub"]
    return run("-m", "estate.console.cli", "export", "--hub", f"{operator}@{hub.address}", "--key",
               str(env["base"] / operator), "--hub-key", hub.fingerprint, *args, check=check)


def _verify(path: Path, *args: str):
    return run("-m", "estate.console.cli", "verify", str(path), *args, check=False)


def test_scope_an_agency_operator_exports_only_their_agency(estate, tmp_path):
    out = tmp_path / "fire.json"
    _export(estate, "fire.auditor", "--report", "inventory", "-o", str(out))
    doc = json.loads(out.read_text())
    assert {r["agency"] for r in doc["rows"]} == {"Fire & Rescue"}
    assert estate["health"].agent_id not in out.read_text()
    manifest = json.loads((tmp_path / "fire.json.manifest.json").read_text())
    assert manifest["scope"] == {"operator": "fire.auditor", "role": "auditor",
                                 "agencies": ["Fire & Rescue"]}
    assert doc["manifest"]["scope"] == manifest["scope"]
    # The hub reads its version from the installed distribution: a renamed one is not "unknown".
    assert manifest["estate_version"] == __version__
    audit = estate["hub"].admin_json("audit")
    assert any(a["action"] == "export" and a["actor"] == "operator:fire.auditor"
               for a in audit)


def test_as_of_shows_the_estate_as_the_hub_knew_it(estate, tmp_path):
    fire = estate["fire"].agent_id
    then, now = tmp_path / "then.json", tmp_path / "now.json"
    _export(estate, "chief", "--report", "inventory", "--as-of", estate["before"],
            "-o", str(then))
    _export(estate, "chief", "--report", "inventory", "-o", str(now))

    def ram(path: Path) -> int:
        return next(r["ram_bytes"] for r in json.loads(path.read_text())["rows"]
                    if r["agent_id"] == fire)

    assert ram(then) == 8 * 2**30 and ram(now) == 16 * 2**30
    assert json.loads(then.read_text())["manifest"]["as_of"] == estate["before"]
    changes = tmp_path / "changes.csv"
    _export(estate, "chief", "--report", "changes", "--since", estate["before"],
            "-o", str(changes))
    text = changes.read_text(encoding="utf-8-sig")
    assert "memory_changed" in text and fire in text


def test_verify_good_changed_and_wrongly_signed(estate, tmp_path):
    hub = estate["hub"]
    out = tmp_path / "inventory.xlsx"
    done = _export(estate, "chief", "--report", "inventory", "-o", str(out))
    assert "signed by hub" in done.stdout
    good = _verify(out, "--hub-key", hub.fingerprint)
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout and "operator chief" in good.stdout
    assert f"matches {hub.fingerprint}" in good.stdout
    # Any changed byte of the file.
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    changed = tmp_path / "changed.xlsx"
    changed.write_bytes(bytes(data))
    (tmp_path / "changed.xlsx.manifest.json").write_text(
        (tmp_path / "inventory.xlsx.manifest.json").read_text())
    bad = _verify(changed)
    assert bad.returncode == 1 and "CHANGED" in bad.stderr
    # A manifest edited after signing (who produced it).
    manifest_file = tmp_path / "inventory.xlsx.manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["scope"]["operator"] = "someone.else"
    manifest_file.write_text(json.dumps(manifest))
    forged = _verify(out)
    assert forged.returncode == 1 and "BAD SIGNATURE" in forged.stderr


def test_verify_names_a_manifest_signed_by_another_key(estate, tmp_path):
    """Re-signed with another key: the signature holds, but not by the hub you expect."""
    import asyncssh

    from estate.inventory.export.manifest import sign

    out = tmp_path / "inventory.csv"
    _export(estate, "chief", "--report", "inventory", "-o", str(out))
    manifest_file = tmp_path / "inventory.csv.manifest.json"
    manifest = json.loads(manifest_file.read_text())
    other = asyncssh.generate_private_key("ssh-ed25519")
    manifest["hub"] = {"fingerprint": other.get_fingerprint("sha256"),
                       "public_key": other.export_public_key().decode().strip()}
    manifest_file.write_text(json.dumps(sign(manifest, other)))
    done = _verify(out, "--hub-key", estate["hub"].fingerprint)
    assert done.returncode == 1 and "not by the expected hub key" in done.stderr


def test_reconcile_over_ssh_and_register_errors_name_lines(estate, tmp_path):
    fire = estate["fire"]
    register = tmp_path / "register.csv"
    register.write_text("Hostname,Asset Tag\nfire-pc,AT-1\nghost-pc,AT-2\n")
    out = tmp_path / "reconcile.json"
    _export(estate, "chief", "--report", "reconcile", "--register", str(register),
            "-o", str(out))
    rows = json.loads(out.read_text())["rows"]
    outcome = {r["register_hostname"] or r["hostname"]: r["outcome"] for r in rows}
    assert outcome["fire-pc"] == "in both" and outcome["ghost-pc"] == \
        "register only (never seen)" and outcome["health-pc"] == "estate only"
    assert next(r for r in rows if r["register_hostname"] == "fire-pc")["agent_id"] == \
        fire.agent_id
    register.write_text("Hostname,Asset Tag\nfire-pc,AT-1\nfire-pc2,AT-1\nbad,row,x\n")
    done = _export(estate, "chief", "--report", "reconcile", "--register", str(register),
                   "-o", str(tmp_path / "bad.csv"), check=False)
    assert done.returncode == 1
    assert "line 3: duplicate asset tag 'AT-1' (also on line 2)" in done.stderr
    assert "line 4: 3 fields, the header has 2" in done.stderr
    assert not (tmp_path / "bad.csv").exists()


def test_bad_requests_get_clear_errors(estate, tmp_path):
    done = _export(estate, "chief", "--report", "inventory", "--filter", "colour:red",
                   "-o", str(tmp_path / "x.csv"), check=False)
    assert done.returncode == 1 and "filter" in done.stderr and "colour" in done.stderr
    done = _export(estate, "chief", "--report", "inventory", "--as-of", "yesterday",
                   "-o", str(tmp_path / "y.csv"), check=False)
    assert done.returncode == 1 and "as_of: expected a date" in done.stderr
    done = _export(estate, "chief", "--report", "inventory", "--as-of", "2099-01-01",
                   "-o", str(tmp_path / "future.csv"), check=False)
    assert done.returncode == 1 and "as_of: 2099-01-01 is in the future" in done.stderr
    today = time.strftime("%Y-%m-%d", time.gmtime())  # the day so far: accepted
    _export(estate, "chief", "--report", "inventory", "--as-of", today,
            "-o", str(tmp_path / "today.csv"))
    done = _export(estate, "chief", "--report", "reconcile", "-o", str(tmp_path / "z.csv"),
                   check=False)
    assert done.returncode == 2 and "--register FILE.csv: required" in done.stderr


def test_register_problems_each_name_their_line():
    with pytest.raises(RegisterError, match=r"line 1: no column to match on: expected serial, "
                                            r"hostname or MAC \(found: Owner, Room\)"):
        parse_register(b"Owner,Room\nalice,12\n")
    with pytest.raises(RegisterError) as err:
        parse_register(b"Serial,MAC\nSN1,aa:bb:cc:dd:ee:ff\nSN1,zz\n,\n"
                       b"SN2,AA-BB-CC-DD-EE-FF\n")
    message = str(err.value)
    assert "line 3: MAC 'zz' is not a MAC address" in message
    assert "line 5: duplicate MAC 'aabbccddeeff' (also on line 2)" in message
    with pytest.raises(RegisterError, match="not UTF-8"):
        parse_register("Hostname\nécole\n".encode("latin-1"))
    entries = parse_register("\ufeffComputer Name;x\n".replace(";", ",").encode() +
                             b"pc-1,\n\n")
    assert [(e.line, e.hostname) for e in entries] == [(2, "pc-1")]


# Every character a spreadsheet may take as the start of a formula, and text that only
# contains one further in, which must stay as it is.
FORMULA_CELLS = [
    ("=HYPERLINK(\"http://e.vil\",\"x\")", "'=HYPERLINK(\"http://e.vil\",\"x\")"),
    ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
    ("+1+2", "'+1+2"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
    ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"),
    ("a=b", "a=b"),
    ("école, \"nord\"", "école, \"nord\""),
    ("", ""),
]


def _formula_export(tmp_path: Path, fmt: str) -> Path:
    from estate.inventory.export._columns import Column
    from estate.inventory.export._writers import CsvWriter, XlsxWriter

    columns = (Column("name", "Name", "text", "a text cell"),
               Column("count", "=Count", "int", "a number: typed, never neutralised"))
    meta = {"generated_at": "2026-11-27T12:00:00Z"}
    path = tmp_path / f"cells.{fmt}"
    writer = {"csv": CsvWriter, "xlsx": XlsxWriter}[fmt](path, "inventory", columns, meta)
    for n, (text, _) in enumerate(FORMULA_CELLS):
        writer.row([text, -n])
    writer.close({"scope": "=evil()"})
    return path


def test_csv_cells_that_look_like_formulas_are_text_cell_by_cell(tmp_path):
    import csv

    path = _formula_export(tmp_path, "csv")
    with open(path, encoding="utf-8-sig", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["Name", "'=Count"]
    assert len(rows) == len(FORMULA_CELLS)
    for n, ((sent, expected), row) in enumerate(zip(FORMULA_CELLS, rows, strict=True)):
        assert row == [expected, str(-n)], f"row {n}: {sent!r} was written as {row!r}"


def test_xlsx_cells_that_look_like_formulas_are_strings_cell_by_cell(tmp_path):
    import openpyxl

    path = _formula_export(tmp_path, "xlsx")
    book = openpyxl.load_workbook(path)
    sheet = book.worksheets[0]
    rows = list(sheet.iter_rows(values_only=False))
    assert [c.value for c in rows[0]] == ["Name", "=Count"]  # our own title, not agent text
    for n, ((sent, expected), row) in enumerate(zip(FORMULA_CELLS, rows[1:], strict=True)):
        name, count = row
        if expected:
            # XLSX stores a carriage return as the escape _x000D_, which openpyxl keeps.
            got = name.value.replace("_x000D_", "\r")
            assert (got, name.data_type) == (expected, "s"), f"row {n}: {sent!r}"
        assert (count.value, count.data_type) == (-n, "n")
    about = book["About"]
    assert [c.value for c in next(about.iter_rows())] == ["scope", "'=evil()"]


# --- manifests, in-process (fast enough for `make mutate`) -----------------------------------

def test_a_manifest_signs_the_file_and_verify_names_each_break(tmp_path):
    """sign + verify round trip; a changed byte, size, member, key, algorithm or signature
    is refused with the reason; the canonical form is sorted keys, no spaces, no signature."""
    import asyncssh

    from estate.inventory.export.manifest import (
        MANIFEST_FORMAT,
        VerifyError,
        canonical,
        manifest_path,
        sha256_of,
        sign,
        verify,
    )

    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "inventory.csv"
    path.write_bytes(b"agent_id,hostname\r\nag-1,pc-\xc3\xa9\r\n")
    assert sha256_of(path) == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert manifest_path(path) == tmp_path / "inventory.csv.manifest.json"
    manifest = {
        "format": MANIFEST_FORMAT, "file_format": "csv", "report": "inventory",
        "generated_at": "2026-01-02T00:00:00Z", "as_of": None, "estate_version": "1.0",
        "sha256": sha256_of(path), "bytes": path.stat().st_size, "rows": 1,
        "scope": {"operator": "chief", "role": "admin", "agencies": "all"},
        "filters": {"agency": "Fire é", "days": 30, "site": None},
        "hub": {"fingerprint": key.get_fingerprint("sha256"),
                "public_key": key.export_public_key().decode().strip()},
    }
    assert canonical({"b": 1, "a": "é", "signature": "x"}) == '{"a":"é","b":1}'.encode()
    signed = sign(manifest, key)
    assert {k: v for k, v in signed.items() if k != "signature"} == manifest
    assert signed["signature"]["algorithm"] == "ssh-ed25519"

    def write(m, where=None):
        (where or manifest_path(path)).write_text(json.dumps(m))

    write(signed)
    done = verify(path)
    assert done.manifest == signed and done.fingerprint == key.get_fingerprint("sha256")
    other = tmp_path / "elsewhere.json"
    write(signed, other)
    assert verify(path, other).manifest == signed

    def refused(m, *, content=None) -> str:
        if content is None:
            write(m)
        else:
            manifest_path(path).write_bytes(content)
        with pytest.raises(VerifyError) as err:
            verify(path)
        return str(err.value)

    other_key = asyncssh.generate_private_key("ssh-ed25519")
    assert "BAD SIGNATURE" in refused({**signed, "rows": 2})
    assert "BAD SIGNATURE" in refused(sign({**manifest, "hub": {
        **manifest["hub"], "public_key": other_key.export_public_key().decode()}}, key))
    assert "BAD SIGNATURE" in refused({**sign(manifest, other_key), "hub": manifest["hub"]})
    assert "BAD SIGNATURE" in refused({**signed, "signature": {
        **signed["signature"], "algorithm": "rsa-sha2-256"}})
    assert "no usable hub key or signature" in refused({**signed, "signature": {
        **signed["signature"], "value": "not base64!"}})
    assert "no usable hub key or signature" in refused({**signed, "hub": {
        **signed["hub"], "public_key": "ssh-ed25519 AAAA"}})
    assert "not an Estate export manifest" in refused({**signed, "format": "other/1"})
    assert "not an Estate export manifest" in refused([signed])
    assert "field scope.role is missing" in refused(
        {**signed, "scope": {"operator": "x", "agencies": []}})
    assert "field hub: expected an object" in refused({**signed, "hub": "x"})
    assert "field rows: expected a whole number, got bool" in refused({**signed, "rows": True})
    assert "field as_of: expected a string or null, got int" in refused({**signed, "as_of": 1})
    assert "scope.agencies: expected a list of strings" in refused(
        {**signed, "scope": {**signed["scope"], "agencies": ["a", 1]}})
    assert 'filters."x\\n": expected a string, a number or null' in refused(
        {**signed, "filters": {"x\n": [1]}})
    assert "filters" in refused({**signed, "filters": {"x": True}})
    assert "cannot be negative" in refused({**signed, "bytes": -1})
    assert "cannot be negative" in refused({**signed, "rows": -1})
    assert "over 1048576 bytes" in refused(None, content=b" " * (1 << 20) + b"{}")
    assert "not JSON" in refused(None, content=b"{")
    assert "nested too deep" in refused(None, content=b"[" * 100_000)
    write(signed)
    path.write_bytes(path.read_bytes()[:-1] + b"!")  # same size, other bytes
    with pytest.raises(VerifyError, match="CHANGED"):
        verify(path)
    path.write_bytes(path.read_bytes() + b"\r\n")
    with pytest.raises(VerifyError, match=r"CHANGED: .* \(33 bytes, the manifest says 31\)"):
        verify(path)
    manifest_path(path).unlink()
    with pytest.raises(VerifyError, match="no manifest"):
        verify(path)
    write(signed)
    path.unlink()
    with pytest.raises(VerifyError, match="cannot read"):
        verify(path)


def test_json_rows_are_the_text_json_dumps_writes_for_each_rows_dict():
    """JSON rows are written from a template of their keys, each value encoded on its own
    (no dict nor encoder a row): the very text `json.dumps` writes for the row's dict, for
    every kind of value, odd ones included."""
    from enum import IntEnum

    from estate.inventory.export._columns import Column
    from estate.inventory.export._writers import _json, _JsonRows, _time_text

    class Level(IntEnum):
        HIGH = 3

    kinds = ("text", "int", "float", "bool", "datetime", "text", "text")
    columns = tuple(Column(key, key, kind, "") for key, kind in
                    zip(("host", "n", "x", "ok", "at", '"odd" %s', "é"), kinds, strict=True))
    texts = ['a "quoted" \\ path', "tab\tbell\x07\u2028", "漢字 🙂 \ud800", "", None]
    numbers = [0, -1, 2**70, Level.HIGH, True, None]
    floats = [51.5, -0.0, 1e-7, 1e300, float("nan"), float("inf"), None, 3]
    others = [["a", 1], {"k": None}, 2.5, None]
    encode = _JsonRows(columns).encode
    for i in range(8):
        row = [texts[i % 5], numbers[i % 6], floats[i], i % 3 == 0 if i % 4 else None,
               None if i == 7 else "2026-11-27T09:00:00.123456Z", others[i % 4], texts[-i % 5]]
        cells = [_time_text(v) if c.type == "datetime" and v is not None else v
                 for c, v in zip(columns, row, strict=True)]
        assert encode(row) == _json(dict(zip((c.key for c in columns), cells, strict=True)))
    with pytest.raises(ValueError):
        encode([None] * 6)


def test_every_writer_types_its_cells_and_describes_its_columns(tmp_path):
    """One row of every column type through each writer: what a spreadsheet or a program
    reading the file sees, cell by cell, sheet by sheet."""
    import csv
    from datetime import datetime

    import openpyxl

    from estate.inventory.export._columns import Column
    from estate.inventory.export._writers import WRITERS, CsvWriter, JsonWriter, XlsxWriter

    assert WRITERS == {"csv": CsvWriter, "json": JsonWriter, "xlsx": XlsxWriter}
    columns = (Column("host", "Host", "text", "the host's name"),
               Column("seen", "Last seen", "datetime", "when", None),
               Column("day", "Day", "date", "a day"),
               Column("ok", "Online", "bool", "up?"),
               Column("mem", "Memory", "bytes", "RAM", "bytes"),
               Column("n", "A long column title here", "int", "a count"),
               Column("pct", "Disk", "float", "used", "%"))
    meta = {"generated_at": "2026-11-27T12:34:56Z", "report": "inventory"}
    rows = [["pc-é", "2026-11-27T09:00:00.123456Z", "2026-11-27", True, 2**33, 7, 51.5],
            ["=bad", "2026-01-02T03:04:05Z", None, False, None, 0, None],
            [None, None, None, None, None, None, None]]
    about = {"rows": 3, "scope": {"agencies": ["Fire"]}, "note": "-x"}
    written = {}
    for fmt, writer_class in WRITERS.items():
        path = tmp_path / f"out.{fmt}"
        writer = writer_class(path, "inventory", columns, meta)
        for row in rows:
            writer.row(row)
        assert writer.rows == 3
        writer.close(about)
        written[fmt] = path
        spare = writer_class(tmp_path / f"spare.{fmt}", "inventory", columns, meta)
        with pytest.raises(ValueError):
            spare.row(rows[0][:-1])  # a row that does not fit the columns is a bug
        spare.close(about)

    raw = written["csv"].read_bytes()
    assert raw.startswith("\ufeff".encode()) and raw.count(b"\r\n") == 4
    with open(written["csv"], encoding="utf-8-sig", newline="") as f:
        assert list(csv.reader(f)) == [
            ["Host", "Last seen", "Day", "Online", "Memory", "A long column title here",
             "Disk"],
            ["pc-é", "2026-11-27T09:00:00Z", "2026-11-27", "true", str(2**33), "7", "51.5"],
            ["'=bad", "2026-01-02T03:04:05Z", "", "false", "", "0", ""],
            [""] * 7]

    text = written["json"].read_text(encoding="utf-8")
    assert "pc-é" in text and "\r" not in text and text.endswith("}\n")
    doc = json.loads(text)
    assert doc["manifest"] == meta and doc["about"] == about
    assert doc["columns"][4] == {"key": "mem", "title": "Memory", "type": "bytes",
                                 "unit": "bytes", "description": "RAM"}
    assert doc["rows"][0] == {"host": "pc-é", "seen": "2026-11-27T09:00:00Z",
                              "day": "2026-11-27", "ok": True, "mem": 2**33, "n": 7,
                              "pct": 51.5}
    assert doc["rows"][1]["host"] == "=bad" and doc["rows"][1]["ok"] is False
    assert doc["rows"][2] == dict.fromkeys(doc["rows"][0])
    assert text.count("\n") == 8  # manifest, columns + "rows": [, a line a row, ], about

    book = openpyxl.load_workbook(written["xlsx"])
    assert book.sheetnames == ["inventory", "Fields", "About"]
    assert book.properties.title == "Estate inventory export"
    assert book.properties.creator == "Estate"
    assert book.properties.created == datetime(2026, 11, 27, 12, 34, 56)
    sheet = book["inventory"]
    header = next(sheet.iter_rows())
    assert [c.value for c in header] == [c.title for c in columns]
    assert all(c.font.bold and c.fill.fgColor.rgb.endswith("DDDDDD") for c in header)
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref == "A1:G4"
    assert [sheet.column_dimensions[x].width for x in "ABCDEFG"] == \
        [pytest.approx(w, abs=0.8) for w in (24, 20, 12, 10, 18, 26, 12)]
    first, second = (list(r) for r in sheet.iter_rows(min_row=2))  # the third is empty
    assert [c.value for c in first] == ["pc-é", datetime(2026, 11, 27, 9, 0, 0, 123000),
                                        datetime(2026, 11, 27), True, 2**33, 7, 51.5]
    assert [c.number_format for c in first[1:5]] == ["yyyy-mm-dd hh:mm:ss", "yyyy-mm-dd",
                                                      "General", "#,##0"]
    assert first[5].number_format == "General" and first[0].data_type == "s"
    assert [c.value for c in second] == ["'=bad", datetime(2026, 1, 2, 3, 4, 5), None,
                                         False, None, 0, None]
    fields = [[c.value for c in r] for r in book["Fields"].iter_rows()]
    assert fields[0] == ["column", "key", "type", "unit", "description"]
    assert fields[1] == ["Host", "host", "text", "", "the host's name"]
    assert fields[5] == ["Memory", "mem", "bytes", "bytes", "RAM"]
    assert len(fields) == 8 and book["Fields"].freeze_panes == "A2"
    assert all(c.font.bold for c in next(book["Fields"].iter_rows()))
    assert book["Fields"].column_dimensions["A"].width == pytest.approx(22, abs=0.8)
    assert book["Fields"].column_dimensions["E"].width == pytest.approx(100, abs=0.8)
    assert [[c.value for c in r] for r in book["About"].iter_rows()] == [
        ["rows", "3"], ["scope", '{"agencies": ["Fire"]}'], ["note", "'-x"]]
    assert book["About"]["A1"].font.bold
    assert book["About"].column_dimensions["A"].width == pytest.approx(22, abs=0.8)
    assert book["About"].column_dimensions["B"].width == pytest.approx(80, abs=0.8)


def test_verify_refusals_name_the_file_and_quote_what_they_show(tmp_path):
    """Each refusal of `estate verify`, whole: the file it is about, the reason, untrusted
    values quoted and cut; and the bounds (an empty file, a manifest of exactly the limit)."""
    import asyncssh

    from estate.inventory.export.manifest import (
        MANIFEST_FORMAT,
        MAX_MANIFEST_BYTES,
        VerifyError,
        manifest_path,
        sha256_of,
        sign,
        verify,
    )

    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    mf = manifest_path(path)
    manifest = {
        "format": MANIFEST_FORMAT, "file_format": "csv", "report": "inventory",
        "generated_at": "2026-01-02T00:00:00Z", "as_of": None, "estate_version": "1.0",
        "sha256": sha256_of(path), "bytes": 0, "rows": 0,
        "scope": {"operator": "chief", "role": "admin", "agencies": "all"}, "filters": {},
        "hub": {"fingerprint": key.get_fingerprint("sha256"),
                "public_key": key.export_public_key().decode().strip()},
    }
    signed = sign(manifest, key)
    mf.write_text(json.dumps(signed))
    assert verify(path).manifest == signed  # an empty file, no rows: zero is not negative
    # A manifest of exactly the limit is read (padding is JSON whitespace); one byte more is not.
    text = json.dumps(signed).encode()
    mf.write_bytes(text + b" " * (MAX_MANIFEST_BYTES - len(text)))
    assert verify(path).manifest == signed

    def refused(m=None, *, content=None) -> str:
        mf.write_bytes(content if content is not None else json.dumps(m).encode())
        with pytest.raises(VerifyError) as err:
            verify(path)
        return str(err.value)

    assert refused(content=text + b" " * (MAX_MANIFEST_BYTES + 1 - len(text))) == \
        f"{mf}: not a manifest (over {MAX_MANIFEST_BYTES} bytes)"
    try:
        json.loads("{")
    except ValueError as exc:
        assert refused(content=b"{") == f"{mf}: not a readable manifest, not JSON ({exc})"
    assert refused(content=b"[" * 100_000) == \
        f"{mf}: not a readable manifest, not JSON (nested too deep)"
    assert refused({**signed, "scope": {"operator": "x", "agencies": []}}) == \
        f"{mf}: malformed manifest: field scope.role is missing"
    assert refused({**signed, "format": 1}) == \
        f"{mf}: not an Estate export manifest (format {MANIFEST_FORMAT})"
    long_key = "k" * 300
    assert refused({**signed, "filters": {long_key: [1]}}) == (
        f'{mf}: malformed manifest: filters."{"k" * 40}...": expected a string, a number or '
        f"null")
    # The hash and the size are each checked: a right hash with a wrong size is refused too.
    assert refused({**signed, "bytes": 1}).startswith(f"{path}: CHANGED: ")
    long_hash = "a" * 300
    assert refused({**signed, "sha256": long_hash}) == (
        f"{path}: CHANGED: its SHA-256 is {sha256_of(path)}, the manifest says "
        f'"{"a" * 80}..." (0 bytes, the manifest says 0). This is not the file the hub '
        f"produced.")
    # Base64 is read strictly: a signature with a stray character is not quietly repaired.
    value = signed["signature"]["value"]
    assert refused({**signed, "signature": {**signed["signature"],
                                            "value": value[:4] + "!" + value[4:]}}) == \
        f"{mf}: the manifest has no usable hub key or signature"
    # A good signature over a manifest that names another fingerprint than its key's.
    wrong = sign({**manifest, "hub": {**manifest["hub"], "fingerprint": "f" * 300}}, key)
    assert refused(wrong) == (f"{mf}: BAD SIGNATURE: the manifest was changed or was not "
                              f'signed by hub key "{"f" * 80}..."')
    mf.unlink()
    with pytest.raises(VerifyError) as err:
        verify(path)
    assert str(err.value) == f"{mf}: no manifest (exports are written with one beside them)"
    mf.mkdir()  # there, but not readable as a file
    with pytest.raises(VerifyError) as err:
        verify(path)
    assert str(err.value) == f"{mf}: cannot read (Is a directory)"


# --- the writers' promises that one example row does not show (fast, for `make mutate`) ------

def _two_columns():
    from estate.inventory.export._columns import Column

    return (Column("host", "Host", "text", "the host's name"),
            Column("n", "N", "int", "a count"))


def test_a_row_that_does_not_fit_the_columns_is_refused_by_every_writer(tmp_path):
    """One value too many or too few is a bug in the caller: refused, never cut to fit."""
    from estate.inventory.export._writers import WRITERS

    meta = {"generated_at": "2026-11-27T12:00:00Z"}
    for fmt, writer_class in WRITERS.items():
        for values in (["pc-1"], ["pc-1", 1, "spare"]):
            writer = writer_class(tmp_path / f"bad.{fmt}", "inventory", _two_columns(), meta)
            with pytest.raises(ValueError) as err:
                writer.row(values)
            if fmt == "csv":
                assert str(err.value) == f"{len(values)} values for 2 columns"
            writer.close({})
    json_file = tmp_path / "bad.json"
    assert json.loads(json_file.read_text())["rows"] == []  # the refused row left nothing


def test_text_exports_are_utf8_whatever_the_machines_locale(tmp_path):
    """CSV and JSON are UTF-8 even where the locale's encoding is ASCII (or a code page)."""
    import locale

    from estate.inventory.export._writers import CsvWriter, JsonWriter

    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # an ASCII locale: open()'s default is ASCII
    try:
        for writer_class, name in ((CsvWriter, "out.csv"), (JsonWriter, "out.json")):
            writer = writer_class(tmp_path / name, "inventory", _two_columns(),
                                  {"generated_at": "2026-11-27T12:00:00Z", "by": "Zoë"})
            writer.row(["école-漢", 1])
            writer.close({"agency": "Écoles"})
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert "école-漢" in (tmp_path / "out.csv").read_text(encoding="utf-8-sig")
    doc = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert doc["rows"] == [{"host": "école-漢", "n": 1}] and doc["manifest"]["by"] == "Zoë"


def test_xlsx_times_are_utc_whatever_the_machines_time_zone(tmp_path, monkeypatch):
    """The hub's times are UTC, and so is what a spreadsheet shows, on any console."""
    import time
    from datetime import datetime

    import openpyxl

    from estate.inventory.export._columns import Column
    from estate.inventory.export._writers import XlsxWriter

    monkeypatch.setenv("TZ", "EST+5")  # five hours behind UTC, no daylight saving
    time.tzset()
    try:
        columns = (Column("seen", "Last seen", "datetime", "when"),)
        writer = XlsxWriter(tmp_path / "t.xlsx", "inventory", columns,
                            {"generated_at": "2026-11-27T12:34:56Z"})
        writer.row(["2026-11-27T02:00:00.500000Z"])
        writer.close({})
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    book = openpyxl.load_workbook(tmp_path / "t.xlsx")
    assert book["inventory"]["A2"].value == datetime(2026, 11, 27, 2, 0, 0, 500000)
    assert book.properties.created == datetime(2026, 11, 27, 12, 34, 56)


def test_xlsx_filters_its_rows_and_sizes_every_sheets_columns(tmp_path):
    """The filter covers the header and the rows (one empty row when there are none); each
    sheet's columns are sized by type or title, and only the columns that exist; the About
    sheet shows non-ASCII values as themselves."""
    import openpyxl

    from estate.inventory.export._writers import XlsxWriter

    def book(rows: int):
        path = tmp_path / f"rows{rows}.xlsx"
        writer = XlsxWriter(path, "inventory", _two_columns(),
                            {"generated_at": "2026-11-27T12:00:00Z"})
        for n in range(rows):
            writer.row([f"pc-{n}", n])
        writer.close({"scope": {"agencies": ["Écoles du Nord"]}, "rows": rows})
        return openpyxl.load_workbook(path)

    def widths(sheet):
        return {k: (d.min, d.max, round(d.width)) for k, d in sheet.column_dimensions.items()}

    for rows, ref in ((0, "A1:B2"), (1, "A1:B2"), (2, "A1:B3")):
        assert book(rows)["inventory"].auto_filter.ref == ref, rows
    done = book(2)
    # Text 24 wide, a number 12 (their titles are shorter); xlsxwriter adds its padding.
    assert widths(done["inventory"]) == {"A": (1, 1, 25), "B": (2, 2, 13)}
    assert widths(done["Fields"]) == {"A": (1, 2, 23), "E": (5, 5, 101)}
    assert widths(done["About"]) == {"A": (1, 1, 23), "B": (2, 2, 81)}
    assert [[c.value for c in r] for r in done["About"].iter_rows()] == [
        ["scope", '{"agencies": ["Écoles du Nord"]}'], ["rows", "2"]]


def test_xlsx_memory_stays_flat_however_many_rows(tmp_path):
    """Rows go to disk as they come (constant-memory mode): ten times the rows, not ten
    times the memory. Kept in memory, these 2,000 rows would hold about 1 MB."""
    import tracemalloc

    from estate.inventory.export._writers import XlsxWriter

    tracemalloc.start()
    try:
        writer = XlsxWriter(tmp_path / "big.xlsx", "inventory", _two_columns(),
                            {"generated_at": "2026-11-27T12:00:00Z"})
        for n in range(200):
            writer.row([f"host-{n:06d}-with-a-longer-name", n])
        after_200 = tracemalloc.get_traced_memory()[0]
        for n in range(200, 2200):
            writer.row([f"host-{n:06d}-with-a-longer-name", n])
        grown = tracemalloc.get_traced_memory()[0] - after_200
        writer.close({})
    finally:
        tracemalloc.stop()
    assert grown < 200_000, f"{grown} bytes more for 2,000 more rows"


def test_xlsx_text_that_looks_like_rich_text_is_not_written_into_the_sheet_xml(tmp_path):
    """xlsxwriter's constant-memory mode writes a string that starts with <r> and ends with
    </r> into the sheet's XML as it is (rich text): a hostname could add cells of its own or
    break the file. It is written quoted, as a formula is."""
    import openpyxl

    from estate.inventory.export._columns import Column
    from estate.inventory.export._writers import XlsxWriter

    evil = '<r><t>x</t></r><c r="Z9"><v>1</v></c><r><t>y</t></r>'
    path = tmp_path / "rich.xlsx"
    writer = XlsxWriter(path, "inventory", (Column("name", "Name", "text", "a text cell"),),
                        {"generated_at": "2026-11-27T12:00:00Z"})
    for text in (evil, "<r>", "<r></r>x"):
        writer.row([text])
    writer.close({"scope": evil})
    book = openpyxl.load_workbook(path)
    sheet = book.worksheets[0]
    assert [r[0] for r in sheet.iter_rows(min_row=2, values_only=True)] == \
        ["'" + evil, "<r>", "<r></r>x"]
    assert sheet["Z9"].value is None
    assert book["About"]["B1"].value == "'" + evil

