"""Safe files: private data folders and files, exports that never write through a planted
symlink, and an enrolment token kept off the command line (issue 11, items 15 to 17)."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from pathlib import Path

import pytest

from estate.agent.spool import Spool
from estate.console._settings import PinnedHub
from estate.console.export import ExportOptions, build_request, fetch
from estate.inventory.private_files import OpenDataDir
from tests.harness import PY, Agent, AgentService, HubProcess, run, wait_for
from tests.sshd import keygen


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _open_folder(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o755)  # as an older Estate, or a package, left it
    return path


# --- the hub's data folder ------------------------------------------------------------

def test_the_hub_refuses_an_open_data_folder_and_names_the_fix(tmp_path):
    data = _open_folder(tmp_path / "hub")
    done = run("-m", "estate.inventory.hub.cli", "serve", "--listen", "127.0.0.1:0", "--data",
               str(data), check=False, timeout=60)
    assert done.returncode == 1, done.stdout
    assert f"chmod 700 {data}" in done.stderr and "--allow-open-data-dir" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(data.iterdir()) == []  # refused before the host key or the store was written
    hub = HubProcess(data, extra=("--allow-open-data-dir",)).start()  # the operator's call
    hub.kill()
    admin = run("-m", "estate.inventory.hub.cli", "token", "list", "--data", str(data), check=False)
    assert admin.returncode == 1 and f"chmod 700 {data}" in admin.stderr


def test_every_hub_file_is_private_whatever_the_umask(tmp_path):
    hub = HubProcess(tmp_path / "hub").start()
    try:
        hub.token()  # an admin verb writes too
        files = sorted(p.name for p in hub.data.iterdir())
        assert {"estate.db", "estate.db-wal", "host_key_ed25519"} <= set(files)
        assert _mode(hub.data) == 0o700
        assert {n: _mode(hub.data / n) for n in files} == {n: 0o600 for n in files}
    finally:
        hub.kill()
    # A store from before files were made private is narrowed when the hub opens it.
    (hub.data / "estate.db").chmod(0o644)
    hub = HubProcess(hub.data).start()
    hub.kill()
    assert _mode(hub.data / "estate.db") == 0o600


# --- the agent's folder ---------------------------------------------------------------

def test_the_agent_spool_and_status_are_private(hub, tmp_path):
    agent = Agent(hub, tmp_path / "agent")
    service = AgentService(agent).start()
    folder = agent.config.parent
    try:
        wait_for(lambda: service.status().get("last_ack_at"), timeout=60,
                 what="the agent's first ack")
    finally:
        service.stop()
    names = [n for n in ("spool.db", "spool.db-wal", "status.json", "agent_key", "agent.toml")
             if (folder / n).exists()]
    assert {"spool.db", "status.json", "agent_key"} <= set(names)
    assert {n: _mode(folder / n) for n in names} == {n: 0o600 for n in names}
    # The folder opened up later: the service refuses to start, and says how to fix it.
    folder.chmod(0o755)
    done = run("-m", "estate.agent", "run", "--config", str(agent.config), check=False, timeout=60)
    assert done.returncode == 1 and f"chmod 700 {folder}" in done.stderr, done.stderr
    assert "--allow-open-data-dir" in done.stderr and "Traceback" not in done.stderr


def test_a_spool_in_an_open_folder_is_refused_and_a_new_one_is_private(tmp_path):
    with pytest.raises(OpenDataDir, match="chmod 700"):
        Spool(_open_folder(tmp_path / "open") / "spool.db")
    spool = Spool(tmp_path / "new" / "spool.db")
    spool.put("r1", b"x")
    spool.close()
    assert _mode(tmp_path / "new") == 0o700
    assert _mode(tmp_path / "new" / "spool.db") == 0o600


# --- exports and planted symlinks -----------------------------------------------------

def _export_args(output: Path, force: bool = False) -> ExportOptions:
    return ExportOptions(report="inventory", output=output, force=force)


@pytest.mark.parametrize("planted", ["inventory.csv", "inventory.csv.manifest.json"])
def test_export_refuses_a_symlink_for_the_file_or_its_manifest(tmp_path, planted):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / planted).symlink_to(victim)
    output = tmp_path / "inventory.csv"
    with pytest.raises(ValueError, match="symbolic link"):
        build_request(_export_args(output, force=True))
    # The real CLI: a clear one-line refusal before it connects anywhere.
    done = run("-m", "estate.console.cli", "export", "--hub", "chief@127.0.0.1:9", "--hub-key",
               "SHA256:x", "--report", "inventory", "-o", str(output), "--force",
               check=False)
    assert done.returncode == 2 and "symbolic link" in done.stderr, done.stderr
    assert victim.read_text() == "precious\n"


def test_export_replaces_links_planted_after_the_check_instead_of_following_them(tmp_path):
    """A link that appears between the check and the write is replaced, not written
    through: both files go through new O_EXCL|O_NOFOLLOW files renamed into place."""
    hub = HubProcess(tmp_path / "hub").start()
    try:
        keygen(tmp_path / "chief")
        hub.admin("operator", "add", "chief", "--key", str(tmp_path / "chief.pub"), "--role",
                  "admin", "--agencies", "all")
        out = tmp_path / "out"
        out.mkdir()
        output = out / "inventory.csv"
        request, _ = build_request(_export_args(output))
        victims = {}
        for name in ("inventory.csv", "inventory.csv.manifest.json"):
            victims[name] = tmp_path / f"victim-{name}"
            victims[name].write_text("precious\n")
            (out / name).symlink_to(victims[name])
        asyncio.run(fetch(PinnedHub(hub.address, "chief", hub.fingerprint, tmp_path / "chief"),
                          request, output))
    finally:
        hub.kill()
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n"
        assert not (out / name).is_symlink() and _mode(out / name) == 0o600
    assert sorted(p.name for p in out.iterdir()) == sorted(victims)  # no temporary left


# --- the enrolment token --------------------------------------------------------------

def _enrol(hub: HubProcess, folder: Path, *args: str, stdin: str | None = None):
    folder.mkdir(mode=0o700)
    return subprocess.run([PY, "-m", "estate.agent", "enrol", *args, "--hub", hub.address,
                           "--config", str(folder / "agent.toml")], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_enrol_reads_the_token_from_a_file_or_stdin(hub, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(hub.token() + "\n")
    done = _enrol(hub, tmp_path / "a", "--token-file", str(token_file))
    assert done.returncode == 0 and "enrolled as ag-" in done.stdout, done.stderr
    done = _enrol(hub, tmp_path / "b", "--token", "-", stdin=hub.token() + "\n")
    assert done.returncode == 0 and "enrolled as ag-" in done.stdout, done.stderr
    empty = _enrol(hub, tmp_path / "c", "--token", "-", stdin="")
    assert empty.returncode == 2 and "no token in stdin" in empty.stderr
    missing = _enrol(hub, tmp_path / "d", "--token-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "--token-file: cannot read" in missing.stderr
    both = _enrol(hub, tmp_path / "e", "--token", "x", "--token-file", str(token_file))
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_enrol_help_says_a_token_on_the_command_line_shows_in_ps():
    text = run("-m", "estate.agent", "enrol", "--help").stdout
    assert "--token-file" in text and "`ps`" in text

