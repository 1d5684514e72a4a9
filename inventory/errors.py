"""Estate's one error root. Standard library only.

`EstateError` is what every error Estate raises on purpose derives from, so a caller can tell
"Estate refused this" from a bug. `CodedError` is the shape every refusal on the wire takes: a
`code` that is stable for programs (docs/protocol.md lists them) and a `message` for people.
"""

from __future__ import annotations

__all__ = ["CodedError", "EstateError", "SchemaTooNew"]


class EstateError(Exception):
    """An error Estate raises on purpose; its message says what to do."""


class CodedError(EstateError):
    """A refusal with a stable `code` for clients and a `message` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class SchemaTooNew(EstateError):
    """A database written by a newer Estate than this one: upgrade before opening it."""


class StoreUrlError(EstateError, ValueError):
    """A `--store` URL that cannot be used; the message says why, naming the option."""


class StoreUnavailable(EstateError):
    """The store could not be opened: the server is down, the login was refused, the
    database is missing. The message is one line for the administrator."""


class StoreCopyRefused(EstateError):
    """`estate-hub store copy` will not copy, or could not finish (what it copied is kept);
    the message is one line that says why and what to do."""
