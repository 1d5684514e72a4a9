"""History that lasts: a report that changes nothing keeps a compact row, a change and each
host's first report of a UTC day keep their body; compact rows are kept `--retention-days`,
full bodies and change events `--history-days`, pruned in short chunks; `--as-of` reads the
state of a year ago. Real SQLite stores, in-process."""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncssh
import pytest

from estate.inventory.export import ExportRequest
from estate.inventory.export.produce import Horizon, Producer, run_export
from estate.inventory.store import HostQuery, Incoming, Store, iso
from estate.inventory.store._common import from_us
from estate.inventory.store._migrations import MIGRATIONS
from tests.harness import edit

NOW = datetime(2026, 2, 15, 12, 0, tzinfo=timezone.utc)
RETENTION, HISTORY = timedelta(days=30), timedelta(days=400)
HUB_KEY = Path(__file__).parent / "data" / "export_hub_key"  # a test-only key


def _enrolled(store: Store, site: str = "Main") -> str:
    token_id, secret, _ = store.create_token("Schools", site, 1, timedelta(days=9999), "test")
    key = f"ssh-ed25519 retention-{site}"
    return store.enrol(token_id, secret, key, f"SHA256:{key}", "pc")["agent_id"]


class _Host:
    """One enrolled host sending copies of a real report, its package list sent once."""

    def __init__(self, store: Store, base: dict, site: str = "Main",
                 agent_id: str | None = None) -> None:
        self.store, self.agent_id, self.seq = store, agent_id or _enrolled(store, site), 0
        self.base = copy.deepcopy(base)
        self.base["agent"]["id"] = self.agent_id
        self.base["connectivity"]["probes"] = [
            {"name": "dns", "kind": "dns", "target": "example.org", "ok": True,
             "latency_ms": 1.5, "answers": [], "error": None}]

    def report(self, at: datetime, collected: datetime | None = None, **edits: object) -> dict:
        """The next report, received at `at`; `edits` (dotted as a__b) stay for later ones."""
        edit(self.base, **edits)
        self.seq += 1
        r = copy.deepcopy(self.base)
        r["report_id"] = f"{self.agent_id}:1:{self.seq}"
        r["collected_at"] = iso(collected or at - timedelta(seconds=1))
        self.base["software"]["packages"] = None  # like the agent: the list only once
        return r

    def send(self, at: datetime, collected: datetime | None = None, **edits: object) -> str:
        r = self.report(at, collected, **edits)
        assert self.store.store_reports([_incoming(r, at)]) == ["stored"]
        return r["report_id"]

    def rows(self) -> list[tuple[str, bool]]:
        """(received_at, keeps a body) of each of its reports still known, oldest first: its
        samples, whether their report kept a body, and kept bodies whose sample is gone."""
        bodies = dict(self.store.db.execute(
            "SELECT report_id, received_at FROM reports WHERE agent_id = ?", (self.agent_id,)))
        # A sample keeps its report id without the agent's id (":BOOT:SEQUENCE").
        samples = [(iso(from_us(r[0])), self.agent_id + r[1]) for r in self.store.db.execute(
            "SELECT received_us, report_id FROM samples WHERE agent_id = ?", (self.agent_id,))]
        sampled = {report_id for _, report_id in samples}
        return sorted([(at, report_id in bodies) for at, report_id in samples] +
                      [(at, True) for report_id, at in bodies.items() if report_id not in sampled])


def _incoming(r: dict, at: datetime) -> Incoming:
    return Incoming(r["agent"]["id"], r, gzip.compress(json.dumps(r).encode(), mtime=0), at)


def _stored_rows(store: Store) -> int:
    """Samples and kept bodies, of every host."""
    return sum(store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
               for table in ("samples", "reports"))


def _prune_all(store: Store, chunk: int = 5000) -> int:
    total = 0
    while (n := store.prune_reports(NOW - RETENTION, NOW - HISTORY, chunk)) == chunk:
        total += n
    return total + n


def test_only_a_change_a_new_day_a_first_or_backlog_report_keeps_its_body(tmp_path, report):
    """Same state digest and software hash as the host's last: a compact row (empty body)
    with the probe figures. After a restart the day of the last body comes from the table."""
    store = Store.open(tmp_path)
    host = _Host(store, report)
    day = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
    at = [day + timedelta(minutes=5 * i) for i in range(6)]
    host.send(at[0])  # the host's first report
    host.send(at[1])
    host.send(at[2], system__hostname="renamed")  # a state change
    unchanged = host.report(at[3])
    assert store.store_reports([_incoming(unchanged, at[3])]) == ["stored"]
    host.send(at[4], software__hash="f" * 64, software__packages=[
        {"name": "new-pkg", "version": "1", "arch": None, "publisher": None}])
    host.send(at[5])
    assert [kept for _, kept in host.rows()] == [True, False, True, False, True, False]
    # A resent unchanged report is a duplicate, not a second row.
    assert store.store_reports([_incoming(unchanged, at[3])]) == ["duplicate"]
    # Every row keeps its probe figures: what the console's sparklines draw.
    recent = store.recent_reports(host.agent_id, None, 10)
    assert len(recent) == 6 and all(r["probes"] == [{"name": "dns", "ok": True,
                                                     "latency_ms": 1.5}] for r in recent)
    assert store.db.execute("SELECT COUNT(*) FROM reports WHERE probes IS NULL").fetchone()[0] \
        == 0
    # A backlog report (collected before the last shown), and one telling of dropped reports.
    host.send(day + timedelta(hours=1), collected=day - timedelta(hours=1))
    host.send(day + timedelta(hours=2), agent__dropped_reports=3)
    host.send(day + timedelta(hours=3), agent__dropped_reports=None)
    assert [kept for _, kept in host.rows()][6:] == [True, True, False]
    store.close()

    store = Store.open(tmp_path)
    host.store = store
    host.send(day + timedelta(hours=4))  # the same day, nothing changed
    tomorrow = day.replace(hour=0) + timedelta(days=1)
    host.send(tomorrow + timedelta(seconds=1))  # the first of a new UTC day
    host.send(tomorrow + timedelta(minutes=5))
    assert [kept for _, kept in host.rows()][9:] == [False, True, False]
    store.close()


def _a_year_of_reports(store: Store, host: _Host, start: datetime, every: timedelta,
                       changes: dict[datetime, dict]) -> list[datetime]:
    """Reports from `start` to NOW, `every` apart, in batches; `changes` edits at those times."""
    times, batch = [], []
    at = start
    while at <= NOW:
        batch.append(_incoming(host.report(at, **changes.get(at, {})), at))
        times.append(at)
        if len(batch) == 200:
            store.store_reports(batch)
            batch = []
        at += every
    store.store_reports(batch)
    return times


def test_retention_keeps_compact_rows_a_month_and_a_full_report_a_day_for_the_history(
        tmp_path, report):
    store = Store.open(tmp_path, durable=False)
    host = _Host(store, report)
    start = (NOW - timedelta(days=410)).replace(hour=0)
    renamed_at = NOW - timedelta(days=200)  # a noon report: not the first of its day
    _a_year_of_reports(store, host, start, timedelta(hours=6),
                       {renamed_at: {"system__hostname": "renamed"}})
    before, stored_before = host.rows(), _stored_rows(store)
    assert len(before) == 4 * 410 + 3
    deleted = _prune_all(store)
    after = host.rows()
    assert deleted == stored_before - _stored_rows(store) > len(before) - len(after)
    compact_before, full_before = iso(NOW - RETENTION), iso(NOW - HISTORY)
    assert all(at >= full_before for at, _ in after)
    kept_old = [(at, kept) for at, kept in after if at < compact_before]
    # Between the horizons: one full report a day, at midnight, and the change's.
    assert all(kept for _, kept in kept_old)
    assert [at for at, _ in kept_old if not at.endswith("T00:00:00.000000Z")] == \
        [iso(renamed_at)]
    days = sorted({at[:10] for at, _ in kept_old})
    assert len(kept_old) == len(days) + 1 and len(days) >= 369
    # Within the retention: every report, compact or full, as stored.
    assert [r for r in before if r[0] >= compact_before] == \
        [r for r in after if r[0] >= compact_before]
    assert _prune_all(store) == 0
    store.close()


def test_as_of_a_year_back_answers_the_state_of_then(tmp_path, report):
    """After pruning: a year ago the host had its old name, and was last seen at that day's
    kept report; ten days ago it had its new one, last seen at its newest compact row. A host
    enrolled later is not in a view of then; one whose full reports are all pruned is counted
    missing. An as-of export states the horizon it read within."""
    store = Store.open(tmp_path, durable=False)
    first_name = report["system"]["hostname"]
    old = _Host(store, report, site="Old")
    renamed_at = NOW - timedelta(days=100)
    _a_year_of_reports(store, old, (NOW - timedelta(days=410)).replace(hour=0),
                       timedelta(hours=6), {renamed_at: {"system__hostname": "pc-new"}})
    edit(report, system__hostname="pc-young")
    young = _Host(store, report, site="Young")
    _a_year_of_reports(store, young, NOW - timedelta(days=50), timedelta(hours=6), {})
    _prune_all(store)

    def as_of(at: datetime) -> dict[str, tuple]:
        with store.reader() as reader:
            return {h.agent_id: (h.facts["hostname"], h.last_seen)
                    for h in reader.hosts_as_of(HostQuery(None), at)}

    year_ago = NOW - timedelta(days=365)
    got = as_of(year_ago)
    assert got == {old.agent_id: (first_name, iso(year_ago.replace(hour=0)))}  # compact gone
    assert as_of(renamed_at - timedelta(hours=3))[old.agent_id][0] == first_name
    assert as_of(renamed_at + timedelta(hours=3))[old.agent_id][0] == "pc-new"
    recent = as_of(NOW - timedelta(days=10))
    assert recent[old.agent_id] == ("pc-new", iso(NOW - timedelta(days=10)))
    assert recent[young.agent_id] == ("pc-young", iso(NOW - timedelta(days=10)))
    with store.reader() as reader:
        assert reader.hosts_missing_history(HostQuery(None), NOW - timedelta(days=405)) == 1
        assert reader.hosts_missing_history(HostQuery(None), year_ago) == 0

    key = asyncssh.import_private_key(HUB_KEY.read_bytes())
    producer = Producer({"name": "auditor", "role": "auditor", "agencies": None}, key,
                        "SHA256:test", "test")
    horizon = Horizon(30, 400)
    out = tmp_path / "then.json"
    manifest = run_export(store, ExportRequest.parse(
        {"report": "inventory", "format": "json", "as_of": iso(year_ago)}), producer, out,
        now=NOW, horizon=horizon)
    assert (manifest["history_days"], manifest["retention_days"]) == (400, 30)
    doc = json.loads(out.read_text())
    assert [r["hostname"] for r in doc["rows"]] == [first_name]
    assert doc["about"]["history kept"].startswith("400 days of full reports")
    now_manifest = run_export(store, ExportRequest.parse(
        {"report": "inventory", "format": "json"}), producer, tmp_path / "now.json", now=NOW,
        horizon=horizon)
    assert "history_days" not in now_manifest and "retention_days" not in now_manifest
    store.close()


def test_pruning_goes_a_chunk_per_transaction_and_reports_go_in_between(tmp_path, report):
    """A hundred and one expired samples at ten a chunk: eleven transactions, each its own
    store call; the hub runs each as its own store-thread job, so a report waiting goes
    between."""
    from estate.inventory.hub._hub import Hub
    from estate.inventory.hub._settings import HubSettings

    store = Store.open(tmp_path / "hub", durable=False)
    host = _Host(store, report)
    start = (NOW - timedelta(days=40)).replace(hour=0)
    for i in range(101):  # the first keeps its body (within the history), the rest compact
        host.send(start + timedelta(minutes=i))
    assert store.prune_reports(NOW - RETENTION, NOW - HISTORY, 10) == 10
    host.send(NOW)  # storing goes on between chunks
    assert [store.prune_reports(NOW - RETENTION, NOW - HISTORY, 10) for _ in range(10)] == \
        [10] * 9 + [1]
    assert [kept for _, kept in host.rows()] == [True, True]  # each the first of its day
    other = _Host(store, report, site="Other")
    for i in range(101):
        other.send(start + timedelta(minutes=i))
    waiting = other.report(NOW)
    store.close()

    hub = Hub(HubSettings(data_dir=tmp_path / "hub", retention=RETENTION, history=HISTORY))
    calls: list[object] = []
    prune, store_reports = hub.store.prune_reports, hub.store.store_reports

    def counted_prune(*args: object) -> int:
        calls.append(n := prune(*args))
        return n

    def counted_store(batch: list[Incoming]) -> list[str]:
        calls.append("stored")
        return store_reports(batch)

    hub.store.prune_reports = counted_prune  # type: ignore[method-assign]

    async def run() -> int:
        pruned, _ = await asyncio.gather(
            hub.prune_reports(chunk=10),
            hub.db(counted_store, [_incoming(waiting, NOW + timedelta(minutes=1))]))
        return pruned

    # The hub's horizons run from the real clock, months after NOW: the samples of the
    # two reports at NOW have expired too, and go in the last chunk.
    assert asyncio.run(run()) == 103
    assert calls == [10, "stored", *[10] * 9, 3]
    hub.ingest.close()
    hub.store.close()
    hub.db.shutdown()


def _v6_store(folder: Path) -> sqlite3.Connection:
    """A store as Estate wrote it before compact rows (schema 6), without Estate's help."""
    folder.mkdir(mode=0o700)
    db = sqlite3.connect(folder / "estate.db", isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, steps in enumerate(MIGRATIONS[:6], start=1):
        for step in steps:
            if callable(step):
                step(db)
            else:
                db.execute(step)
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    return db


def test_a_store_from_before_keeps_its_reports_and_thins_them_once_past_the_retention(
        tmp_path, report):
    """Migration 7 keeps every old report (all full, no probes column then: read from the
    body). Past the compact horizon they are thinned to what would be kept now: the first of
    each host's day and those a change came from; within it they stay. Chunk by chunk."""
    report["connectivity"]["probes"] = [{"name": "gw", "kind": "gateway", "target": None,
                                         "ok": False, "latency_ms": None, "answers": [],
                                         "error": "down"}]
    db = _v6_store(tmp_path / "hub")
    db.execute("INSERT INTO agencies (id, name) VALUES (1, 'Schools')")
    db.execute("INSERT INTO sites (id, agency_id, name) VALUES (1, 1, 'Main')")
    db.execute("INSERT INTO agents (id, key_fingerprint, public_key, agency_id, site_id, "
               "enrolled_at) VALUES ('ag-old', 'SHA256:old', 'ssh-ed25519 old', 1, 1, ?)",
               (iso(NOW - timedelta(days=60)),))
    days = [NOW - timedelta(days=d) for d in (50, 45, 10)]
    hours = {days[0]: (0, 6, 12, 18), days[1]: (3, 9), days[2]: (1, 2, 3)}
    stored = []
    for day in days:
        for hour in hours[day]:
            at = day.replace(hour=hour)
            r = edit(copy.deepcopy(report), report_id=f"ag-old:1:{len(stored)}",
                     collected_at=iso(at), agent__id="ag-old")
            db.execute("INSERT INTO reports (report_id, agent_id, received_at, collected_at, "
                       "clock_skew_s, body) VALUES (?, 'ag-old', ?, ?, 0, ?)",
                       (r["report_id"], iso(at), iso(at),
                        gzip.compress(json.dumps(r).encode())))
            stored.append((iso(at), r["report_id"]))
    changed_at, changed_id = stored[2]  # day one, noon: a change came from it
    db.execute("INSERT INTO changes (agent_id, at, kind, subject, old_value, new_value, "
               "report_id) VALUES ('ag-old', ?, 'hostname_changed', NULL, 'a', 'b', ?)",
               (changed_at, changed_id))
    snapshot = json.dumps({**report, "software": {**report["software"], "packages": None}})
    db.execute("INSERT INTO hosts (agent_id, agency_id, site_id, hostname, first_seen, "
               "last_seen, last_report_id, collected_at, software_hash, snapshot) "
               "VALUES ('ag-old', 1, 1, 'pc', ?, ?, ?, ?, ?, ?)",
               (stored[0][0], stored[-1][0], stored[-1][1], stored[-1][0],
                report["software"]["hash"], snapshot))
    db.close()

    store = Store.open(tmp_path / "hub")
    assert store.schema_version() == len(MIGRATIONS)
    assert store.report_count() == len(stored)
    assert store.recent_reports("ag-old", None, 1)[0]["probes"] == [
        {"name": "gw", "ok": False, "latency_ms": None}]
    assert [store.prune_reports(NOW - RETENTION, NOW - HISTORY, 1) for _ in range(4)] == \
        [1, 1, 1, 0]
    kept = [at for (at,) in store.db.execute("SELECT received_at FROM reports ORDER BY 1")]
    gone = {stored[1][0], stored[3][0], stored[5][0]}  # day one 06:00, 18:00; day two 09:00
    assert kept == [at for at, _ in stored if at not in gone]
    # The first report after the upgrade keeps its body: no day of a body is known yet.
    host = _Host(store, report, agent_id="ag-old")
    host.seq = len(stored)
    host.send(NOW)
    host.send(NOW + timedelta(minutes=5))
    assert [k for _, k in host.rows()][-2:] == [True, False]
    store.close()


@pytest.mark.parametrize(("argv", "days"), [
    ([], 400), (["--history-days", "365"], 365), (["--change-retention-days", "100"], 100)])
def test_history_days_sets_how_long_full_reports_and_changes_are_kept(argv, days, capsys,
                                                                      tmp_path, monkeypatch):
    from estate.inventory.hub import cli

    captured = []

    async def serve(settings: object, workers: int = 1) -> int:
        captured.append(settings)
        return 0

    monkeypatch.setattr(cli, "_serve", serve)
    monkeypatch.setattr(cli, "_setup_logging", lambda verbose, tag="": None)
    monkeypatch.delenv("ESTATE_HUB_STORE", raising=False)
    args = cli._parser().parse_args(["serve", "--data", str(tmp_path / "hub"), *argv])
    assert cli._cmd_serve(args) == 0
    (settings,) = captured
    assert settings.history == timedelta(days=days)  # type: ignore[attr-defined]
    assert settings.retention == timedelta(days=30)  # type: ignore[attr-defined]
    said = capsys.readouterr().err
    assert ("--change-retention-days is deprecated; use --history-days" in said) == \
        ("--change-retention-days" in argv)


def test_history_days_is_a_whole_number_of_days_never_shorter_than_the_retention(capsys):
    from estate.inventory.hub import cli
    from estate.inventory.hub._settings import HubSettings

    for bad in ("0", "-5", "a year", "1.5"):
        with pytest.raises(SystemExit) as exit_:
            cli._parser().parse_args(["serve", "--history-days", bad])
        assert exit_.value.code == 2
        assert "argument --history-days: expected a whole number from 1 to 1000000" in \
            capsys.readouterr().err
    with pytest.raises(SystemExit):  # the old name works, but is no longer shown
        cli._parser().parse_args(["serve", "--help"])
    shown = capsys.readouterr().out
    assert "--history-days" in shown and "--change-retention-days" not in shown
    settings = HubSettings(Path("hub"), retention=timedelta(days=500))
    assert settings.history == timedelta(days=500)
