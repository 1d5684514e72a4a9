"""What the security-posture collectors of every OS share: the sub-sections' shapes, and the
daily cache of update facts.

Each OS module (`_posture_linux`, `_posture_windows`, `_posture_macos`, `_posture_other`)
returns the sub-sections of the report's `security` section whole, with null and a reason for
what it could not tell; these helpers keep the shapes and the reasons alike on every OS.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from estate.agent.collect._common import iso_utc

__all__ = ["CACHE_FILE", "REFRESH_S", "SECTIONS", "cached_updates", "empty", "join_reasons",
           "one_shot", "wait_for_refresh"]

SECTIONS: dict[str, tuple[str, ...]] = {
    "encryption": ("volumes", "reason"),
    "firewall": ("enabled", "product", "profiles", "reason"),
    "malware": ("product", "enabled", "realtime", "signature_age_days", "products",
                "gatekeeper", "xprotect_version", "reason"),
    "updates": ("last_success", "pending", "reboot_required", "checked_at", "reason"),
    "platform": ("firmware", "secure_boot", "tpm_present", "tpm_version", "reason"),
    "accounts": ("admins", "auto_login", "reason"),
}
"""Each sub-section of `security` and its members, as in inventory/fields.py."""

REASON_MAX = 512
CACHE_FILE = "posture-updates.json"
REFRESH_S = 86_400.0
"""Update facts are refreshed at most once a day: counting pending updates reads the package
manager's whole metadata, seconds of work that must not run on every report."""

REFRESH_WAIT_S = 3.0
"""How long a report waits for a refresh before it goes on with the facts it has; the
refresh finishes in the background and the next report reads it."""

_CACHE_VERSION = 1
_UPDATE_FACTS = ("last_success", "pending", "reboot_required", "reason")


def empty(section: str, reason: str) -> dict[str, Any]:
    """A sub-section that could tell nothing, and why."""
    out: dict[str, Any] = dict.fromkeys(SECTIONS[section])
    out["reason"] = reason[:REASON_MAX]
    return out


def join_reasons(reasons: list[str]) -> str | None:
    """One `reason` string from several, cut to the field's limit; None when there is none."""
    text = "; ".join(r for r in dict.fromkeys(reasons) if r)
    if len(text) > REASON_MAX:
        text = text[:REASON_MAX - 3] + "..."
    return text or None


# --- the updates cache ---------------------------------------------------------------------
# One refresh at a time per process; its result is kept in memory (so an agent without a
# state folder still refreshes at most daily) and in the state folder (so a restarted agent,
# or `estate-agent collect` run again, does not redo it).

_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] = {}
_running: dict[str, threading.Thread] = {}
_may_refresh = [True]


def one_shot() -> None:
    """Read cached update facts only, never start a refresh: for one-shot commands
    (`estate-agent collect`, `report`), which must neither wait for a package query nor
    leave one running behind them. The agent service refreshes the cache in its state
    folder, and a one-shot command with the same config reads it."""
    _may_refresh[0] = False


def cached_updates(cache_dir: Path | None, refresh: Callable[[], dict[str, Any]], *,
                   now: Callable[[], float] = time.time,
                   wait_s: float = REFRESH_WAIT_S) -> dict[str, Any]:
    """The `updates` sub-section from the cache, refreshed first when it is a day old.

    Args:
        cache_dir: the agent's state folder; None keeps the cache in memory only.
        refresh: reads the OS's update facts afresh: returns last_success, pending,
            reboot_required and reason (not checked_at, which is set here).
        now: the clock (tests move it).
        wait_s: how long to wait for a refresh before answering with older facts.

    Returns:
        The whole sub-section; `checked_at` says when its facts were read.
    """
    key = str(cache_dir) if cache_dir is not None else ""
    entry = _fresh(_memory.get(key), now()) or _fresh(_read_cache(cache_dir), now())
    if entry is not None:
        _memory[key] = entry
        return _section(entry)
    if not _may_refresh[0]:
        stale = _memory.get(key) or _read_cache(cache_dir)
        if stale is not None:
            return _section(stale)
        return empty("updates", "not checked yet: the agent service (estate-agent run) "
                                "checks updates daily and caches them in its state folder")
    thread = _start_refresh(key, cache_dir, refresh, now)
    thread.join(wait_s)
    entry = _fresh(_memory.get(key), now())
    if entry is not None:
        return _section(entry)
    # Still counting: older facts are better than none, and checked_at tells their age.
    stale = _memory.get(key) or _read_cache(cache_dir)
    if stale is not None:
        return _section(stale)
    return empty("updates", f"the first check of updates is still running (over "
                            f"{wait_s:g} s); the next report has it")


def _start_refresh(key: str, cache_dir: Path | None, refresh: Callable[[], dict[str, Any]],
                   now: Callable[[], float]) -> threading.Thread:
    with _lock:
        running = _running.get(key)
        if running is not None and running.is_alive():
            return running

        def work() -> None:
            checked = now()
            try:
                facts = refresh()
            except Exception as exc:  # a bug reads as unknown, and is retried tomorrow
                facts = {"reason": f"{type(exc).__name__}: {exc}"}
            entry = {"version": _CACHE_VERSION, "checked_at_epoch": checked,
                     **{k: facts.get(k) for k in _UPDATE_FACTS}}
            _memory[key] = entry
            _write_cache(cache_dir, entry)

        # A daemon (not inherited from the collector's thread by chance), so stopping the
        # service never waits for a package query.
        thread = threading.Thread(target=work, name="posture-updates-refresh", daemon=True)
        _running[key] = thread
        thread.start()
        return thread


def wait_for_refresh(timeout_s: float) -> None:
    """Let a refresh under way finish (and write the cache), for at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    for thread in list(_running.values()):
        thread.join(max(0.0, deadline - time.monotonic()))


def _fresh(entry: dict[str, Any] | None, at: float) -> dict[str, Any] | None:
    """The entry if it is less than a day old; one from the future (the clock was set back)
    is as stale as an old one."""
    if entry is None:
        return None
    age = at - entry["checked_at_epoch"]
    return entry if 0 <= age < REFRESH_S else None


def _section(entry: dict[str, Any]) -> dict[str, Any]:
    out = {k: entry.get(k) for k in SECTIONS["updates"]}
    out["checked_at"] = iso_utc(entry["checked_at_epoch"])
    return out


def _read_cache(cache_dir: Path | None) -> dict[str, Any] | None:
    """The cache file's entry, or None when it is absent, unreadable, corrupt or not ours:
    a bad cache is ignored and rebuilt, never trusted."""
    if cache_dir is None:
        return None
    try:
        # Not through a link, and never waiting on a FIFO: only a regular file is ours.
        fd = os.open(cache_dir / CACHE_FILE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, encoding="utf-8") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            doc = json.loads(f.read(65_536))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != _CACHE_VERSION:
        return None
    checked = doc.get("checked_at_epoch")
    if not isinstance(checked, (int, float)) or isinstance(checked, bool) or checked != checked:
        return None  # NaN is not a time either
    types = {"last_success": str, "pending": int, "reboot_required": bool, "reason": str}
    entry: dict[str, Any] = {"version": _CACHE_VERSION, "checked_at_epoch": float(checked)}
    for name, kind in types.items():
        value = doc.get(name)
        if value is not None and type(value) is not kind:
            return None
        entry[name] = value
    if entry["pending"] is not None and entry["pending"] < 0:
        return None
    if entry["last_success"] is not None and not _is_utc_time(entry["last_success"]):
        return None
    if entry["reason"] is not None:
        entry["reason"] = entry["reason"][:REASON_MAX]
    return entry


_CACHE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def _is_utc_time(text: str) -> bool:
    from datetime import datetime

    if len(text) != 20 or not text.endswith("Z"):
        return False
    if _CACHE_TIME.fullmatch(text):
        # The form the cache is written in, read without datetime.strptime, whose first
        # call imports _strptime (a few ms of a one-shot collection); anything else goes to
        # strptime below, so the answer is the same.
        try:
            datetime.fromisoformat(text[:19])
            return True
        except ValueError:
            pass
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


def _write_cache(cache_dir: Path | None, entry: dict[str, Any]) -> None:
    """Write the cache atomically; a folder that takes no writes only costs the next process
    a refresh."""
    if cache_dir is None:
        return
    target = cache_dir / CACHE_FILE
    tmp = target.with_name(f".{CACHE_FILE}.{os.getpid()}.tmp")
    try:
        # A new file only (a link or a file left at this name fails, and is removed below).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f)
        os.replace(tmp, target)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
