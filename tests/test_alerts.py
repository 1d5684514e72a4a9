"""Alert rules files and channels: every problem named by rule or channel and key; e-mail,
webhooks and syslog sent for real to receivers on loopback (tests/alert_servers.py)."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from estate.inventory.health.alerts import (
    Message,
    RulesError,
    SendError,
    parse_rules,
    send,
)
from tests.alert_servers import SmtpServer, SyslogListener, WebhookServer, free_port, self_signed
from tests.harness import run

GOOD = """
[channels.ops-mail]
type = "email"
host = "127.0.0.1"
port = {smtp}
starttls = false
from = "estate@example.org"
to = ["it@example.org", "duty@example.org"]

[channels.teams]
type = "webhook"
url = "{hook}"
format = "teams"

[channels.log]
type = "syslog"
host = "127.0.0.1"
port = {syslog}
facility = "local3"

[[rules]]
name = "site-down"
condition = "site_outage"
channels = ["ops-mail", "teams"]

[[rules]]
name = "servers-offline"
condition = "host_offline"
minutes = 15
hosts = "os:server"
agencies = ["Council"]
channels = ["log"]

[[rules]]
name = "full-disks"
condition = "disk"
percent = 90
sites = ["Town Hall"]
severity = "low"
channels = ["log"]
"""


def rules_text(smtp: int = 25, hook: str = "https://hooks.example.org/x", syslog: int = 514,
               extra: str = "") -> str:
    return GOOD.format(smtp=smtp, hook=hook, syslog=syslog) + textwrap.dedent(extra)


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text.encode(), "rules.toml")
    return caught.value.problems


def message(**changes: object) -> Message:
    fields = dict(rule="site-down", condition="site_outage", event="opened",
                  severity="critical", title="Site outage at Station 12",
                  lines=["12 of 14 hosts offline.", "Opened 2026-12-02T10:00:00.000000Z."],
                  at="2026-12-02T10:00:00.000000Z", thread="incident:7", agency="Fire",
                  site="Station 12", facts=[("Hosts", "12"), ("Site", "Station 12")],
                  incident={"id": 7, "kind": "site_outage"})
    fields.update(changes)
    return Message.make(**fields)  # type: ignore[arg-type]


# --- the rules file -------------------------------------------------------------------------

def test_a_good_rules_file_reads_as_its_channels_and_rules():
    rules = parse_rules(rules_text().encode())
    assert list(rules.channels) == ["ops-mail", "teams", "log"]
    mail = rules.channels["ops-mail"]
    assert mail.type == "email" and mail.to == ("it@example.org", "duty@example.org")
    site, servers, disks = rules.rules
    assert (site.condition, site.severity, site.agencies, site.sites) == \
        ("site_outage", "critical", None, None)
    assert (servers.threshold, servers.hosts, servers.agencies) == (15, "os:server",
                                                                    ("Council",))
    assert (disks.threshold, disks.severity, disks.sites) == (90, "low", ("Town Hall",))
    assert servers.in_scope("Council", "Depot") and not servers.in_scope("Fire", "Depot")
    assert disks.in_scope("Fire", "Town Hall") and not disks.in_scope("Fire", "Depot")


@pytest.mark.parametrize(("extra", "expected"), [
    ('[[rules]]\nname = "x"\ncondition = "disk"\nchannels = ["log"]\n',
     "rule x: percent: required"),
    ('[[rules]]\nname = "x"\ncondition = "disk"\npercent = 190\nchannels = ["log"]\n',
     "rule x: percent: expected a number from 1 to 100"),
    ('[[rules]]\nname = "x"\ncondition = "host_offline"\nminutes = 1.5\nchannels = ["log"]\n',
     "rule x: minutes: expected a whole number"),
    ('[[rules]]\nname = "x"\ncondition = "site_outage"\nhosts = "os:server"\n'
     'channels = ["log"]\n', "rule x: hosts: unknown key: site_outage is about a site"),
    ('[[rules]]\nname = "x"\ncondition = "disk"\npercent = 90\nhosts = "colour:red"\n'
     'channels = ["log"]\n', "rule x: hosts: 'colour:red': unknown field 'colour'"),
    ('[[rules]]\nname = "x"\ncondition = "meltdown"\nchannels = ["log"]\n',
     "rule x: condition: expected one of site_outage"),
    ('[[rules]]\nname = "x"\ncondition = "disk"\npercent = 90\nchannels = ["pager"]\n',
     "rule x: channels: no channel named 'pager'"),
    ('[[rules]]\nname = "x"\ncondition = "disk"\npercent = 90\nchannels = ["log"]\n'
     'agencies = []\n', "rule x: agencies: an empty list would match nothing"),
    ('[[rules]]\nname = "x"\ncondition = "disk"\npercent = 90\nchannels = ["log"]\n'
     'seconds = 5\n', "rule x: seconds: unknown key for condition disk"),
    ('[[rules]]\nname = "site-down"\ncondition = "shared_service"\nchannels = ["log"]\n',
     "rule site-down: name: duplicate rule name"),
    ('[[rules]]\ncondition = "disk"\n', "rule #4: name: required"),
    ('[channels.pager]\ntype = "sms"\n', "channel pager: type: expected one of email, webhook"),
    ('[channels.hook2]\ntype = "webhook"\nurl = "file:///etc/passwd"\n',
     "channel hook2: url: expected an http:// or https:// URL"),
    ('[channels.hook2]\ntype = "webhook"\nurl = "https://x.example"\nformat = "discord"\n',
     "channel hook2: format: expected one of generic, teams, slack"),
    ('[channels.hook2]\ntype = "webhook"\nurl = "https://x.example"\n'
     '[channels.hook2.headers]\nHost = "evil"\n', "channel hook2: headers.Host: not a header"),
    ('[channels.m2]\ntype = "email"\nhost = "smtp.example.org"\nfrom = "a@example.org"\n'
     'to = ["b@example.org\\r\\nBcc: c@example.org"]\n', "channel m2: to: expected a list"),
    ('[channels.m2]\ntype = "email"\nhost = "smtp.example.org"\nfrom = "not an address"\n'
     'to = ["b@example.org"]\n', "channel m2: from: expected an e-mail address"),
    ('[channels.m2]\ntype = "email"\nhost = "smtp.example.org"\nfrom = "a@example.org"\n'
     'to = ["b@example.org"]\nstarttls = false\nusername = "u"\npassword_env = "P"\n',
     "channel m2: starttls: must be true when logging in"),
    ('[channels.m2]\ntype = "email"\nhost = "smtp.example.org"\nfrom = "a@example.org"\n'
     'to = ["b@example.org"]\nusername = "u"\npassword_file = "/nonexistent/pw"\n',
     "channel m2: password_file: cannot read"),
    ('[channels.s2]\ntype = "syslog"\nhost = "127.0.0.1"\ntransport = "sctp"\n',
     "channel s2: transport: expected one of udp, tcp"),
    ('[channels.s2]\ntype = "syslog"\nhost = "127.0.0.1"\nport = 70000\n',
     "channel s2: port: expected a whole number from 1 to 65535"),
    ('[channels.s2]\ntype = "syslog"\nhost = "127.0.0.1"\nurl = "x"\n',
     "channel s2: url: unknown key for type syslog"),
    ('[alerting]\nx = 1\n', "rules file: alerting: unknown key"),
])
def test_each_problem_names_the_rule_or_channel_and_the_key(extra, expected):
    found = problems(rules_text(extra=extra))
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_told_at_once_and_broken_toml_says_so():
    found = problems('[[rules]]\nname = "a"\ncondition = "disk"\nchannels = ["x"]\n'
                     '[[rules]]\nname = "b"\ncondition = "clock_skew"\nseconds = -1\n')
    assert any(p.startswith("rule a: percent") for p in found)
    assert any(p.startswith("rule a: channels") for p in found)
    assert any(p.startswith("rule b: seconds") for p in found)
    assert any(p.startswith("rule b: channels: required") for p in found)
    assert problems("[[rules]\n")[0].startswith("not valid TOML")
    assert problems("x = 1".ljust(300_000))[0].startswith("over ")


def test_alerts_check_lists_a_good_file_and_names_each_problem_of_a_bad_one(tmp_path):
    good = tmp_path / "rules.toml"
    good.write_text(rules_text())
    done = run("-m", "estate.inventory.hub.cli", "alerts", "check", str(good))
    assert "3 channels:" in done.stdout and "3 rules:" in done.stdout
    assert re.search(r"servers-offline\s+host_offline\s+high\s+-> log \(over 15; agencies "
                     r"Council; hosts 'os:server'\)", done.stdout), done.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(rules_text(extra='[[rules]]\nname = "x"\ncondition = "disk"\n'
                                    'channels = ["log"]\n'))
    done = run("-m", "estate.inventory.hub.cli", "alerts", "check", str(bad), check=False)
    assert done.returncode == 1
    assert "1 problem(s)" in done.stderr and "rule x: percent: required" in done.stderr
    # serve refuses such a file before it starts.
    done = run("-m", "estate.inventory.hub.cli", "serve", "--data", str(tmp_path / "d"),
               "--listen", "127.0.0.1:0", "--alerts", str(bad), check=False)
    assert done.returncode == 2 and "rule x: percent: required" in done.stderr


# --- e-mail ---------------------------------------------------------------------------------

def email_rules(port: int, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [channels.mail]
        type = "email"
        host = "127.0.0.1"
        port = {port}
        starttls = false
        from = "estate@example.org"
        to = ["it@example.org"]
        timeout = 10
        {extra}
        """)


def test_email_is_one_message_per_incident_with_its_updates_threaded():
    smtp = SmtpServer().start()
    try:
        channel = parse_rules(email_rules(smtp.port).encode()).channels["mail"]
        send(channel, message(), 1)
        send(channel, message(event="resolved", title="RESOLVED: Site outage at Station 12"),
             2)
        send(channel, message(thread="incident:8"), 3)
        first, resolved, other = smtp.wait(3)
    finally:
        smtp.stop()
    assert smtp.envelopes[0] == ("estate@example.org", ["it@example.org"])
    assert first["Subject"] == "[Estate critical] Site outage at Station 12"
    assert first["To"] == "it@example.org" and first["X-Estate-Rule"] == "site-down"
    assert "12 of 14 hosts offline." in first.get_content()
    assert "Hosts: 12" in first.get_content()
    root = first["Message-ID"]
    assert resolved["In-Reply-To"] == resolved["References"] == root
    assert resolved["Message-ID"] != root
    assert other["Message-ID"] != root and other["In-Reply-To"] is None


def test_agent_text_cannot_add_an_email_header_or_a_line():
    smtp = SmtpServer().start()
    try:
        channel = parse_rules(email_rules(smtp.port).encode()).channels["mail"]
        send(channel, message(title="pc-1\r\nBcc: attacker@example.net\r\n\r\nhi",
                              lines=["line\nX-Injected: 1", "\x1b[31mred\u202e"]), 1)
        (mail,) = smtp.wait(1)
    finally:
        smtp.stop()
    assert mail["Bcc"] is None and mail["X-Injected"] is None
    assert smtp.envelopes[0][1] == ["it@example.org"]
    assert "\r" not in mail["Subject"] and "\n" not in mail["Subject"]
    body = mail.get_content()
    assert "\x1b" not in body and "\u202e" not in body
    assert "line\ufffdX-Injected: 1" in body


def test_email_over_starttls_logs_in_and_never_sends_a_password_in_clear(tmp_path,
                                                                         monkeypatch):
    cert, key = self_signed(tmp_path)
    password = tmp_path / "smtp-password"
    password.write_text("s3cret\n")
    smtp = SmtpServer(tls=(cert, key), login=("estate", "s3cret")).start()
    try:
        extra = (f'username = "estate"\npassword_file = "{password}"\n'
                 f'ca_file = "{cert}"\n')
        text = email_rules(smtp.port, extra).replace("starttls = false", "starttls = true")
        channel = parse_rules(text.encode()).channels["mail"]
        send(channel, message(), 1)
        smtp.wait(1)
        assert smtp.logins == ["estate"]
        # Without the CA, the server's certificate is refused: nothing sent, no login.
        untrusted = parse_rules(text.replace(f'ca_file = "{cert}"\n', "").encode())
        with pytest.raises(SendError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            send(untrusted.channels["mail"], message(), 2)
        assert smtp.logins == ["estate"] and len(smtp.mails) == 1
    finally:
        smtp.stop()
    # A server that offers no STARTTLS gets no login attempt at all.
    plain_server = SmtpServer().start()
    try:
        text = email_rules(plain_server.port, 'username = "estate"\npassword_env = '
                                              '"ESTATE_TEST_PW"\n').replace(
            "starttls = false", "starttls = true")
        monkeypatch.setenv("ESTATE_TEST_PW", "s3cret")
        with pytest.raises(SendError, match="does not offer STARTTLS"):
            send(parse_rules(text.encode()).channels["mail"], message(), 3)
        assert plain_server.mails == []
    finally:
        plain_server.stop()


def test_an_smtp_server_that_is_down_is_a_send_error_naming_why():
    port = free_port()
    channel = parse_rules(email_rules(port).encode()).channels["mail"]
    with pytest.raises(SendError, match=r"refused|Errno"):
        send(channel, message(), 1)


# --- webhooks -------------------------------------------------------------------------------

def hook_channel(url: str, fmt: str, headers: str = ""):
    text = f'[channels.hook]\ntype = "webhook"\nurl = "{url}"\nformat = "{fmt}"\n{headers}'
    return parse_rules(text.encode()).channels["hook"]


def test_webhooks_post_the_generic_teams_and_slack_shapes():
    server = WebhookServer()
    try:
        evil = message(title="<!channel> *pwn* [x](http://evil.example) \u202e",
                       lines=["<@U123> & _bold_"])
        send(hook_channel(server.url("/generic"), "generic",
                          '[channels.hook.headers]\nAuthorization = "Bearer t0ken"\n'), evil)
        send(hook_channel(server.url("/teams"), "teams"), evil)
        send(hook_channel(server.url("/slack"), "slack"), evil)
        (p1, h1, generic), (p2, _, teams), (p3, _, slack) = server.wait(3)
    finally:
        server.close()
    assert (p1, p2, p3) == ("/generic", "/teams", "/slack")
    assert h1["Authorization"] == "Bearer t0ken"
    assert h1["Content-Type"] == "application/json"
    # Generic: the documented fields, agent text as JSON strings, made safe.
    assert generic["source"] == "estate" and generic["version"] == 1
    assert (generic["rule"], generic["condition"], generic["event"], generic["severity"]) == \
        ("site-down", "site_outage", "opened", "critical")
    assert generic["title"] == "<!channel> *pwn* [x](http://evil.example) \ufffd"
    assert generic["agency"] == "Fire" and generic["site"] == "Station 12"
    assert generic["facts"] == {"Hosts": "12", "Site": "Station 12"}
    assert generic["incident"] == {"id": 7, "kind": "site_outage"}
    assert generic["thread"] == "incident:7"
    # Teams: a MessageCard and an Adaptive Card, Markdown escaped.
    assert teams["@type"] == "MessageCard" and teams["themeColor"] == "C50F1F"
    assert teams["title"].startswith("\\<\\!channel\\> \\*pwn\\* \\[x\\]\\(http")
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["type"] == "AdaptiveCard"
    assert card["content"]["body"][0]["text"] == teams["title"]
    assert {"title": "Hosts", "value": "12"} in card["content"]["body"][-1]["facts"]
    # Slack: `text` with &, <, > escaped; blocks in plain_text only.
    assert slack["text"].startswith("&lt;!channel&gt; *pwn*")
    assert all(b.get("text", {}).get("type", "plain_text") == "plain_text"
               for b in slack["blocks"])
    assert slack["blocks"][1]["text"]["text"] == "<@U123> & _bold_"


def test_a_webhook_answering_non_2xx_or_redirecting_is_not_sent():
    server = WebhookServer()
    try:
        server.status = 500
        with pytest.raises(SendError, match=r"HTTP 500 from 127\.0\.0\.1"):
            send(hook_channel(server.url("/secret-token-abc"), "generic"), message())
        server.status = 307
        with pytest.raises(SendError) as caught:
            send(hook_channel(server.url("/secret-token-abc"), "generic"), message())
        assert "secret-token-abc" not in str(caught.value)  # the URL may carry a secret
    finally:
        server.close()


class TricklingPeer:
    """A hostile endpoint that answers a byte-sized piece at a time, each well inside the
    channel's timeout, for ever: SMTP continuation lines, or an HTTP body that never ends."""

    def __init__(self, first: bytes, piece: bytes) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.first, self.piece = first, piece
        self.closing = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.recv(65536) if self.first.startswith(b"HTTP") else None
                    conn.sendall(self.first)
                    while not self.closing.wait(0.2):
                        conn.sendall(self.piece)
                except OSError:  # the sender gave up: what the test wants
                    continue

    def close(self) -> None:
        self.closing.set()
        self.sock.close()


@pytest.mark.parametrize("kind", ["email", "webhook-head", "webhook-body"])
def test_a_peer_trickling_its_answer_cannot_hold_a_send_for_ever(kind):
    import threading

    if kind == "email":
        peer = TricklingPeer(b"220-smtp.example.org\r\n", b"220-still here\r\n")
        channel = parse_rules(email_rules(peer.port).replace("timeout = 10", "timeout = 1")
                              .encode()).channels["mail"]
    else:
        peer = TricklingPeer(b"HTTP/1.1 20", b"0") if kind == "webhook-head" else \
            TricklingPeer(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", b"x")
        channel = hook_channel(f"http://127.0.0.1:{peer.port}/x", "generic",
                               "timeout = 1")
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            send(channel, message(), 1)
            outcome.append(None)
        except BaseException as exc:  # reported by the assertion below
            outcome.append(exc)

    sender = threading.Thread(target=attempt, daemon=True)
    try:
        sender.start()
        sender.join(60)  # the channel's deadline is a few of its timeouts, not for ever
        assert not sender.is_alive(), "the send is still held by the trickling peer"
    finally:
        peer.close()
    (exc,) = outcome
    if kind == "webhook-body":  # answered 200 before the trickle: the webhook took it
        assert exc is None
    else:
        assert isinstance(exc, SendError) and "deadline" in str(exc)


# --- syslog ---------------------------------------------------------------------------------

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z) "
    rb"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<proc>[!-~]{1,128}) "
    rb"(?P<msgid>[!-~]{1,32}) (?P<sd>\[.*?(?<!\\)\]) \xef\xbb\xbf(?P<msg>.*)$", re.S)


def sd_params(sd: bytes) -> dict[str, str]:
    return {k.decode(): re.sub(rb'\\(["\\\]])', rb"\1", v).decode()
            for k, v in re.findall(rb' ([a-z_]+)="((?:[^"\\]|\\.)*)"', sd)}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_syslog_sends_one_rfc5424_message(transport):
    listener = SyslogListener(transport)
    try:
        text = (f'[channels.log]\ntype = "syslog"\nhost = "127.0.0.1"\nport = {listener.port}\n'
                f'transport = "{transport}"\nfacility = "local3"\napp_name = "estate"\n')
        channel = parse_rules(text.encode()).channels["log"]
        send(channel, message(site='Station "12"] x', lines=["a\nb"]))
        (data,) = listener.wait(1)
    finally:
        listener.close()
    m = RFC5424.match(data)
    assert m, data
    assert int(m["pri"]) == 19 * 8 + 2  # local3, critical
    assert m["app"] == b"estate" and m["msgid"] == b"site_outage"
    assert m["ts"] == b"2026-12-02T10:00:00.000000Z"
    params = sd_params(m["sd"])
    assert params["rule"] == "site-down" and params["event"] == "opened"
    assert params["site"] == 'Station "12"] x' and params["agency"] == "Fire"
    assert m["msg"].decode() == "Site outage at Station 12 | a\ufffdb"
    assert b"\n" not in data


def test_alerts_test_sends_through_the_real_channel_or_says_why_not(tmp_path):
    server = WebhookServer()
    rules = tmp_path / "rules.toml"
    rules.write_text(f'[channels.hook]\ntype = "webhook"\nurl = "{server.url()}"\n'
                     f'[channels.down]\ntype = "webhook"\nurl = "http://127.0.0.1:'
                     f'{free_port()}/x"\ntimeout = 5\n')
    try:
        done = run("-m", "estate.inventory.hub.cli", "alerts", "test", "hook", "--rules",
                   str(rules))
        assert "channel hook (webhook): test message sent" in done.stdout
        (_, _, body), = server.wait(1)
        assert body["condition"] == "test" and body["title"].startswith("Estate test alert")
        done = run("-m", "estate.inventory.hub.cli", "alerts", "test", "down", "--rules",
                   str(rules), check=False)
        assert done.returncode == 1 and "channel down: not sent:" in done.stderr
        done = run("-m", "estate.inventory.hub.cli", "alerts", "test", "nope", "--rules",
                   str(rules), check=False)
        assert done.returncode == 1 and "no channel \"nope\"" in done.stderr
    finally:
        server.close()


def test_a_message_survives_the_queue_as_json():
    m = message()
    assert Message.from_json(m.to_json()) == m
    assert json.loads(m.to_json())["facts"] == [["Hosts", "12"], ["Site", "Station 12"]]
