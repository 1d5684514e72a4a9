"""An admin's TOML file (a compliance policy, alert rules, a probe policy): read with a size
bound and parsed, each way that can fail told as one problem, which the caller reports under
the file's name beside the problems its own checks find."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class TomlFileProblem(ValueError):
    """The file cannot be read, is too large, or is not UTF-8 TOML: the message says which,
    without the file's name."""


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, one more than `max_bytes` at most (`parse_toml` then refuses it)."""
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)
    except OSError as exc:
        raise TomlFileProblem(f"cannot read ({exc.strerror})") from None


def parse_toml(data: bytes, max_bytes: int) -> dict[str, Any]:
    """The document a file's bytes hold."""
    if len(data) > max_bytes:
        raise TomlFileProblem(f"over {max_bytes} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TomlFileProblem(f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileProblem(f"not valid TOML ({exc})") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise TomlFileProblem("not valid TOML (nested too deeply)") from None
