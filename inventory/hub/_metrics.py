"""The hub's Prometheus metrics (`estate-hub serve --metrics HOST:PORT`): every metric it
keeps, the small functions the rest of the hub calls to move them, and their HTTP endpoint.

Off by default, and then each function is one test of a module global: prometheus-client is
imported only by `serve()`, so a hub without --metrics (the console's embedded hub) neither
needs nor loads it. Children of labelled metrics are made once, when the endpoint starts, so
moving one costs an increment or an observation, never an allocation per report.
Metric names and what they count: docs/configuration.md "Metrics".
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from estate.inventory.protocol import (
    CONNECTION_REFUSAL_CODES,
    ERROR_CODES,
    INPUT_REFUSAL_CODES,
    REMOTE_REFUSAL_CODES,
)

log = logging.getLogger("estate.hub")

ROLES = ("agent", "operator")  # connections counted; `enrol` ones last one command
# Reports per transaction: the writer's MAX_BATCH is 256.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Commit and ack times: a millisecond (SQLite, idle) to tens of seconds (a stalled store).
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
# The endpoint has no authentication: each connection costs a thread and a descriptor, so
# their number is capped (past it one is closed as it is accepted) and a client silent this
# long is cut off. Idle sockets then cost scrapes at worst, never the hub's threads or files.
CONNECTIONS = 8
REQUEST_TIMEOUT_S = 10.0


class _Live:
    """The metrics of a hub that serves them; made once, by `serve()`."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        # The hub's own registry, not the library's global one: no process metrics it did
        # not ask for, and a second hub in one process (tests) starts from zero.
        self.registry = registry = CollectorRegistry()
        connections = Gauge("estate_hub_connections", "Logged-in connections, by role.",
                            ["role"], registry=registry)
        self.connections = {role: connections.labels(role) for role in ROLES}
        self.reports_received = Counter(
            "estate_hub_reports_received", "Report bodies received from agents.",
            registry=registry)
        self.reports_stored = Counter(
            "estate_hub_reports_stored", "Reports stored (acknowledged as new).",
            registry=registry)
        self.reports_duplicate = Counter(
            "estate_hub_reports_duplicate",
            "Reports the store already held (acknowledged as duplicates).", registry=registry)
        self._reports_refused = Counter(
            "estate_hub_reports_refused", "Reports refused, by error code.", ["code"],
            registry=registry)
        self.reports_refused = {code: self._reports_refused.labels(code)
                                for code in ERROR_CODES}
        self._refusals = Counter(
            "estate_hub_refusals",
            "Connections, channels, commands and remote sessions refused, by code.", ["code"],
            registry=registry)
        codes = (set(ERROR_CODES) | CONNECTION_REFUSAL_CODES | INPUT_REFUSAL_CODES
                 | REMOTE_REFUSAL_CODES)
        self.refusals = {code: self._refusals.labels(code) for code in sorted(codes)}
        self.batch_size = Histogram(
            "estate_hub_batch_size", "Reports per store transaction (the single writer).",
            buckets=BATCH_BUCKETS, registry=registry)
        self.commit_seconds = Histogram(
            "estate_hub_commit_seconds", "Time to store one batch of reports.",
            buckets=SECONDS_BUCKETS, registry=registry)
        self.ack_seconds = Histogram(
            "estate_hub_ack_seconds",
            "From a report's last byte received to its acknowledgement (stored or duplicate).",
            buckets=SECONDS_BUCKETS, registry=registry)
        # Read when scraped, from the hub's own records: nothing to move as they change.
        self.watchers = Gauge("estate_hub_watchers", "Open watch channels.", registry=registry)
        self.remote_sessions = Gauge("estate_hub_remote_sessions", "Live remote sessions.",
                                     registry=registry)

    def refused(self, counters: dict[str, Any], family: Any, code: str) -> None:
        counter = counters.get(code)
        if counter is None:  # a code no set lists (tests/test_architecture.py forbids it)
            counter = counters[code] = family.labels(code)
        counter.inc()


_live: _Live | None = None


def serve(host: str, port: int) -> Any:
    """Start the endpoint (a daemon thread); returns the server (`stop()` it).

    Raises:
        OSError: the address cannot be bound.
    """
    global _live
    live = _Live()
    server = _http_server(host, port, live.registry)
    _live = live
    if not is_loopback(host):
        log.warning("metrics served on %s:%d to anyone who can reach it: the endpoint has no "
                    "authentication (bind it to 127.0.0.1, or firewall it)", host, port)
    return server


def _http_server(host: str, port: int, registry: Any) -> Any:
    """prometheus-client's `start_http_server`, with `CONNECTIONS` and `REQUEST_TIMEOUT_S`:
    its own starts a thread per connection and reads it without a timeout."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    from prometheus_client import make_wsgi_app

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]

    class Handler(WSGIRequestHandler):
        timeout = REQUEST_TIMEOUT_S  # StreamRequestHandler sets it on the socket

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape is no news

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True
        slots = threading.BoundedSemaphore(CONNECTIONS)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    server = Server((str(address[0]), int(address[1])), Handler)
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def stop(server: Any) -> None:
    global _live
    server.shutdown()
    server.server_close()
    _live = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def bound_port(server: Any) -> int:
    return int(server.server_address[1])


def track(watchers: Callable[[], int], remote_sessions: Callable[[], int]) -> None:
    """Read these when scraped: the hub's open watchers and live remote sessions. Each is a
    len() of a set or dict the event loop owns, which the GIL makes safe to read here."""
    if _live is not None:
        _live.watchers.set_function(watchers)
        _live.remote_sessions.set_function(remote_sessions)


# --- what the rest of the hub calls -------------------------------------------------------

def connection_opened(role: str | None) -> None:
    if _live is not None and role in _live.connections:
        _live.connections[role].inc()


def connection_closed(role: str | None) -> None:
    if _live is not None and role in _live.connections:
        _live.connections[role].dec()


def report_received() -> float:
    """Count a report body; returns when (for `report_acked`)."""
    if _live is not None:
        _live.reports_received.inc()
    return time.perf_counter()


def report_acked(status: str, received_at: float) -> None:
    if _live is not None:
        (_live.reports_stored if status == "stored" else _live.reports_duplicate).inc()
        _live.ack_seconds.observe(time.perf_counter() - received_at)


def report_refused(code: str) -> None:
    if _live is not None:
        _live.refused(_live.reports_refused, _live._reports_refused, code)


def refused(code: str) -> None:
    """Anything refused with a code: at the door, a channel, a command, a remote session."""
    if _live is not None:
        _live.refused(_live.refusals, _live._refusals, code)


def batch_committed(size: int, seconds: float) -> None:
    if _live is not None:
        _live.batch_size.observe(size)
        _live.commit_seconds.observe(seconds)
