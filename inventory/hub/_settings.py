"""The hub's settings: what `estate-hub serve` flags set (docs/configuration.md)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from estate.inventory.health._correlate import Thresholds
from estate.inventory.hub._budget import (
    MAX_ANSWER,
    MAX_ANSWER_BYTES,
    MAX_BUFFERED_INPUT,
    MAX_EXPORT_REQUESTS,
)
from estate.inventory.hub._door import DoorLimits
from estate.inventory.hub._presence import HEARTBEAT_S, HUB_TIMEOUT_S
from estate.inventory.store import StoreUrl

if TYPE_CHECKING:
    from estate.inventory.compliance import Policy
    from estate.inventory.health.alerts import Rules
from estate.inventory.tcp_keepalive import TcpKeepalive


@dataclass
class HubSettings:
    data_dir: Path
    store_url: StoreUrl | None = None  # None: estate.db in data_dir
    export_store_url: StoreUrl | None = None  # a standby exports read from; None: the store
    host: str = "127.0.0.1"
    port: int = 2222
    login_timeout_s: float = 20.0
    max_unauthenticated: int = 200
    handshake_timeout_s: float = 10.0  # until the first login attempt: banner and key exchange
    door: DoorLimits = field(default_factory=DoorLimits)  # its `full` is max_unauthenticated
    # Dead peers are found by the kernel's TCP keepalive (tcp_keepalive below, almost no hub
    # CPU); the SSH keepalive is the slow end-to-end backstop (a peer whose TCP end still
    # answers: a proxy, a hung process), each probe ~0.6 ms of hub CPU, so it is far past the
    # agents' 300 s report interval (docs/benchmarks.md "Idle connections and keepalives").
    keepalive_interval_s: float = 1800.0
    keepalive_count_max: int = 3
    tcp_keepalive: TcpKeepalive = field(default_factory=TcpKeepalive)
    metrics: tuple[str, int] | None = None  # --metrics HOST:PORT; None: no endpoint
    retention: timedelta = timedelta(days=30)  # compact report rows (time, skew, probes)
    sessions_per_operator: int = 4
    sessions_per_host: int = 2
    # Full report bodies and change events: auditors want a year, and `--as-of` reaches
    # as far. Never shorter than `retention` (raised to it): a sample is only readable
    # beside the kept body before it, and `--retention-days` alone used to keep whole
    # reports that long.
    history: timedelta = timedelta(days=400)
    report_burst: int = 10  # reports one agent may send back to back; 0: no limit
    reports_per_interval: float = 4  # then this many per max(floor, the agent's interval)
    min_report_interval_s: float = 60.0  # that floor: no agent claim raises its budget
    agent_bytes_per_day: int = 64 * 1024 * 1024  # report bodies one agent may send; 0: off
    max_buffered_input: int = MAX_BUFFERED_INPUT  # report/enrol bodies, all channels
    max_export_requests: int = MAX_EXPORT_REQUESTS  # export request bodies, all channels
    max_answer_bytes: int = MAX_ANSWER_BYTES  # API answers held, all channels
    max_answer_size: int = MAX_ANSWER  # one API answer
    watchers_per_operator: int = 4  # watch channels per operator name, all connections
    max_watchers: int = 1000  # watch channels on the hub
    # This process's name in the store's hub registry (`--hub-name`); "": `default_hub_id`
    # of the port it listens on (known once bound when the port is 0).
    hub_id: str = ""
    heartbeat_s: float = HEARTBEAT_S  # how often it tells the registry it is alive
    hub_timeout_s: float = HUB_TIMEOUT_S  # silent this long, other hubs take it for dead
    max_agents: int = 0  # agents this process holds at once; past it `busy`. 0: no limit
    # `--commit-delay-ms`: how long the writer waits after a batch's first report for more to
    # share its commit (`_writer.Writer`); 0: none. 5: docs/benchmarks.md (issue 13).
    commit_delay_ms: int = 5
    # `serve --workers`: this worker's index from 1 (it listens with SO_REUSEPORT beside its
    # siblings); 0: the hub is one process.
    worker: int = 0
    # `--policy FILE`, loaded and checked (`estate.inventory.compliance.Policy`); None: the
    # policy shipped with Estate.
    policy: Policy | None = None
    # The incident correlator's thresholds (`--outage-window` and the flags beside it);
    # None: `--no-incidents`, this hub never runs it (another hub of the store may).
    incidents: Thresholds | None = field(default_factory=Thresholds)

    # `--alerts FILE`, loaded and checked (`estate.inventory.health.alerts.Rules`); None: no
    # alerts from this hub.
    alerts: Rules | None = None

    def __post_init__(self) -> None:
        self.history = max(self.history, self.retention)


def default_hub_id(port: int) -> str:
    """A hub's name when `--hub-name` is not given: this machine's and its port."""
    return f"{socket.gethostname()}:{port}"
