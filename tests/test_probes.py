"""Connectivity probes against loopback targets this test creates."""

from __future__ import annotations

import socket
import time

import pytest

from estate.agent.config import ProbeConfig
from estate.agent.probes import run_probes


@pytest.fixture()
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


@pytest.fixture()
def black_hole():
    """A loopback port whose accept queue is full, so new connections get no answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(sock.getsockname())
        fillers.append(c)
    time.sleep(0.05)
    yield sock
    for c in fillers:
        c.close()
    sock.close()


def _tcp(name, addr, timeout=1.0):
    return ProbeConfig(name, "tcp", f"{addr[0]}:{addr[1]}", timeout)


def test_tcp_ok_refused_and_order(listener):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    results = run_probes((_tcp("up", listener.getsockname()),
                          _tcp("down", ("127.0.0.1", port))), {})
    assert [r["name"] for r in results] == ["up", "down"]
    assert results[0]["ok"] and results[0]["latency_ms"] >= 0 and results[0]["error"] is None
    assert not results[1]["ok"] and results[1]["latency_ms"] is None
    assert "refused" in results[1]["error"].lower()


def test_dns_resolves_localhost_and_reports_failure():
    ok, bad = run_probes((ProbeConfig("lh", "dns", "localhost", 2.0),
                          ProbeConfig("bad", "dns", "no-such-host.invalid", 2.0)), {})
    assert ok["ok"] and "127.0.0.1" in ok["answers"]
    assert not bad["ok"] and bad["error"]


def test_gateway_probe_uses_detected_gateway_or_target():
    (res,) = run_probes((ProbeConfig("gw", "gateway", None, 1.0),),
                        {"default_gateway": {"address": "127.0.0.1", "interface": "lo"}})
    assert res["target"] == "127.0.0.1"
    assert res["ok"] or "Permission" in (res["error"] or "")
    (none,) = run_probes((ProbeConfig("gw", "gateway", None, 1.0),), {})
    assert none == {"name": "gw", "kind": "gateway", "target": None, "ok": False,
                    "latency_ms": None, "answers": [], "error": "no default gateway"}


def test_slow_targets_run_concurrently(black_hole):
    """Three probes that each wait out their 1 s timeout take about 1 s together, not 3."""
    addr = black_hole.getsockname()
    start = time.monotonic()
    results = run_probes(tuple(_tcp(f"slow{i}", addr) for i in range(3)), {})
    elapsed = time.monotonic() - start
    assert [r["ok"] for r in results] == [False] * 3
    assert all("no answer within 1 s" in r["error"] for r in results)
    assert elapsed < 0.7 * 3 * 1.0, f"probes ran one after another ({elapsed:.2f} s)"
