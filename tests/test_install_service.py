"""`install-service`, `uninstall-service`, default paths and `status` on every OS's branch.

Runs on Linux: only the OS boundary is faked (sys.platform, launchctl/systemctl through
subprocess.run, os.chown to root, ctypes.windll); the plist, the commands and the checks are
the real code's.
"""

from __future__ import annotations

import io
import json
import os
import plistlib
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from estate.agent import cli, config, launchd, systemd
from estate.agent import service as agent_service
from estate.agent.service import read_status


@pytest.fixture(autouse=True)
def _keep_umask():
    """cli.main sets the umask to 0077 for the whole process: put it back."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


class FakeRun:
    """subprocess.run for launchctl/systemctl: records each argv, answers from a table."""

    def __init__(self, answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv, **kw):
        self.calls.append(list(argv))
        code, err = self.answers.get(argv[1], (0, ""))
        return subprocess.CompletedProcess(argv, code, "", err)


@pytest.fixture()
def mac(tmp_path, monkeypatch):
    """launchd's paths under tmp_path, launchctl and chown faked; the label not loaded."""
    (tmp_path / "LaunchDaemons").mkdir()
    monkeypatch.setattr(launchd, "PLIST_PATH",
                        tmp_path / "LaunchDaemons" / "org.estate.agent.plist")
    monkeypatch.setattr(launchd, "LOG_DIR", tmp_path / "Logs" / "Estate")
    run = FakeRun({"print": (113, "Could not find service \"org.estate.agent\" in domain")})
    monkeypatch.setattr(launchd.subprocess, "run", run)
    chowned: list[tuple[str, int, int]] = []
    monkeypatch.setattr(launchd.os, "chown", lambda p, u, g: chowned.append((str(p), u, g)))
    monkeypatch.setattr(sys, "platform", "darwin")
    return SimpleNamespace(run=run, chowned=chowned, plist=launchd.PLIST_PATH,
                           logs=launchd.LOG_DIR)


# --- the launchd plist ----------------------------------------------------------------------

def test_the_launchd_plist_loads_back_with_every_key():
    config = Path("/Library/Application Support/Estate/agent.toml")
    doc = plistlib.loads(launchd.service_text(config, "/usr/local/bin/python3.11").encode())
    assert doc["Label"] == "org.estate.agent"
    assert doc["ProgramArguments"] == ["/usr/local/bin/python3.11", "-m", "estate.agent", "run",
                                       "--config", str(config)]
    assert doc["RunAtLoad"] is True
    assert doc["KeepAlive"] is True
    assert doc["ThrottleInterval"] == 10
    assert doc["StandardOutPath"] == "/Library/Logs/Estate/agent.log"
    assert doc["StandardErrorPath"] == "/Library/Logs/Estate/agent.log"
    assert doc["Umask"] == 0o077
    assert set(doc) == {"Label", "ProgramArguments", "RunAtLoad", "KeepAlive",
                        "ThrottleInterval", "StandardOutPath", "StandardErrorPath", "Umask"}


def test_the_plist_runs_this_python_by_default():
    doc = plistlib.loads(launchd.service_text(Path("/x/agent.toml")).encode())
    assert doc["ProgramArguments"][:3] == [sys.executable, "-m", "estate.agent"]


def test_launchd_install_writes_a_root_plist_and_bootstraps_it(mac):
    old = os.umask(0o077)  # as under the CLI: the plist must still be 0644
    try:
        line = launchd.install(Path("/cfg/agent.toml"))
    finally:
        os.umask(old)
    assert line == (f"installed and started org.estate.agent ({mac.plist}); "
                    f"logs in {mac.logs}")
    assert mac.plist.stat().st_mode & 0o777 == 0o644
    assert mac.chowned and mac.chowned[0][1:] == (0, 0)
    assert plistlib.loads(mac.plist.read_bytes())["ProgramArguments"][-1] == "/cfg/agent.toml"
    assert mac.logs.is_dir()
    assert list(mac.plist.parent.iterdir()) == [mac.plist]  # no temporary file left
    assert mac.run.calls == [
        ["/bin/launchctl", "print", "system/org.estate.agent"],
        ["/bin/launchctl", "enable", "system/org.estate.agent"],
        ["/bin/launchctl", "bootstrap", "system", str(mac.plist)],
    ]


def test_launchd_install_boots_out_a_loaded_daemon_first(mac):
    mac.run.answers["print"] = (0, "")
    launchd.install(Path("/cfg/agent.toml"))
    assert [c[1:] for c in mac.run.calls] == [
        ["print", "system/org.estate.agent"], ["bootout", "system/org.estate.agent"],
        ["enable", "system/org.estate.agent"], ["bootstrap", "system", str(mac.plist)]]


def test_launchd_uninstall_boots_out_and_removes_the_plist(mac):
    launchd.install(Path("/cfg/agent.toml"))
    mac.run.calls.clear()
    mac.run.answers["print"] = (0, "")
    line = launchd.uninstall()
    assert line.startswith(f"stopped org.estate.agent and removed {mac.plist}")
    assert not mac.plist.exists()
    assert [c[1:] for c in mac.run.calls] == [["print", "system/org.estate.agent"],
                                              ["bootout", "system/org.estate.agent"]]


def test_launchd_uninstall_of_nothing_says_so(mac):
    assert launchd.uninstall() == "org.estate.agent was not installed: nothing to remove"
    assert [c[1] for c in mac.run.calls] == ["print"]


def test_a_refused_bootstrap_is_one_line_and_exit_1(mac, tmp_path):
    mac.run.answers["bootstrap"] = (5, "Bootstrap failed: 5: Input/output error\n")
    code, out, err = _main("install-service", "--config", str(tmp_path / "agent.toml"))
    assert code == 1 and out == ""
    assert err == (f"estate-agent: /bin/launchctl bootstrap system {mac.plist} failed (exit 5): "
                   "Bootstrap failed: 5: Input/output error\n")


# --- the dispatcher, per sys.platform --------------------------------------------------------

def test_install_service_on_macos_installs_the_daemon(mac, tmp_path):
    code, out, err = _main("install-service", "--config", str(tmp_path / "agent.toml"))
    assert (code, err) == (0, "")
    assert out == f"installed and started org.estate.agent ({mac.plist}); logs in {mac.logs}\n"
    code, out, err = _main("uninstall-service")
    assert code == 0 and out.startswith("stopped org.estate.agent") and not mac.plist.exists()


def test_install_service_print_on_macos_is_the_plist(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "darwin")
    code, out, _ = _main("install-service", "--print", "--config", str(tmp_path / "agent.toml"))
    assert code == 0
    doc = plistlib.loads(out.encode())
    assert doc["Label"] == "org.estate.agent"
    assert doc["ProgramArguments"][-1] == str((tmp_path / "agent.toml").resolve())


def test_install_service_print_on_linux_is_the_unit(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    code, out, _ = _main("install-service", "--print", "--config", str(tmp_path / "agent.toml"))
    assert code == 0
    assert out == systemd.unit_text((tmp_path / "agent.toml").resolve())


def test_install_service_on_linux_writes_the_unit_as_before(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(systemd, "UNIT_PATH", tmp_path / "estate-agent.service")
    code, out, _ = _main("install-service", "--config", str(tmp_path / "agent.toml"))
    assert code == 0
    assert out == (f"wrote {tmp_path}/estate-agent.service. Enable and start it with:\n"
                   "  systemctl daemon-reload && systemctl enable --now estate-agent\n")
    assert (tmp_path / "estate-agent.service").read_text() == \
        systemd.unit_text((tmp_path / "agent.toml").resolve())


def test_install_service_on_linux_that_cannot_write_says_run_as_root(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    unit = tmp_path / "missing" / "estate-agent.service"
    monkeypatch.setattr(systemd, "UNIT_PATH", unit)
    code, out, err = _main("install-service", "--config", str(tmp_path / "agent.toml"))
    assert (code, out) == (1, "")
    assert err == (f"estate-agent: cannot write {unit}: No such file or directory (run as "
                   "root, or use --print)\n")


def test_uninstall_service_on_linux_disables_and_removes_the_unit(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    unit = tmp_path / "estate-agent.service"
    unit.write_text("[Unit]\n")
    monkeypatch.setattr(systemd, "UNIT_PATH", unit)
    run = FakeRun()
    monkeypatch.setattr(systemd.subprocess, "run", run)
    code, out, _ = _main("uninstall-service")
    assert code == 0 and not unit.exists()
    assert out == f"stopped and disabled estate-agent, removed {unit} (config kept)\n"
    assert run.calls == [["systemctl", "disable", "--now", "estate-agent.service"],
                         ["systemctl", "daemon-reload"]]
    code, out, _ = _main("uninstall-service")
    assert (code, out) == (0, "estate-agent.service was not installed: nothing to remove\n")
    assert len(run.calls) == 2


def test_install_service_on_windows_uses_winservice(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "win32")
    winservice = pytest.importorskip("estate.agent.winservice")
    code, out, err = _main("install-service", "--print", "--config", str(tmp_path / "agent.toml"))
    assert code == 0, err
    assert out == winservice.service_text((tmp_path / "agent.toml").resolve()).rstrip("\n") + "\n"
    assert "[Unit]" not in out and "<plist" not in out


@pytest.mark.parametrize("platform", ["freebsd14", "openbsd7", "sunos5", "aix", "cygwin"])
@pytest.mark.parametrize("argv", [("install-service", "--print"), ("install-service",),
                                  ("uninstall-service",)])
def test_an_os_without_a_known_service_manager_is_refused(monkeypatch, tmp_path, platform, argv):
    monkeypatch.setattr(sys, "platform", platform)
    extra = ("--config", str(tmp_path / "agent.toml")) if argv[0] == "install-service" else ()
    code, out, err = _main(*argv, *extra)
    assert (code, out) == (2, "")  # never a systemd unit
    assert err == (f"estate-agent: no service manager to install into on {platform} "
                   "(systemd, launchd and Windows services are supported): run `estate-agent "
                   "run` under this system's own supervisor\n")
    assert not list(tmp_path.iterdir())


def _help(*argv: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return " ".join(out.getvalue().split())


def test_help_explains_each_os():
    assert "uninstall-service stop and remove the service" in _help()
    text = _help("install-service")
    for words in ("Linux: write /etc/systemd/system/estate-agent.service", "macOS: write",
                  "/Library/LaunchDaemons/org.estate.agent.plist", "launchctl bootstrap system",
                  "Windows: register", "Any other OS: exits 2"):
        assert words in text
    text = _help("uninstall-service")
    assert "macOS: launchctl bootout" in text and "Linux: systemctl disable --now" in text


# --- default paths --------------------------------------------------------------------------

def _no_env(monkeypatch):
    for name in ("ESTATE_AGENT_CONFIG", "XDG_CONFIG_HOME", "ProgramData", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("root", [True, False])
def test_default_paths_on_linux_are_unchanged(monkeypatch, tmp_path, root):
    _no_env(monkeypatch)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = Path("/etc/estate/agent.toml") if root else tmp_path / ".config/estate/agent.toml"
    assert config.default_path() == expected
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    if not root:
        assert config.default_path() == tmp_path / "xdg/estate/agent.toml"
    monkeypatch.setenv("ESTATE_AGENT_CONFIG", str(tmp_path / "mine.toml"))
    assert config.default_path() == tmp_path / "mine.toml"


@pytest.mark.parametrize("root", [True, False])
def test_default_paths_on_macos(monkeypatch, tmp_path, root):
    _no_env(monkeypatch)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 501)
    monkeypatch.setenv("HOME", str(tmp_path))
    base = Path("/") if root else tmp_path
    assert config.default_path() == base / "Library/Application Support/Estate/agent.toml"


@pytest.mark.parametrize("admin", [1, 0])
def test_default_paths_on_windows(monkeypatch, tmp_path, admin):
    import ctypes

    _no_env(monkeypatch)
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.delattr(os, "geteuid")  # Windows has none
    shell32 = SimpleNamespace(IsUserAnAdmin=lambda: admin)
    monkeypatch.setattr(ctypes, "windll", SimpleNamespace(shell32=shell32), raising=False)
    monkeypatch.setenv("ProgramData", str(tmp_path / "ProgramData"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    expected = tmp_path / ("ProgramData" if admin else "Local") / "Estate" / "agent.toml"
    assert config.default_path() == expected
    # The spool, key and status.json follow it.
    assert config.AgentConfig(path=expected).state_dir() == expected.parent


# --- status, without os.kill or /proc -------------------------------------------------------

def _status_file(tmp_path: Path, pid: int, updated_at: str, running: bool = True) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("")
    (tmp_path / "status.json").write_text(json.dumps(
        {"pid": pid, "agent_id": "a1", "hub": "hub:2222", "running": running,
         "updated_at": updated_at, "spool_reports": 0, "spool_bytes": 0}))
    return cfg


def _running(cfg: Path) -> bool:
    state = read_status(config.AgentConfig(path=cfg))
    assert state is not None
    return state["running"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not psutil.pid_exists(child.pid)
    return child.pid


@pytest.fixture(params=["linux", "darwin", "win32"])
def any_os(request, monkeypatch):
    """status on each OS's branch; os.kill(pid, 0) would send CTRL_C_EVENT on Windows."""
    monkeypatch.setattr(sys, "platform", request.param)
    # The agent's own code may not signal; psutil may (it is the POSIX way to ask).
    monkeypatch.setattr(agent_service, "os", _OsWithoutKill())
    return request.param


class _OsWithoutKill:
    def __getattr__(self, name: str):
        if name == "kill":
            raise AssertionError("status called os.kill")
        return getattr(os, name)


def test_status_sees_this_process_running(any_os, tmp_path):
    cfg = _status_file(tmp_path, os.getpid(), _now())
    assert _running(cfg) is True
    code, out, _ = _main("status", "--config", str(cfg))
    assert code == 0 and f"running (pid {os.getpid()})" in out


def test_status_follows_another_process_from_start_to_exit(any_os, tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cfg = _status_file(tmp_path, child.pid, _now())
        assert _running(cfg) is True
    finally:
        child.kill()
        child.wait()
    assert _running(cfg) is False


def test_status_of_a_dead_pid_is_stopped(any_os, tmp_path):
    cfg = _status_file(tmp_path, 0, _now())
    (tmp_path / "status.json").write_text(
        (tmp_path / "status.json").read_text().replace('"pid": 0', f'"pid": {_dead_pid()}'))
    assert _running(cfg) is False
    code, out, _ = _main("status", "--config", str(cfg))
    assert code == 1 and "service     stopped" in out


def test_status_of_a_reused_pid_is_stopped(any_os, tmp_path):
    # The agent last wrote long before this process (holding its pid now) started.
    cfg = _status_file(tmp_path, os.getpid(), "2001-01-01T00:00:00Z")
    assert _running(cfg) is False


def test_status_written_as_stopped_stays_stopped(any_os, tmp_path):
    cfg = _status_file(tmp_path, os.getpid(), _now(), running=False)
    assert _running(cfg) is False


def test_status_of_a_pid_psutil_may_not_inspect_is_taken_as_running(any_os, tmp_path,
                                                                    monkeypatch):
    def denied(pid):
        raise psutil.AccessDenied(pid)

    monkeypatch.setattr(psutil, "Process", denied)
    cfg = _status_file(tmp_path, os.getpid(), "2001-01-01T00:00:00Z")
    assert _running(cfg) is True
