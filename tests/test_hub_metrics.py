"""`estate-hub serve --metrics`: a real hub's Prometheus endpoint, scraped and parsed."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import PY, Agent, HubProcess, make_report, run, wait_for


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the endpoint serves: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture()
def metrics_hub(tmp_path):
    hub = HubProcess(tmp_path / "hub", ("--metrics", "127.0.0.1:0")).start()
    yield hub
    hub.kill()


def test_metrics_follow_connections_reports_and_refusals(metrics_hub, tmp_path, live_report):
    hub = metrics_hub
    assert hub.metrics_port, "the hub printed no metrics address"
    before = scrape(hub.metrics_port)
    assert before[("estate_hub_connections", (("role", "agent"),))] == 0
    assert before[("estate_hub_reports_received_total", ())] == 0
    assert before[("estate_hub_watchers", ())] == 0
    assert before[("estate_hub_remote_sessions", ())] == 0

    agent = Agent(hub, tmp_path / "agent")
    client = agent.client()  # one connection for every report: it shows in `connections`
    try:
        report = make_report(live_report, agent.agent_id)
        body = json.dumps(report).encode()
        assert client.run("estate-report v1", body).doc["status"] == "stored"
        assert client.run("estate-report v1", body).doc["status"] == "duplicate"
        refused = client.run("estate-report v1", b'{"not": "a report"}')
        assert refused.doc["code"] == "invalid_report"
        during = scrape(hub.metrics_port)
    finally:
        client.close()

    assert during[("estate_hub_connections", (("role", "agent"),))] == 1
    assert during[("estate_hub_connections", (("role", "operator"),))] == 0
    assert during[("estate_hub_reports_received_total", ())] == 3
    assert during[("estate_hub_reports_stored_total", ())] == 1
    assert during[("estate_hub_reports_duplicate_total", ())] == 1
    assert during[("estate_hub_reports_refused_total", (("code", "invalid_report"),))] == 1
    assert during[("estate_hub_refusals_total", (("code", "invalid_report"),))] == 1
    assert during[("estate_hub_reports_refused_total", (("code", "busy"),))] == 0
    # The invalid one is refused before the writer: two reports reached the store, in one
    # or two transactions, and both were acknowledged.
    batches = during[("estate_hub_batch_size_count", ())]
    assert 1 <= batches <= 2 and during[("estate_hub_batch_size_sum", ())] == 2
    assert during[("estate_hub_commit_seconds_count", ())] == batches
    assert during[("estate_hub_ack_seconds_count", ())] == 2
    assert during[("estate_hub_ack_seconds_bucket", (("le", "+Inf"),))] == 2

    # The connection closed: the gauge comes back down.
    wait_for(lambda: scrape(hub.metrics_port)[("estate_hub_connections",
                                                (("role", "agent"),))] == 0,
             what="the agent's connection to leave the gauge")


@pytest.mark.parametrize("value", ["nonsense", "127.0.0.1", ":9464", "127.0.0.1:99999",
                                   "127.0.0.1:port"])
def test_a_bad_metrics_address_is_a_usage_error_naming_the_flag(tmp_path, value):
    done = run("-m", "estate.inventory.hub.cli", "serve", "--data", str(tmp_path / "hub"),
               "--listen", "127.0.0.1:0", "--metrics", value, check=False, timeout=60)
    assert done.returncode == 2
    assert "--metrics" in done.stderr and "HOST:PORT" in done.stderr


def test_a_metrics_port_in_use_stops_the_hub_naming_the_flag(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run("-m", "estate.inventory.hub.cli", "serve", "--data", str(tmp_path / "hub"),
                   "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}", check=False,
                   timeout=60)
    assert done.returncode == 1
    assert f"--metrics: cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_non_loopback_metrics_address_is_warned_about(caplog):
    from estate.inventory.hub import _metrics

    assert _metrics.is_loopback("127.0.0.1") and _metrics.is_loopback("::1")
    assert _metrics.is_loopback("localhost")
    assert not _metrics.is_loopback("0.0.0.0") and not _metrics.is_loopback("metrics.example")
    with caplog.at_level(logging.WARNING, "estate.hub"):
        server = _metrics.serve("127.0.0.1", 0)
        _metrics.stop(server)
        assert not caplog.records
        server = _metrics.serve("0.0.0.0", 0)  # a non-loopback address, the case under test
        _metrics.stop(server)
    assert "no authentication" in caplog.text


def test_metrics_are_off_and_not_imported_by_default():
    """The console's embedded hub has no prometheus-client: a hub without --metrics must not
    import it."""
    code = ("import sys; from estate.inventory.hub import _hub, _metrics; "
            "_metrics.report_refused('busy'); _metrics.connection_opened('agent'); "
            "assert 'prometheus_client' not in sys.modules, 'imported'")
    subprocess.run([PY, "-c", code], check=True, timeout=60)
