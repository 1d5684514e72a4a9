"""Connectivity probes: the built-in ones every agent runs, and the configured ones.

Built-in (no configuration): `hub`, the round trip to the hub over the agent's own SSH
connection (service only); `gateway`, an ICMP echo to the default gateway; `hub-dns`, the
resolution of the hub's name (when the hub is given by name); `link`, the link state of the
default-route interface. Configured: agent.toml's `[[probes]]` (tcp, dns, gateway) and the
hub's policy (tcp, dns, icmp).

All probes of a report run at once, each under its own timeout, so one slow target costs its
own timeout and no more: the whole set adds at most its largest timeout + 1 s.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from estate.agent.collect._runner import call_with_timeout
from estate.inventory.probe_spec import ProbeSpec, is_ip, parse_hostport

__all__ = ["BUILTIN_TIMEOUTS_S", "HubRoundTrip", "ProbeUnavailable", "builtin_probes",
           "icmp_echo", "merge_probes", "prober", "run_probes"]

# Seconds. The hub's answer to a global request comes from its event loop: a hub that takes
# longer than this is one operators should hear about (the probe fails, it does not hang).
BUILTIN_TIMEOUTS_S = {"hub": 5.0, "gateway": 2.0, "hub-dns": 2.0, "link": 1.0}
SYS_CLASS_NET = "/sys/class/net"

if sys.platform.startswith("linux"):
    ICMP_NOT_PERMITTED = "ICMP not permitted for this user (net.ipv4.ping_group_range)"
else:
    ICMP_NOT_PERMITTED = "ICMP not permitted for this user"


class ProbeUnavailable(Exception):
    """The probe cannot run here (not the target's fault): its result is ok null, and the
    message says why."""


# Measures the round trip to the hub in ms, None without an answer in time; raises
# ProbeUnavailable (no connection yet) or OSError.
HubRoundTrip = Callable[[float], "float | None"]


def builtin_probes(hub: str | None, *, hub_rtt: bool) -> tuple[ProbeSpec, ...]:
    """The probes every agent runs with no configuration, in the order reports list them.

    Args:
        hub: the hub's HOST:PORT from agent.toml; None when not enrolled (no hub, no hub-dns).
        hub_rtt: whether a connection to time exists (the service, not `collect`).
    """
    host = None
    if hub:
        try:
            host = parse_hostport(hub)[0]
        except ValueError:
            host = None
    specs = []
    if hub and hub_rtt:
        specs.append(_builtin("hub", "hub", hub))
    specs.append(_builtin("gateway", "gateway", None))
    if host is not None and not is_ip(host):
        specs.append(_builtin("hub-dns", "dns", host))
    specs.append(_builtin("link", "link", None))
    return tuple(specs)


def _builtin(name: str, kind: str, target: str | None) -> ProbeSpec:
    return ProbeSpec(name, kind, target, BUILTIN_TIMEOUTS_S[name], None, "builtin")


def merge_probes(builtin: Iterable[ProbeSpec], local: Iterable[ProbeSpec],
                 hub: Iterable[ProbeSpec]) -> tuple[ProbeSpec, ...]:
    """Built-in, then local, then hub probes, one per name: a local probe replaces a
    built-in or hub probe of the same name (the endpoint owner's config has the last word)."""
    local = tuple(local)
    taken = {p.name for p in local}
    first = tuple(p for p in builtin if p.name not in taken)
    taken.update(p.name for p in first)
    return first + local + tuple(p for p in hub if p.name not in taken)


def prober(probes: tuple[ProbeSpec, ...], hub_round_trip: HubRoundTrip | None = None) -> Any:
    """What `collect_report(probes=...)` takes: None when there is no probe to run."""
    if not probes:
        return None
    return lambda network: run_probes(probes, network, hub_round_trip)


def run_probes(probes: tuple[ProbeSpec, ...], network: dict[str, Any],
               hub_round_trip: HubRoundTrip | None = None) -> list[dict[str, Any]]:
    """Run every probe concurrently and return results in the probes' order."""
    results: list[dict[str, Any] | None] = [None] * len(probes)

    def one(i: int, p: ProbeSpec) -> None:
        results[i] = _probe(p, network, hub_round_trip)

    threads = [threading.Thread(target=one, args=(i, p), daemon=True)
               for i, p in enumerate(probes)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + max((p.timeout_s for p in probes), default=0) + 1.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [r or _result(p, p.target, False, None, "did not finish in time")
            for p, r in zip(probes, results, strict=True)]


def _probe(p: ProbeSpec, network: dict[str, Any],
           hub_round_trip: HubRoundTrip | None) -> dict[str, Any]:
    try:
        if p.kind == "tcp":
            return _tcp(p)
        if p.kind == "dns":
            return _dns(p)
        if p.kind == "hub":
            return _hub(p, hub_round_trip)
        if p.kind == "link":
            return _link(p, network)
        return _icmp(p, network)  # gateway, icmp
    except ProbeUnavailable as exc:
        return _result(p, p.target, None, None, str(exc))
    except Exception as exc:
        return _result(p, p.target, False, None, f"{type(exc).__name__}: {exc}")


def _result(p: ProbeSpec, target: str | None, ok: bool | None, latency_ms: float | None,
            error: str | None, answers: list[str] | None = None) -> dict[str, Any]:
    return {"name": p.name, "kind": p.kind, "target": target, "ok": ok,
            "latency_ms": round(latency_ms, 2) if latency_ms is not None else None,
            "answers": answers or [], "error": error[:512] if error else None,
            "source": p.source}


def _tcp(p: ProbeSpec) -> dict[str, Any]:
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


def _dns(p: ProbeSpec) -> dict[str, Any]:
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


def _hub(p: ProbeSpec, hub_round_trip: HubRoundTrip | None) -> dict[str, Any]:
    if hub_round_trip is None:
        raise ProbeUnavailable("no connection to the hub to time")
    try:
        rtt = hub_round_trip(p.timeout_s)
    except ProbeUnavailable:
        raise
    except Exception as exc:  # not connected, or the connection failed: the hub's error says
        return _result(p, p.target, False, None, str(exc))
    if rtt is None:
        return _result(p, p.target, False, None, f"no answer within {p.timeout_s:g} s")
    return _result(p, p.target, True, rtt, None)


def _icmp(p: ProbeSpec, network: dict[str, Any]) -> dict[str, Any]:
    """`gateway` (the target, else the default gateway) and hub `icmp` probes (an IPv4
    address, or "gateway")."""
    route = network.get("default_gateway") or {}
    target = p.target if p.target not in (None, "gateway") else route.get("address")
    if not target:
        if p.source != "builtin":
            return _result(p, p.target, False, None, "no default gateway")
        # Nothing to probe is not a failure of the machine: some networks route without one.
        why = "the default route has no gateway address (point-to-point)" if route \
            else "no default route"
        return _result(p, None, None, None, why)
    try:
        rtt = icmp_echo(target, p.timeout_s)
    except PermissionError:  # not the network's fault: the probe cannot run here
        return _result(p, target, None, None, ICMP_NOT_PERMITTED)
    except OSError as exc:
        return _result(p, target, False, None, exc.strerror or str(exc))
    if rtt is None:
        return _result(p, target, False, None, f"no echo reply within {p.timeout_s:g} s")
    return _result(p, target, True, rtt, None)


def _link(p: ProbeSpec, network: dict[str, Any]) -> dict[str, Any]:
    """The default-route interface's state: the report's `up`, and on Linux the kernel's
    operstate and carrier (cable or radio link), where readable."""
    name = p.target or (network.get("default_gateway") or {}).get("interface")
    if not name:
        raise ProbeUnavailable("no default route")
    up = next((i.get("up") for i in network.get("interfaces") or []
               if i.get("name") == name), None)
    operstate, carrier = _sys_link(name)
    if up is False:
        return _result(p, name, False, None, "interface down")
    if carrier is False:
        return _result(p, name, False, None, "no carrier (cable unplugged or radio link lost)")
    if operstate in ("down", "lowerlayerdown", "notpresent"):
        return _result(p, name, False, None, f"link {operstate}")
    if up is None and carrier is None and operstate in (None, "unknown"):
        raise ProbeUnavailable(f"the state of {name} is not known here")
    return _result(p, name, True, None, None)


def _sys_link(name: str) -> tuple[str | None, bool | None]:
    """Linux's operstate ("up", "down", "dormant", "unknown" for virtual interfaces) and
    carrier of an interface; None for what cannot be read (other OSes, an admin-down
    interface's carrier)."""
    if not sys.platform.startswith("linux") or "/" in name or name in (".", ".."):
        return None, None
    base = os.path.join(SYS_CLASS_NET, name)
    operstate = carrier = None
    try:
        with open(os.path.join(base, "operstate"), encoding="ascii") as f:
            operstate = f.read().strip() or None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(base, "carrier"), encoding="ascii") as f:
            carrier = f.read().strip() == "1"
    except (OSError, ValueError):
        pass  # EINVAL while the interface is administratively down
    return operstate, carrier


def _icmp_socket() -> tuple[socket.socket, bool]:
    """An ICMP socket and whether it is raw (its replies carry the IP header).

    Linux lets unprivileged users ping through datagram ICMP sockets when
    net.ipv4.ping_group_range allows; otherwise a raw socket needs root (or CAP_NET_RAW).

    Raises:
        PermissionError: neither kind of ICMP socket is allowed here.
    """
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), False
    except PermissionError:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), True


def icmp_echo(address: str, timeout_s: float) -> float | None:
    """One ICMP echo to an IPv4 address; the round trip in ms, or None without a reply.

    Raises:
        PermissionError: neither kind of ICMP socket is allowed here.
    """
    sock, raw = _icmp_socket()
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
