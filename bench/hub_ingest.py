"""Benchmark: how many reports the hub ingests, and what each costs, versus a bare SSH server.

Starts a real `estate-hub serve` on loopback in a temporary folder, enrols N agents for real
(the `estate-enrol v1` token flow, one ed25519 key each), then has every agent send realistic
reports (~20 KB, package list included) one after another on its open connection for a fixed
time. Prints reports/s, hub CPU ms per report, ack latency p50/p99 and hub RSS. In the same
run, the same load against a bare asyncssh server that only reads stdin and answers "ok", so
the cost of validation and storage shows as a ratio.

Usage: python bench/hub_ingest.py [--agents 50] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh
import psutil

from estate.inventory.protocol import ENROL_COMMAND, ENROL_USER, REPORT_COMMAND

ROOT = Path(__file__).resolve().parent.parent


def report_templates(base: dict[str, Any], agent_id: str, i: int) -> tuple[bytes, bytes]:
    """Two ~20 KB report bodies for one agent (its own hostname, serial and 200 packages),
    the second with one package updated; `@@N@@` stands for the sequence number.

    Built once per agent so the generator spends its CPU on SSH, not on JSON.
    """
    from estate.agent.collect._common import package_hash

    r = copy.deepcopy(base)
    r["agent"]["id"] = agent_id
    r["report_id"] = f"{agent_id}:1:@@N@@"
    r["system"]["hostname"] = f"pc-{i:05d}"
    r["hardware"]["serial"] = f"SN{i:08d}"
    bodies = []
    for variant in (0, 1):
        pkgs = copy.deepcopy((base["software"]["packages"] or [])[:200])
        if variant and pkgs:  # now and then a package is updated, as on a real estate
            pkgs[-1]["version"] = "99.0"
        r["software"] = {"manager": "dpkg", "count": len(pkgs), "hash": package_hash(pkgs),
                         "packages": pkgs}
        bodies.append(json.dumps(r).encode())
    return bodies[0], bodies[1]


def body_for(templates: tuple[bytes, bytes], n: int) -> bytes:
    """The report as `estate-agent` sends it: gzip-compressed JSON."""
    # Every 50th report carries a package update: far more often than a real estate
    # (daily at most, so 1 in 288 at a 5-minute interval), to keep the diff path in the load.
    body = templates[1 if n % 50 == 0 else 0].replace(b"@@N@@", str(n).encode())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()
    body = re.sub(rb'"collected_at": "[^"]*"', b'"collected_at": "' + stamp + b'"', body,
                  count=1)
    return gzip.compress(body, 6)


async def enrol_agents(port: int, fingerprint: str, token: str, n: int) -> list[tuple]:
    """Enrol n agents through the real token flow; returns (agent_id, key) pairs."""
    agents = []
    for i in range(n):
        key = asyncssh.generate_private_key("ssh-ed25519")
        public = key.export_public_key("openssh").decode().strip()
        async with asyncssh.connect("127.0.0.1", port, username=ENROL_USER, client_keys=[key],
                                    known_hosts=None, agent_path=None) as conn:
            if conn.get_server_host_key().get_fingerprint("sha256") != fingerprint:
                raise SystemExit("hub key mismatch")
            res = await conn.run(ENROL_COMMAND, input=json.dumps(
                {"token": token, "public_key": public, "hostname": f"pc-{i:05d}"}),
                encoding="utf-8")
            doc = json.loads(res.stdout)
            if doc.get("status") != "enrolled":
                raise SystemExit(f"enrolment failed: {doc}")
            agents.append((doc["agent_id"], key))
    return agents


async def load(port: int, agents: list[tuple], base: dict[str, Any], seconds: float,
               expect: str) -> tuple[int, list[float]]:
    """Every agent sends reports back to back on its own connection until time is up."""
    latencies: list[float] = []
    count = [0]
    stop_at = time.monotonic() + seconds

    async def one(i: int, agent_id: str, key: asyncssh.SSHKey) -> None:
        templates = report_templates(base, agent_id, i)
        async with asyncssh.connect("127.0.0.1", port, username=agent_id, client_keys=[key],
                                    known_hosts=None, agent_path=None) as conn:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                body = body_for(templates, n)
                start = time.perf_counter()
                res = await conn.run(REPORT_COMMAND, input=body, encoding=None)
                latencies.append((time.perf_counter() - start) * 1000)
                if expect not in res.stdout.decode():
                    raise SystemExit(f"unexpected answer: {res.stdout[:200]!r}")
                count[0] += 1

    await asyncio.gather(*(one(i, a, k) for i, (a, k) in enumerate(agents)))
    return count[0], latencies


def start(argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **(env or {})})
    text = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        text += line
        if "listening on" in line or not line:
            return proc, text
    raise SystemExit("server did not start")


def measure(proc: subprocess.Popen, port: int, agents: list[tuple], base: dict[str, Any],
            seconds: float, expect: str) -> dict[str, float]:
    p = psutil.Process(proc.pid)
    cpu0 = sum(p.cpu_times()[:2])
    t0 = time.monotonic()
    count, lat = asyncio.run(load(port, agents, base, seconds, expect))
    wall = time.monotonic() - t0
    cpu = sum(p.cpu_times()[:2]) - cpu0
    lat.sort()
    return {"reports": count, "per_s": count / wall, "cpu_ms": 1000 * cpu / max(1, count),
            "p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "rss_mb": p.memory_info().rss / 2**20}


def bare_server(port_file: str) -> None:
    """A bare asyncssh server: any key, reads stdin to EOF, answers "ok"."""
    async def handle(process: asyncssh.SSHServerProcess) -> None:
        await process.stdin.read()
        process.stdout.write(b"ok\n")
        process.exit(0)

    class AnyKey(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
            return True

    async def main() -> None:
        server = await asyncssh.create_server(
            AnyKey, "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key(
                "ssh-ed25519")], process_factory=handle, encoding=None)
        print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--bare-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return
    from estate.agent.collect import collect_report

    base, _ = collect_report()
    size = len(report_templates(base, "ag-000000000000", 0)[0])
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(f"load: {args.agents} agents, each sending ~{size // 1024} KB reports (gzip, as the "
          f"agent sends them) back to back "
          f"on its open connection for {args.seconds:g} s; generator and server share the "
          f"machine")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "hub"
        # All agents enrol at once from 127.0.0.1: lift the per-source front door for them.
        hub, text = start([sys.executable, "-m", "estate.inventory.hub.cli", "serve", "--listen",
                           "127.0.0.1:0", "--data", str(data), "--report-burst", "0",
                           "--connection-rate", "1000000",
                           "--connection-burst", "1000000", "--max-unauthenticated-per-source",
                           "1000000", "--early-drop", "1000000:30", "--max-unauthenticated",
                           "1000000"])
        try:
            port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))
            fingerprint = re.search(r"host key (SHA256:\S+)", text).group(1)
            token = subprocess.run(
                [sys.executable, "-m", "estate.inventory.hub.cli", "token", "create", "--agency",
                 "Bench", "--site", "Lab", "--uses", str(args.agents), "--data", str(data)],
                capture_output=True, text=True, check=True).stdout.split()[0]
            agents = asyncio.run(enrol_agents(port, fingerprint, token, args.agents))
            hub_fig = measure(hub, port, agents, base, args.seconds, '"stored"')
        finally:
            hub.terminate()
            hub.wait(30)
        bare, text = start([sys.executable, __file__, "--bare-server", "x"])
        try:
            port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))
            bare_fig = measure(bare, port, agents, base, args.seconds, "ok")
        finally:
            bare.terminate()
            bare.wait(30)
    print(f"{'':<22}{'reports':>9}{'reports/s':>11}{'CPU ms/report':>15}{'ack p50 ms':>12}"
          f"{'ack p99 ms':>12}{'RSS MB':>9}")
    for name, f in (("estate-hub", hub_fig), ("bare asyncssh server", bare_fig)):
        print(f"{name:<22}{f['reports']:>9}{f['per_s']:>11.0f}{f['cpu_ms']:>15.2f}"
              f"{f['p50']:>12.1f}{f['p99']:>12.1f}{f['rss_mb']:>9.0f}")
    print(f"hub CPU per report / bare server's: {hub_fig['cpu_ms'] / bare_fig['cpu_ms']:.2f}x "
          f"(target <= 2x); hub reports/s target >= 200, CPU target <= 5 ms per report")


if __name__ == "__main__":
    main()
