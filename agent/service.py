"""`estate-agent run`: the agent as a service.

One SSH connection to the hub, a report every `interval` (±10%) over the connection's report
stream (`estate-report v2`; v1 against a hub that does not know it). Every report goes to the
spool before it is sent and leaves it only after the hub's ack; the newest goes first, the
backlog follows at `backlog_rate`. A package list the hub acked last time goes by hash only;
the hub asks for the whole report (`need_full`) when it holds another. Reconnects back off
exponentially with full jitter; a refused login or a changed hub key is logged loudly and
retried only at the cap.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from estate.agent import pins
from estate.agent.config import AgentConfig, ConfigError, load
from estate.agent.probe_policy import ProbePolicy
from estate.agent.remote import RemoteRelay
from estate.agent.spool import Spool, Spooled, SpoolFull, SpoolLimits
from estate.agent.transport import (
    MAX_BUSY_WAIT_S,
    HostKeyMismatch,
    HubBusy,
    HubClient,
    HubError,
    StreamEnded,
    load_key,
)
from estate.inventory.private_files import OpenDataDir, private_dir, write_private
from estate.inventory.protocol import ChannelExit, Exit
from estate.inventory.sanitise import plain

log = logging.getLogger("estate.agent")

STATUS_FILE = "status.json"
SPOOL_FILE = "spool.db"
LIVENESS_CHECK_S = 5.0


class Backoff:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**n))."""

    def __init__(self, base_s: float, cap_s: float) -> None:
        self.base_s, self.cap_s, self.failures = base_s, cap_s, 0

    def next_delay(self) -> float:
        delay = random.uniform(0, min(self.cap_s, self.base_s * 2 ** min(self.failures, 30)))  # noqa: S311 - jitter, not security
        self.failures += 1
        return max(delay, 0.1)

    def reset(self) -> None:
        self.failures = 0


class Service:
    def __init__(self, config: AgentConfig) -> None:
        if not (config.agent_id and config.hub and config.hub_key and config.key_file):
            raise ConfigError(str(config.path), "", "not enrolled (run estate-agent enrol)")
        self.cfg = config
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.backoff = Backoff(1.0, config.reconnect_max_s)
        self.client: HubClient | None = None
        self.relay = RemoteRelay(config.agent_id, config.remote_access_target) \
            if config.remote_access else None
        # Raises OpenDataDir: the key, spool and status must not sit where others can read.
        private_dir(config.state_dir())
        self.spool = self._open_spool()
        self.probe_policy = ProbePolicy(config.state_dir(), config.accept_hub_probes)
        self.unspooled: bytes | None = None  # the latest report when the spool cannot keep it
        # Acked by the hub, but still in the spool because it could not delete them (disk
        # full): never sent again, deleted once the spool takes writes again.
        self.acked_in_spool: set[int] = set()
        # The package list hash of the newest report the hub acked (kept in the spool across
        # restarts): a report with the same list sends it by hash only. A wrong guess costs
        # one `need_full` round trip, no more.
        self.acked_software = self._saved_acked_software()
        self.acked_software_seq = -1  # whose ack set it: a backlog's older acks do not
        self.sample: Any = None
        now = time.monotonic()
        self.next_report_at = now
        # A random start delay, so a hub restart or a power cut does not bring every agent
        # back in the same second.
        self.not_before = now + random.uniform(0, config.start_delay_s)  # noqa: S311
        self.next_send_at = now  # pacing of the backlog; not_before gates reconnects
        self.state: dict[str, Any] = {"pid": os.getpid(), "hub": config.hub,
                                      "agent_id": config.agent_id, "connected": False,
                                      "last_ack_at": None, "last_report_id": None,
                                      "last_error": None, "last_error_at": None,
                                      "remote_access": "on" if config.remote_access
                                      else "off"}

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> int:
        # A Windows service runs this loop on the service manager's thread, where Python
        # cannot take signals: its SvcStop sets `stop` instead (agent/winservice.py).
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
            signal.signal(signal.SIGINT, lambda *_: self.stop.set())
            if hasattr(signal, "SIGHUP"):
                signal.signal(signal.SIGHUP, lambda *_: self.reload.set())
        log.info("agent %s reporting to %s every %g s", self.cfg.agent_id, self.cfg.hub,
                 self.cfg.interval_s)
        while not self.stop.is_set():
            if self.reload.is_set():
                self._reload()
            # Connected first: the report times its round trip to the hub on the connection
            # that sends it.
            self._keep_connected()
            now = time.monotonic()
            if now >= self.next_report_at:
                self._collect()
                self._offer_remote()  # again each interval, in case an admin allowed it
                self.next_report_at = now + self.cfg.interval_s * random.uniform(0.9, 1.1)  # noqa: S311
                _release_memory()
            if self._pending() and self.client and time.monotonic() >= self.next_send_at:
                self._send_one()
            self._write_state()
            self.stop.wait(self._sleep_time())
        self._delete_acked()
        log.info("stopping: %d report(s) left in the spool for next time", self._depth()[0])
        if self.client:
            self.client.close()
        self.state["connected"] = False
        self._write_state(stopped=True)
        if self.spool:
            self.spool.close()
        return Exit.OK

    def _sleep_time(self) -> float:
        now = time.monotonic()
        wake = self.next_report_at
        if self.client is None:
            wake = min(wake, self.not_before)
        else:
            # Look at the connection now and then: when the hub goes away, reconnect at
            # once (with backoff) so presence comes back without waiting for a report.
            wake = min(wake, now + LIVENESS_CHECK_S)
            if self._pending():
                wake = min(wake, self.next_send_at)
        return max(0.05, wake - now)

    def _keep_connected(self) -> None:
        """Hold the connection: it is the agent's presence on the hub."""
        if self.client is not None and (self.client.transport is None
                                        or not self.client.transport.is_active()):
            self._disconnected(HubError(f"lost the connection to {self.cfg.hub}"))
        if self.client is None and time.monotonic() >= self.not_before:
            try:
                self._connected()
            except HostKeyMismatch as exc:
                self._give_up_for_now(str(exc))
            except HubError as exc:
                self._disconnected(exc)

    def _reload(self) -> None:
        self.reload.clear()
        assert self.cfg.path is not None
        try:
            new = load(self.cfg.path)
        except ConfigError as exc:
            log.error("SIGHUP: keeping the running config, the file is broken: %s", exc)
            return
        hub_changed = (new.hub, new.hub_key, new.key_file) != \
            (self.cfg.hub, self.cfg.hub_key, self.cfg.key_file)
        remote_changed = (new.remote_access, new.remote_access_target) != \
            (self.cfg.remote_access, self.cfg.remote_access_target)
        if remote_changed:
            # A new connection offers (or no longer offers) the sshd as the config now says.
            hub_changed = True
            self.relay = RemoteRelay(new.agent_id or "", new.remote_access_target) \
                if new.remote_access else None
            self.state["remote_access"] = "on" if new.remote_access else "off"
        if new.accept_hub_probes != self.cfg.accept_hub_probes:
            self.probe_policy = ProbePolicy(new.state_dir(), new.accept_hub_probes)
        self.cfg = new
        self.backoff.cap_s = new.reconnect_max_s
        if hub_changed and self.client:
            self.client.close()
            self.client = None
        log.info("SIGHUP: configuration reloaded from %s", new.path)

    # --- collecting ---------------------------------------------------------------------

    def _open_spool(self) -> Spool | None:
        sc = self.cfg.spool
        path = sc.path or self.cfg.state_dir() / SPOOL_FILE
        try:
            return Spool(path, SpoolLimits(sc.max_reports, sc.max_bytes, sc.max_age_s))
        except OpenDataDir:
            raise  # the operator must fix the folder's mode: not a reason to run unspooled
        except Exception as exc:  # run without a spool rather than not at all
            log.error("cannot open the spool %s (%s): sending reports directly, unspooled",
                      path, exc)
            return None

    def _collect(self) -> None:
        from estate.agent.collect import DEFAULT_TIMEOUT_S, collect_report

        probes = self.probe_policy.prober(self.cfg.hub, self.cfg.probes, self.cfg.interval_s,
                                          self._hub_round_trip)
        seq = self.spool.next_sequence() if self.spool else time.time_ns() // 1_000_000
        report, self.sample = collect_report(
            agent_id=self.cfg.agent_id, sequence=seq, probes=probes, previous=self.sample,
            interval_s=self.cfg.interval_s, cache_dir=self.cfg.state_dir(),
            timeout_s=self.cfg.collector_timeout_s or DEFAULT_TIMEOUT_S)
        if self.probe_policy.reported_hash is not None:
            report["agent"]["probe_policy"] = self.probe_policy.reported_hash
        self._delete_acked()
        if self.spool:
            try:
                self._spool(report)
                self.unspooled = None
            except SpoolFull as exc:
                self._error(f"spool cannot store reports ({exc}): sending directly, "
                            "unspooled; a report that fails to send now is lost")
                self.unspooled = _body(report)
        else:
            self.unspooled = _body(report)
        # The newest report goes out first, now; but not before a busy hub said to come back.
        self.next_send_at = max(time.monotonic(), self.not_before)

    def _spool(self, report: dict[str, Any]) -> None:
        """Put the report in the spool: its package list by hash only when the hub acked
        that list last, and the list beside it (once per list) for a `need_full`.

        Raises:
            SpoolFull: the spool cannot take it.
        """
        assert self.spool is not None
        software = report["software"]
        packages, software_hash = software["packages"], software["hash"]
        if packages is None or software_hash is None:
            self.spool.put(report["report_id"], _body(report))
            return
        by_hash = software_hash == self.acked_software
        try:
            kept = self.spool.has_packages(software_hash)
        except sqlite3.Error as exc:
            raise SpoolFull(str(exc)) from None
        # Compressed only when the list changed: the common report costs no work on it.
        listed = None if kept else \
            gzip.compress(json.dumps(packages, separators=(",", ":")).encode(), 1)
        if by_hash:
            software["packages"] = None
        body = _body(report)
        software["packages"] = packages
        self.spool.put(report["report_id"], body, software_hash, by_hash, listed)

    def _saved_acked_software(self) -> str | None:
        try:
            return self.spool.acked_software() if self.spool else None
        except sqlite3.Error:
            return None

    def _hub_round_trip(self, timeout_s: float) -> float | None:
        """The `hub` probe: the round trip over the connection the report goes out on."""
        from estate.agent.probes import ProbeUnavailable

        client = self.client
        if client is None:
            if self.state["last_error"] is None:  # in the start delay: nothing tried yet
                raise ProbeUnavailable("not connected to the hub yet")
            raise HubError(f"not connected: {self.state['last_error']}")
        return client.round_trip_ms(timeout_s)

    def _pending(self) -> bool:
        return self.unspooled is not None or self._depth()[0] > len(self.acked_in_spool)

    def _depth(self) -> tuple[int, int]:
        try:
            return self.spool.depth() if self.spool else (0, 0)
        except Exception:  # a broken spool must not stop the loop
            return 0, 0

    # --- sending ------------------------------------------------------------------------

    def _send_one(self) -> None:
        item = self._next_item()
        if item is None:
            return
        try:
            client = self._connected()
            drops = self.spool.unreported_drops() if self.spool else 0
            result = client.report(_with_drops(item.body, drops))
            if result.doc.get("code") == "need_full" and item.by_hash:
                # The hub holds another package list than the one last acked (or none): the
                # same report again, at once, with its list.
                self._forget_acked_software()
                full = self._in_full(item)
                if full is not None:
                    result = client.report(_with_drops(full, drops))
        except HostKeyMismatch as exc:
            self._give_up_for_now(str(exc))
            return
        except StreamEnded as exc:
            delay = self.backoff.next_delay()
            self._error(f"{exc}; sending report {item.report_id} again in {delay:.1f} s")
            self.next_send_at = time.monotonic() + delay
            return
        except HubError as exc:
            self._disconnected(exc)
            return
        doc = result.doc
        if result.exit_status == ChannelExit.OK:
            self._acked(item, doc, drops)
        elif doc.get("code") == "need_full":
            # Sent in full and still refused, or its list is not in the spool to send.
            self._forget_acked_software()
            self._error(f"hub asked for report {item.report_id} in full, which the agent "
                        f"cannot send; dropped it")
            self._forget(item)
            self.next_send_at = time.monotonic()
        elif result.exit_status == ChannelExit.DATA:
            # The hub will never take this report as it is; keeping it would block the rest.
            # The hub's words are plain text here: no terminal controls reach the log.
            self._error(f"hub rejected report {item.report_id}: {plain(doc.get('message'))} "
                        f"(field {plain(doc.get('path') or '-')}); dropped it")
            self._forget(item)
            self.next_send_at = time.monotonic()
        elif result.exit_status == ChannelExit.TEMPFAIL:
            wait = max(_retry_after(doc.get("retry_after")), self.backoff.next_delay())
            self._error(f"hub busy ({plain(doc.get('code'), 40)}): retrying in {wait:.0f} s")
            # Connected or not, nothing is sent before then (not_before gates reconnects).
            self.not_before = self.next_send_at = time.monotonic() + wait
        else:
            self._give_up_for_now(f"hub refused: {plain(doc.get('message'))} "
                                  f"({plain(doc.get('code'), 40)})")

    def _in_full(self, item: Spooled) -> bytes | None:
        """A report spooled by hash only, with its package list; None if the list is gone."""
        try:
            listed = self.spool.package_list(item.software_hash) \
                if self.spool and item.software_hash else None
            if listed is None:
                return None
            report = json.loads(gzip.decompress(item.body))
            report["software"]["packages"] = json.loads(gzip.decompress(listed))
        except (sqlite3.Error, OSError, ValueError, KeyError, TypeError) as exc:
            self._error(f"cannot rebuild report {item.report_id} in full: {exc}")
            return None
        return _body(report)

    def _forget_acked_software(self) -> None:
        """The hub does not hold the list last acked: send lists in full until an ack."""
        self.acked_software = None
        if self.spool:
            try:
                self.spool.save_acked_software(None)
            except sqlite3.Error:
                pass  # a wrong guess after a restart costs one more `need_full`, no more

    def _next_item(self) -> Spooled | None:
        if self.unspooled is not None:
            return Spooled(-1, "(unspooled)", self.unspooled)
        try:
            return self.spool.newest(excluding=self.acked_in_spool) if self.spool else None
        except Exception as exc:  # a broken spool must not stop the loop
            self._error(f"cannot read the spool: {exc}")
            return None

    def _connected(self) -> HubClient:
        if self.client is None or self.client.transport is None or \
                not self.client.transport.is_active():
            if self.client:
                self.client.close()
            assert self.cfg.hub and self.cfg.hub_key and self.cfg.key_file \
                and self.cfg.agent_id
            self.client = HubClient(self.cfg.hub, self.cfg.hub_key,
                                    load_key(self.cfg.key_file), self.cfg.agent_id,
                                    hub_key_next=self.cfg.hub_key_next)
            self.client.connect()
            log.info("connected to %s", self.cfg.hub)
            self._repin(pins.after_connect(self.cfg, self.client.presented_key))
            self.state["connected"] = True
            self._offer_remote()
        return self.client

    def _offer_remote(self) -> None:
        """Offer this machine's sshd to the hub, when the config enables remote access."""
        if self.relay is None or self.client is None or self.client.transport is None:
            return
        self.relay.offer(self.client.transport)
        self.state["remote_access"] = self.relay.state()

    def _repin(self, new: AgentConfig | None) -> None:
        """The hub's key is being rotated: pin as `agent/pins.py` decided, in the config
        file and on the open connection (it reconnects with its own pins)."""
        if new is None:
            return
        self.cfg = pins.saved_or_logged(new)
        if self.client:
            self.client.hub_key, self.client.hub_key_next = new.hub_key or "", new.hub_key_next

    def _acked(self, item: Spooled, doc: dict[str, Any], drops: int) -> None:
        self._repin(pins.after_ack(self.cfg, doc))
        if "probe_policy" in doc:
            self.probe_policy.receive(doc["probe_policy"])
        sequence = _sequence(item.report_id)
        if item.software_hash is not None and sequence > self.acked_software_seq:
            # The hub shows the newest report's list; a backlog's older ones do not change it.
            self.acked_software_seq = sequence
            if item.software_hash != self.acked_software:
                self.acked_software = item.software_hash
                try:
                    self.spool.save_acked_software(item.software_hash)  # type: ignore[union-attr]
                except sqlite3.Error:
                    pass  # a wrong guess after a restart costs one `need_full`, no more
        self._forget(item)
        if self.spool and drops:
            try:
                self.spool.drops_reported(drops)
            except Exception as exc:  # the hub may hear of these drops twice; no worse
                self._error(f"cannot count the drops told to the hub: {exc}")
        self.backoff.reset()
        self.not_before = 0.0
        self.state.update(connected=True, last_ack_at=_now_iso(),
                          last_report_id=doc.get("report_id"))
        # Backlog at a limited rate, so a hub coming back is not flooded by every agent.
        self.next_send_at = time.monotonic() + 1.0 / self.cfg.backlog_rate

    def _forget(self, item: Spooled) -> None:
        if item.seq < 0:
            self.unspooled = None
        elif self.spool:
            self.acked_in_spool.add(item.seq)
            failure = self._delete_acked()
            if failure:  # resending it would burn the hub's budget for this agent
                self._error(f"cannot remove an acked report from the spool ({failure}): "
                            "it is not sent again, and is removed when the spool has room")

    def _delete_acked(self) -> str | None:
        """Delete the reports the hub acked from the spool; why not, if some are left."""
        for seq in sorted(self.acked_in_spool):  # only ever filled when there is a spool
            try:
                self.spool.ack(seq)  # type: ignore[union-attr]
            except Exception as exc:  # a broken spool must not stop the loop
                return str(exc)
            self.acked_in_spool.discard(seq)
        return None

    def _disconnected(self, exc: HubError) -> None:
        if self.client:
            self.client.close()
            self.client = None
        self.state["connected"] = False
        if isinstance(exc, HubBusy):
            # Not a failure: the hub sheds load so agents spread over the others. Back after
            # its retry_after, plus jitter of our own, so the agents it sent away together do
            # not all come back in the same second; no louder than a line at INFO.
            delay = exc.retry_after * random.uniform(1.0, 1.25)  # noqa: S311 - jitter
            log.info("%s: retrying in %.0f s", exc, delay)
            self._error(str(exc), logged=True)
            self.not_before = time.monotonic() + delay
            return
        if not exc.retry:
            self._give_up_for_now(str(exc))
            return
        delay = self.backoff.next_delay()
        self._error(f"{exc}; retrying in {delay:.1f} s")
        self.not_before = time.monotonic() + delay

    def _give_up_for_now(self, message: str) -> None:
        """Auth failures and key mismatches need a person: say so loudly, retry at the cap."""
        if self.client:
            self.client.close()
            self.client = None
        self.state["connected"] = False
        log.error("%s — retrying in %g s", message, self.cfg.reconnect_max_s)
        self._error(message, logged=True)
        self.not_before = time.monotonic() + self.cfg.reconnect_max_s

    def _error(self, message: str, logged: bool = False) -> None:
        if not logged:
            log.warning("%s", message)
        self.state.update(last_error=message, last_error_at=_now_iso())

    # --- status -------------------------------------------------------------------------

    def _write_state(self, stopped: bool = False) -> None:
        count, size = self._depth()
        state = {**self.state, "spool_reports": count, "spool_bytes": size,
                 "running": not stopped, "updated_at": _now_iso()}
        path = self.cfg.state_dir() / STATUS_FILE
        try:
            write_private(path, json.dumps(state, indent=1).encode())
        except OSError:
            pass  # a full disk must not stop reporting; `status` will show stale data


def _retry_after(value: object) -> float:
    """A `busy` answer's retry_after, in seconds, bounded as the login's (MAX_BUSY_WAIT_S):
    not a number (or NaN) counts as 0, so the backoff decides; it never parks the agent."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0.0
    # Bounded before it becomes a float: a 400-digit int is valid JSON and would overflow.
    return float(min(MAX_BUSY_WAIT_S, max(0.0, value)))


def _sequence(report_id: str) -> int:
    """A report's sequence number (the last part of its id): the order the agent made it."""
    try:
        return int(report_id.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


def _body(report: dict[str, Any]) -> bytes:
    """A report as the hub takes it: compact JSON, gzip'd."""
    return gzip.compress(json.dumps(report, separators=(",", ":")).encode(), 6)


def _with_drops(body: bytes, drops: int) -> bytes:
    """Tell the hub how many reports the spool dropped, in the report being sent."""
    if not drops:
        return body
    report = json.loads(gzip.decompress(body))
    report["agent"]["dropped_reports"] = drops
    return gzip.compress(json.dumps(report, separators=(",", ":")).encode(), 6)


def _release_memory() -> None:
    """Give the memory of a collection back to the OS: an agent idles 99% of the time.

    glibc keeps freed heap pages; malloc_trim returns them, so idle RSS stays small.
    """
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (macOS, Windows, musl): nothing to trim


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_status(config: AgentConfig) -> dict[str, Any] | None:
    """The running service's last status, or None if it never ran with this config."""
    path = config.state_dir() / STATUS_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    state["running"] = bool(state.get("running")) and isinstance(pid, int) \
        and _is_the_agent(pid, state.get("updated_at"))
    return state


# status.json's time has whole seconds, and psutil's start times are only as exact as the
# boot time the OS reports (whole seconds on Linux).
START_SLACK_S = 2.0


def _is_the_agent(pid: int, updated_at: object) -> bool:
    """Whether `pid` is still the agent that wrote status.json at `updated_at`.

    psutil rather than os.kill(pid, 0), which on Windows sends CTRL_C_EVENT, or /proc, which
    macOS lacks. A process that started after the agent's last write is another one that got
    the dead agent's pid (Windows reuses pids within seconds).
    """
    import calendar

    import psutil

    if not psutil.pid_exists(pid):
        return False
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # it exists, and whose it is cannot be told: as before psutil
        return True
    try:
        written = calendar.timegm(time.strptime(str(updated_at), "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:  # a status.json not written by the agent: the pid is all there is
        return True
    return started <= written + START_SLACK_S


def spool_path(config: AgentConfig) -> Path:
    return config.spool.path or config.state_dir() / SPOOL_FILE
