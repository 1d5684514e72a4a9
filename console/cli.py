"""`estate`: the console IT staff use, over SSH to the hub with their own key.

With no hub configured (no --hub, no ~/.config/estate/console.toml) it starts the embedded
default: a hub on loopback and this machine's agent, so one command shows this machine live.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_HUB = re.compile(r"^(?P<user>[a-z][a-z0-9._-]{0,31})@(?P<address>\[?[^@\s]+\]?:\d{1,5})$")


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(os.environ.get("ESTATE_CONSOLE_CONFIG") or Path(base) / "estate" /
                "console.toml")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["ssh"], ["tunnel"]):
        from console import remote

        verb = remote.ssh_main if argv[0] == "ssh" else remote.tunnel_main
        return verb(argv[1:], _settings)
    if argv[:1] in (["export"], ["verify"]):
        from console import export

        return (export.export_main if argv[0] == "export" else export.verify_main)(
            argv[1:], _settings)
    parser = argparse.ArgumentParser(
        prog="estate",
        description="Estate console: the estate's hosts live, over SSH to the hub. With no "
                    "hub configured it starts an embedded hub and this machine's agent.",
        epilog="other verbs: estate ssh [USER@]HOST (a shell on a host through the hub), "
               "estate tunnel HOST (ssh's ProxyCommand), estate export --report R (audit "
               "exports), estate verify FILE (check an export); each has --help.")
    parser.add_argument("--hub", metavar="USER@HOST:PORT",
                        help="the hub and your operator name (default: console.toml, else "
                             "the embedded default)")
    parser.add_argument("--key", type=Path, metavar="FILE",
                        help="your private key (default: your ssh-agent or ~/.ssh keys)")
    parser.add_argument("--hub-key", metavar="SHA256:…",
                        help="the hub's host-key fingerprint to pin (else asked on first use)")
    parser.add_argument("--readonly", action="store_true",
                        help="offer no action that changes anything")
    parser.add_argument("--simulate", type=int, default=0, metavar="N",
                        help="embedded default only: add N simulated agents")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="embedded default's data folder (default ~/.local/share/estate)")
    parser.add_argument("--theme", default=None, help="a Textual theme name (e.g. nord)")
    parser.add_argument("--keymap", type=Path, metavar="FILE",
                        help="rebind keys (default ~/.config/estate/keymap.toml if present; "
                             "see docs/configuration.md)")
    args = parser.parse_args(argv)
    if args.simulate < 0 or args.simulate > 50_000:
        parser.error("--simulate: expected 0 to 50000")
    try:
        settings = _settings(args)
        args.keymap_overrides = _keymap(args.keymap)
    except ValueError as exc:
        print(f"estate: {_text(exc)}", file=sys.stderr)
        return EXIT_USAGE
    # A closed terminal (SIGHUP) or a kill (SIGTERM) must still stop what the embedded
    # default started: turn both into SystemExit so the `finally` below runs.
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, _exit_on_signal)
    embedded = None
    if settings is None:
        from console._embedded import Embedded, default_data_dir

        embedded = Embedded(args.data or default_data_dir(), args.simulate)
        try:
            embedded.start()
        except (RuntimeError, OSError) as exc:
            embedded.stop()
            print(f"estate: {_text(exc)}", file=sys.stderr)
            return EXIT_FAIL
        except BaseException:  # a signal while starting: stop what did start
            embedded.stop()
            raise
        settings = {"user": embedded.user, "address": embedded.address,
                    "key": embedded.key_path, "hub_key": embedded.fingerprint}
    try:
        return _run(settings, args)
    finally:
        if embedded:
            embedded.stop()


def _text(message: Any) -> str:
    """An error for the terminal, line by line through the sanitiser: it may quote a hub, an
    agent's output or a config file."""
    from inventory.sanitise import plain

    return "\n".join(plain(line, 1000) for line in str(message).splitlines()[:40])


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """Where to connect: flags, then console.toml; None means the embedded default."""
    doc: dict[str, Any] = {}
    path = config_path()
    if path.exists():
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        unknown = set(doc) - {"hub", "key", "hub_key", "theme", "ssh_args"}
        if unknown:
            raise ValueError(f"{path}: {sorted(unknown)[0]}: unknown key (expected hub, key, "
                             f"hub_key, theme, ssh_args)")
        ssh_args = doc.get("ssh_args", [])
        if not isinstance(ssh_args, list) or not all(isinstance(a, str) for a in ssh_args):
            raise ValueError(f"{path}: ssh_args: expected a list of strings, e.g. "
                             f'["-o", "ServerAliveInterval=30"]')
    hub = args.hub or doc.get("hub")
    if not hub:
        return None
    m = _HUB.match(str(hub))
    if not m:
        raise ValueError(f"hub: expected USER@HOST:PORT, got {hub!r}")
    key = args.key or (Path(doc["key"]).expanduser() if doc.get("key") else None)
    if key is not None and not key.exists():
        raise ValueError(f"key: {key} does not exist")
    if args.theme is None and isinstance(doc.get("theme"), str):
        args.theme = doc["theme"]
    return {"user": m.group("user"), "address": m.group("address"), "key": key,
            "hub_key": args.hub_key or doc.get("hub_key"), "config": path,
            "ssh_args": doc.get("ssh_args", [])}


def _run(settings: dict[str, Any], args: argparse.Namespace) -> int:
    import asyncio

    from console._client import HubConnection, HubUnreachable, probe_host_key

    if not settings.get("hub_key"):
        try:
            seen = asyncio.run(probe_host_key(settings["address"]))
        except HubUnreachable as exc:
            print(f"estate: {_text(exc)}", file=sys.stderr)
            return EXIT_FAIL
        if not sys.stdin.isatty():
            print(f"estate: the hub at {settings['address']} presents {seen}; check it with "
                  f"the hub's administrator and pass --hub-key {seen}", file=sys.stderr)
            return EXIT_FAIL
        answer = input(f"The hub at {settings['address']} presents host key\n  {seen}\n"
                       f"Check it with the hub's administrator (estate-hub serve prints it). "
                       f"Trust it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("estate: not connecting to an unverified hub", file=sys.stderr)
            return EXIT_FAIL
        settings["hub_key"] = seen
        _remember(settings)
    from console.app import EstateApp

    hub = HubConnection(settings["address"], settings["user"], settings.get("key"),
                        settings["hub_key"])
    app = EstateApp(hub, readonly=args.readonly, keymap=args.keymap_overrides)
    if args.theme:
        app.theme = args.theme
    app.run()
    return EXIT_OK


def _keymap(path: Path | None) -> dict[str, str]:
    from console._keys import default_keymap_path, load_keymap

    if path is None:
        path = default_keymap_path()
        if not path.exists():
            return {}
    return load_keymap(path)


def _remember(settings: dict[str, Any]) -> None:
    """Pin the accepted key in console.toml, keeping what else it says."""
    path: Path = settings.get("config") or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = [ln for ln in old.splitlines(True) if not re.match(r"^\s*(hub|hub_key)\s*=", ln)]
    head = (f'hub = "{settings["user"]}@{settings["address"]}"\n'
            f'hub_key = "{settings["hub_key"]}"\n')
    path.write_text(head + "".join(lines), encoding="utf-8")
    print(f"estate: pinned {settings['hub_key']} in {path}")


if __name__ == "__main__":
    sys.exit(main())
