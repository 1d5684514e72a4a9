"""Connectivity probes: TCP connect, DNS resolution and default-gateway reachability.

All probes of a report run at once, each under its own timeout, so one slow target costs its
own timeout and no more.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Any

from estate.agent.collect._runner import call_with_timeout
from estate.agent.config import ProbeConfig, parse_hostport

__all__ = ["prober", "run_probes"]


def prober(probes: tuple[ProbeConfig, ...]) -> Any:
    """What `collect_report(probes=...)` takes: None when no probe is configured."""
    if not probes:
        return None
    return lambda network: run_probes(probes, network)


def run_probes(probes: tuple[ProbeConfig, ...], network: dict[str, Any]) -> list[dict[str, Any]]:
    """Run every probe concurrently and return results in config order."""
    gateway = (network.get("default_gateway") or {}).get("address")
    results: list[dict[str, Any] | None] = [None] * len(probes)

    def one(i: int, p: ProbeConfig) -> None:
        results[i] = _probe(p, gateway)

    threads = [threading.Thread(target=one, args=(i, p), daemon=True)
               for i, p in enumerate(probes)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + max((p.timeout_s for p in probes), default=0) + 1.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [r or _result(p, p.target, False, None, "did not finish in time")
            for p, r in zip(probes, results, strict=True)]


def _probe(p: ProbeConfig, gateway: str | None) -> dict[str, Any]:
    try:
        if p.kind == "tcp":
            return _tcp(p)
        if p.kind == "dns":
            return _dns(p)
        return _gateway(p, gateway)
    except Exception as exc:
        return _result(p, p.target, False, None, f"{type(exc).__name__}: {exc}")


def _result(p: ProbeConfig, target: str | None, ok: bool, latency_ms: float | None,
            error: str | None, answers: list[str] | None = None) -> dict[str, Any]:
    return {"name": p.name, "kind": p.kind, "target": target, "ok": ok,
            "latency_ms": round(latency_ms, 2) if latency_ms is not None else None,
            "answers": answers or [], "error": error[:512] if error else None}


def _tcp(p: ProbeConfig) -> dict[str, Any]:
    host, port = parse_hostport(p.target or "")
    start = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=p.timeout_s):
            pass
    except TimeoutError:
        return _result(p, p.target, False, None, f"no answer within {p.timeout_s:g} s")
    except OSError as exc:
        return _result(p, p.target, False, None, exc.strerror or str(exc))
    return _result(p, p.target, True, (time.perf_counter() - start) * 1000, None)


def _dns(p: ProbeConfig) -> dict[str, Any]:
    name = p.target or ""
    start = time.perf_counter()
    # getaddrinfo has no timeout of its own: run it in a thread we can stop waiting for.
    try:
        finished, infos = call_with_timeout(
            lambda: socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP), p.timeout_s)
    except socket.gaierror as exc:
        return _result(p, name, False, None, exc.strerror or str(exc))
    if not finished:
        return _result(p, name, False, None, f"no answer within {p.timeout_s:g} s")
    answers = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in answers:
            answers.append(addr)
    return _result(p, name, True, (time.perf_counter() - start) * 1000, None, answers[:64])


def _gateway(p: ProbeConfig, gateway: str | None) -> dict[str, Any]:
    target = p.target or gateway
    if not target:
        return _result(p, None, False, None, "no default gateway")
    rtt = icmp_echo(target, p.timeout_s)
    if rtt is None:
        return _result(p, target, False, None, f"no echo reply within {p.timeout_s:g} s")
    return _result(p, target, True, rtt, None)


def icmp_echo(address: str, timeout_s: float) -> float | None:
    """One ICMP echo to an IPv4 address; the round trip in ms, or None without a reply.

    Linux lets unprivileged users ping through datagram ICMP sockets when
    net.ipv4.ping_group_range allows; otherwise a raw socket needs root.

    Raises:
        PermissionError: neither kind of ICMP socket is allowed here.
    """
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        raw = False
    except PermissionError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        raw = True
    ident = os.getpid() & 0xFFFF
    payload = b"estate-probe"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    packet = header[:2] + struct.pack("!H", _checksum(header + payload)) + header[4:] + payload
    with sock:
        sock.settimeout(timeout_s)
        start = time.perf_counter()
        sock.sendto(packet, (address, 0))
        deadline = start + timeout_s
        while (left := deadline - time.perf_counter()) > 0:
            sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                return None
            if raw:
                data = data[(data[0] & 0x0F) * 4:]  # raw sockets include the IP header
            if peer[0] == address and len(data) >= 8 and data[0] == 0:
                return (time.perf_counter() - start) * 1000
    return None


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF
