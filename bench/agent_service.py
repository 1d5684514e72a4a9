"""Benchmark: what `estate-agent run` costs an endpoint while it idles between reports.

Starts a real hub on loopback, enrols a real agent, runs `estate-agent run` at a 60 s interval
and, after a warm-up, measures over --window seconds (default 300, five reports): the agent's
RSS (its own process), and its CPU seconds scaled to an hour, including the children it runs
(dpkg-query, systemd-detect-virt).

The daily update check (`apt-get --simulate dist-upgrade` and the like, seconds of CPU once a
day) starts with the service: the window opens only once it has written its cache, and its cost
is printed apart, as started and as averaged over the day.

Usage: python bench/agent_service.py [--window 300] [--interval 60]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from estate.agent.collect._posture import CACHE_FILE


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=300.0)
    parser.add_argument("--interval", type=float, default=60.0)
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        data, agent_dir = Path(tmp) / "hub", Path(tmp) / "agent"
        hub = subprocess.Popen([sys.executable, "-m", "estate.inventory.hub.cli", "serve",
                                "--listen",
                                "127.0.0.1:0", "--data", str(data)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        agent = None
        try:
            port = None
            for line in hub.stdout:
                if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                    port = int(m.group(1))
                    break
            token = subprocess.run([sys.executable, "-m", "estate.inventory.hub.cli", "token",
                                    "create", "--agency", "Bench", "--site", "Lab", "--data",
                                    str(data)], capture_output=True, text=True,
                                   check=True).stdout.split()[0]
            config = agent_dir / "agent.toml"
            subprocess.run([sys.executable, "-m", "estate.agent", "enrol", "--token", token,
                            "--hub",
                            f"127.0.0.1:{port}", "--config", str(config)], check=True,
                           capture_output=True)
            with open(config, "a") as f:
                f.write(f"interval = {args.interval}\nstart_delay = 0\n")
            agent = subprocess.Popen([sys.executable, "-m", "estate.agent", "run", "--config",
                                      str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            ps = psutil.Process(agent.pid)
            started = time.monotonic()
            time.sleep(15)  # started, connected, first report sent
            cache = agent_dir / CACHE_FILE
            while not cache.exists() and time.monotonic() - started < 600:
                time.sleep(1)  # the daily update check, begun at start, still running
            time.sleep(2)  # its tool reaped: its CPU counted among the children
            startup_cpu = cpu_seconds(ps)
            cpu0, t0 = startup_cpu, time.monotonic()
            rss_peak = 0.0
            while time.monotonic() - t0 < args.window:
                time.sleep(1)
                rss_peak = max(rss_peak, ps.memory_info().rss / 2**20)
            rss_idle = ps.memory_info().rss / 2**20
            per_hour = (cpu_seconds(ps) - cpu0) * 3600 / (time.monotonic() - t0)
        finally:
            if agent:
                agent.terminate()
                agent.wait(60)
            hub.terminate()
            hub.wait(60)
    print(f"estate-agent run, interval {args.interval:g} s, measured over {args.window:g} s:")
    print(f"  idle RSS {rss_idle:.1f} MB (peak {rss_peak:.1f} MB while collecting; "
          f"target <= 45 MB)")
    print(f"  CPU {per_hour:.1f} s per hour (target <= 9.4), the daily update check apart")
    print(f"  start, first report and the daily update check: {startup_cpu:.1f} s CPU "
          f"({startup_cpu / 24:.2f} s per hour over a day)")


if __name__ == "__main__":
    main()
