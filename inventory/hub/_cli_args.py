"""`estate-hub`'s verbs' common options (--data, --store, --allow-open-data-dir, --json) and
the argument types more than one verb group uses; each type's error names the problem."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

# The types keep their leading underscore: argparse names a type function in its "invalid
# NAME value" message (e.g. for "²", which isdigit() accepts and int() refuses).


def verb(sub: Any, name: str, help_text: str, json_flag: bool = False) -> Any:
    """A verb's parser, with the options every verb takes (and --json if it prints rows)."""
    v = sub.add_parser(name, help=help_text, description=help_text)
    v.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="hub data folder (default: $ESTATE_HUB_DATA or the hub's default)")
    v.add_argument("--store", type=_store_url, default=None, metavar="URL",
                   help="the store: sqlite:///PATH, or postgresql://HOST/DATABASE with the "
                        "password in ~/.pgpass (default: $ESTATE_HUB_STORE, else estate.db "
                        "in the data folder)")
    v.add_argument("--allow-open-data-dir", action="store_true",
                   help="use a data folder other users can enter (mode not 0700) instead of "
                        "refusing; only when its parent keeps them out")
    if json_flag:
        v.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return v


def group(sub: Any, name: str, help_text: str) -> Any:
    """A group of verbs (`estate-hub key ...`), whose ACTION is required."""
    g = sub.add_parser(name, help=help_text, description=help_text)
    return g.add_subparsers(metavar="ACTION", required=True)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("expected seconds from 0 to 3600")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1 such as 0.5, got "
                                         f"{text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share above 0 and at most 1, got {text!r}")
    return value


def whole_number(low: int, high: int, unit: str = "a whole number") -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, the range said when it is not."""
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected {unit} from {low} to {high}, "
                                             f"got {text!r}")
        return int(text)
    return parse


_positive_int = whole_number(1, 1_000_000)


def _duration(text: str) -> timedelta:
    m = re.fullmatch(r"(\d{1,6})([mhd])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 24h or 7d, got {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    value = {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]
    if not timedelta(minutes=1) <= value <= timedelta(days=365):
        raise argparse.ArgumentTypeError("expected a duration from 1m to 365d")
    return value


def _name(text: str) -> str:
    text = text.strip()
    if not text or len(text) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise argparse.ArgumentTypeError("expected 1 to 128 printable characters")
    return text


def _date(text: str) -> Any:
    from estate.inventory.store import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-01-31 or "
                                         f"2026-01-31T12:00:00Z, got {text!r}") from None


def _operator_name(text: str) -> str:
    from estate.inventory.protocol import ENROL_USER, OPERATOR_NAME

    if not OPERATOR_NAME.match(text) or text == ENROL_USER:
        raise argparse.ArgumentTypeError(
            f"expected 1 to 32 lower-case letters, digits, '.', '_' or '-', starting with a "
            f"letter (and not 'enrol'), got {text!r}")
    return text


def _store_url(text: str) -> Any:
    from estate.inventory.store import StoreUrl, StoreUrlError

    try:
        return StoreUrl.parse(text)
    except StoreUrlError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--store: ")) from None


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"estate-hub: --listen: expected HOST:PORT, got {text!r}")
    return host, int(port)

