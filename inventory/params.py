"""Typed, validated parameters of a request from an operator (API calls, exports).

Every error names the parameter and the problem; unknown parameters are errors too, so a typo
is never silently ignored.
"""

from __future__ import annotations

from typing import Any

from estate.inventory.errors import CodedError


class RequestError(CodedError, ValueError):
    """A request that cannot be served; `code` is stable for clients, `message` for people.

    Still a `ValueError`, as it was before `CodedError` existed, so callers that catch that
    keep working.
    """


class Params:
    """Typed access to a request's parameters; unknown parameters are errors."""

    def __init__(self, request: dict[str, Any], op: str,
                 envelope: tuple[str, ...] = ("id", "op")) -> None:
        self.request, self.op = request, op
        self.used = set(envelope)  # keys of the request's frame, not parameters

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.request.get(key)

    def text(self, key: str, default: Any = None, max_len: int = 256, required: bool = False,
             choices: tuple[str, ...] = ()) -> Any:
        value = self._get(key)
        if value is None:
            if required:
                raise RequestError("bad_request", f"{key}: required for {self.op}")
            return default
        if not isinstance(value, str) or len(value) > max_len:
            raise RequestError("bad_request", f"{key}: expected a string of at most {max_len}")
        if not value.isascii() and not is_unicode(value):
            # JSON may escape a lone surrogate ("\ud800"); SQLite, UTF-8 answers and files
            # cannot hold one, and would raise far from the request that sent it.
            raise RequestError("bad_request", f"{key}: not valid Unicode (lone surrogate)")
        if choices and value not in choices:
            raise RequestError("bad_request", f"{key}: expected one of {', '.join(choices)}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise RequestError("bad_request",
                               f"{key}: expected a whole number from {low} to {high}")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise RequestError("bad_request", f"{key}: expected true or false")
        return value

    def done(self) -> None:
        extra = sorted(set(self.request) - self.used)
        if extra:
            raise RequestError("bad_request", f"unknown parameter {str(extra[0])[:64]!r} for "
                                          f"{self.op}")


def is_unicode(text: str) -> bool:
    """False for a string with a lone surrogate (JSON can spell one; UTF-8 cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
