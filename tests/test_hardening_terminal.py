"""No hostile text on a terminal, no forged proof: what a hub, an agent or a file says reaches
the operator's terminal only through the sanitiser, and `estate verify` says OK only for a
signature by a hub key this console pinned (issue 11, items 11 and 12)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from estate.console.cli import main as estate
from estate.inventory.export.manifest import MANIFEST_FORMAT, sha256_of, sign
from estate.inventory.sanitise import is_unsafe
from tests.harness import PY, AnyKeyServer, make_report, run
from tests.sshd import keygen

# Erase the line, draw a green OK, set the window title (OSC), CSI and OSC as C1 bytes,
# a bidi override and a line separator: each one a terminal (or a reader) would obey.
EVIL = ("\x1b[2K\r\x1b[32mOK\x1b[0m \x1b]0;pwned\x07 \u009b2J \u009d0;t\u009c "
        "\u202eevil\u202c \u2028\x7f")


def _raw_controls(text: str) -> set[str]:
    """Characters a terminal would obey, newlines between lines aside."""
    return {c for c in text if is_unsafe(c) and c != "\n"}


# --- estate tunnel: a refusal reason from a rogue hub ----------------------------------

def test_a_hostile_refusal_reason_reaches_the_terminal_as_plain_text(tmp_path):
    """The first-session path (no known_hubs yet: asyncssh, not OpenSSH) prints the reason
    a rogue hub gives for refusing the tunnel: plain, one line, still saying it refused."""
    reason = EVIL + "\n[sudo] password for admin: "
    operator_key = tmp_path / "operator"
    keygen(operator_key)
    done = asyncio.run(_tunnel_against_rogue_hub(tmp_path, operator_key, reason))
    assert done["status"] == 1, done
    err = done["stderr"]
    assert "the hub refused" in err and "pwned" in err
    assert _raw_controls(err) == set(), repr(err)
    assert err.count("\n") == 1, repr(err)  # the reason cannot start a line of its own


async def _tunnel_against_rogue_hub(folder: Path, key: Path, reason: str) -> dict[str, Any]:
    class Rogue(AnyKeyServer):
        def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                                 orig_port: int) -> bool:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(Rogue, "127.0.0.1", 0, server_host_keys=[host_key])
    port = server.sockets[0].getsockname()[1]
    env = {**os.environ, "ESTATE_CONSOLE_CONFIG": str(folder / "console.toml")}
    try:
        proc = await asyncio.create_subprocess_exec(
            PY, "-m", "estate.console.cli", "tunnel", "--hub", f"op@127.0.0.1:{port}",
            "--hub-key", host_key.get_fingerprint("sha256"), "--key", str(key),
            "ag-000000000001", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        server.close()
    return {"status": proc.returncode, "stdout": out.decode(), "stderr": err.decode()}


# --- estate verify: hostile manifests and forgeries -----------------------------------

def _export_with_manifest(folder: Path, key: asyncssh.SSHKey, text: str = EVIL,
                          rows: bytes = b"agent_id,hostname\nag-1,pc-1\n") -> Path:
    """A file and a manifest signed by `key`, with `text` in every string field."""
    path = folder / "inventory.csv"
    path.write_bytes(rows)
    manifest = {
        "format": MANIFEST_FORMAT, "file": text, "file_format": "csv" + text,
        "report": "inventory" + text,
        "scope": {"operator": "chief" + text, "role": "admin" + text,
                  "agencies": ["Fire" + text, text]},
        "filters": {"agency": text, "filter" + text: "os:" + text, "days": 30, "site": None},
        "as_of": "2026-01-01T00:00:00Z" + text, "generated_at": "2026-01-02T00:00:00Z" + text,
        "estate_version": "1.0" + text, "end_of_support_table": text,
        "hub": {"fingerprint": key.get_fingerprint("sha256"),
                "public_key": key.export_public_key().decode().strip()},
        "sha256": sha256_of(path), "bytes": path.stat().st_size, "rows": 1,
    }
    Path(f"{path}.manifest.json").write_text(json.dumps(sign(manifest, key)))
    return path


def _verify(path: Path, folder: Path, *args: str):
    """`estate verify` as a user runs it, with a console config of its own (none by default)."""
    return run("-m", "estate.console.cli", "verify", str(path), *args, check=False,
               env={"ESTATE_CONSOLE_CONFIG": str(folder / "console.toml")})


def test_hostile_manifest_fields_print_as_plain_text(tmp_path):
    hub_key = asyncssh.generate_private_key("ssh-ed25519")
    fp = hub_key.get_fingerprint("sha256")
    path = _export_with_manifest(tmp_path, hub_key)
    good = _verify(path, tmp_path, "--hub-key", fp)
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout and "pwned" in good.stdout and "chief" in good.stdout
    assert _raw_controls(good.stdout + good.stderr) == set(), repr(good.stdout)
    # Tampered after signing: it still says FAILED, and nothing it printed can hide that.
    manifest_file = Path(f"{path}.manifest.json")
    doc = json.loads(manifest_file.read_text())
    doc["scope"]["operator"] = "someone.else" + EVIL
    manifest_file.write_text(json.dumps(doc))
    bad = _verify(path, tmp_path, "--hub-key", fp)
    assert bad.returncode == 1 and "FAILED" in bad.stderr and "BAD SIGNATURE" in bad.stderr
    assert "OK" not in bad.stdout
    assert _raw_controls(bad.stdout + bad.stderr) == set(), repr(bad.stderr)
    # A hostile hash and fingerprint in the messages that quote them.
    doc["sha256"] = EVIL
    doc["hub"]["fingerprint"] = EVIL
    manifest_file.write_text(json.dumps(doc))
    changed = _verify(path, tmp_path, "--hub-key", fp)
    assert changed.returncode == 1 and "CHANGED" in changed.stderr
    assert _raw_controls(changed.stdout + changed.stderr) == set(), repr(changed.stderr)


def test_a_forgery_signed_with_a_random_key_is_not_ok_when_nothing_is_pinned(tmp_path):
    hub_key = asyncssh.generate_private_key("ssh-ed25519")
    path = _export_with_manifest(tmp_path, hub_key, text="")
    # The attacker adds a row, re-hashes the file and re-signs the manifest with any key.
    forger = asyncssh.generate_private_key("ssh-ed25519")
    _export_with_manifest(tmp_path, forger, text="",
                          rows=path.read_bytes() + b"ag-2,rogue-pc\n")
    forged = _verify(path, tmp_path)
    assert forged.returncode == 1, forged.stdout
    assert "OK" not in forged.stdout
    assert "not pinned" in forged.stderr and "--hub-key" in forged.stderr
    assert forger.get_fingerprint("sha256") in forged.stderr
    # Pinned in console.toml: the forgery is named as signed by another key.
    (tmp_path / "console.toml").write_text(
        f'hub = "chief@127.0.0.1:2222"\nhub_key = "{hub_key.get_fingerprint("sha256")}"\n')
    pinned = _verify(path, tmp_path)
    assert pinned.returncode == 1 and "not by the expected hub key" in pinned.stderr


def test_a_pinned_hub_key_verifies_from_flag_console_toml_or_known_hubs(tmp_path):
    hub_key = asyncssh.generate_private_key("ssh-ed25519")
    fp = hub_key.get_fingerprint("sha256")
    path = _export_with_manifest(tmp_path, hub_key, text="")
    assert _verify(path, tmp_path).returncode == 1  # nothing pinned yet
    flag = _verify(path, tmp_path, "--hub-key", fp)
    assert flag.returncode == 0 and f"matches {fp}" in flag.stdout, flag.stderr
    # `estate` keeps the full key of a hub it logged in to in known_hubs, beside console.toml.
    line = hub_key.export_public_key().decode().split()[:2]
    (tmp_path / "known_hubs").write_text(f"estate-hub-127.0.0.1-2222 {' '.join(line)}\n")
    known = _verify(path, tmp_path)
    assert known.returncode == 0 and "pinned by this console" in known.stdout, known.stderr
    (tmp_path / "known_hubs").unlink()
    (tmp_path / "console.toml").write_text(f'hub = "chief@127.0.0.1:2222"\nhub_key = "{fp}"\n')
    assert _verify(path, tmp_path).returncode == 0


_REQUIRED = ["format", "file_format", "report", "generated_at", "as_of", "estate_version",
             "sha256", "bytes", "rows", "scope", "scope.operator", "scope.role",
             "scope.agencies", "filters", "hub", "hub.fingerprint", "hub.public_key",
             "signature", "signature.algorithm", "signature.value"]


def _drop(doc: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        doc = doc[p]
    del doc[last]


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        doc = doc[p]
    doc[last] = value


def _verify_in_process(path: Path, capsys) -> tuple[int, str, str]:
    status = estate(["verify", str(path), "--hub-key", "SHA256:x"])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("field", _REQUIRED)
def test_a_manifest_missing_a_field_is_a_clear_error(tmp_path, capsys, field):
    path = _export_with_manifest(tmp_path, asyncssh.generate_private_key("ssh-ed25519"), "")
    manifest_file = Path(f"{path}.manifest.json")
    doc = json.loads(manifest_file.read_text())
    _drop(doc, field)
    manifest_file.write_text(json.dumps(doc))
    status, out, err = _verify_in_process(path, capsys)
    assert status == 1 and out == ""
    if field == "format":
        assert "not an Estate export manifest" in err
    else:
        assert f"field {field} is missing" in err, err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("field", "value"), [
    ("bytes", "12"), ("rows", True), ("rows", 1.5), ("scope", "all"), ("scope.agencies", 3),
    ("scope.agencies", ["Fire", 3]), ("scope.operator", None), ("filters", []),
    ("filters.days", {"x": 1}), ("hub", "SHA256:x"), ("hub.public_key", 1), ("as_of", 0),
    ("signature", None), ("signature.value", ["x"]), ("sha256", 1), ("bytes", -1)])
def test_a_manifest_field_of_the_wrong_type_is_a_clear_error(tmp_path, capsys, field, value):
    path = _export_with_manifest(tmp_path, asyncssh.generate_private_key("ssh-ed25519"), "")
    manifest_file = Path(f"{path}.manifest.json")
    doc = json.loads(manifest_file.read_text())
    _set(doc, field, value)
    manifest_file.write_text(json.dumps(doc))
    status, out, err = _verify_in_process(path, capsys)
    assert status == 1 and out == "" and "malformed manifest" in err, err
    assert field.split(".")[0] in err and err.count("\n") == 1


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b"\xff\xfe{}", b"null",
                                     b"[" * 100_000, b'{"format": 1}'])
def test_a_manifest_that_is_not_one_is_a_clear_error(tmp_path, capsys, content):
    path = tmp_path / "x.csv"
    path.write_text("a\n")
    Path(f"{path}.manifest.json").write_bytes(content)
    status, _, err = _verify_in_process(path, capsys)
    assert status == 1 and "FAILED" in err and "manifest" in err and err.count("\n") == 1


def test_a_malformed_manifest_ends_the_real_cli_without_a_traceback(tmp_path):
    path = _export_with_manifest(tmp_path, asyncssh.generate_private_key("ssh-ed25519"), "")
    manifest_file = Path(f"{path}.manifest.json")
    doc = json.loads(manifest_file.read_text())
    del doc["scope"]
    manifest_file.write_text(json.dumps(doc))
    done = _verify(path, tmp_path, "--hub-key", "SHA256:x")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "field scope is missing" in done.stderr


# --- estate-hub: --json and tables of agent-supplied text ------------------------------

def test_hub_json_and_tables_escape_a_hostile_hostname(module_hub, module_agent, live_report):
    hostname = "pc" + EVIL.replace("\u2028", "")
    report = make_report(live_report, module_agent.agent_id, system__hostname=hostname)
    status, doc = module_agent.send(report)
    assert status == 0, doc
    try:
        done = module_hub.admin("hosts", "--json")
        assert _raw_controls(done.stdout) == set(), repr(done.stdout)
        assert "\\u009b" in done.stdout and "\\u202e" in done.stdout
        rows = json.loads(done.stdout)  # still JSON, and the hostname is all there
        assert hostname in {r["hostname"] for r in rows}
        table = module_hub.admin("hosts").stdout
        assert _raw_controls(table) == set() and "pc" in table
        changes = module_hub.admin("changes", "--json").stdout
        assert _raw_controls(changes) == set()
    finally:  # a normal host again for the module's other tests
        module_agent.send(make_report(live_report, module_agent.agent_id))


# --- the sanitiser itself, character by character (fast enough for `make mutate`) -----------

def test_plain_quoted_and_dumps_escape_exactly_the_unsafe_characters():
    from estate.inventory.sanitise import MAX_CELL, REPLACEMENT, dumps, plain, quoted

    # Safe: ASCII, a space, accents, CJK, an emoji. Unsafe: C0, DEL, C1, bidi, zero width,
    # line separators, private use, an unassigned code point.
    assert not any(is_unsafe(c) for c in "a Z~ é漢😀")
    assert all(is_unsafe(c) for c in "\x00\x1b\n\x7f\u0085\u009b\u202e\u200b\u2028\u2029"
                                     "\ue000\U000e0001\U0010fffe")
    assert plain(None) == "" and plain(42) == "42" and plain("ok text") == "ok text"
    assert plain("é\x1b[2J\u202eok\u2028") == f"é{REPLACEMENT}[2J{REPLACEMENT}ok{REPLACEMENT}"
    assert plain("x" * 600) == "x" * MAX_CELL and plain("abcdef", limit=3) == "abc"
    assert plain("a\tb") == f"a{REPLACEMENT}b"

    assert quoted(None) == '""' and quoted(7) == '"7"'
    assert quoted('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert quoted("a\nb\rc\td") == '"a\\nb\\rc\\td"'
    assert quoted("\x1b\x7f\u009b") == '"\\x1b\\x7f\\x9b"'
    assert quoted("\u202e\ue000") == '"\\u202e\\ue000"'
    assert quoted("\U000e0001") == '"\\U000e0001"'
    assert quoted("é 漢") == '"é 漢"'
    assert quoted("abcdef", limit=3) == '"abc..."' and quoted("abc", limit=3) == '"abc"'
    assert quoted("x" * 201) == '"' + "x" * 200 + '..."'

    assert dumps({"b": 1, "a": "é"}) == '{"b": 1, "a": "é"}'
    assert dumps({"b": 1, "a": 2}, sort_keys=True) == '{"a": 2, "b": 1}'
    assert dumps([1], indent=2) == "[\n  1\n]"
    assert dumps({"t": __import__("datetime").date(2026, 1, 2)}) == '{"t": "2026-01-02"}'
    assert dumps("\x1b\x7f\u0085\u202e\u2028\u200b\ufeff") == \
        '"\\u001b\\u007f\\u0085\\u202e\\u2028\\u200b\\ufeff"'
    # Outside the fast pattern: private use and unassigned, astral ones as surrogate pairs.
    assert dumps("\ue000 é") == '"\\ue000 é"'
    assert dumps("\U0010fffe") == '"\\udbff\\udffe"' and dumps("\U000f0000") == \
        '"\\udb80\\udc00"'
    assert json.loads(dumps("\U0010fffe\ue000")) == "\U0010fffe\ue000"
    assert dumps("😀 漢") == '"😀 漢"'
