"""The operator API (`estate-api v1`): one JSON request per line, one JSON response per line.

Every request is validated; a bad one gets an error with a stable code and the channel stays
usable. Scope is enforced here, on the hub: an operator never receives a host, a count or a
change outside their agencies. Runs on the store's thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from estate.inventory.changes import TooLarge
from estate.inventory.filters import FilterError, compile_filter
from estate.inventory.hostlist import COLUMN_KEYS, HOST_COLUMNS
from estate.inventory.hub._audit import AuditCoalescer
from estate.inventory.hub._budget import MAX_ANSWER
from estate.inventory.params import Params as _Params
from estate.inventory.params import RequestError as ApiError
from estate.inventory.params import is_unicode
from estate.inventory.sanitise import quoted
from estate.inventory.store import StoreInterface, parse_time, utcnow

log = logging.getLogger("estate.hub")

OPS = ("columns", "summary", "hosts", "host", "changes", "reports", "resolve", "overview",
       "incidents", "incident", "incident_ack", "incident_silence")
# Who may acknowledge or silence an incident: auditors read, they do not act.
INCIDENT_ACTORS = ("admin", "staff")


class OperatorApi:
    def __init__(self, store: StoreInterface, operator: Mapping[str, Any],
                 audit: AuditCoalescer | None = None, source: str = "?",
                 max_answer: int = MAX_ANSWER) -> None:
        self.store = store
        self.name = operator["name"]
        self.scope: list[str] | None = operator["agencies"]
        self.role: str | None = operator.get("role")
        self.audit, self.source = audit, source  # where probes out of scope are recorded
        self.max_answer = max_answer
        # The hosts in scope as counted at the first page of a paged walk (`after` ""),
        # answered as `total` on its next pages too (`_walk_total`).
        self._walk_count: int | None = None

    def _not_found(self, op: str, host: str) -> ApiError:
        """The refusal for a host not in scope, audited (coalesced per source).

        The operator is told the same whether the host exists in another agency or not at
        all; the audit row says which (`scope_denied` or `not_found`), for whoever reviews it.
        """
        if self.audit is not None:
            exists = (self.store.host_detail_exists(host, None) if op != "resolve"
                      else bool(self.store.remote_targets(host, None)))
            self.audit.record(self.source, f"operator:{self.name}",
                              "scope_denied" if exists else "not_found", host[:255], {"op": op})
        return ApiError("not_found", f"no host {host!r} in your agencies")

    def answer(self, line: bytes) -> tuple[bytes, str | None, Any]:
        """One request line in; its encoded answer line, error code (None: ok) and id out.

        Runs on the store thread, so the event loop never encodes a large answer; an answer
        over `max_answer` bytes is replaced by `too_large`.
        """
        response = self.handle(line)
        data = (json.dumps(response, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        if len(data) > self.max_answer:
            response = self._too_large(response.get("id"))
            data = (json.dumps(response, separators=(",", ":")) + "\n").encode()
        return data, None if response["ok"] else response["error"]["code"], response["id"]

    def _too_large(self, request_id: Any) -> dict[str, Any]:
        return {"id": request_id, "ok": False, "error": {
            "code": "too_large", "message": f"the answer is over {self.max_answer} bytes; "
                                            f"lower limit, or page (hosts: after; changes: "
                                            f"since or host)"}}

    def handle(self, line: bytes) -> dict[str, Any]:
        """One request line in, one response out (never raises)."""
        request_id: Any = None
        op: Any = None
        try:
            try:
                request = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):  # nesting 5,000 deep
                raise ApiError("bad_json", "each line must be one JSON object") from None
            if not isinstance(request, dict):
                raise ApiError("bad_request", "a request is a JSON object")
            request_id = request.get("id")
            if not isinstance(request_id, (str, int)) or isinstance(request_id, bool) or \
                    len(str(request_id)) > 64 or not is_unicode(str(request_id)):
                request_id = None
                raise ApiError("bad_request", "id: expected a string or number (64 chars max)")
            op = request.get("op")
            if op not in OPS:
                raise ApiError("unknown_op", f"op: expected one of {', '.join(OPS)}")
            result = getattr(self, f"_{op}")(_Params(request, op))
            return {"id": request_id, "ok": True, "result": result}
        except ApiError as exc:
            return {"id": request_id, "ok": False,
                    "error": {"code": exc.code, "message": exc.message}}
        except TooLarge:
            return self._too_large(request_id)
        except Exception as exc:
            # A bug or a value no check foresaw: this request fails, the channel goes on.
            log.exception("API request %s from operator %s failed", quoted(op, 32), self.name)
            detail = {"op": op if op in OPS else None, "error": type(exc).__name__}
            try:
                if self.audit is not None:
                    self.audit.record(self.source, f"operator:{self.name}", "api_internal",
                                      None, detail)
                else:
                    self.store.audit(f"operator:{self.name}", "api_internal", None, detail)
            except Exception:
                log.exception("auditing a failed API request failed")
            return {"id": request_id, "ok": False, "error": {
                "code": "internal", "message": "the hub failed to answer this request; it "
                                               "is logged, and other requests still work"}}

    # --- operations ---------------------------------------------------------------------

    def _columns(self, p: _Params) -> Any:
        p.done()
        return [{"key": c.key, "title": c.title, "description": c.description,
                 "numeric": c.numeric} for c in HOST_COLUMNS]

    def _summary(self, p: _Params) -> Any:
        p.done()
        return {**self.store.summary(self.scope).as_dict(), "operator": self.name,
                "agencies_in_scope": self.scope}

    def _hosts(self, p: _Params) -> Any:
        text = p.text("filter", default="", max_len=1000)
        sort = p.text("sort", default="hostname", choices=COLUMN_KEYS)
        reverse = p.flag("reverse")
        offset = p.integer("offset", default=0, low=0, high=10**7)
        after = p.text("after", default=None, max_len=64)
        limit = p.integer("limit", default=100_000, low=1, high=100_000)
        p.done()
        if after is not None:
            # The console's full snapshot, page by page after an agent id, paged in SQL.
            if text or sort != "agent_id" or reverse or offset:
                raise ApiError("bad_request", "after: only with sort agent_id, no filter, "
                                              "no offset")
            return {"columns": list(COLUMN_KEYS), "total": self._walk_total(after),
                    "rows": self.store.host_rows(self.scope, page=(after, limit))}
        try:
            match = compile_filter(text)
        except FilterError as exc:
            raise ApiError("bad_filter", str(exc)) from None
        rows = [r for r in self.store.host_rows(self.scope) if match(r)]
        index = COLUMN_KEYS.index(sort)
        if sort in ("compliance", "net"):
            # By the passing share alone: a summary's share is None when every control is
            # disabled for its agency, and None does not compare with a number. Net: by its
            # state, as the console sorts it (its round trip may be None).
            def value(r: Any) -> Any:
                return r[index][0] if r[index] is not None else None
        else:
            def value(r: Any) -> Any:
                return r[index]
        rows.sort(key=lambda r: (value(r) is None, value(r) if value(r) is not None else 0),
                  reverse=reverse)
        return {"columns": list(COLUMN_KEYS), "total": len(rows),
                "rows": rows[offset:offset + limit]}

    def _walk_total(self, after: str) -> int:
        """A paged walk's `total`: the hosts in scope, counted at its first page and kept
        for the rest, not counted at every one (forty pages at 100,000 hosts). Hosts that
        come or go during the walk reach the console through the watch, which it opens
        before it walks; a page with no rows ends a walk whatever the total said."""
        if not after or self._walk_count is None:
            self._walk_count = self.store.host_count(self.scope)
        return self._walk_count

    def _host(self, p: _Params) -> Any:
        agent_id = p.text("agent_id", max_len=64, required=True)
        p.done()
        detail = self.store.host_detail(agent_id, self.scope)
        if detail is None:
            raise self._not_found("host", agent_id)
        self.store.audit(f"operator:{self.name}", "host_read", agent_id)
        return detail.as_dict()

    def _changes(self, p: _Params) -> Any:
        host = p.text("host", default=None, max_len=255)
        since_text = p.text("since", default=None, max_len=40)
        limit = p.integer("limit", default=1000, low=1, high=100_000)
        p.done()
        try:
            since = parse_time(since_text) if since_text else None
        except ValueError:
            raise ApiError("bad_request", "since: expected a date like 2026-01-31 or an ISO "
                                          "time") from None
        # Read no further than the answer may be long: old rows may hold large values.
        return [c.as_dict() for c in self.store.scoped_changes(self.scope, host, since, limit,
                                                              max_bytes=self.max_answer)]

    def _reports(self, p: _Params) -> Any:
        agent_id = p.text("agent_id", max_len=64, required=True)
        limit = p.integer("limit", default=50, low=1, high=500)
        p.done()
        reports = self.store.recent_reports(agent_id, self.scope, limit)
        if reports is None:
            raise self._not_found("reports", agent_id)
        return [r.as_dict() for r in reports]


    def _overview(self, p: _Params) -> Any:
        """Per agency and site: is it OK (`estate.inventory.store._overview`)."""
        p.done()
        return self.store.overview(self.scope)

    # --- incidents (`estate.inventory.store._incidents`) ---------------------------------

    def _incidents(self, p: _Params) -> Any:
        state = p.text("state", default="open", choices=("open", "recent", "all"))
        agency = p.text("agency", default=None, max_len=255)
        site = p.text("site", default=None, max_len=255)
        limit = p.integer("limit", default=1000, low=1, high=1000)
        p.done()
        return [i.as_dict() for i in self.store.incidents(self.scope, state, agency, site,
                                                           limit, utcnow())]

    def _incident(self, p: _Params) -> Any:
        incident_id = p.integer("incident_id", default=0, low=1, high=2**63 - 1)
        p.done()
        found = self.store.incident(self._required_id(incident_id), self.scope)
        if found is None:
            raise self._incident_not_found("incident", incident_id)
        return found

    def _incident_ack(self, p: _Params) -> Any:
        incident_id = self._required_id(p.integer("incident_id", default=0, low=1, high=2**63 - 1))
        p.done()
        self._may_act("incident_ack", incident_id)
        done = self.store.ack_incident(incident_id, f"operator:{self.name}", self.scope,
                                       utcnow())
        if done is None:
            raise self._incident_not_found("incident_ack", incident_id)
        return done.as_dict()

    def _incident_silence(self, p: _Params) -> Any:
        incident_id = self._required_id(p.integer("incident_id", default=0, low=1, high=2**63 - 1))
        minutes = p.integer("minutes", default=0, low=1, high=10080)
        p.done()
        if not minutes:
            raise ApiError("bad_request", "minutes: required for incident_silence (1 to "
                                          "10080)")
        self._may_act("incident_silence", incident_id)
        now = utcnow()
        done = self.store.silence_incident(incident_id, f"operator:{self.name}",
                                           now + timedelta(minutes=minutes), self.scope, now)
        if done is None:
            raise self._incident_not_found("incident_silence", incident_id)
        return done.as_dict()

    def _required_id(self, incident_id: int) -> int:
        if not incident_id:
            raise ApiError("bad_request", "incident_id: required (an incident's id)")
        return incident_id

    def _may_act(self, op: str, incident_id: int) -> None:
        """Refuse (and audit, as every refusal is) a role that only reads."""
        if self.role not in INCIDENT_ACTORS:
            if self.audit is not None:
                self.audit.record(self.source, f"operator:{self.name}", "role_denied",
                                  f"incident:{incident_id}", {"op": op})
            raise ApiError("forbidden", f"{op}: role {self.role!r} may not acknowledge or "
                                        f"silence incidents (admin or staff only)")

    def _incident_not_found(self, op: str, incident_id: int) -> ApiError:
        """Out of scope or unknown, told alike; the audit row says which (as for hosts)."""
        if self.audit is not None:
            self.audit.record(self.source, f"operator:{self.name}",
                              "scope_denied" if self.store.incident_exists(incident_id)
                              else "not_found", f"incident:{incident_id}", {"op": op})
        return ApiError("not_found", f"no incident {incident_id} in your agencies")

    def _resolve(self, p: _Params) -> Any:
        """A host id or hostname to the one host it names, with its remote-access state."""
        host = p.text("host", max_len=255, required=True)
        p.done()
        matches = self.store.remote_targets(host, self.scope)
        if not matches:
            raise self._not_found("resolve", host)
        if len(matches) > 1:
            ids = ", ".join(m.agent_id for m in matches)
            raise ApiError("ambiguous", f"hostname {host!r} matches {len(matches)} hosts; use "
                                        f"the host id ({ids})")
        m = matches[0]
        return {"agent_id": m.agent_id, "hostname": m.hostname, "agency": m.agency,
                "site": m.site, "remote": m.remote}

