"""Shared fixtures: one real collection of this machine, reused by the contract tests."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test about SQLite itself (`sqlite_only`, with the reason) skips on PostgreSQL."""
    from tests.stores import ON_POSTGRES

    marker = item.get_closest_marker("sqlite_only")
    if marker is not None and ON_POSTGRES:
        pytest.skip(f"about SQLite only: {marker.args[0] if marker.args else 'its own file'}")


@pytest.fixture(autouse=True)
def _close_test_stores():
    """The stores a test opened through tests/stores.py and left open, closed after it."""
    from tests.stores import close_stores

    yield
    close_stores()


@pytest.fixture(scope="session")
def live_report() -> dict:
    from estate.agent.collect import collect_report

    report, _ = collect_report()
    return report


@pytest.fixture()
def report(live_report: dict) -> dict:
    """A fresh deep copy of a real report, for tests that break it on purpose."""
    return copy.deepcopy(live_report)


@pytest.fixture(scope="module")
def module_hub(tmp_path_factory):
    from tests.harness import HubProcess

    # One agent of this hub reports after every test of a module, far faster than any
    # interval explains: the per-agent report rate limit is off here (tested on its own hubs).
    hub = HubProcess(tmp_path_factory.mktemp("hub") / "data", ("--report-burst", "0")).start()
    yield hub
    hub.kill()


@pytest.fixture(scope="module")
def module_agent(module_hub, tmp_path_factory):
    from tests.harness import Agent

    return Agent(module_hub, tmp_path_factory.mktemp("agent"))


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster for the session (tests/postgres.py); a test wanting a
    clean slate takes its own database with `postgres.create_database(name)`."""
    from tests.postgres import PostgresCluster, skip_or_fail_without_postgres

    skip_or_fail_without_postgres()
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture()
def hub(tmp_path):
    from tests.harness import HubProcess

    hub = HubProcess(tmp_path / "hub").start()
    yield hub
    hub.kill()
