"""Benchmark: what the nightly pack of a finished day of samples costs the reports stored
meanwhile, on PostgreSQL: run on the store's own thread (as it was) or apart (`pack_history`,
as the hub runs it now).

Once a UTC day is over, its samples' key index is rebuilt packed (`REINDEX INDEX
CONCURRENTLY`, `inventory/store/_partitions.py`). At 20,000 hosts every 5 minutes a day holds
5.76 million samples. The hub's store thread is where every batch of reports waits its turn:
a rebuild run there holds them all for as long as it takes.

The store alone, in-process, on a throwaway cluster with `fsync` on (`tests/postgres.py`):
yesterday's partition filled with --hosts x 288 samples (the rows the server generates, as
ingest would have written them), then for each phase batches of unchanged reports of 60 other
hosts stored back to back through `store_reports` for --seconds, the pack started a second in:

- "no pack": the reports alone;
- "on the store thread": the pack run between two batches, as the hourly prune did;
- "apart": `pack_history` on a thread of its own (the hub's `asyncio.to_thread`).

The day is marked unpacked again before each phase. Prints, per phase: how long the pack took,
the reports stored a second, and each batch's time from when it was due (p50, p99, max).

Usage: python bench/pack_during_ingest.py [--hosts 20000] [--seconds 20] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/postgres.py: the same throwaway cluster as the tests
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from hub_ingest import durable_cluster  # noqa: E402
from resend_check import BATCH, incoming, seed  # noqa: E402

from estate.agent.collect import collect_report  # noqa: E402
from estate.inventory.store import Store, StoreUrl, utcnow  # noqa: E402
from estate.inventory.store._partitions import create_partitions, partition_name  # noqa: E402
from tests.postgres import PostgresCluster  # noqa: E402

SAMPLES_A_DAY = 288  # a host's at a 5-minute interval
STEP_US = 300_000_000
PACK_AFTER_S = 1.0


def fill_yesterday(raw: psycopg.Connection, hosts: int) -> str:
    """Yesterday's partition of samples with `hosts` x 288 samples, in time order (every host
    at each 5-minute step, as ingest writes them); its name."""
    day = (utcnow() - timedelta(days=1)).date()
    create_partitions(raw, "samples", {day.isoformat()})
    start_us = int(time.mktime(day.timetuple()) * 1e6)
    raw.execute("INSERT INTO samples (agent_id, received_us, clock_skew_s, report_id, probes) "
                "SELECT 'ag-' || lpad(h::text, 26, '0'), %s + g * %s::bigint + h, 0.1, "
                "':1:' || g, '[[\"gateway\",true,1.2]]' "
                "FROM generate_series(0, %s) g, generate_series(1, %s) h",
                (start_us, STEP_US, SAMPLES_A_DAY - 1, hosts))
    raw.execute("ANALYZE samples")
    return partition_name("samples", day.isoformat())


def phase(store: Store, base: dict, agents: list[str], first: int, seconds: float,
          pack: str) -> tuple[dict[str, float], int]:
    """Batches back to back for `seconds`, the pack started `PACK_AFTER_S` in (and batches
    on until it is done); figures, and the next report sequence number."""
    waits: list[float] = []  # each batch's, from when it was due to its answer
    packed_in: list[float] = []
    packer: threading.Thread | None = None

    def timed_pack(run: Callable[[], int]) -> None:
        t0 = time.monotonic()
        run()
        packed_in.append(time.monotonic() - t0)

    start = time.monotonic()
    n, reports = first, 0
    while time.monotonic() - start < seconds or (packer and packer.is_alive()):
        for i in range(0, len(agents), BATCH):
            due = time.monotonic()
            if pack != "no pack" and packer is None and not packed_in and \
                    due - start > PACK_AFTER_S:
                if pack == "apart":  # as the hub runs it now
                    packer = threading.Thread(target=timed_pack, args=(store.pack_history,))
                    packer.start()
                else:  # as the hourly prune did: between two of the store thread's jobs
                    timed_pack(store.db.history.pack_finished_days)
            at = utcnow()
            batch = [incoming(base, a, n, at) for a in agents[i:i + BATCH]]
            answers = store.store_reports(batch)
            assert answers == ["stored"] * len(batch), answers
            reports += len(batch)
            waits.append(time.monotonic() - due)
        n += 1
    elapsed = time.monotonic() - start
    if packer:
        packer.join()
    waits.sort()
    return ({"pack_s": packed_in[0] if packed_in else float("nan"),
             "reports_s": reports / elapsed,
             "p50_ms": 1000 * statistics.median(waits),
             "p99_ms": 1000 * waits[int(0.99 * (len(waits) - 1))],
             "max_ms": 1000 * waits[-1]}, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=20_000,
                        help="hosts in yesterday's samples (288 each)")
    parser.add_argument("--seconds", type=float, default=20.0, help="reports a phase")
    parser.add_argument("--rounds", type=int, default=1, help="the three phases, repeated")
    args = parser.parse_args()
    base, _ = collect_report()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; load average {os.getloadavg()[0]:.2f}")
    with PostgresCluster() as cluster:
        durable_cluster(cluster.url)
        url = cluster.create_database("pack")
        store = Store.connect(StoreUrl.parse(url), durable=True)
        raw = psycopg.connect(url, autocommit=True)
        try:
            agents = seed(store, raw, base, 60, 30)
            t0 = time.monotonic()
            day = fill_yesterday(raw, args.hosts)
            rows = raw.execute(f"SELECT COUNT(*) FROM {day}").fetchone()[0]
            print(f"yesterday: {rows:,} samples, filled in {time.monotonic() - t0:.0f} s; "
                  f"60 hosts' unchanged reports in batches of {BATCH}, {args.seconds:g} s a "
                  "phase")
            print(f"{'pack':>20} {'pack s':>7} {'reports/s':>10} {'batch p50 ms':>13} "
                  f"{'p99 ms':>8} {'max ms':>8}")
            n = 1
            for _ in range(args.rounds):
                for pack in ("no pack", "on the store thread", "apart"):
                    raw.execute(f"COMMENT ON TABLE {day} IS NULL")
                    f, n = phase(store, base, agents, n, args.seconds, pack)
                    print(f"{pack:>20} {f['pack_s']:>7.1f} {f['reports_s']:>10.0f} "
                          f"{f['p50_ms']:>13.1f} {f['p99_ms']:>8.1f} {f['max_ms']:>8.0f}",
                          flush=True)
        finally:
            raw.close()
            store.close()
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
