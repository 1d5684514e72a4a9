"""`estate-agent`: the endpoint's command line.

Heavy parts load late: `collect` and `check-config` never import paramiko.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from estate.agent import __version__
from estate.inventory.errors import EstateError
from estate.inventory.protocol import REPORT_COMMAND, ChannelExit, Exit


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return Exit.USAGE
    from estate.inventory import private_files

    # The key, spool and status are this user's alone: every file created here is 0600.
    private_files.restrict_umask()
    private_files.allow_open_dirs(getattr(args, "allow_open_data_dir", False))
    try:
        return int(args.func(args))
    except _UsageError as exc:
        print(f"estate-agent: {exc}", file=sys.stderr)
        return Exit.USAGE
    except private_files.OpenDataDir as exc:
        print(f"estate-agent: {exc}", file=sys.stderr)
        return Exit.FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `estate-agent collect | head`
        return Exit.OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="estate-agent",
        description="Estate endpoint agent: collects this machine's inventory and reports it "
                    "to the Estate hub over SSH.",
    )
    parser.add_argument("--version", action="version", version=f"estate-agent {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    collect = sub.add_parser(
        "collect", help="print one inventory report of this machine as JSON",
        description="Collect one report (schema estate.report/1), validate it and print it. "
                    "Collectors that fail or time out are listed in the report's errors.")
    _config_arg(collect)
    collect.add_argument("--pretty", action="store_true", help="indent the JSON for reading")
    collect.add_argument("--section", choices=_sections(),
                         help="print only this section of the report")
    collect.add_argument("--no-probes", action="store_true",
                         help="skip the connectivity probes (the built-in ones and those of "
                              "the config file)")
    collect.set_defaults(func=_cmd_collect)

    check = sub.add_parser(
        "check-config", help="validate a config file and exit non-zero on the first problem",
        description="Read agent.toml and report the first unknown key, wrong type or bad value.")
    _config_arg(check)
    check.set_defaults(func=_cmd_check_config)

    enrol = sub.add_parser(
        "enrol", help="register this agent with a hub using a one-time token",
        description="Create the agent's ed25519 key (next to the config), pin the hub's host "
                    "key from the token, register with the hub and write the config.")
    _config_arg(enrol)
    _open_dir_arg(enrol)
    given = enrol.add_mutually_exclusive_group(required=True)
    given.add_argument("--token", metavar="TOKEN",
                       help="token from `estate-hub token create`, or - to read it from "
                            "stdin. A token given here is visible to every local user in "
                            "`ps` while enrolment runs: prefer - or --token-file")
    given.add_argument("--token-file", type=Path, metavar="FILE",
                       help="read the token from FILE (first line)")
    enrol.add_argument("--hub", metavar="HOST:PORT",
                       help="hub address (default: the address carried in the token)")
    enrol.set_defaults(func=_cmd_enrol)

    report = sub.add_parser(
        "report", help="collect one report and send it to the hub now",
        description="Collect, validate and send one report over SSH; print the hub's answer. "
                    "Exit 0 when stored, 65 when the hub rejected the data, 75 to retry later.")
    _config_arg(report)
    report.add_argument("--no-gzip", action="store_true", help="send the report uncompressed")
    report.set_defaults(func=_cmd_report)

    run = sub.add_parser(
        "run", help="run as a service: keep reporting to the hub",
        description="Hold one SSH connection to the hub and send a report every interval "
                    "(spooled first, deleted after the hub's ack). SIGTERM stops it cleanly; "
                    "SIGHUP reloads the config.")
    _config_arg(run)
    _open_dir_arg(run)
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser(
        "status", help="show the service's hub, connection, spool depth, last ack and error")
    _config_arg(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_cmd_status)

    install = sub.add_parser(
        "install-service", help="install `estate-agent run` as this OS's service",
        description="Linux: write /etc/systemd/system/estate-agent.service (hardened: "
                    "NoNewPrivileges, ProtectSystem=strict, the config folder as its only "
                    "writable state) and print how to enable it. macOS: write the launchd "
                    "daemon /Library/LaunchDaemons/org.estate.agent.plist (started at boot, "
                    "restarted when it exits, logs in /Library/Logs/Estate) and load it with "
                    "`launchctl bootstrap system`. Windows: register and start the Windows "
                    "service EstateAgent (automatic start, restarted on failure, events in "
                    "the Windows event log). Run it as root (an elevated administrator on "
                    "Windows). Any other OS: exits 2, there is no service manager to install "
                    "into. docs/install.md says more.")
    _config_arg(install)
    install.add_argument("--print", action="store_true", dest="print_only",
                         help="print what would be installed on this OS (the unit, the plist "
                              "or the service's settings) instead of installing it")
    install.set_defaults(func=_cmd_install_service)

    uninstall = sub.add_parser(
        "uninstall-service", help="stop and remove the service install-service installed",
        description="Linux: systemctl disable --now, then remove the unit. macOS: launchctl "
                    "bootout, then remove the plist. Windows: stop the service and delete "
                    "it. The config, key, spool and logs stay where they are.")
    uninstall.set_defaults(func=_cmd_uninstall_service)
    return parser


def _sections() -> tuple[str, ...]:
    return ("system", "hardware", "network", "connectivity", "software", "security", "health",
            "errors")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", type=Path,
                   help="agent config (default: $ESTATE_AGENT_CONFIG; as root "
                        "/etc/estate/agent.toml, on macOS /Library/Application Support/"
                        "Estate/agent.toml, on Windows %%ProgramData%%\\Estate\\agent.toml; "
                        "else this user's: ~/.config/estate, ~/Library/Application Support/"
                        "Estate or %%LOCALAPPDATA%%\\Estate)")


def _open_dir_arg(p: argparse.ArgumentParser) -> None:
    from estate.inventory.private_files import OPEN_DIR_FLAG

    p.add_argument(OPEN_DIR_FLAG, action="store_true",
                   help="use the config's folder even if other users can enter it (mode not "
                        "0700) instead of refusing; only when its parent keeps them out")


class _UsageError(EstateError):
    """A problem with what the user gave (a config file): exit 2 with the message."""


def _load_config(path: Path | None, must_exist: bool):  # type: ignore[no-untyped-def]
    """The agent config, or defaults when no file is at the default place.

    Raises:
        _UsageError: the file is missing (when named) or invalid; the message says where.
    """
    from estate.agent import config

    target = path or config.default_path()
    if path is None and not must_exist and not target.exists():
        return config.AgentConfig()
    try:
        return config.load(target)
    except config.ConfigError as exc:
        raise _UsageError(str(exc)) from None


def _cmd_collect(args: argparse.Namespace) -> int:
    from estate.agent.collect import collect_report
    from estate.inventory.report import ReportError, validate

    cfg = _load_config(args.config, must_exist=args.config is not None)
    probes = None if args.no_probes else _one_shot_prober(cfg)
    kwargs = {"timeout_s": cfg.collector_timeout_s} if cfg.collector_timeout_s else {}
    report, _ = collect_report(agent_id=cfg.agent_id, probes=probes, cache_dir=_cache_dir(cfg),
                               **kwargs)
    try:
        validate(report)
    except ReportError as exc:  # a collector bug: say so rather than print a bad report
        print(f"estate-agent: collected report is invalid: {exc}", file=sys.stderr)
        return Exit.FAIL
    doc = report[args.section] if args.section else report
    text = json.dumps(doc, indent=2 if args.pretty else None, ensure_ascii=False,
                      separators=None if args.pretty else (",", ":"))
    if not text.isascii():  # package names come from files: escape what a terminal obeys
        from estate.inventory.sanitise import dumps

        text = dumps(doc, indent=2 if args.pretty else None)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return Exit.OK


def _one_shot_prober(cfg: Any) -> Any:
    """The built-in probes (no `hub`: only the service holds a connection to time) and the
    config's; the hub's policy is the service's alone."""
    from estate.agent.probes import builtin_probes, merge_probes, prober

    return prober(merge_probes(builtin_probes(cfg.hub, hub_rtt=False), cfg.probes, ()))


def _cache_dir(cfg: Any) -> Path | None:
    """The state folder beside a config file, where the service caches slow facts (pending
    updates) for a one-shot command to read; without a config file, none (the current
    folder is nobody's state folder)."""
    from estate.agent.collect._posture import one_shot

    one_shot()  # this command reads the service's cache, and starts no package query
    return cfg.state_dir() if cfg.path is not None else None


def _cmd_check_config(args: argparse.Namespace) -> int:
    from estate.agent.config import ConfigError, default_path, load

    path = args.config or default_path()
    try:
        cfg = load(path)
    except ConfigError as exc:
        print(f"estate-agent: {exc}", file=sys.stderr)
        return Exit.FAIL
    print(f"{path}: ok ({len(cfg.probes)} probes, interval {cfg.interval_s:g} s, "
          f"{'enrolled as ' + cfg.agent_id if cfg.agent_id else 'not enrolled'})")
    return Exit.OK


def _cmd_enrol(args: argparse.Namespace) -> int:
    from estate.agent.config import default_path
    from estate.agent.enrol import EnrolFailed, enrol
    from estate.inventory.sanitise import plain

    path = args.config or default_path()
    token = _read_token(args)
    try:
        result = enrol(token, args.hub, path)
    except EnrolFailed as exc:
        # The message may carry the hub's (or an impostor's) words: one plain line.
        print(f"estate-agent: enrolment failed: {plain(exc, 2000)}", file=sys.stderr)
        return Exit.FAIL
    print(f"enrolled as {plain(result['agent_id'])} ({plain(result['agency'])} / "
          f"{plain(result['site'])}); config written to {path}")
    return Exit.OK


def _read_token(args: argparse.Namespace) -> str:
    """The token from --token, stdin (--token -) or --token-file: only the first of these
    is visible to other users (in `ps`).

    Raises:
        _UsageError: the file cannot be read, or no token was given.
    """
    if args.token_file is not None:
        try:
            text = args.token_file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise _UsageError(f"--token-file: cannot read {args.token_file}: "
                              f"{exc.strerror}") from None
        source = f"--token-file {args.token_file}"
    elif args.token == "-":  # noqa: S105 - the stdin marker, not a secret
        text, source = sys.stdin.readline(4096), "stdin"
    else:
        return str(args.token)
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise _UsageError(f"no token in {source}")
    return token


def _cmd_report(args: argparse.Namespace) -> int:
    import gzip

    from estate.agent.collect import collect_report
    from estate.agent.transport import HubClient, HubError, load_key
    from estate.inventory.sanitise import dumps, plain

    cfg = _load_config(args.config, must_exist=True)
    if not (cfg.agent_id and cfg.hub and cfg.hub_key and cfg.key_file):
        print(f"estate-agent: {cfg.path}: not enrolled (run estate-agent enrol first)",
              file=sys.stderr)
        return Exit.USAGE
    probes = _one_shot_prober(cfg)
    kwargs = {"timeout_s": cfg.collector_timeout_s} if cfg.collector_timeout_s else {}
    report, _ = collect_report(agent_id=cfg.agent_id, probes=probes, cache_dir=_cache_dir(cfg),
                               **kwargs)
    body = json.dumps(report, ensure_ascii=False, separators=(",", ":")).encode()
    if not args.no_gzip:
        body = gzip.compress(body, 6)
    try:
        client = HubClient(cfg.hub, cfg.hub_key, load_key(cfg.key_file), cfg.agent_id,
                           hub_key_next=cfg.hub_key_next)
        result = client.run(REPORT_COMMAND, body)
        client.close()
    except HubError as exc:
        print(f"estate-agent: {plain(exc, 2000)}", file=sys.stderr)
        return ChannelExit.TEMPFAIL if exc.retry else Exit.FAIL
    _follow_rotation(cfg, client.presented_key, result)
    print(dumps(result.doc))  # the hub's answer: its text must not drive the terminal
    return result.exit_status


def _follow_rotation(cfg: Any, presented: str | None, result: Any) -> None:
    """Pin as a rotation of the hub's key says (agent/pins.py), as the service does."""
    from estate.agent import pins

    new = pins.after_connect(cfg, presented) or cfg
    if result.exit_status == ChannelExit.OK:
        new = pins.after_ack(new, result.doc) or new
    if new is not cfg:
        pins.saved_or_logged(new)


def _setup_logging() -> None:
    import logging
    import time

    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)sZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # our own messages say it better


def _cmd_run(args: argparse.Namespace) -> int:
    from estate.agent.config import ConfigError
    from estate.agent.service import Service

    _setup_logging()
    try:
        service = Service(_load_config(args.config, must_exist=True))
    except ConfigError as exc:
        raise _UsageError(str(exc)) from None
    return service.run()


def _cmd_status(args: argparse.Namespace) -> int:
    from estate.agent.service import read_status
    from estate.inventory.sanitise import dumps, plain

    cfg = _load_config(args.config, must_exist=True)
    state = read_status(cfg) or {}
    if args.json:
        print(dumps(state, indent=1))
        return Exit.OK if state.get("running") else Exit.FAIL
    if not state:
        print(f"agent {cfg.agent_id or '(not enrolled)'}: the service has not run with "
              f"{cfg.path}")
        return Exit.FAIL
    connection = "connected" if state.get("connected") else "not connected"
    print(f"agent       {state.get('agent_id')}")
    running = f"running (pid {state['pid']})" if state["running"] else "stopped"
    print(f"service     {running}")
    print(f"hub         {plain(state.get('hub'))} ({connection})")
    print(f"spool       {state.get('spool_reports', 0)} report(s), "
          f"{state.get('spool_bytes', 0)} bytes waiting")
    print(f"last ack    {state.get('last_ack_at') or 'never'} "
          f"({state.get('last_report_id') or '-'})")
    print(f"remote      {state.get('remote_access') or 'off'}")
    print(f"last error  {plain(state.get('last_error'), 1000) or 'none'}"
          + (f" at {state['last_error_at']}" if state.get("last_error_at") else ""))
    print(f"updated     {state.get('updated_at')}")
    return Exit.OK if state["running"] else Exit.FAIL


def _cmd_install_service(args: argparse.Namespace) -> int:
    from estate.agent.config import default_path

    service = _service_module()
    config = (args.config or default_path()).resolve()
    if args.print_only:
        text = service.service_text(config)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return Exit.OK
    return _change_service(lambda: service.install(config))


def _cmd_uninstall_service(args: argparse.Namespace) -> int:
    service = _service_module()
    return _change_service(service.uninstall)


# Each OS's service manager and the module that speaks to it, all with the same three
# functions: service_text(config), install(config), uninstall().
_SERVICE_MODULES = {"linux": "systemd", "darwin": "launchd", "win32": "winservice"}


def _service_module() -> Any:
    """The service module for this OS, imported only now: winservice needs pywin32.

    Raises:
        _UsageError: this OS has no service manager the agent knows.
    """
    import importlib

    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    name = _SERVICE_MODULES.get(platform)
    if name is None:
        raise _UsageError(f"no service manager to install into on {sys.platform} (systemd, "
                          "launchd and Windows services are supported): run `estate-agent "
                          "run` under this system's own supervisor")
    return importlib.import_module(f"estate.agent.{name}")


def _change_service(change: Callable[[], str]) -> int:
    """Install or uninstall: the module's one line, or one line saying why not."""
    try:
        print(change())
    except OSError as exc:
        who = "an administrator" if sys.platform == "win32" else "root"
        where = exc.filename or "the service"
        print(f"estate-agent: cannot write {where}: {exc.strerror or exc} (run as {who}, or "
              f"use --print)", file=sys.stderr)
        return Exit.FAIL
    except Exception as exc:  # the OS's service manager refused (launchctl, the SCM)
        print(f"estate-agent: {exc}", file=sys.stderr)
        return Exit.FAIL
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
