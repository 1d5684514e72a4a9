"""The store's named records: what every read returns, defined together.

Rows that go on the wire as JSON lists (host-list rows) are `NamedTuple`s, so they encode
exactly as the lists they replaced. Rows that go on the wire as JSON objects are frozen
dataclasses deriving from `Record`: typed attributes for code (`change.agent_id`), and the
read-only mapping of the dicts they replaced (`change["agent_id"]`, `{**change}`), with
`as_dict()` giving the wire's object (keys in field order, the order the wire has always had).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    from estate.inventory.compliance import ComplianceSummary


class Record(Mapping[str, Any]):
    """A frozen dataclass that also reads as the mapping of its fields."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def as_dict(self) -> dict[str, Any]:
        """The record as a new dict, keys in field order (the wire's order)."""
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


# eq=False on every record: equality is Mapping's, so a record equals the dict it replaced.

# --- hosts and reports ---------------------------------------------------------------------

@dataclass(frozen=True)
class Incoming:
    """A validated report waiting to be stored, with what enrolment says about its sender."""

    agent_id: str
    report: dict[str, Any]
    body: bytes  # as received: gzip or plain JSON
    received_at: datetime


class HostRow(NamedTuple):
    """A host-list row, in `estate.inventory.hostlist.COLUMN_KEYS` order (the API and watch send it
    as a JSON list)."""

    agent_id: str
    hostname: str | None
    agency: str
    site: str
    status: str  # online, offline, stale or revoked
    # Connectivity (`estate.inventory.health.net`): (state, hub RTT in ms, worst probe); None
    # until a report with probe results came
    net: tuple[str, float | None, str | None] | None
    os: str | None
    model: str | None
    serial: str | None
    cpu: str | None
    ram_bytes: int | None
    disk_percent: float | None
    ip: str | None
    last_seen: str
    remote: str  # ready, allowed, asked or off (`remote_state`)
    # pass/fail/unknown counts and the worst failure (`estate.inventory.compliance`); None:
    # not evaluated
    compliance: ComplianceSummary | None = None


@dataclass(frozen=True, eq=False)
class ProbePolicy(Record):
    """The probes an agency (site "") or one site of it asks its agents to run
    (`estate-hub probes set`): `probes` are `[[probes]]` tables, `hash` their canonical hash."""

    agency: str
    site: str
    probes: list[dict[str, Any]]
    hash: str
    set_by: str
    set_at: str


@dataclass(frozen=True, eq=False)
class HostStatus(Record):
    """A host as the admin's `estate-hub hosts` lists it."""

    agent_id: str
    hostname: str | None
    agency: str
    site: str
    os_name: str | None
    os_version: str | None
    vendor: str | None
    model: str | None
    serial: str | None
    ip_addresses: str | None  # space-separated
    first_seen: str
    last_seen: str
    clock_skew_s: float | None
    interval_s: float | None
    identity_conflict: str | None  # the agent ids sharing its serial or UUID, space-separated
    status: str
    clock_skewed: bool


@dataclass(frozen=True, eq=False)
class HostDetail(Record):
    """One host in full: the API's `host` answer."""

    agent_id: str
    agency: str
    site: str
    status: str
    first_seen: str
    last_seen: str
    enrolled_at: str
    clock_skew_s: float | None
    identity_conflict: str | None  # only the hosts the reader may see
    report: dict[str, Any]  # the last report, without its package list
    packages: list[Any] | None  # the package list, None when unknown
    # policy and current results per control (`ComplianceRecords.host_compliance`); None:
    # not evaluated
    compliance: dict[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class Summary(Record):
    """Host counts (total, online, offline, stale, revoked) in all, per agency and site."""

    totals: dict[str, int]
    agencies: dict[str, Any]  # agency -> {"counts": {...}, "sites": {site: {...}}}
    # {"totals": C, "agencies": {agency: {"counts": C, "sites": {site: C}}}}, C the counts of
    # `estate.inventory.store._compliance.empty_counts`
    compliance: dict[str, Any] | None = None


@dataclass(frozen=True, eq=False)
class RecentReport(Record):
    """One stored report of a host, with its probe results (the console's sparklines)."""

    report_id: str
    received_at: str
    collected_at: str
    clock_skew_s: float | None
    probes: list[dict[str, Any]]  # name, ok, latency_ms


# --- changes ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ChangeNotice(Record):
    """A new change event as watchers receive it (no report id)."""

    id: int
    at: str
    agent_id: str
    hostname: str | None
    agency: str
    kind: str
    subject: str | None
    old_value: str | None
    new_value: str | None


@dataclass(frozen=True, eq=False)
class Change(ChangeNotice):
    """A change event with its host's name and agency and the report that showed it (the
    API's and the admin's); its fields in this order on the wire."""

    report_id: str


class ChangeEvent(NamedTuple):
    """A change event as history keeps it: what exports stream, and what `record_changes`
    writes."""

    at: str
    agent_id: str
    kind: str
    subject: str | None
    old_value: str | None
    new_value: str | None
    report_id: str = ""


# --- enrolment: tokens, agents, operators ---------------------------------------------------

class NewToken(NamedTuple):
    """A token just created. The secret is shown once; only its hash is kept."""

    token_id: str
    secret: str
    expires: datetime


@dataclass(frozen=True, eq=False)
class Token(Record):
    id: str
    agency: str
    site: str
    uses: int
    max_uses: int
    created_at: str
    expires_at: str
    revoked_at: str | None
    state: str  # active, used up, expired or revoked


@dataclass(frozen=True, eq=False)
class Enrolment(Record):
    """An agent's registration: new, or the one its key already had (`new` False)."""

    agent_id: str
    agency: str
    site: str
    new: bool


@dataclass(frozen=True, eq=False)
class Agent(Record):
    id: str
    agency: str
    site: str
    key_fingerprint: str
    enrolled_at: str
    enrolled_hostname: str | None
    revoked_at: str | None
    connected: int
    remote_access: int
    remote_offered: int


@dataclass(frozen=True, eq=False)
class Operator(Record):
    """An operator as the hub authorises them."""

    name: str
    role: str
    agencies: list[str] | None  # None: all agencies
    key_fingerprint: str


@dataclass(frozen=True, eq=False)
class OperatorRow(Record):
    """An operator as the admin's `estate-hub operator list` shows them."""

    name: str
    role: str
    agencies: str  # as stored: "all", or a JSON list of names
    key_fingerprint: str
    created_at: str


# --- hubs and presence ----------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class HubRow(Record):
    """A hub process in the store's registry, as `estate-hub hubs` lists it."""

    id: str  # the hub's name (`--hub-name`)
    address: str | None  # where it listens, HOST:PORT
    started_at: str
    heartbeat_at: str
    timeout_s: float  # dead once its heartbeat is older than this
    agents: int  # agent connections it held at its last heartbeat
    reports_per_s: float  # reports it stored per second over its last heartbeat interval
    version: str | None  # the Estate it runs


class Held(NamedTuple):
    """An agent's connection as a hub holds it: the epoch its connect got, its agency."""

    agent_id: str
    epoch: int
    agency: str


class Released(NamedTuple):
    """An agent marked offline because the hub that held it stopped or died."""

    agent_id: str
    agency: str


class Sweep(NamedTuple):
    """Hubs found dead (no heartbeat within their timeout) and removed, and their agents."""

    hubs: list[str]
    agents: list[Released]


# --- watch events (`_events.py`) -----------------------------------------------------------

class Event(NamedTuple):
    """One event a hub announced to every hub's watchers."""

    hub_id: str  # the hub that wrote it
    seq: int  # its place in that hub's sequence
    kind: str  # host, online or offline
    agent_id: str
    at: str
    report_id: str | None  # the stored report a host event announces; None otherwise
    change_count: int  # change events that report recorded
    agency: str | None  # the agent's, read with the event (whose watchers may see it)


class EventPage(NamedTuple):
    """Events read after a set of cursors, and the cursors after them."""

    events: list[Event]
    cursors: dict[str, int]  # hub id -> the last seq read
    more: bool  # a hub had more than a page: read again at once


# --- remote sessions ------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class RemoteTarget(Record):
    """A host an operator may ask to reach, with what allows it."""

    agent_id: str
    hostname: str | None
    agency: str
    site: str
    remote_access: int
    remote_offered: int
    connected: int
    revoked_at: str | None
    remote: str  # ready, allowed, asked or off
    connected_hub: str | None = None  # the hub holding its agent's connection (None: none)


@dataclass(frozen=True, eq=False)
class Session(Record):
    """A relayed remote session, live (`ended_at` None) or ended."""

    id: int
    operator: str
    agent_id: str
    hostname: str | None
    peer: str | None
    started_at: str
    ended_at: str | None
    bytes_to_host: int
    bytes_from_host: int
    end_reason: str | None


class SessionEnd(NamedTuple):
    """A live session the hub must end, and why."""

    session_id: int
    reason: str


# --- audit ----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class AuditRow(Record):
    id: int
    at: str
    actor: str
    action: str
    target: str | None
    detail: str | None  # JSON text
    prev_hash: str | None
    hash: str | None


class AuditCheck(NamedTuple):
    """What walking the audit chain found: rows that chain correctly, then the first bad
    row's id and what is wrong with it (None, None: the chain is intact)."""

    rows: int
    bad_id: int | None
    problem: str | None


# --- exports --------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostQuery:
    """Which hosts an export reads: the operator's scope (None: all agencies), narrowed."""

    scope: list[str] | None
    agency: str | None = None
    site: str | None = None


@dataclass(frozen=True)
class HostFacts:
    """A host as an export describes it, now or at an as-of moment."""

    agent_id: str
    agency: str
    site: str
    first_seen: str
    last_seen: str
    status: str
    facts: dict[str, Any]  # `estate.inventory.facts.facts_of` the report of the moment described
    remote: str = "off"
    compliance: ComplianceSummary | None = None  # now: the stored summary; as of: None
    # Connectivity now (`estate.inventory.health.net.row_value`: state, hub RTT, worst probe);
    # None when unknown, and always as of a moment: the verdict keeps no history.
    net: tuple[str, float | None, str | None] | None = None

    @property
    def hostname(self) -> str | None:
        return self.facts["hostname"]

    @property
    def serial(self) -> str | None:
        return self.facts["serial"]

    def ips(self) -> list[str]:
        return list(self.facts["ips"])

    def macs(self) -> list[str]:
        return list(self.facts["macs"])


class ComplianceRow(NamedTuple):
    """A host's result for one control, as the compliance export lists it."""

    agent_id: str
    agency: str
    site: str
    hostname: str | None
    control: str
    title: str
    theme: str
    severity: str
    outcome: str  # pass, fail or unknown
    fact: str | None
    reason: str | None
    since: str  # when this outcome began (hub clock)


class HostName(NamedTuple):
    """A host's name and agency, as the changes export labels each event."""

    agent_id: str
    hostname: str | None
    agency: str


class AvailabilityHost(NamedTuple):
    """A host as the availability export counts it: where it is, when it was enrolled and
    revoked, and its presence at the window's start (its last presence row by then)."""

    agent_id: str
    agency: str
    site: str
    hostname: str | None
    enrolled_at: str
    revoked_at: str | None
    state_at_start: str | None  # online or offline; None: no presence row by then


# --- alerts (`_notifications.py`) ---------------------------------------------------------

class AlertIncidentEvent(NamedTuple):
    """One incident event as the alert dispatcher reads it, with its incident."""

    id: int  # the event's
    incident_id: int
    at: str
    event: str  # opened, hosts_changed, resolved, reopened, acknowledged, silenced
    detail: str | None  # JSON text
    kind: str  # site_outage, shared_service, host_offline
    subject: str
    title: str
    agency: str
    site: str
    agent_id: str | None
    probe: str | None
    state: str
    opened_at: str
    resolved_at: str | None
    hosts: int
    silenced_until: str | None
    hostnames: tuple[str, ...]  # of the hosts it covers now (a few, for the message)


class AlertHost(NamedTuple):
    """A host's facts the host conditions read, and its host-list row for `hosts` filters."""

    row: HostRow
    os_product: str | None
    os_name: str | None
    os_version: str | None
    disk_percent: float | None
    clock_skew_s: float | None
    dropped_reports: int | None


class AlertSession(NamedTuple):
    """A remote session that started, as the remote_session condition reads it."""

    id: int
    operator: str
    agent_id: str
    hostname: str | None
    agency: str
    site: str
    peer: str | None
    started_at: str


class OffHost(NamedTuple):
    """An open host_offline incident, for the host_offline condition."""

    incident_id: int
    agent_id: str
    opened_at: str
    title: str


class Notification(NamedTuple):
    """One alert to send through one channel (`payload`: the message as JSON text)."""

    id: int
    channel: str
    rule: str
    thread: str
    payload: str
    state: str  # pending, sent or failed
    attempts: int
    next_at: str
    last_error: str | None
    created_at: str
    sent_at: str | None
