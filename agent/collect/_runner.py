"""Runs collectors concurrently, each under a time limit, turning failures into errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Collector = Callable[[list[str]], Any]
"""A collector takes a list to append partial-failure reasons to, and returns its value."""


class Outcome:
    """What one collector produced: its value (None when it failed) and its problems.

    Not a dataclass: `dataclasses` imports `inspect`, about a tenth of the import time of a
    one-shot `estate-agent collect` (tests/test_cli.py keeps it out).
    """

    __slots__ = ("done", "name", "problems", "value")

    def __init__(self, name: str, value: Any = None, problems: list[str] | None = None,
                 done: bool = False) -> None:
        self.name, self.value, self.done = name, value, done
        self.problems: list[str] = [] if problems is None else problems

    def __repr__(self) -> str:
        return (f"Outcome(name={self.name!r}, value={self.value!r}, "
                f"problems={self.problems!r}, done={self.done!r})")


def call_with_timeout(fn: Callable[[], Any], timeout_s: float) -> tuple[bool, Any]:
    """Run `fn` in a daemon thread and wait at most `timeout_s`.

    A thread stuck in the kernel (a hung NFS mount) cannot be killed; being a daemon it is
    abandoned and never blocks the process from exiting.

    Returns:
        (finished, result). An exception from `fn` is re-raised here.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return False, None
    if "error" in box:
        raise box["error"]
    return True, box.get("result")


def run_collectors(collectors: dict[str, Collector], timeout_s: float) -> dict[str, Outcome]:
    """Run every collector at once; give them all `timeout_s` from the start.

    Returns:
        One Outcome per collector. A collector that raised or ran out of time has value None
        and a problem that says why; the others are complete.
    """
    outcomes = {name: Outcome(name) for name in collectors}
    threads = []
    for name, fn in collectors.items():
        t = threading.Thread(target=_run_one, args=(fn, outcomes[name]), daemon=True,
                             name=f"collect-{name}")
        t.start()
        threads.append((name, t))
    deadline = time.monotonic() + timeout_s
    for name, t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        outcome = outcomes[name]
        if not outcome.done:
            # Replace, don't mutate: the abandoned thread may still write to the old one.
            outcomes[name] = Outcome(name, problems=[f"timed out after {timeout_s:g} s"])
    return outcomes


def _run_one(fn: Collector, outcome: Outcome) -> None:
    problems: list[str] = []
    try:
        value = fn(problems)
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
        value = None
    outcome.value, outcome.problems, outcome.done = value, problems, True
