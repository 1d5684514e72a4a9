"""Real receivers on loopback for the alert tests: an SMTP server (aiosmtpd, with STARTTLS and
login when asked), an HTTP server that records webhook POSTs, and a syslog listener (UDP or
TCP). Each records what it received; every wait is bounded."""

from __future__ import annotations

import datetime
import http.server
import json
import socket
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, for a STARTTLS server and the CA file a
    channel trusts it by (`ca_file`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "smtp.crt", folder / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class SmtpServer:
    """aiosmtpd on 127.0.0.1: `mails` are the messages it accepted, `logins` the logins."""

    def __init__(self, port: int | None = None, tls: tuple[Path, Path] | None = None,
                 login: tuple[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.tls, self.login = tls, login
        self.mails: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []
        self._controller: Any = None

    def start(self) -> SmtpServer:
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        server = self

        class Handler:
            async def handle_DATA(self, srv: Any, session: Any, envelope: Any) -> str:
                server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                server.mails.append(message_from_bytes(envelope.original_content,
                                                       policy=policy.default))
                return "250 OK"

        def authenticate(srv: Any, session: Any, envelope: Any, mechanism: str,
                         data: Any) -> Any:
            ok = self.login is not None and \
                (data.login.decode(), data.password.decode()) == self.login
            if ok:
                self.logins.append(data.login.decode())
            return AuthResult(success=ok)

        kwargs: dict[str, Any] = {}
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*map(str, self.tls))
            kwargs.update(tls_context=context, require_starttls=True)
        if self.login:
            kwargs.update(authenticator=authenticate, auth_required=True,
                          auth_require_tls=True)
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                      **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait(self, count: int, timeout: float = 30) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(self.mails) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.mails) >= count, f"{len(self.mails)} mails of {count}"
        return self.mails


class WebhookServer:
    """An HTTP server on 127.0.0.1 recording each POST (path, headers, JSON body); it answers
    `status` (200 unless a test changes it)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.status = 200
        self.received = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                server.posts.append((self.path, dict(self.headers), json.loads(body)))
                server.received.set()
                self.send_response(server.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._http.server_address[1])
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait(self, count: int, timeout: float = 30) -> list[tuple[str, dict[str, str], Any]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.posts) >= count, f"{len(self.posts)} posts of {count}"
        return self.posts

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


class SyslogListener:
    """A UDP (or TCP, RFC 6587 octet counting) syslog receiver on 127.0.0.1."""

    def __init__(self, transport: str = "udp") -> None:
        self.transport = transport
        self.messages: list[bytes] = []
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self._sock = socket.socket(socket.AF_INET, kind)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        if transport == "tcp":
            self._sock.listen(5)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.transport == "udp":
                    self.messages.append(self._sock.recv(65535))
                    continue
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while chunk := conn.recv(65535):
                    data += chunk
                while data:  # "LEN SP MSG" frames
                    size, _, rest = data.partition(b" ")
                    self.messages.append(rest[:int(size)])
                    data = rest[int(size):]

    def wait(self, count: int, timeout: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.messages) >= count, f"{len(self.messages)} messages of {count}"
        return self.messages

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
