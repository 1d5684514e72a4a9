"""`estate-agent install-service` on Windows: the agent as a Windows service (pywin32).

The service is this Python's own python.exe running `-m estate.agent.winservice --config ...`,
which hands the agent's service class to the service control manager (servicemanager's
PrepareToHostSingle + StartServiceCtrlDispatcher), rather than pywin32's pythonservice.exe.
pythonservice.exe must find pythonXY.dll and pywintypesXY.dll on the service's PATH, which a
pip-installed pywin32 does not arrange (its post-install script copies them into System32):
services installed that way fail to start with error 1053. python.exe finds its own DLL and,
through site-packages' pywin32.pth, pywin32's, as it does for `estate-agent` itself.

`run` alone cannot be the service's command: a service process must connect to the service
control manager within 30 s, which plain `estate-agent run` never does. The class here runs the
same loop (agent/service.py `Service`) and stops it when Windows asks.

pywin32 is imported inside functions only: Linux and macOS never need it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from estate.inventory.errors import EstateError
from estate.inventory.protocol import Exit

SERVICE_NAME = "EstateAgent"
DISPLAY_NAME = "Estate inventory agent"
DESCRIPTION = ("Reports this machine's inventory to the Estate hub over SSH "
               "(estate-agent run). Settings, key and spool in the folder of its --config.")
HOST_MODULE = "estate.agent.winservice"
# Recovery: restart 5 s after a first failure, 30 s after a second, 60 s after every later
# one; a day without a failure starts the count again.
RESTART_DELAYS_MS = (5_000, 30_000, 60_000)
FAILURE_RESET_S = 24 * 3600
# How long Windows should wait for a stop: the loop notices `stop` at once, unless a
# collection is under way (the Windows collectors' timeout is 30 s).
STOP_WAIT_HINT_MS = 60_000
STOP_WAIT_S = 60

# winerror.h; named here rather than importing pywin32's winerror module for four numbers.
_ERROR_SERVICE_ALREADY_RUNNING = 1056
_ERROR_SERVICE_DOES_NOT_EXIST = 1060
_ERROR_SERVICE_NOT_ACTIVE = 1062
_ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063
_ERROR_SERVICE_EXISTS = 1073


class ServiceError(EstateError):
    """The service control manager refused; the message says what was asked and why not."""


def service_text(config: Path, executable: str | None = None) -> str:
    """What `install` registers (what `install-service --print` shows): there is no file to
    show on Windows, so the service's settings, one per line."""
    python = executable or sys.executable
    restarts = ", ".join(f"{ms // 1000} s" for ms in RESTART_DELAYS_MS)
    return (f"Windows service   {SERVICE_NAME} ({DISPLAY_NAME})\n"
            f"description       {DESCRIPTION}\n"
            f"command line      {command_line(config, python)}\n"
            f"account           LocalSystem\n"
            f"start             automatic, at boot\n"
            f"recovery          restart after {restarts} (then every "
            f"{RESTART_DELAYS_MS[-1] // 1000} s), also when it stops with an error; the "
            f"count resets after {FAILURE_RESET_S // 3600} h without a failure\n"
            f"events            Windows Logs > Application, source {SERVICE_NAME}\n")


def command_line(config: Path, python: str) -> str:
    """The service's command line. Both paths quoted: an unquoted path with spaces
    ("C:\\Program Files\\...") lets Windows try "C:\\Program.exe" first."""
    return f'"{python}" {_host_args(config)}'


def _host_args(config: Path) -> str:
    # -I (isolated): the service starts in System32, and neither that folder nor PYTHON*
    # variables may decide what the service imports; site-packages (pywin32.pth) still count.
    return f'-I -m {HOST_MODULE} --config "{config}"'


def install(config: Path) -> str:
    """Register the service (automatic start, recovery, description) and start it; an
    existing one is reconfigured and restarted.

    Raises:
        ServiceError: the config is not enrolled, a venv's interpreter, not an administrator,
            or the service manager refused.
    """
    import win32service
    import win32serviceutil

    _require_enrolled(config)
    python = _service_python()
    settings: dict[str, Any] = {
        "startType": win32service.SERVICE_AUTO_START, "exeName": python,
        "exeArgs": _host_args(config), "description": DESCRIPTION}
    try:
        try:
            # No Python class string: python.exe is told its module on the command line.
            win32serviceutil.InstallService(None, SERVICE_NAME, DISPLAY_NAME, **settings)
            done = "installed"
        except win32service.error as exc:
            if exc.winerror != _ERROR_SERVICE_EXISTS:
                raise
            win32serviceutil.ChangeServiceConfig(None, SERVICE_NAME, displayName=DISPLAY_NAME,
                                                 **settings)
            done = "updated"
        _set_recovery(win32service)
        try:
            win32serviceutil.StartService(SERVICE_NAME)
        except win32service.error as exc:
            if exc.winerror != _ERROR_SERVICE_ALREADY_RUNNING:
                raise
            # Running with its old command line: a restart makes the new one count.
            win32serviceutil.RestartService(SERVICE_NAME)
    except win32service.error as exc:
        raise ServiceError(_refusal("register", exc)) from None
    return (f"{done} and started the Windows service {SERVICE_NAME} (automatic start, "
            f"restarted on failure); events in Windows Logs > Application, source "
            f"{SERVICE_NAME}")


def uninstall() -> str:
    """Stop the service and delete it; the config, key and spool stay.

    Raises:
        ServiceError: not an administrator, or the service manager refused.
    """
    import win32service
    import win32serviceutil

    try:
        try:
            win32serviceutil.StopService(SERVICE_NAME)
            win32serviceutil.WaitForServiceStatus(SERVICE_NAME, win32service.SERVICE_STOPPED,
                                                  STOP_WAIT_S)
        except win32service.error as exc:
            if exc.winerror == _ERROR_SERVICE_DOES_NOT_EXIST:
                return f"the Windows service {SERVICE_NAME} was not installed: nothing to remove"
            if exc.winerror != _ERROR_SERVICE_NOT_ACTIVE:
                raise
        # Also removes the event log source the service registered.
        win32serviceutil.RemoveService(SERVICE_NAME)
    except win32service.error as exc:
        raise ServiceError(_refusal("remove", exc)) from None
    return f"stopped and removed the Windows service {SERVICE_NAME} (config, key and spool kept)"


def _require_enrolled(config: Path) -> None:
    """A service started without an enrolment fails at once, and again every minute.

    Raises:
        ServiceError: the config is missing, broken or not enrolled.
    """
    from estate.agent.config import ConfigError, load

    try:
        enrolled = load(config).agent_id is not None
    except ConfigError as exc:
        raise ServiceError(f"{exc} (enrol first: estate-agent enrol --config \"{config}\")") \
            from None
    if not enrolled:
        raise ServiceError(f"{config}: not enrolled (run estate-agent enrol first)")


def _set_recovery(win32service: Any) -> None:
    """Restart on failure: after a crash, and (the flag) after stopping with an error, which
    is how pywin32 ends a service whose SvcDoRun raised."""
    manager = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
    try:
        handle = win32service.OpenService(manager, SERVICE_NAME, win32service.SERVICE_ALL_ACCESS)
        try:
            win32service.ChangeServiceConfig2(
                handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS,
                {"ResetPeriod": FAILURE_RESET_S, "RebootMsg": None, "Command": None,
                 "Actions": tuple((win32service.SC_ACTION_RESTART, ms)
                                  for ms in RESTART_DELAYS_MS)})
            win32service.ChangeServiceConfig2(
                handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, True)
        finally:
            win32service.CloseServiceHandle(handle)
    finally:
        win32service.CloseServiceHandle(manager)


def _service_python() -> str:
    """The interpreter the service runs: this one, unless it is a venv's.

    Raises:
        ServiceError: a venv's python.exe is a launcher that runs the base interpreter as a
            child process, and only the process the service manager started may connect to it
            (the child fails with error 1063).
    """
    if sys.prefix != sys.base_prefix:
        raise ServiceError(
            f"{sys.executable} is a virtual environment's Python, which cannot host a Windows "
            f"service: install the agent into a Python installed for all users "
            f"(py -m pip install estate-inventory, elevated) and run its estate-agent")
    return sys.executable


def _refusal(what: str, exc: Any) -> str:
    words = f"cannot {what} the Windows service {SERVICE_NAME}: {exc.strerror}"
    if exc.winerror == 5:  # ERROR_ACCESS_DENIED
        words += " (run it from an elevated prompt: Run as administrator)"
    return words


# --- the service itself -------------------------------------------------------------------

def service_class(config: Path) -> type:
    """The pywin32 service class that runs the agent with `config`."""
    import servicemanager
    import win32service
    import win32serviceutil

    from estate.agent.config import ConfigError, load
    from estate.agent.service import Service
    from estate.inventory.private_files import OpenDataDir

    class AgentService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.stopping = threading.Event()
            self.agent: Service | None = None

        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING,
                                     waitHint=STOP_WAIT_HINT_MS)
            # `stopping` first: a stop that comes while SvcDoRun is still building the agent
            # is seen there, after `agent` is set.
            self.stopping.set()
            if self.agent is not None:
                self.agent.stop.set()

        # Shutting down: stop the same way, so the spool and status.json are closed cleanly.
        SvcShutdown = SvcStop

        def SvcDoRun(self) -> None:
            _log_to_event_log()
            servicemanager.LogMsg(servicemanager.EVENTLOG_INFORMATION_TYPE,
                                  servicemanager.PYS_SERVICE_STARTED, (self._svc_name_, ""))
            try:
                agent = Service(load(config))
            except (ConfigError, OpenDataDir) as exc:
                # Raised on, so Windows records a failure and the recovery actions retry.
                servicemanager.LogErrorMsg(f"{SERVICE_NAME} cannot start: {exc}")
                raise
            self.agent = agent
            if self.stopping.is_set():
                agent.stop.set()
            agent.run()
            servicemanager.LogMsg(servicemanager.EVENTLOG_INFORMATION_TYPE,
                                  servicemanager.PYS_SERVICE_STOPPED, (self._svc_name_, ""))

    return AgentService


class EventLogHandler(logging.Handler):
    """The agent's log lines as Application events (source SERVICE_NAME): a service has no
    stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        import servicemanager

        try:
            text = self.format(record)
            if record.levelno >= logging.ERROR:
                servicemanager.LogErrorMsg(text)
            elif record.levelno >= logging.WARNING:
                servicemanager.LogWarningMsg(text)
            else:
                servicemanager.LogInfoMsg(text)
        except Exception:  # a full event log must not stop the agent
            self.handleError(record)


def _log_to_event_log() -> None:
    """What `estate-agent run` logs to stderr, as events (the event has its own time)."""
    root = logging.getLogger()
    if not any(isinstance(h, EventLogHandler) for h in root.handlers):
        root.addHandler(EventLogHandler())
    root.setLevel(logging.INFO)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # our own messages say it better


def main(argv: list[str] | None = None) -> int:
    """The service's process, as the service manager starts it (never by hand)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {HOST_MODULE}",
        description="The Windows service's process: started by Windows, never by hand. "
                    "`estate-agent install-service` registers it; `estate-agent run` runs the "
                    "agent in the foreground.")
    parser.add_argument("--config", type=Path, required=True, metavar="FILE")
    args = parser.parse_args(argv)

    import servicemanager
    import win32service

    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(service_class(args.config))
    try:
        servicemanager.StartServiceCtrlDispatcher()  # returns when the service has stopped
    except win32service.error as exc:
        if exc.winerror != _ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
            raise
        print(f"{parser.prog}: this is the Windows service's process, started by Windows: "
              f"start it with `sc.exe start {SERVICE_NAME}`, or run the agent in the "
              f"foreground with `estate-agent run`", file=sys.stderr)
        return Exit.USAGE
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
