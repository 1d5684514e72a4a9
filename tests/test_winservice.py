"""The agent as a Windows service, and its key's ACL, on this Linux machine.

Only the OS module boundary is fake: pywin32's `win32serviceutil`, `win32service`,
`servicemanager`, `win32security` and `ntsecuritycon`, put in sys.modules, recording every call
with the constants' real values; and `sys.platform` where the key's code asks for Windows. The
service class, the agent loop it runs, install/uninstall and the ACL checks are the real code.
Nothing here has run on a real Windows (docs/install.md says so).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from estate.agent import enrol, winacl, winservice
from estate.agent.config import ConfigError
from estate.agent.transport import HubError, load_key
from tests.harness import wait_for

PYTHON = r"C:\Program Files\Python311\python.exe"
AGENT_ID = "ag-0123456789ab"
USERS_SID = "S-1-5-32-545"  # BUILTIN\Users


class WinError(Exception):
    """pywintypes.error: (winerror, funcname, strerror)."""

    def __init__(self, winerror: int, funcname: str, strerror: str) -> None:
        super().__init__(winerror, funcname, strerror)
        self.winerror, self.funcname, self.strerror = winerror, funcname, strerror


class Calls(list):
    """(function name, args, kwargs) in call order."""

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(args, kwargs) for called, args, kwargs in self if called == name]


def _module(name: str, calls: Calls, fail: dict[str, Exception], functions: tuple[str, ...],
            **attrs: Any) -> types.ModuleType:
    """A fake module whose functions record their calls and raise what `fail` names."""
    module = types.ModuleType(name)

    def recorder(fn: str):
        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append((fn, args, kwargs))
            if fn in fail:
                raise fail.pop(fn)
            return f"<{fn} handle>"
        return record

    for fn in functions:
        setattr(module, fn, recorder(fn))
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


@pytest.fixture()
def scm(monkeypatch):
    """Fake win32service, win32serviceutil and servicemanager; `.calls`, `.fail`."""
    calls, fail = Calls(), {}

    class ServiceFramework:
        """pywin32's base class, as far as the C host and a service's code reach it."""

        def __init__(self, args: Any) -> None:
            calls.append(("ServiceFramework", (args,), {}))

        def ReportServiceStatus(self, status, waitHint=5000, win32ExitCode=0, svcExitCode=0):
            calls.append(("ReportServiceStatus", (status,), {"waitHint": waitHint}))

        def SvcRun(self) -> None:  # what the C host calls on its thread
            self.ReportServiceStatus(service.SERVICE_RUNNING)
            self.SvcDoRun()
            self.ReportServiceStatus(service.SERVICE_STOP_PENDING)

    service = _module(
        "win32service", calls, fail,
        ("OpenSCManager", "OpenService", "ChangeServiceConfig2", "CloseServiceHandle"),
        error=WinError, SERVICE_AUTO_START=0x2, SERVICE_DEMAND_START=0x3, SERVICE_STOPPED=0x1,
        SERVICE_STOP_PENDING=0x3, SERVICE_RUNNING=0x4, SC_MANAGER_ALL_ACCESS=0xF003F,
        SERVICE_ALL_ACCESS=0xF01FF, SERVICE_CONFIG_FAILURE_ACTIONS=0x2,
        SERVICE_CONFIG_FAILURE_ACTIONS_FLAG=0x4, SC_ACTION_RESTART=0x1)
    util = _module(
        "win32serviceutil", calls, fail,
        ("InstallService", "ChangeServiceConfig", "StartService", "RestartService",
         "StopService", "WaitForServiceStatus", "RemoveService"),
        ServiceFramework=ServiceFramework)
    manager = _module(
        "servicemanager", calls, fail,
        ("Initialize", "PrepareToHostSingle", "StartServiceCtrlDispatcher", "LogMsg",
         "LogInfoMsg", "LogWarningMsg", "LogErrorMsg"),
        EVENTLOG_INFORMATION_TYPE=0x4, PYS_SERVICE_STARTED=0x40000004,
        PYS_SERVICE_STOPPED=0x40000006)
    for module in (service, util, manager):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return types.SimpleNamespace(calls=calls, fail=fail, win32service=service)


@pytest.fixture()
def not_a_venv(monkeypatch):
    """The service's interpreter: a Python installed for all users, not this test venv."""
    monkeypatch.setattr(sys, "executable", PYTHON)
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)


def _config(folder: Path, hub: str = "127.0.0.1:1", enrolled: bool = True) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / "agent.toml"
    head = (f'agent_id = "{AGENT_ID}"\nhub = "{hub}"\nhub_key = "SHA256:{"A" * 43}"\n'
            f'key_file = "agent_key"\n') if enrolled else ""
    path.write_text(head + "interval = 3600\nstart_delay = 0\nreconnect_max = 1\n")
    return path


def test_importing_the_module_needs_no_pywin32():
    """Linux and macOS never import pywin32: only the functions that talk to Windows do."""
    for name in ("win32service", "win32serviceutil", "servicemanager", "win32security",
                 "ntsecuritycon", "win32event"):
        assert name not in sys.modules
    assert winservice.SERVICE_NAME == "EstateAgent"


# --- install-service / uninstall-service ----------------------------------------------------

def test_install_registers_an_automatic_service_with_recovery_and_starts_it(
        scm, not_a_venv, tmp_path):
    config = _config(tmp_path / "Program Data" / "Estate")
    line = winservice.install(config)
    [(args, kwargs)] = scm.calls.named("InstallService")
    args_line = f'-I -m estate.agent.winservice --config "{config}"'
    assert args == (None, "EstateAgent", "Estate inventory agent")
    assert kwargs == {"startType": 0x2, "exeName": PYTHON, "exeArgs": args_line,
                      "description": winservice.DESCRIPTION}
    assert "Estate hub" in winservice.DESCRIPTION
    # pywin32 writes the image path as '"exeName" exeArgs': what --print shows, quoted.
    assert f'"{PYTHON}" {args_line}' == winservice.command_line(config, PYTHON)
    assert f"command line      \"{PYTHON}\" {args_line}\n" in \
        winservice.service_text(config, PYTHON)
    assert scm.calls.named("ChangeServiceConfig2") == [
        (("<OpenService handle>", 0x2,
          {"ResetPeriod": 86400, "RebootMsg": None, "Command": None,
           "Actions": ((0x1, 5000), (0x1, 30000), (0x1, 60000))}), {}),
        (("<OpenService handle>", 0x4, True), {}),  # also when it stops with an error
    ]
    assert scm.calls.named("OpenService") == [(("<OpenSCManager handle>", "EstateAgent",
                                                0xF01FF), {})]
    assert [a for a, _ in scm.calls.named("CloseServiceHandle")] == \
        [("<OpenService handle>",), ("<OpenSCManager handle>",)]
    assert scm.calls.named("StartService") == [(("EstateAgent",), {})]
    assert scm.calls.named("ChangeServiceConfig") == scm.calls.named("RestartService") == []
    assert line.startswith("installed and started the Windows service EstateAgent")


def test_install_again_reconfigures_and_restarts_the_running_service(scm, not_a_venv, tmp_path):
    config = _config(tmp_path)
    scm.fail["InstallService"] = WinError(1073, "CreateService", "The service exists.")
    scm.fail["StartService"] = WinError(1056, "StartService", "Already running.")
    assert winservice.install(config).startswith("updated and started")
    [(args, kwargs)] = scm.calls.named("ChangeServiceConfig")
    assert args == (None, "EstateAgent")
    assert kwargs == {"displayName": "Estate inventory agent", "startType": 0x2,
                      "exeName": PYTHON, "description": winservice.DESCRIPTION,
                      "exeArgs": f'-I -m estate.agent.winservice --config "{config}"'}
    assert len(scm.calls.named("ChangeServiceConfig2")) == 2
    assert scm.calls.named("RestartService") == [(("EstateAgent",), {})]


def test_install_refuses_with_one_line_and_touches_nothing_it_should_not(
        scm, not_a_venv, tmp_path, monkeypatch):
    config = _config(tmp_path)
    scm.fail["InstallService"] = WinError(5, "OpenSCManager", "Access is denied.")
    with pytest.raises(winservice.ServiceError, match=r"cannot register the Windows service "
                       r"EstateAgent: Access is denied\. \(run it from an elevated prompt"):
        winservice.install(config)
    assert scm.calls.named("StartService") == []

    scm.calls.clear()
    with pytest.raises(winservice.ServiceError, match="not enrolled"):
        winservice.install(_config(tmp_path / "new", enrolled=False))
    with pytest.raises(winservice.ServiceError, match=r"file not found.*enrol first"):
        winservice.install(tmp_path / "missing" / "agent.toml")
    monkeypatch.setattr(sys, "base_prefix", "C:\\Python311")  # a venv's python.exe
    with pytest.raises(winservice.ServiceError, match="virtual environment"):
        winservice.install(config)
    assert scm.calls == []


def test_uninstall_stops_and_removes_the_service(scm):
    assert winservice.uninstall() == ("stopped and removed the Windows service EstateAgent "
                                      "(config, key and spool kept)")
    assert [name for name, _, _ in scm.calls] == ["StopService", "WaitForServiceStatus",
                                                  "RemoveService"]
    assert scm.calls.named("WaitForServiceStatus") == [(("EstateAgent", 0x1, 60), {})]

    scm.calls.clear()  # installed but not running: removed all the same
    scm.fail["StopService"] = WinError(1062, "ControlService", "The service has not been "
                                                               "started.")
    winservice.uninstall()
    assert scm.calls.named("RemoveService") == [(("EstateAgent",), {})]

    scm.calls.clear()
    scm.fail["StopService"] = WinError(1060, "OpenService", "The service does not exist.")
    assert "was not installed" in winservice.uninstall()
    assert scm.calls.named("RemoveService") == []

    scm.fail["StopService"] = WinError(5, "OpenSCManager", "Access is denied.")
    with pytest.raises(winservice.ServiceError, match=r"cannot remove .*Run as administrator"):
        winservice.uninstall()


# --- the service: the agent loop under the service manager ----------------------------------

@pytest.fixture()
def root_logger():
    """The service sends the root logger to the event log: put it back afterwards."""
    root, paramiko = logging.getLogger(), logging.getLogger("paramiko")
    handlers, levels = list(root.handlers), (root.level, paramiko.level)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(levels[0])
    paramiko.setLevel(levels[1])


def test_the_service_runs_the_agent_loop_and_stops_on_svcstop(scm, tmp_path, root_logger):
    config = _config(tmp_path / "Estate")
    enrol.ensure_key(config.parent / "agent_key")
    instance = winservice.service_class(config)(("EstateAgent",))
    # The C host calls SvcRun on a thread of its own, not Python's main thread.
    host = threading.Thread(target=instance.SvcRun, daemon=True)
    host.start()
    status = config.parent / "status.json"

    def running() -> dict | None:
        assert host.is_alive(), "the service ended before its agent loop ran"
        try:
            state = json.loads(status.read_text())
        except (OSError, ValueError):
            return None
        return state if state.get("running") else None

    state = wait_for(running, timeout=60, what="the agent loop to write its status")
    assert state["pid"] == os.getpid() and state["agent_id"] == AGENT_ID
    assert host.is_alive()
    instance.SvcStop()
    host.join(timeout=60)
    assert not host.is_alive(), "SvcStop did not stop the agent loop"
    assert json.loads(status.read_text())["running"] is False
    assert ("ReportServiceStatus", (0x3,), {"waitHint": 60000}) in scm.calls
    events = [args for args, _ in scm.calls.named("LogMsg")]
    assert events == [(0x4, 0x40000004, ("EstateAgent", "")),
                      (0x4, 0x40000006, ("EstateAgent", ""))]
    infos = [args[0] for args, _ in scm.calls.named("LogInfoMsg")]
    assert f"agent {AGENT_ID} reporting to 127.0.0.1:1 every 3600 s" in infos
    # The hub is not there: the agent's warning about it goes to the event log as a warning.
    assert any("cannot reach the hub at 127.0.0.1:1" in args[0]
               for args, _ in scm.calls.named("LogWarningMsg"))


def test_a_stop_before_the_agent_exists_stops_it_at_once(scm, tmp_path, root_logger):
    config = _config(tmp_path)
    enrol.ensure_key(config.parent / "agent_key")
    instance = winservice.service_class(config)(("EstateAgent",))
    instance.SvcStop()
    host = threading.Thread(target=instance.SvcRun, daemon=True)
    host.start()
    host.join(timeout=60)
    assert not host.is_alive()
    assert json.loads((tmp_path / "status.json").read_text())["running"] is False


def test_a_config_the_agent_cannot_use_is_logged_and_fails_the_service(scm, tmp_path,
                                                                       root_logger):
    """Raised on: Windows records the failure and the recovery actions restart it."""
    instance = winservice.service_class(tmp_path / "agent.toml")(("EstateAgent",))
    with pytest.raises(ConfigError):
        instance.SvcRun()
    [(args, _)] = scm.calls.named("LogErrorMsg")
    assert args[0].startswith(f"EstateAgent cannot start: {tmp_path / 'agent.toml'}: file "
                              f"not found")


def test_log_levels_become_event_types(scm, monkeypatch):
    logger = logging.getLogger("estate.test_winservice")
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    handler = winservice.EventLogHandler()
    logger.addHandler(handler)
    try:
        logger.error("e %s", 1)
        logger.warning("w")
        logger.info("i")
    finally:
        logger.removeHandler(handler)
    assert [(name, args) for name, args, _ in scm.calls] == [
        ("LogErrorMsg", ("e 1",)), ("LogWarningMsg", ("w",)), ("LogInfoMsg", ("i",))]


def test_the_host_process_hands_the_class_to_the_service_manager(scm, tmp_path, capsys):
    config = tmp_path / "agent.toml"
    assert winservice.main(["--config", str(config)]) == 0
    assert [name for name, _, _ in scm.calls] == ["Initialize", "PrepareToHostSingle",
                                                  "StartServiceCtrlDispatcher"]
    [((cls,), _)] = scm.calls.named("PrepareToHostSingle")
    assert cls._svc_name_ == "EstateAgent"
    assert issubclass(cls, sys.modules["win32serviceutil"].ServiceFramework)

    scm.fail["StartServiceCtrlDispatcher"] = WinError(
        1063, "StartServiceCtrlDispatcher", "The service process could not connect.")
    assert winservice.main(["--config", str(config)]) == 2
    assert "sc.exe start EstateAgent" in capsys.readouterr().err


# --- the key: SYSTEM and Administrators only -------------------------------------------------

class Sid:
    def __init__(self, text: str) -> None:
        self.text = text


class Acl:
    """win32security.ACL: ACEs as GetAce returns them, ((type, flags), mask, sid)."""

    def __init__(self, aces: list | None = None) -> None:
        self.aces = list(aces or [])

    def AddAccessAllowedAce(self, revision: int, mask: int, sid: Sid) -> None:
        assert revision == 2
        self.aces.append(((0x0, 0x0), mask, sid))

    def GetAceCount(self) -> int:
        return len(self.aces)

    def GetAce(self, index: int) -> tuple:
        return self.aces[index]


FILE_ALL_ACCESS, FILE_GENERIC_READ = 0x1F01FF, 0x120089
NAMES = {winacl.SYSTEM_SID: ("SYSTEM", "NT AUTHORITY"),
         winacl.ADMINISTRATORS_SID: ("Administrators", "BUILTIN"),
         USERS_SID: ("Users", "BUILTIN")}


@pytest.fixture()
def windows_acl(monkeypatch):
    """Fake win32security (a DACL per file, set and read back) and ntsecuritycon; the key's
    code told it runs on Windows. `.dacls`, `.sets`, `.elevated`, `.fail`."""
    state = types.SimpleNamespace(dacls={}, sets=[], elevated=True, fail={})

    class Descriptor:
        def __init__(self, dacl: Acl | None) -> None:
            self.dacl = dacl

        def GetSecurityDescriptorDacl(self) -> Acl | None:
            return self.dacl

    def set_info(name, kind, info, owner, group, dacl, sacl):
        if "SetNamedSecurityInfo" in state.fail:
            raise state.fail.pop("SetNamedSecurityInfo")
        state.sets.append((name, kind, info, owner, group, [(t, m, s.text) for t, m, s
                                                            in dacl.aces], sacl,
                           Path(name).stat().st_size))
        state.dacls[name] = dacl

    def lookup(system, sid):
        if sid.text not in NAMES:
            raise WinError(1332, "LookupAccountSid", "No mapping.")
        name, domain = NAMES[sid.text]
        return name, domain, 1

    security = types.ModuleType("win32security")
    security.__dict__.update(
        error=WinError, ACL=Acl, ACL_REVISION=2, SE_FILE_OBJECT=1,
        DACL_SECURITY_INFORMATION=0x4, PROTECTED_DACL_SECURITY_INFORMATION=0x80000000,
        ConvertStringSidToSid=Sid, ConvertSidToStringSid=lambda sid: sid.text,
        SetNamedSecurityInfo=set_info, LookupAccountSid=lookup,
        GetNamedSecurityInfo=lambda name, kind, info: Descriptor(state.dacls.get(name)),
        CheckTokenMembership=lambda token, sid: (token is None and sid.text == "S-1-5-32-544"
                                                 and state.elevated))
    constants = types.ModuleType("ntsecuritycon")
    constants.__dict__.update(FILE_ALL_ACCESS=FILE_ALL_ACCESS, FILE_READ_DATA=0x1,
                              GENERIC_READ=0x80000000, GENERIC_ALL=0x10000000,
                              WRITE_DAC=0x40000, WRITE_OWNER=0x80000)
    monkeypatch.setitem(sys.modules, "win32security", security)
    monkeypatch.setitem(sys.modules, "ntsecuritycon", constants)
    monkeypatch.setattr(sys, "platform", "win32")
    return state


def test_the_key_is_protected_before_it_is_written_and_accepted_on_load(windows_acl, tmp_path):
    key = tmp_path / "agent_key"
    _, public = enrol.ensure_key(key)
    [(name, kind, info, owner, group, aces, sacl, size)] = windows_acl.sets
    assert (name, kind, owner, group, sacl) == (str(key), 1, None, None, None)
    assert info == 0x4 | 0x80000000, "the DACL must be protected: no inherited entries"
    assert aces == [((0, 0), FILE_ALL_ACCESS, "S-1-5-18"),
                    ((0, 0), FILE_ALL_ACCESS, "S-1-5-32-544")]
    assert size == 0, "the DACL was set after the key was written into the file"
    assert b"\r\n" not in key.read_bytes()
    assert f"{load_key(key).get_name()} {load_key(key).get_base64()}" == public
    assert enrol.ensure_key(key)[1] == public  # an existing key is checked, then used


def test_a_key_others_can_read_is_refused_naming_the_file_and_the_fix(windows_acl, tmp_path):
    key = tmp_path / "agent_key"
    enrol.ensure_key(key)
    dacl = windows_acl.dacls[str(key)]
    dacl.aces.append(((0x0, 0x10), FILE_GENERIC_READ, Sid(USERS_SID)))  # inherited by Users
    with pytest.raises(HubError) as refused:
        load_key(key)
    assert refused.value.retry is False
    assert str(refused.value) == (
        f"the agent key {key} can be read by BUILTIN\\Users (S-1-5-32-545), not only by SYSTEM "
        f"and Administrators. Fix, from an elevated prompt: icacls \"{key}\" /inheritance:r "
        f"/grant:r *S-1-5-18:F *S-1-5-32-544:F /remove *S-1-5-32-545 -- or delete the key and "
        f"enrol again")
    with pytest.raises(enrol.EnrolFailed, match="can be read by BUILTIN"):
        enrol.ensure_key(key)

    dacl.aces[-1] = ((0x0, 0x0), 0x40000, Sid("S-1-5-21-1-2-3-1001"))  # WRITE_DAC: read later
    with pytest.raises(HubError, match=r"read by S-1-5-21-1-2-3-1001, not only"):
        load_key(key)
    windows_acl.dacls[str(key)] = None  # a NULL DACL: everyone
    with pytest.raises(HubError, match="no access control list: everyone can read it"):
        load_key(key)


def test_entries_that_grant_no_read_on_the_key_are_accepted(windows_acl, tmp_path):
    key = tmp_path / "agent_key"
    enrol.ensure_key(key)
    windows_acl.dacls[str(key)].aces += [
        ((0x1, 0x0), FILE_GENERIC_READ, Sid(USERS_SID)),  # a deny entry
        ((0x0, 0x8), FILE_GENERIC_READ, Sid(USERS_SID)),  # inherit-only: not this file's
        ((0x0, 0x0), 0x100000, Sid(USERS_SID)),  # SYNCHRONIZE alone
    ]
    load_key(key)


def test_an_unelevated_enrol_creates_no_key_and_says_to_elevate(windows_acl, tmp_path):
    windows_acl.elevated = False
    key = tmp_path / "agent_key"
    with pytest.raises(enrol.EnrolFailed, match=r"SYSTEM and Administrators: run this from an "
                       r"elevated prompt"):
        enrol.ensure_key(key)
    assert not key.exists() and windows_acl.sets == []


def test_a_key_that_cannot_be_protected_is_not_left_behind(windows_acl, tmp_path):
    windows_acl.fail["SetNamedSecurityInfo"] = WinError(5, "SetNamedSecurityInfo",
                                                        "Access is denied.")
    key = tmp_path / "agent_key"
    with pytest.raises(enrol.EnrolFailed, match=f"cannot restrict the agent key {key} to "
                       f"SYSTEM and Administrators: Access is denied"):
        enrol.ensure_key(key)
    assert not key.exists()


def test_posix_keys_are_as_before_and_load_no_pywin32(tmp_path):
    key = tmp_path / "agent_key"
    enrol.ensure_key(key)
    load_key(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert "win32security" not in sys.modules
