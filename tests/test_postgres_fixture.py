"""The throwaway PostgreSQL cluster of the store tests (tests/postgres.py), checked alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.postgres import PostgresCluster, PostgresStandby, skip_or_fail_without_postgres

psycopg = pytest.importorskip("psycopg")


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for process {pid}")


def test_server_answers_over_its_socket_only_and_runs_unprivileged(postgres):
    with psycopg.connect(postgres.url, connect_timeout=10) as conn:
        version = conn.execute("SELECT version()").fetchone()[0]
        assert version.startswith("PostgreSQL ")
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
        assert conn.execute("SELECT current_database()").fetchone()[0] == "estate"
        assert conn.info.host == str(postgres.socket_dir)
    if os.geteuid() == 0:
        assert _uid_of(postgres.server_pid()) != 0


def test_cluster_folder_is_gone_after_a_failing_test_body():
    skip_or_fail_without_postgres()
    cluster = PostgresCluster()
    with pytest.raises(RuntimeError, match="test body failed"):
        with cluster:
            pid = cluster.server_pid()
            url = cluster.create_database("second")
            with psycopg.connect(url, connect_timeout=10) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            raise RuntimeError("test body failed")
    assert not cluster.folder.exists()
    # pg_ctl stop -w returned, so the postmaster has exited: gone, or a zombie not yet reaped
    # (it is pg_ctl's child, not ours).
    try:
        assert "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        pass


def test_a_standby_streams_the_primary_reads_only_and_pauses_on_demand(postgres):
    url = postgres.create_database("standby_check")
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as primary:
        primary.execute("CREATE TABLE t (n INTEGER)")
        primary.execute("INSERT INTO t VALUES (1)")
        with PostgresStandby(postgres) as standby:
            assert standby.socket_dir != postgres.socket_dir
            with psycopg.connect(standby.url_for("standby_check"), autocommit=True,
                                 connect_timeout=10) as conn:
                assert conn.info.host == str(standby.socket_dir)
                assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
                assert conn.execute("SHOW hot_standby_feedback").fetchone() == ("on",)
                assert conn.execute("SELECT n FROM t").fetchall() == [(1,)]
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    conn.execute("INSERT INTO t VALUES (2)")

                standby.pause_replay()
                primary.execute("INSERT INTO t VALUES (2)")
                assert conn.execute("SELECT n FROM t").fetchall() == [(1,)]
                standby.resume_replay()
                standby.wait_caught_up()
                assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]
                pid = standby.server_pid()
            assert pid != postgres.server_pid()
        assert not standby.folder.exists()
        # The primary runs on without its standby.
        assert primary.execute("SELECT count(*) FROM t").fetchone() == (2,)
