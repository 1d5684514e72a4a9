"""Benchmark: what the resend check costs a report on PostgreSQL, with each recent day's resend
index (as the store makes it) and without (the range of the host's samples it read before).

A report is a resend if its host has a sample with its id in the last two days
(`inventory/store/_samples.py`). The samples' key is (agent, time), so without an index on
(agent, report id) the check reads every sample of the host in the window: ~576 at a 5-minute
interval. The store keeps that index on the days of samples the check reaches
(`inventory/store/_partitions.py`).

The store alone, in-process, on a throwaway cluster with `fsync` on (`tests/postgres.py`): H
hosts with N samples each in the window, 5 minutes apart; batches of unchanged reports through
`store_reports` (the hub's writer's call). On the same data the days' resend indexes are
dropped and made again, phases alternated ("range, index, range, index"), each after a warm-up
round. Prints, per phase: database CPU ms/report (the postmaster and its children), WAL
KB/report and this process's CPU ms/report.

Usage: python bench/resend_check.py [--hosts 60] [--samples 30 576] [--rounds 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/postgres.py: the same throwaway cluster as the tests
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from hub_ingest import PostgresWatch, durable_cluster  # noqa: E402

from estate.agent.collect import collect_report  # noqa: E402
from estate.inventory.store import Incoming, Store, StoreUrl, iso, utcnow  # noqa: E402
from estate.inventory.store._partitions import (  # noqa: E402
    create_partitions,
    create_resend_index,
    existing_days,
    resend_index_name,
)
from tests.postgres import PostgresCluster  # noqa: E402

BATCH = 6  # reports a commit: about what the hub's writer groups at this load
STEP_US = 300_000_000  # 5 minutes between a host's samples


def incoming(base: dict[str, Any], agent_id: str, n: int, at: datetime) -> Incoming:
    r = copy.deepcopy(base)
    r["agent"]["id"], r["report_id"], r["collected_at"] = agent_id, f"{agent_id}:1:{n}", iso(at)
    return Incoming(agent_id, r, json.dumps(r).encode(), at)


def seed(store: Store, raw: Any, base: dict[str, Any], hosts: int, samples: int) -> list[str]:
    """`hosts` enrolled hosts, a report each, and `samples` older samples each."""
    token, secret, _ = store.create_token("Bench", "Lab", hosts, timedelta(hours=1), "admin:x")
    agents = [store.enrol(token, secret, f"ssh-ed25519 K{i}", f"SHA256:k{i}", f"pc{i}")[
        "agent_id"] for i in range(hosts)]
    now = utcnow()
    for agent in agents:
        store.store_reports([incoming(base, agent, 0, now)])
    span = timedelta(microseconds=samples * STEP_US)
    create_partitions(raw, "samples", {(now - timedelta(days=d)).date().isoformat()
                                       for d in range(span.days + 2)})
    raw.execute("INSERT INTO samples (agent_id, received_us, clock_skew_s, report_id, probes) "
                "SELECT a, %s - g * %s::bigint, 0, ':9:' || g, '[]' "
                "FROM unnest(%s::text[]) a, generate_series(1, %s) g",
                (int(now.timestamp() * 1e6), STEP_US, agents, samples))
    return agents


def set_indexes(raw: Any, indexed: bool) -> None:
    for day in existing_days(raw, "samples"):
        if indexed:
            create_resend_index(raw, day)
        else:
            raw.execute(f"DROP INDEX IF EXISTS {resend_index_name(day)}")
    raw.execute("ANALYZE samples")


def phase(store: Store, base: dict[str, Any], agents: list[str], first: int, rounds: int,
          watch: PostgresWatch | None) -> dict[str, float]:
    at = utcnow()
    batches = [[incoming(base, a, first + r, at + timedelta(milliseconds=r))
                for a in agents[i:i + BATCH]]
               for r in range(rounds) for i in range(0, len(agents), BATCH)]
    count, cpu0 = 0, time.process_time()
    if watch:
        watch.begin()
    for batch in batches:
        answers = store.store_reports(batch)
        assert answers == ["stored"] * len(batch), answers
        count += len(batch)
    cpu = time.process_time() - cpu0
    db_cpu, wal, _ = watch.end() if watch else (float("nan"), 0, 0)
    return {"db_cpu_ms": 1000 * db_cpu / count, "wal_kb": wal / 1024 / count,
            "proc_cpu_ms": 1000 * cpu / count}


def run(cluster: PostgresCluster, base: dict[str, Any], hosts: int, samples: int,
        rounds: int) -> list[tuple[str, dict[str, float]]]:
    url = cluster.create_database(f"resend_{samples}")
    store = Store.connect(StoreUrl.parse(url), durable=True)
    raw = psycopg.connect(url, autocommit=True)
    watch = PostgresWatch(url)
    out = []
    try:
        agents = seed(store, raw, base, hosts, samples)
        sequence = 1
        for indexed in (False, True, False, True):
            set_indexes(raw, indexed)
            phase(store, base, agents, sequence, 1, None)  # warm-up
            sequence += 1
            out.append(("index" if indexed else "range",
                        phase(store, base, agents, sequence, rounds, watch)))
            sequence += rounds
    finally:
        watch.close()
        raw.close()
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=60)
    parser.add_argument("--samples", type=int, nargs="+", default=[30, 576],
                        help="samples a host has in the resend window (576: a 5-minute "
                             "interval)")
    parser.add_argument("--rounds", type=int, default=8, help="reports a host, a phase")
    args = parser.parse_args()
    base, _ = collect_report()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f}")
    print(f"{args.hosts} hosts, batches of {BATCH} unchanged reports, {args.rounds} reports "
          "a host a phase")
    print(f"{'samples a host':>15} {'check':>6} {'DB CPU ms/report':>17} {'WAL KB/report':>14} "
          f"{'process CPU ms/report':>22}")
    with PostgresCluster() as cluster:
        durable_cluster(cluster.url)
        for samples in args.samples:
            for name, f in run(cluster, base, args.hosts, samples, args.rounds):
                print(f"{samples:>15} {name:>6} {f['db_cpu_ms']:>17.3f} {f['wal_kb']:>14.2f} "
                      f"{f['proc_cpu_ms']:>22.3f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
