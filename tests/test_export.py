"""`estate export` and `estate verify` over real SSH against a real hub with history."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from inventory.export._register import RegisterError, parse_register
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
    return run("-m", "console.cli", "export", "--hub", f"{operator}@{hub.address}", "--key",
               str(env["base"] / operator), "--hub-key", hub.fingerprint, *args, check=check)


def _verify(path: Path, *args: str):
    return run("-m", "console.cli", "verify", str(path), *args, check=False)


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

    from inventory.export.manifest import sign

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
    from inventory.export._columns import Column
    from inventory.export._writers import CsvWriter, XlsxWriter

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
