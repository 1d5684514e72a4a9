"""`estate`: the console IT staff use, over SSH to the hub with their own key.

With no verb it runs the console. With no hub configured (no --hub, no console.toml in
the console's config folder, `_paths`) it starts the embedded default: a hub on loopback and
this machine's agent, so one command shows this machine live. The verbs (ssh, tunnel, export,
verify) are argparse subcommands whose arguments are defined when that verb runs:
`estate tunnel` starts before every remote session and must not import what `estate export`
needs.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from estate.console import _paths, _settings
from estate.console._settings import ConfigError, HubSettings
from estate.inventory.protocol import Exit

__all__ = ["main"]

# Flags of the console itself, meaningless for a verb (--hub, --key and --hub-key are also
# every verb's connection options).
CONSOLE_ONLY = ("readonly", "simulate", "data", "theme", "keymap")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        return _console(parser, args)
    for name in CONSOLE_ONLY:
        if getattr(args, name) != parser.get_default(name):
            parser.error(f"--{name}: an option of the console itself, not of `estate "
                         f"{args.verb}`")
    return int(args.run(args))


class _VerbParser(argparse.ArgumentParser):
    """A verb's parser, whose arguments are added the first time it parses or shows help: so
    `estate tunnel` never imports the export package (and asyncssh) that `estate export` needs
    for its own arguments."""

    def __init__(self, *, define: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._define = define

    def _defined(self) -> None:
        if self._define is not None:
            define, self._define = self._define, None
            define(self)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        self._defined()
        return super().parse_known_args(args, namespace)


def _ssh(parser: argparse.ArgumentParser) -> None:
    from estate.console.remote import define_ssh

    define_ssh(parser)


def _tunnel(parser: argparse.ArgumentParser) -> None:
    from estate.console.remote import define_tunnel

    define_tunnel(parser)


def _export(parser: argparse.ArgumentParser) -> None:
    from estate.console.export import define_export

    define_export(parser)


def _verify(parser: argparse.ArgumentParser) -> None:
    from estate.console.export import define_verify

    define_verify(parser)


VERBS = (
    ("ssh", _ssh, "a shell on a host through the hub, with your own OpenSSH client"),
    ("tunnel", _tunnel, "relay stdin/stdout to a host's sshd through the hub (ssh's "
                        "ProxyCommand; estate ssh sets it up)"),
    ("export", _export, "an audit export produced and signed by the hub"),
    ("verify", _verify, "check an export against its signed manifest"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="estate",
        description="Estate console: the estate's hosts live, over SSH to the hub. With no "
                    "hub configured it starts an embedded hub and this machine's agent.",
        epilog="Each verb has --help, e.g. estate ssh --help.")
    parser.add_argument("--hub", metavar="USER@HOST:PORT",
                        help="the hub and your operator name (default: console.toml, else "
                             "the embedded default)")
    parser.add_argument("--key", type=Path, metavar="FILE",
                        help="your private key (default: console.toml, else your ssh-agent "
                             "or ~/.ssh keys)")
    parser.add_argument("--hub-key", metavar="SHA256:…",
                        help="the hub's host-key fingerprint to pin (default: console.toml, "
                             "else asked on first use)")
    parser.add_argument("--readonly", action="store_true",
                        help="offer no action that changes anything")
    parser.add_argument("--simulate", type=int, default=0, metavar="N",
                        help="embedded default only: add N simulated agents")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help=f"embedded default's data folder (default "
                             f"{_for_help(_paths.data_dir_shown())})")
    parser.add_argument("--theme", default=None,
                        help="a Textual theme name, e.g. nord (default: console.toml)")
    parser.add_argument("--keymap", type=Path, metavar="FILE",
                        help=f"rebind keys (default "
                             f"{_for_help(_paths.config_file_shown('keymap.toml'))} if present; "
                             f"see docs/configuration.md)")
    verbs = parser.add_subparsers(dest="verb", metavar="[VERB]", parser_class=_VerbParser,
                                  title="verbs (with none, the console)")
    for name, define, summary in VERBS:
        verbs.add_parser(name, help=summary, define=define)
    return parser


def _for_help(text: str) -> str:
    """Text for an argparse help string, which %-formats it (%APPDATA% on Windows)."""
    return text.replace("%", "%%")


def _console(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.simulate < 0 or args.simulate > 50_000:
        parser.error("--simulate: expected 0 to 50000")
    try:
        config, settings = _settings.load(args.hub, args.key, args.hub_key)
        keymap = _keymap(args.keymap)
    except ConfigError as exc:
        print(f"estate: {_text(exc)}", file=sys.stderr)
        return Exit.USAGE
    # A closed terminal (SIGHUP) or a kill (SIGTERM) must still stop what the embedded
    # default started: turn both into SystemExit so the `finally` below runs.
    for sig in exit_signals():
        signal.signal(sig, _exit_on_signal)
    embedded = None
    if settings is None:
        from estate.console._embedded import Embedded, default_data_dir

        embedded = Embedded(args.data or default_data_dir(), args.simulate)
        try:
            embedded.start()
        except (RuntimeError, OSError) as exc:
            embedded.stop()
            print(f"estate: {_text(exc)}", file=sys.stderr)
            return Exit.FAIL
        except BaseException:  # a signal while starting: stop what did start
            embedded.stop()
            raise
        settings = HubSettings(address=embedded.address, user=embedded.user,
                               hub_key=embedded.fingerprint or None, key=embedded.key_path)
    try:
        return _run(settings, config.path, readonly=args.readonly, keymap=keymap,
                    theme=args.theme or config.theme)
    finally:
        if embedded:
            embedded.stop()


def _text(message: Any) -> str:
    """An error for the terminal, line by line through the sanitiser: it may quote a hub, an
    agent's output or a config file."""
    from estate.inventory.sanitise import plain

    return "\n".join(plain(line, 1000) for line in str(message).splitlines()[:40])


def exit_signals() -> tuple[signal.Signals, ...]:
    """The signals that end the console on this OS. Windows has no SIGHUP; there Ctrl-Break
    reaches Python as SIGBREAK (so does a closed window, as far as Windows waits for it: the
    embedded hub and agent share that console window and are ended with it anyway)."""
    names = ("SIGHUP", "SIGBREAK", "SIGTERM")
    return tuple(getattr(signal, name) for name in names if hasattr(signal, name))


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _run(settings: HubSettings, config: Path, *, readonly: bool, keymap: dict[str, str],
         theme: str | None) -> int:
    import asyncio

    from estate.console._client import HubConnection, HubUnreachable, probe_host_key

    hub = settings.pinned()
    if hub is None:
        try:
            seen = asyncio.run(probe_host_key(settings.address))
        except HubUnreachable as exc:
            print(f"estate: {_text(exc)}", file=sys.stderr)
            return Exit.FAIL
        if not sys.stdin.isatty():
            print(f"estate: the hub at {settings.address} presents {seen}; check it with "
                  f"the hub's administrator and pass --hub-key {seen}", file=sys.stderr)
            return Exit.FAIL
        answer = input(f"The hub at {settings.address} presents host key\n  {seen}\n"
                       f"Check it with the hub's administrator (estate-hub serve prints it). "
                       f"Trust it? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("estate: not connecting to an unverified hub", file=sys.stderr)
            return Exit.FAIL
        hub = settings.pin(seen)
        _remember(hub.user, hub.address, hub.hub_key, config)
    from estate.console.app import EstateApp

    app = EstateApp(HubConnection(hub.address, hub.user, hub.key, hub.hub_key),
                    readonly=readonly, keymap=keymap)
    if theme:
        app.theme = theme
    app.run()
    return Exit.OK


def _keymap(path: Path | None) -> dict[str, str]:
    from estate.console._keys import default_keymap_path, load_keymap

    if path is None:
        path = default_keymap_path()
        if not path.exists():
            return {}
    return load_keymap(path)


def _remember(user: str, address: str, hub_key: str, path: Path) -> None:
    """Pin the accepted key in console.toml, keeping what else it says."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = [ln for ln in old.splitlines(True) if not re.match(r"^\s*(hub|hub_key)\s*=", ln)]
    head = f'hub = "{user}@{address}"\nhub_key = "{hub_key}"\n'
    path.write_text(head + "".join(lines), encoding="utf-8")
    print(f"estate: pinned {hub_key} in {path}")


if __name__ == "__main__":
    sys.exit(main())
