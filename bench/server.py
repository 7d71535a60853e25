"""A stand-in for the Log Analytics query API over HTTPS on 127.0.0.1, serving prebuilt answers.

It answers `POST /v1/workspaces/{id}/query` with the cached answer whose slice equals the
requested timespan (or, without one, the query's TimeGenerated filter), so the benchmark
measures the real client stack (azure-core, TLS, HTTP) without a KQL engine in the way.
Run it as `python bench/server.py --responses DIR --tls-dir DIR`; it prints its URL, then serves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import re
import signal
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

if __package__ in (None, ""):
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "include")]

from bench.responses import ResponseSet, load_responses
from spamgeo.window import Window, WindowError, parse_instant

log = logging.getLogger(__name__)

_QUERY_PATH = re.compile(r"^/v1/workspaces/([^/?]+)/query/?(?:\?.*)?$")
_KQL_WINDOW = re.compile(
    r"TimeGenerated\s*>=\s*datetime\(([^)]+)\)\s*and\s*TimeGenerated\s*<\s*datetime\(([^)]+)\)"
)


def write_self_signed(tls_dir: Path) -> tuple[Path, Path]:
    """A fresh key and self-signed certificate for 127.0.0.1 and localhost; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    tls_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spamgeo bench stand-in")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tls_dir / "cert.pem", tls_dir / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def requested_window(request: dict[str, object]) -> Window:
    """The slice a query asks for: its timespan `start/end`, else its KQL TimeGenerated filter."""
    timespan = request.get("timespan")
    if isinstance(timespan, str) and "/" in timespan:
        start, end = timespan.split("/", 1)
        return Window(parse_instant(start), parse_instant(end))
    found = _KQL_WINDOW.search(str(request.get("query", "")))
    if found is None:
        raise WindowError("the request has neither a start/end timespan nor a TimeGenerated filter")
    return Window(parse_instant(found.group(1)), parse_instant(found.group(2)))


class _QueryHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "spamgeo-bench"
    answers: ResponseSet

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length)
        if _QUERY_PATH.match(self.path) is None:
            self._error(404, "PathNotFoundError", f"no such path {self.path}")
            return
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            self._error(401, "AuthorizationRequiredError", "a bearer token is required")
            return
        try:
            window = requested_window(json.loads(payload))
        except (ValueError, WindowError) as exc:
            self._error(400, "BadArgumentError", str(exc))
            return
        answer = self.answers.slice_for(window)
        if answer is None:
            self._error(
                400,
                "BadArgumentError",
                f"no prebuilt answer for {window}: query slices of {self.answers.slice_length}",
            )
            return
        body = answer.path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        log.warning("answering HTTP %d %s: %s", status, code, message)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request access log: it would cost time inside the measurement."""


def serve(responses: ResponseSet, cert: Path, key: Path, port: int = 0) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1 (`port` 0 picks a free one); call serve_forever() on it."""
    handler = type("QueryHandler", (_QueryHandler,), {"answers": responses})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--responses", type=Path, required=True, help="an answer cache folder")
    parser.add_argument("--tls-dir", type=Path, required=True, help="where cert.pem/key.pem go")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(message)s")

    cert, key = write_self_signed(args.tls_dir)
    server = serve(load_responses(args.responses), cert, key, args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = server.server_address[1]
    print(f"listening on https://127.0.0.1:{port} cert {cert}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
