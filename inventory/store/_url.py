"""`--store` and `--export-store` URLs: which backend, where, and how to show it in a log.

- `sqlite:///PATH` (PATH absolute, `sqlite:relative/path` for a relative one): an SQLite
  file; no URL at all means `estate.db` in the hub's data folder.
- `postgresql://[user@]host[:port]/database[?param=value...]` (libpq's URL; `postgres://` too):
  a PostgreSQL database. The password comes from `PGPASSFILE` or `~/.pgpass`, never from the
  URL: a command line is readable by every local user and a URL ends up in logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from estate.inventory.errors import StoreUnavailable, StoreUrlError

__all__ = ["ENV_VAR", "StoreUnavailable", "StoreUrl", "StoreUrlError"]

ENV_VAR = "ESTATE_HUB_STORE"
# libpq's parameters that hold a secret: the login's password and the client key's passphrase.
_SECRETS = {"password", "sslpassword"}


@dataclass(frozen=True)
class StoreUrl:
    dialect: str  # "sqlite" or "postgresql"
    url: str  # as given (a PostgreSQL URL carries no password: refused at parsing)
    path: Path | None = None  # SQLite's file

    def __str__(self) -> str:
        return self.url

    @classmethod
    def parse(cls, text: str, option: str = "--store") -> StoreUrl:
        text = text.strip()
        if not text:
            raise StoreUrlError(f"{option}: empty URL (use sqlite:///PATH or "
                                f"postgresql://HOST/DATABASE)")
        scheme = text.split(":", 1)[0].lower() if ":" in text else ""
        if scheme == "sqlite":
            return cls._sqlite(text, option)
        if scheme in ("postgresql", "postgres"):
            return cls._postgresql(text, option)
        raise StoreUrlError(f"{option}: {scheme or text!r} is not a store this hub knows "
                            f"(use sqlite:///PATH or postgresql://HOST/DATABASE)")

    @classmethod
    def _sqlite(cls, text: str, option: str) -> StoreUrl:
        rest = text[len("sqlite:"):]
        if rest.startswith("//"):
            rest = rest[2:]
            if rest and not rest.startswith("/"):
                raise StoreUrlError(f"{option}: sqlite:// takes no host: write "
                                    f"sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH")
        if not rest or rest.endswith("/"):
            raise StoreUrlError(f"{option}: the SQLite URL names no file (sqlite:///PATH)")
        return cls("sqlite", text, Path(rest))

    @classmethod
    def _postgresql(cls, text: str, option: str) -> StoreUrl:
        # Not echoed in these messages: a refused URL may hold a password in a form libpq
        # would take, or quote back in its own error.
        if not text.split(":", 1)[1].startswith("//"):
            raise StoreUrlError(f"{option}: not a PostgreSQL URL: write postgresql://HOST/"
                                f"DATABASE[?PARAM=VALUE&...] (libpq's key=value form is "
                                f"not taken)")
        if any(c.isspace() or not c.isprintable() for c in text):
            raise StoreUrlError(f"{option}: the URL holds spaces or control characters "
                                f"(percent-encode them: %20)")
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError as exc:
            raise StoreUrlError(f"{option}: not a valid PostgreSQL URL: {exc}") from None
        query = dict(parse_qsl(parts.query))
        if parts.password is not None or _SECRETS & set(query):
            raise StoreUrlError(f"{option}: the URL holds a password: put it in ~/.pgpass "
                                f"(or the file PGPASSFILE names), never on a command line")
        if not parts.path.strip("/") and "dbname" not in query:
            raise StoreUrlError(f"{option}: the PostgreSQL URL names no database "
                                f"(postgresql://HOST/DATABASE)")
        if parts.fragment:
            raise StoreUrlError(f"{option}: unexpected '#{parts.fragment}' in the URL")
        return cls("postgresql", text)
