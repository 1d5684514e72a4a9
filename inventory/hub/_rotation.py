"""Rotating the hub's host key: the next and the previous key, kept beside the host key in the
data folder, and what agents are told and tokens name while a rotation is under way.

A rotation has three steps, each run on every hub of the estate (docs/configuration.md,
"Rotating the hub key"):

1. `key rotate --new FILE` writes the next key as `host_key_ed25519.next`. A running hub
   notices it within `RECHECK_S` and names its fingerprint in every report ack
   (`hub_key_next`); agents pin it beside the current one. Tokens name both keys.
2. `key activate` makes the next key the host key (the old one kept as
   `host_key_ed25519.previous`); the hub presents it from its next start. Agents that pinned
   it keep reporting and drop the old key; tokens still name both, for hubs not yet restarted.
3. `key rotate --finish` deletes the previous key: tokens name the new key alone.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from estate.inventory.errors import EstateError
from estate.inventory.hub._keys import (
    HOST_KEY_FILE,
    fingerprint,
    read_host_key,
    write_new_private_key,
)
from estate.inventory.protocol import Exit

log = logging.getLogger("estate.hub")

NEXT_KEY_FILE = HOST_KEY_FILE + ".next"
PREVIOUS_KEY_FILE = HOST_KEY_FILE + ".previous"
# How often a running hub looks for a next key (one stat): an admin's `key rotate` reaches
# the agents at their next report after this.
RECHECK_S = 5.0


class RotationRefused(EstateError):
    """A rotation step that cannot be taken now; `exit_status` is the CLI's exit status."""

    def __init__(self, message: str, exit_status: int = Exit.FAIL) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass(frozen=True)
class KeyState:
    """The fingerprints of a data folder's host key and of the keys of a rotation."""

    current: str
    next: str | None = None  # `key rotate --new`, not activated yet
    previous: str | None = None  # activated, not finished yet

    @property
    def phase(self) -> str:
        if self.next:
            return "announcing"
        return "switched" if self.previous else "none"

    def token_fingerprints(self) -> tuple[str, ...]:
        """What a new token names: the key being retired first, the key rotated to second,
        so a token enrols against a hub presenting either."""
        if self.next:
            return self.current, self.next
        if self.previous:
            return self.previous, self.current
        return (self.current,)


def read_state(data_dir: Path) -> KeyState:
    """The data folder's keys.

    Raises:
        RotationRefused: no host key (no hub has run here), or a key file is unusable.
    """
    path = data_dir / HOST_KEY_FILE
    if not path.exists():
        raise RotationRefused(f"no host key in {data_dir}: this is no hub yet (start "
                              f"`estate-hub serve --data {data_dir}` once, or pass --data)")
    return KeyState(_fingerprint_of(path), _optional(data_dir / NEXT_KEY_FILE),
                    _optional(data_dir / PREVIOUS_KEY_FILE))


def set_next(data_dir: Path, new_file: Path, replace: bool) -> tuple[KeyState, KeyState]:
    """`key rotate --new FILE`: make FILE's key the next one.

    Returns:
        (the state before, the state after); equal when FILE already is the next key.

    Raises:
        RotationRefused: FILE is not an unencrypted ed25519 private key, is the current or
            the previous key (exit 2); a rotation is half done, or another next key is
            recorded and not `replace` (exit 1).
    """
    try:
        key = read_host_key(new_file)
    except ValueError as exc:
        raise RotationRefused(str(exc), Exit.USAGE) from None
    before = read_state(data_dir)
    new = fingerprint(key)
    if new == before.current:
        raise RotationRefused(f"{new_file} holds this hub's current host key ({new}); the "
                              f"next key must be a new one", Exit.USAGE)
    if before.previous:
        raise RotationRefused(
            f"the last rotation is not finished: the hub switched to {before.current} and "
            f"still names {before.previous} in tokens. Once every hub presents the new key, "
            f"run `estate-hub key rotate --finish`, then rotate again",
            Exit.USAGE if new == before.previous else Exit.FAIL)
    if before.next == new:
        return before, before
    if before.next and not replace:
        raise RotationRefused(
            f"{before.next} is already the next key (agents may have pinned it); pass "
            f"--replace to announce {new} instead")
    write_new_private_key(data_dir / NEXT_KEY_FILE, key, overwrite=True)
    return before, KeyState(before.current, new)


def activate(data_dir: Path) -> tuple[KeyState, KeyState]:
    """`key activate`: the next key becomes the host key, the current one the previous.

    Crash-safe in this order: the previous key is written before the next one replaces the
    host key (one rename), so a crash leaves either the old host key with its copy, which
    running `activate` again finishes, or the new host key; never no host key (a hub would
    make a new one at its next start).

    Raises:
        RotationRefused: no next key, or it is unusable.
    """
    before = read_state(data_dir)
    if not before.next:
        raise RotationRefused("no next key to activate: run `estate-hub key rotate --new "
                              "FILE` first" + (f" (the hub already switched to "
                                               f"{before.current})" if before.previous else ""))
    if before.previous and before.previous != before.current:
        raise RotationRefused(f"the last rotation is not finished ({before.previous} is "
                              f"still kept): run `estate-hub key rotate --finish` first")
    current = read_host_key(data_dir / HOST_KEY_FILE)
    write_new_private_key(data_dir / PREVIOUS_KEY_FILE, current, overwrite=True)
    os.replace(data_dir / NEXT_KEY_FILE, data_dir / HOST_KEY_FILE)
    return before, KeyState(before.next, previous=before.current)


def finish(data_dir: Path) -> tuple[KeyState, KeyState]:
    """`key rotate --finish`: forget the previous key; tokens name the new key alone.

    Raises:
        RotationRefused: no rotation to finish, or it is not activated yet.
    """
    before = read_state(data_dir)
    if before.next:
        raise RotationRefused(f"the next key {before.next} is not active yet: run "
                              f"`estate-hub key activate` first")
    if not before.previous:
        raise RotationRefused("no rotation to finish: the hub keeps no previous key")
    if before.previous == before.current:  # an activation interrupted after its first step
        raise RotationRefused("the activation did not complete: run `estate-hub key "
                              "activate` again")
    (data_dir / PREVIOUS_KEY_FILE).unlink()
    return before, KeyState(before.current)


def _optional(path: Path) -> str | None:
    return _fingerprint_of(path) if path.exists() else None


def _fingerprint_of(path: Path) -> str:
    try:
        return fingerprint(read_host_key(path))
    except ValueError as exc:
        raise RotationRefused(str(exc)) from None


class NextKeyAnnouncer:
    """The running hub's view of its next key: what each report ack tells the agent.

    Looks at the data folder at most every `RECHECK_S` (a stat; the key is read only when the
    file changed), so `key rotate` needs no restart and a report costs no file read.
    """

    def __init__(self, data_dir: Path, presented: asyncssh.SSHKey) -> None:
        self.path = data_dir / NEXT_KEY_FILE
        self.presented = fingerprint(presented)
        self.next: str | None = None
        self._seen: tuple[int, int, int] | None = None
        self._checked_at = time.monotonic()
        self._check()  # a rotation under way is in the log from the start

    def announcement(self) -> dict[str, str]:
        """{"hub_key_next": fingerprint} while a next key is recorded, else nothing (the
        ack is then what it always was)."""
        now = time.monotonic()
        if now - self._checked_at >= RECHECK_S:
            self._checked_at = now
            self._check()
        return {"hub_key_next": self.next} if self.next else {}

    def _check(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self.next:
                log.info("no next host key any more: agents are no longer told of %s",
                         self.next)
            self.next, self._seen = None, None
            return
        except OSError as exc:
            log.warning("cannot look at %s: %s", self.path, exc.strerror)
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            new: str | None = fingerprint(read_host_key(self.path))
        except ValueError as exc:
            log.warning("%s: not announced to agents", exc)
            new = None
        if new == self.presented:  # the key it presents already, copied there by hand
            new = None
        if new and new != self.next:
            log.info("announcing the next host key %s to agents (this hub presents %s)",
                     new, self.presented)
        self.next = new
