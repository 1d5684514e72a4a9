"""Versioned schema migrations. Append only: a released migration is never edited.

The SQL sticks to what SQLite and PostgreSQL share (TEXT/INTEGER/REAL/BLOB columns, ISO 8601 UTC
times as TEXT, ON CONFLICT upserts) so a PostgreSQL store can run the same statements.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from estate.inventory.errors import SchemaTooNew
from estate.inventory.store._partitions import partition_history

# A step is SQL, or a function of the `Database` (`_database.py`) for what SQL cannot do.
Step = str | Callable[[Any], None]


def _chain_audit(db: Any) -> None:
    """Hash-chain the audit rows written before the chain existed, oldest first.

    Ids are kept: the triggers refused deletes, so they run 1..N without gaps, and a gap
    found later means a deleted row. Must match `estate.inventory.store.audit_hash`, copied here
    so this released migration never changes when the store does.
    """
    prev = "0" * 64
    rows = db.execute("SELECT id, at, actor, action, target, detail FROM audit "
                      "ORDER BY id").fetchall()
    for row in rows:
        canonical = json.dumps(list(row), ensure_ascii=False, separators=(",", ":"))
        digest = hashlib.sha256(f"{prev}\n{canonical}".encode()).hexdigest()
        db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?",
                   (prev, digest, row[0]))
        prev = digest


def _unchecked_samples(db: Any) -> None:
    """PostgreSQL: samples without their foreign key to `agents`. Its check ran for every
    report, locking the agent's row (a WAL record each time); only the store thread writes
    samples, for agents it has just authenticated, and agents are never deleted."""
    if db.dialect != "postgresql":
        return
    # Its name is PostgreSQL's choice (partitioning the table made it `..._fkey1`).
    for (name,) in db.conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'f' "
                                   "AND conrelid = 'samples'::regclass").fetchall():
        db.conn.execute(f'ALTER TABLE samples DROP CONSTRAINT "{name}"')


def _room_for_updates_in_place(db: Any) -> None:
    """PostgreSQL: hosts' pages half filled, so that each report's update of its host's row
    finds room on the row's own page: an update in place (HOT) writes no index entries,
    while one moved to another page writes one in each of the table's six indexes."""
    if db.dialect == "postgresql":
        db.conn.execute("ALTER TABLE hosts SET (fillfactor = 50)")


def _resend_index(db: Any) -> None:
    """SQLite: samples indexed by (agent, report id) for the resend check. On PostgreSQL the
    same index (~50 bytes a sample, kept for the whole retention) would take the store past
    its growth target of 50 MB per 1,000 hosts a day (45 MB without it); there each day's
    partition of samples has it while the check reaches the day (`_partitions.py`): made
    with the partition, so a store migrated from before has it from its next day on."""
    if db.dialect == "sqlite":
        db.conn.execute("CREATE INDEX samples_report ON samples (agent_id, report_id)")


MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    # 1: the first release.
    (
        """CREATE TABLE agencies (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE
        )""",
        """CREATE TABLE sites (
            id INTEGER PRIMARY KEY,
            agency_id INTEGER NOT NULL REFERENCES agencies(id),
            name TEXT NOT NULL,
            UNIQUE (agency_id, name)
        )""",
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            secret_sha256 TEXT NOT NULL,
            agency_id INTEGER NOT NULL REFERENCES agencies(id),
            site_id INTEGER NOT NULL REFERENCES sites(id),
            max_uses INTEGER NOT NULL,
            uses INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            revoked_at TEXT
        )""",
        """CREATE TABLE agents (
            id TEXT PRIMARY KEY,
            key_fingerprint TEXT NOT NULL UNIQUE,
            public_key TEXT NOT NULL,
            agency_id INTEGER NOT NULL REFERENCES agencies(id),
            site_id INTEGER NOT NULL REFERENCES sites(id),
            token_id TEXT REFERENCES tokens(id),
            enrolled_at TEXT NOT NULL,
            enrolled_hostname TEXT,
            revoked_at TEXT,
            connected INTEGER NOT NULL DEFAULT 0,
            connected_at TEXT,
            disconnected_at TEXT
        )""",
        """CREATE TABLE hosts (
            agent_id TEXT PRIMARY KEY REFERENCES agents(id),
            agency_id INTEGER NOT NULL REFERENCES agencies(id),
            site_id INTEGER NOT NULL REFERENCES sites(id),
            hostname TEXT,
            fqdn TEXT,
            os_family TEXT,
            os_name TEXT,
            os_version TEXT,
            vendor TEXT,
            model TEXT,
            serial TEXT,
            uuid TEXT,
            cpu_model TEXT,
            memory_bytes INTEGER,
            fullest_volume_percent REAL,
            ip_addresses TEXT,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            last_report_id TEXT NOT NULL,
            collected_at TEXT,
            clock_skew_s REAL,
            software_hash TEXT,
            identity_conflict TEXT,
            snapshot TEXT NOT NULL,
            packages TEXT
        )""",
        "CREATE INDEX hosts_agency ON hosts (agency_id, site_id)",
        "CREATE INDEX hosts_hostname ON hosts (hostname)",
        "CREATE INDEX hosts_serial ON hosts (serial)",
        "CREATE INDEX hosts_uuid ON hosts (uuid)",
        "CREATE INDEX hosts_last_seen ON hosts (last_seen)",
        """CREATE TABLE reports (
            report_id TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL REFERENCES agents(id),
            received_at TEXT NOT NULL,
            collected_at TEXT NOT NULL,
            clock_skew_s REAL,
            body BLOB NOT NULL
        )""",
        "CREATE INDEX reports_agent ON reports (agent_id, received_at)",
        "CREATE INDEX reports_received ON reports (received_at)",
        """CREATE TABLE changes (
            id INTEGER PRIMARY KEY,
            agent_id TEXT NOT NULL REFERENCES agents(id),
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            subject TEXT,
            old_value TEXT,
            new_value TEXT,
            report_id TEXT NOT NULL
        )""",
        "CREATE INDEX changes_agent ON changes (agent_id, at)",
        "CREATE INDEX changes_at ON changes (at)",
        """CREATE TABLE operators (
            name TEXT PRIMARY KEY,
            public_key TEXT NOT NULL,
            key_fingerprint TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL,
            agencies TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            detail TEXT
        )""",
        "CREATE INDEX audit_at ON audit (at)",
    ),
    # 2: a digest of what change detection compares, so unchanged hosts skip the comparison.
    (
        "ALTER TABLE hosts ADD COLUMN state_digest TEXT",
    ),
    # 3: presence history, and each host's report interval (stale after two of them).
    (
        "ALTER TABLE hosts ADD COLUMN interval_s REAL",
        """CREATE TABLE presence (
            id INTEGER PRIMARY KEY,
            agent_id TEXT NOT NULL REFERENCES agents(id),
            at TEXT NOT NULL,
            state TEXT NOT NULL
        )""",
        "CREATE INDEX presence_agent ON presence (agent_id, at)",
    ),
    # 4: remote access: allowed per agent (hub side), offered on the agent's live connection,
    # and the record of every relayed session.
    (
        "ALTER TABLE agents ADD COLUMN remote_access INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE agents ADD COLUMN remote_offered INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE remote_sessions (
            id INTEGER PRIMARY KEY,
            operator TEXT NOT NULL,
            agent_id TEXT NOT NULL REFERENCES agents(id),
            peer TEXT,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            bytes_to_host INTEGER NOT NULL DEFAULT 0,
            bytes_from_host INTEGER NOT NULL DEFAULT 0,
            end_reason TEXT,
            end_requested_by TEXT
        )""",
        "CREATE INDEX remote_sessions_started ON remote_sessions (started_at)",
    ),
    # 5: the facts lists and exports show, taken from each host's snapshot at ingest
    # (`estate.inventory.facts`); NULL for hosts last stored before, which exports derive
    # themselves.
    (
        "ALTER TABLE hosts ADD COLUMN facts TEXT",
    ),
    # 6: a tamper-evident audit log: each row carries sha256(prev_hash + its fields). The
    # append-only triggers refuse the backfill's rewrite, so they are dropped around it here,
    # inside the migration's transaction, and recreated (the store also ensures them).
    (
        "ALTER TABLE audit ADD COLUMN prev_hash TEXT",
        "ALTER TABLE audit ADD COLUMN hash TEXT",
        "DROP TRIGGER IF EXISTS audit_no_update",
        "DROP TRIGGER IF EXISTS audit_no_delete",
        _chain_audit,
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    ),
    # 7: history that lasts. Every report leaves a sample: a row the size of a line (when,
    # the agent's clock skew, its probe results, its id) in `samples`, keyed by host and time
    # (microseconds since 1970; SQLite keeps it as the table's own key, no index beside it).
    # A report keeps its body in `reports` only when it may show something new: a change, a
    # host's first, a backlog one, and once per host per UTC day (`hosts.full_day`). Rows
    # stored before have no `probes` (NULL): that marks them for thinning once past the
    # retention (`_hosts.py`), as if they had been stored this way.
    (
        "ALTER TABLE reports ADD COLUMN probes TEXT",
        "ALTER TABLE hosts ADD COLUMN full_day TEXT",
        """CREATE TABLE samples (
            agent_id TEXT NOT NULL REFERENCES agents(id),
            received_us INTEGER NOT NULL,
            clock_skew_s REAL,
            report_id TEXT NOT NULL,
            probes TEXT,
            PRIMARY KEY (agent_id, received_us)
        ) WITHOUT ROWID""",
        "CREATE INDEX reports_unthinned ON reports (received_at) WHERE probes IS NULL",
        # No query reads hosts by last_seen, and every report moves it: without the index
        # PostgreSQL updates the host in place (HOT), and SQLite writes one b-tree less.
        "DROP INDEX hosts_last_seen",
    ),
    # 8: the day each report is filed under (`_hosts.history_day`). On PostgreSQL, reports,
    # samples and change events become tables partitioned by day (`_partitions.py`), so
    # history is dropped a day at a time; SQLite keeps one table each.
    (
        "ALTER TABLE reports ADD COLUMN day TEXT",
        "UPDATE reports SET day = substr(received_at, 1, 10)",
        partition_history,
    ),
    # 9: presence across hubs. Each hub registers itself (`hubs`, one row per running hub
    # process, kept fresh by its heartbeat); an agent's row names the hub holding its
    # connection and that connection's epoch, bumped at every connect, so a hub's late
    # disconnect cannot take offline an agent that reconnected elsewhere (`_presence.py`).
    # Remote sessions name the hub relaying them.
    (
        """CREATE TABLE hubs (
            id TEXT PRIMARY KEY,
            address TEXT,
            started_at TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL,
            timeout_s REAL NOT NULL,
            agents INTEGER NOT NULL DEFAULT 0,
            reports_per_s REAL NOT NULL DEFAULT 0,
            version TEXT
        )""",
        "ALTER TABLE agents ADD COLUMN connected_hub TEXT",
        "ALTER TABLE agents ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX agents_connected_hub ON agents (connected_hub)",
        # The hub relaying a remote session: a hub's start or death ends its own, not others'.
        "ALTER TABLE remote_sessions ADD COLUMN hub_id TEXT",
    ),
    # 10: watch across hubs. Each hub numbers the events it announces (a stored report, an
    # agent online or offline, a remote-access offer), written in the transaction that makes
    # them true; every hub reads every hub's after a cursor per hub (`_events.py`). A hub's
    # `events_from` is where its current run's events begin. Pruned by time (`at`).
    (
        """CREATE TABLE events (
            hub_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            at TEXT NOT NULL,
            report_id TEXT,
            change_count INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (hub_id, seq)
        ) WITHOUT ROWID""",
        "CREATE INDEX events_at ON events (at)",
        "ALTER TABLE hubs ADD COLUMN events_from INTEGER NOT NULL DEFAULT 1",
    ),
    # 11: compliance (`estate.inventory.compliance`). Each host's result per control, kept as
    # periods: a row holds from `since` until `ended` (NULL: still holds), so `--as-of` reads
    # history rather than evaluating again; the control's title, theme and severity are kept
    # as they were then. `hosts.compliance` is the host's summary line (`ComplianceSummary`)
    # for lists. `compliance_policies` records each policy a hub started with: a new hash
    # makes the hub evaluate every host again, once.
    (
        """CREATE TABLE compliance (
            id INTEGER PRIMARY KEY,
            agent_id TEXT NOT NULL REFERENCES agents(id),
            control TEXT NOT NULL,
            position INTEGER NOT NULL,
            title TEXT NOT NULL,
            theme TEXT NOT NULL,
            severity TEXT NOT NULL,
            outcome TEXT NOT NULL,
            fact TEXT,
            reason TEXT,
            since TEXT NOT NULL,
            ended TEXT,
            policy_hash TEXT NOT NULL
        )""",
        "CREATE INDEX compliance_host ON compliance (agent_id, since)",
        "CREATE INDEX compliance_current ON compliance (agent_id) WHERE ended IS NULL",
        "CREATE INDEX compliance_ended ON compliance (ended)",
        "ALTER TABLE hosts ADD COLUMN compliance TEXT",
        "ALTER TABLE hosts ADD COLUMN compliance_policy TEXT",
        """CREATE TABLE compliance_policies (
            id INTEGER PRIMARY KEY,
            hash TEXT NOT NULL,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            loaded_at TEXT NOT NULL,
            hub_id TEXT
        )""",
    ),
    # 12: a counter of access changes (an agent revoked, an operator added or removed),
    # moved in the transaction that makes the change. Every hub reads it each second to learn
    # whether to re-check its connections; a counter of all commits moved with every other
    # hub's report batch, so each hub re-read every agent's record once a second.
    (
        """CREATE TABLE access_changes (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )""",
        "INSERT INTO access_changes (id, version) VALUES (1, 0)",
    ),
    # 13: estate health. Probe policies the hub hands its agents (per agency, or per site of
    # one); each host's connectivity verdict; incidents correlated from presence and probe
    # results, with the hosts each one covers and its timeline; the alert notifications
    # queued for sending; the dispatcher's read positions and firing host conditions; and
    # leases, so one hub of several runs the estate-wide correlator and sender at a time.
    (
        """CREATE TABLE probe_policies (
            agency TEXT NOT NULL,
            site TEXT NOT NULL,
            probes TEXT NOT NULL,
            hash TEXT NOT NULL,
            set_by TEXT NOT NULL,
            set_at TEXT NOT NULL,
            PRIMARY KEY (agency, site)
        )""",
        "ALTER TABLE hosts ADD COLUMN net TEXT",
        "ALTER TABLE hosts ADD COLUMN net_at TEXT",
        "CREATE INDEX hosts_net_at ON hosts (net_at)",
        """CREATE TABLE incidents (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            subject TEXT NOT NULL,
            agency TEXT NOT NULL,
            site TEXT NOT NULL,
            agent_id TEXT,
            probe TEXT,
            title TEXT NOT NULL,
            state TEXT NOT NULL,
            opened_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            resolved_at TEXT,
            hosts INTEGER NOT NULL DEFAULT 0,
            acked_by TEXT,
            acked_at TEXT,
            silenced_until TEXT,
            silenced_by TEXT
        )""",
        "CREATE UNIQUE INDEX incidents_open ON incidents (subject) WHERE state = 'open'",
        "CREATE INDEX incidents_scope ON incidents (agency, site, opened_at)",
        "CREATE INDEX incidents_state ON incidents (state, updated_at)",
        """CREATE TABLE incident_hosts (
            incident_id INTEGER NOT NULL REFERENCES incidents(id),
            agent_id TEXT NOT NULL,
            since TEXT NOT NULL,
            until TEXT,
            PRIMARY KEY (incident_id, agent_id)
        )""",
        """CREATE TABLE incident_events (
            id INTEGER PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents(id),
            at TEXT NOT NULL,
            event TEXT NOT NULL,
            actor TEXT,
            detail TEXT
        )""",
        "CREATE INDEX incident_events_incident ON incident_events (incident_id, id)",
        """CREATE TABLE notifications (
            id INTEGER PRIMARY KEY,
            channel TEXT NOT NULL,
            rule TEXT NOT NULL,
            thread TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at TEXT NOT NULL,
            last_error TEXT,
            created_at TEXT NOT NULL,
            sent_at TEXT
        )""",
        "CREATE INDEX notifications_due ON notifications (state, next_at)",
        """CREATE TABLE alert_cursors (
            name TEXT PRIMARY KEY,
            position INTEGER NOT NULL
        )""",
        """CREATE TABLE alert_firing (
            rule TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            condition TEXT NOT NULL,
            since TEXT NOT NULL,
            PRIMARY KEY (rule, agent_id, condition)
        )""",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            until TEXT NOT NULL
        )""",
    ),
    # 14: a report that changes nothing but its volatile sections (its id, times, health
    # figures, probe results) writes those alone (`live`), not the whole snapshot and facts
    # again; `snapshot_digest` tells whether the rest changed (`_snapshot.py`).
    (
        "ALTER TABLE hosts ADD COLUMN live TEXT",
        "ALTER TABLE hosts ADD COLUMN snapshot_digest TEXT",
        _unchecked_samples,
        _room_for_updates_in_place,
    ),
    # 15: SQLite: the resend check (`_samples.py`) finds a report's id in an index, where it
    # decoded every sample of the host's last two days (~576 at a 5-minute interval, ~0.25 ms
    # a report). PostgreSQL's is made with each day's samples instead (`_resend_index`).
    (_resend_index,),
)


def apply_migrations(db: Any, current: int, run: Callable[[str], Any]) -> None:
    """Bring `db` from schema version `current` to the newest, inside the caller's
    transaction; `run` runs one SQL statement as its backend must (PostgreSQL translates).

    Raises:
        SchemaTooNew: the store was written by a newer Estate.
    """
    if current > len(MIGRATIONS):
        raise SchemaTooNew(f"{db.name} has schema version {current}, newer than this Estate "
                           f"({len(MIGRATIONS)}): upgrade Estate")
    for version, steps in enumerate(MIGRATIONS[current:], start=current + 1):
        for step in steps:
            # SQL, or a function of the database for what SQL cannot do portably (hashing
            # existing rows, partitioning PostgreSQL's history).
            if callable(step):
                step(db)
            else:
                run(step)
        run(f"INSERT INTO schema_version (version) VALUES ({version})")  # noqa: S608 - an int
