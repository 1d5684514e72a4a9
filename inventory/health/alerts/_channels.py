"""Sending one message through one channel: e-mail (SMTP), a webhook (JSON POST) or syslog
(RFC 5424). Each `send` blocks, bounded by the channel's timeout: the hub calls it on a
thread, never on its event loop, and never on the ingest path.

Agent-supplied text reaches a channel only as `Message` made it (one safe line per piece);
here it is JSON-encoded for webhooks, kept out of markup (Slack plain_text, Markdown escaped
for Teams), never put in an e-mail header with a line break, and escaped as RFC 5424 wants in
syslog's structured data.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import smtplib
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from estate.inventory.errors import EstateError
from estate.inventory.health.alerts._message import Message
from estate.inventory.health.alerts._rules import (
    FACILITIES,
    Channel,
    EmailChannel,
    SyslogChannel,
    WebhookChannel,
)
from estate.inventory.sanitise import plain

# RFC 5424 severities for ours (2 critical, 3 error, 4 warning, 5 notice, 6 informational).
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
# Structured data's SD-ID: "estate" at the private enterprise number RFC 5612 sets aside for
# documentation; a site with its own number can map it in its collector.
SD_ID = "estate@32473"
# One datagram: RFC 5426 asks receivers to take 2048 octets; most take far more, and a
# longer UDP message is cut rather than lost.
SYSLOG_UDP_MAX = 2048
SYSLOG_TCP_MAX = 8192
WEBHOOK_ANSWER_READ = 64 * 1024
THEME = {"critical": "C50F1F", "high": "DA3B01", "medium": "F7B500", "low": "0078D4",
         "info": "8A8886"}


# A send's whole time, in its channel's timeouts. The timeout bounds each network wait; a
# peer that answers a few bytes inside every wait (SMTP continuation lines without end, an
# HTTP body trickled a byte at a time) would otherwise hold the sending thread for ever.
DEADLINE_TIMEOUTS = 3


class SendError(EstateError):
    """A send that did not succeed; the message says why in one line (never a secret)."""


class _Deadline:
    """Ends a send that outlives its budget: a timer shuts its sockets down, so the read
    the thread is blocked in returns at once and the send fails."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.passed = False
        self._sockets: list[Callable[[], socket.socket | None]] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._end)
        self._timer.daemon = True

    def watch(self, current: Callable[[], socket.socket | None]) -> None:
        """Watch the socket `current` returns at the deadline (SMTP swaps its socket for a
        TLS one on STARTTLS, so it is asked for then, not now)."""
        with self._lock:
            self._sockets.append(current)
            passed = self.passed
        if passed:
            _shut(current())

    def _end(self) -> None:
        with self._lock:
            self.passed = True
            sockets = list(self._sockets)
        for current in sockets:
            _shut(current())

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed meanwhile: the send is over anyway
            pass


def send(channel: Channel, message: Message, number: int = 0) -> None:
    """Send `message` (notification `number`: e-mail Message-IDs) through `channel`, in
    DEADLINE_TIMEOUTS of its timeout at most.

    Raises:
        SendError: it was not accepted; the message says why.
    """
    deadline = _Deadline(channel.timeout_s * DEADLINE_TIMEOUTS)
    try:
        with deadline:
            if isinstance(channel, EmailChannel):
                send_email(channel, message, number, deadline)
            elif isinstance(channel, WebhookChannel):
                send_webhook(channel, message, deadline)
            else:
                send_syslog(channel, message, deadline)
    except (SendError, OSError, smtplib.SMTPException, http.client.HTTPException,
            ValueError) as exc:
        if deadline.passed:
            raise SendError(f"not done within its deadline of {deadline.seconds:g} s "
                            f"({DEADLINE_TIMEOUTS} times the channel's timeout)") from None
        if isinstance(exc, SendError):
            raise
        raise SendError(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return plain(f"{exc.__class__.__name__}: {text}" if not isinstance(exc, SendError)
                 else text, 300)


# --- e-mail -------------------------------------------------------------------------------

def thread_root(thread: str, rule: str, domain: str) -> str:
    """The Message-ID of a thread's first message for one rule: every later message of the
    incident (or host condition) replies to it."""
    digest = hashlib.sha256(f"{rule}\n{thread}".encode()).hexdigest()[:32]
    return f"<estate.{digest}@{domain}>"


FIRST_EVENTS = ("opened", "firing", "started", "changed", "test")


def email_message(channel: EmailChannel, message: Message, number: int) -> EmailMessage:
    """The e-mail for a message: one per incident, its updates threaded under the first."""
    mail = EmailMessage()
    domain = channel.sender.rsplit("@", 1)[1]
    root = thread_root(message.thread, message.rule, domain)
    headers = {
        # The title is one line already (`Message.make`); plain() again, since a header
        # with a line break in it would start a header of the sender's choosing.
        "Subject": plain(f"[Estate {message.severity}] {message.title}", 250),
        "From": channel.sender,
        "To": ", ".join(channel.to),
        "Date": formatdate(usegmt=True),
        "X-Estate-Rule": message.rule,
        "X-Estate-Event": f"{message.condition} {message.event}",
    }
    if message.event in FIRST_EVENTS:
        headers["Message-ID"] = root
    else:
        headers["Message-ID"] = f"<estate.{root[8:40]}.{number}@{domain}>"
        headers["In-Reply-To"] = root
        headers["References"] = root
    for name, value in headers.items():
        if "\r" in value or "\n" in value:  # cannot happen: every value is one line
            raise SendError(f"header {name} would hold a line break")
        mail[name] = value
    body = [*message.lines, ""]
    for name, value in message.facts:
        body.append(f"{name}: {value}")
    body += ["", f"Rule: {message.rule} ({message.condition}), severity {message.severity}",
             f"At: {message.at}"]
    mail.set_content("\n".join(body) + "\n")
    return mail


class _WatchedSMTP(smtplib.SMTP):
    """An SMTP client whose socket, plain or TLS, the deadline can shut."""

    def __init__(self, deadline: _Deadline | None, host: str, port: int,
                 timeout: float) -> None:
        if deadline is not None:
            deadline.watch(lambda: self.sock)
        super().__init__(host, port, timeout=timeout)


def send_email(channel: EmailChannel, message: Message, number: int,
               deadline: _Deadline | None = None) -> None:
    mail = email_message(channel, message, number)
    context = ssl.create_default_context(cafile=channel.ca_file)
    with _WatchedSMTP(deadline, channel.host, channel.port, channel.timeout_s) as smtp:
        smtp.ehlo()
        if channel.starttls:
            if not smtp.has_extn("starttls"):
                raise SendError(f"{channel.host}:{channel.port} does not offer STARTTLS "
                                f"(starttls = true)")
            smtp.starttls(context=context)
            smtp.ehlo()
        if channel.username:
            # The rules file refuses a username without starttls; checked again here since
            # a password must never cross the network in clear.
            if not channel.starttls:
                raise SendError("refusing to log in without TLS")
            password = channel.password()
            if password is None:
                raise SendError(f"no password: ${channel.password_env} is not set")
            smtp.login(channel.username, password)
        refused = smtp.send_message(mail, from_addr=channel.sender, to_addrs=list(channel.to))
        if refused:
            raise SendError(f"{len(refused)} of {len(channel.to)} recipients refused")


# --- webhooks -----------------------------------------------------------------------------

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def _md(text: str) -> str:
    """Text Markdown shows as itself (Teams renders Markdown in cards)."""
    return _MARKDOWN.sub(r"\\\1", text)


def webhook_payload(fmt: str, message: Message) -> dict[str, Any]:
    """The JSON a webhook channel posts (docs/configuration.md, "Alert rules and channels")."""
    facts = list(message.facts)
    if fmt == "slack":
        # plain_text everywhere: Slack would read mrkdwn in agent text (<!channel>, links).
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": message.title[:150]}},
            {"type": "section", "text": {"type": "plain_text",
                                         "text": (message.text() or message.title)[:3000]}}]
        if facts:
            blocks.append({"type": "section", "fields": [
                {"type": "plain_text", "text": f"{k}: {v}"[:2000]} for k, v in facts[:10]]})
        # `text` is the notification's fallback, read as mrkdwn: &, < and > escaped as
        # Slack asks, so no agent text becomes a mention or a link.
        fallback = message.title.replace("&", "&amp;").replace("<", "&lt;").replace(">",
                                                                                   "&gt;")
        return {"text": fallback, "blocks": blocks}
    if fmt == "teams":
        body: list[dict[str, Any]] = [
            {"type": "TextBlock", "text": _md(message.title), "weight": "Bolder",
             "size": "Medium", "wrap": True}]
        body += [{"type": "TextBlock", "text": _md(line), "wrap": True}
                 for line in message.lines]
        if facts:
            body.append({"type": "FactSet", "facts": [{"title": _md(k), "value": _md(v)}
                                                      for k, v in facts]})
        return {
            # An Office 365 connector's MessageCard ...
            "@type": "MessageCard", "@context": "https://schema.org/extensions",
            "summary": message.title, "themeColor": THEME.get(message.severity, "8A8886"),
            "title": _md(message.title),
            "text": "\n\n".join(_md(line) for line in message.lines) or _md(message.title),
            "sections": [{"facts": [{"name": _md(k), "value": _md(v)} for k, v in facts]}]
            if facts else [],
            # ... and the same as an Adaptive Card, for a Teams Workflows webhook.
            "type": "message",
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                             "contentUrl": None, "content": {
                                 "$schema": "http://adaptivecards.io/schemas/"
                                            "adaptive-card.json",
                                 "type": "AdaptiveCard", "version": "1.4", "body": body}}],
        }
    return {"source": "estate", "version": 1, "rule": message.rule,
            "condition": message.condition, "event": message.event,
            "severity": message.severity, "title": message.title, "text": message.text(),
            "at": message.at, "thread": message.thread, "agency": message.agency,
            "site": message.site, "facts": dict(facts), "incident": message.incident,
            "host": message.host}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: the body would be dropped (POST turned GET) or sent where
    the rules file never said."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _watched_opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """`_OPENER` with each connection's socket under the deadline (urllib lets go of the
    connection once the answer's head is read; the socket lives on under the answer)."""

    def watched(base: type[http.client.HTTPConnection]) -> Callable[..., Any]:
        def connection(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            conn = base(host, **kwargs)
            connect = conn.connect

            def connect_watched() -> None:
                connect()
                sock = conn.sock
                deadline.watch(lambda: sock)

            conn.connect = connect_watched  # type: ignore[method-assign]
            return conn
        return connection

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(watched(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(watched(http.client.HTTPSConnection), req,
                                context=self._context)  # type: ignore[attr-defined]

    return urllib.request.build_opener(_NoRedirect, Http, Https)


def send_webhook(channel: WebhookChannel, message: Message,
                 deadline: _Deadline | None = None) -> None:
    body = json.dumps(webhook_payload(channel.format, message), ensure_ascii=True,
                      separators=(",", ":")).encode()
    # The rules file allows http and https URLs only (S310's concern: no file: or custom).
    request = urllib.request.Request(  # noqa: S310
        channel.url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "estate-hub",
                 **dict(channel.headers)})
    # Errors name the channel's host, never its URL: Slack's and Teams' carry a secret.
    try:
        opener = _OPENER if deadline is None else _watched_opener(deadline)
        with opener.open(request, timeout=channel.timeout_s) as answer:
            answer.read(WEBHOOK_ANSWER_READ)
            status = answer.status
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the answer's connection
        raise SendError(f"HTTP {exc.code} from {_host_of(channel.url)}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, str) else _one_line(exc.reason)
        raise SendError(f"{_host_of(channel.url)}: {plain(reason, 200)}") from None
    if not 200 <= status < 300:
        raise SendError(f"HTTP {status} from {_host_of(channel.url)}")


def _host_of(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


# --- syslog -------------------------------------------------------------------------------

def _sd_value(text: str) -> str:
    """A structured-data parameter value: RFC 5424 escapes '"', '\\' and ']'."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _token(text: str, limit: int) -> str:
    """A header field: printable US-ASCII, no spaces, or the nil value."""
    out = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return out or "-"


def syslog_message(channel: SyslogChannel, message: Message, hostname: str | None = None,
                   limit: int = SYSLOG_UDP_MAX) -> bytes:
    """One RFC 5424 message (without transport framing), at most `limit` bytes."""
    pri = FACILITIES[channel.facility] * 8 + SYSLOG_SEVERITY.get(message.severity, 5)
    params = [("rule", message.rule), ("condition", message.condition),
              ("event", message.event), ("severity", message.severity),
              ("thread", message.thread)]
    params += [(k, v) for k, v in (("agency", message.agency), ("site", message.site))
               if v is not None]
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params) + "]"
    head = (f"<{pri}>1 {message.at} {_token(hostname or socket.gethostname(), 255)} "
            f"{_token(channel.app_name, 48)} {os.getpid()} "
            f"{_token(message.condition, 32)} {sd} ")
    text = " | ".join([message.title, *message.lines])
    data = head.encode() + b"\xef\xbb\xbf" + text.encode()  # BOM: the MSG is UTF-8
    if len(data) > limit:
        data = data[:limit].decode("utf-8", "ignore").encode()  # cut on a character
    return data


def send_syslog(channel: SyslogChannel, message: Message,
                deadline: _Deadline | None = None) -> None:
    if channel.transport == "udp":
        data = syslog_message(channel, message)
        family = socket.AF_INET6 if ":" in channel.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(channel.timeout_s)
            sock.sendto(data, (channel.host, channel.port))
        return
    data = syslog_message(channel, message, limit=SYSLOG_TCP_MAX)
    with socket.create_connection((channel.host, channel.port),
                                  timeout=channel.timeout_s) as sock:
        if deadline is not None:
            deadline.watch(lambda: sock)
        # RFC 6587 octet counting: the length, a space, the message.
        sock.sendall(f"{len(data)} ".encode() + data)
