"""Shared fixtures: one real collection of this machine, reused by the contract tests."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def live_report() -> dict:
    from agent.collect import collect_report

    report, _ = collect_report()
    return report


@pytest.fixture()
def report(live_report: dict) -> dict:
    """A fresh deep copy of a real report, for tests that break it on purpose."""
    return copy.deepcopy(live_report)


def python() -> str:
    return sys.executable
