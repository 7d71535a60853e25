"""A local stand-in for the Log Analytics query API, serving EmailEvents over HTTPS.

It runs the KQL text it receives with duckdb-kql, answers in the service's JSON shapes
(partial results, throttling, auth and syntax errors included), and lets tests inject
faults, so the real client code can be exercised end to end without Azure.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
import ssl
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spamgeo.local.synthetic import load_events
from spamgeo.window import Window, WindowError, parse_instant

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_ID = "00000000-0000-0000-0000-00000000c0de"
DEFAULT_TOKEN = "spamgeo-local-token"
DEFAULT_PORT = 48443
TABLE_NAME = "EmailEvents"

_QUERY_PATH = re.compile(r"^/v1/workspaces/(?P<workspace>[^/]+)/query/?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")

# Codes and messages of the service's error bodies. The 400 and partial-error wording is what
# the API returns and clients may show; the others are this stand-in's own phrasing.
_INVALID_PROPERTIES = "The request had some invalid properties"
_PARTIAL_MESSAGE = "There were some errors when processing your query."
_ENGINE_MESSAGE = "Something went wrong processing your query on the server."
_RESULT_TOO_LARGE_CODE = "-2133196797"  # 0x80DA0003, E_QUERY_RESULT_SET_TOO_LARGE, as int32
_FAULT_ERRORS: dict[int, tuple[str, str]] = {
    401: ("AuthenticationFailed", "Authentication failed: the access token was rejected."),
    429: ("ThrottledError", "Too many requests: the query was throttled; retry later."),
    500: ("InternalServerError", "The server met an unexpected condition running the query."),
    502: ("BadGateway", "The query service received an invalid answer from a backend."),
    503: ("ServiceUnavailable", "The query service is temporarily unavailable."),
    504: ("GatewayTimeout", "The query did not finish within its time limit."),
}


@dataclass(frozen=True)
class Fault:
    """How to answer the next query request: an error status, or 204 for an empty body."""

    status: int
    retry_after: float | None = None
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status != 204 and self.status not in _FAULT_ERRORS:
            known = ", ".join(str(s) for s in [204, *_FAULT_ERRORS])
            raise ValueError(f"fault status {self.status} is not one of {known}")


@dataclass(frozen=True)
class QueryRecord:
    """One query request as the stand-in saw and answered it."""

    query: str
    timespan: str | None
    status: int
    rows: int
    bytes: int
    seconds: float
    partial: bool = False


class QueryRejected(Exception):  # noqa: N818 - it is a response, not a failure of this code
    """A query request answered with an API error body instead of results."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: float | None = None):
        super().__init__(body["error"]["message"] if body else f"HTTP {status}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


def _error_body(code: str, message: str, inner: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        error["innererror"] = inner
    return {"error": error}


def _bad_argument(inner_code: str, message: str) -> QueryRejected:
    inner = {"code": inner_code, "message": message}
    return QueryRejected(400, _error_body("BadArgumentError", _INVALID_PROPERTIES, inner))


# --- timespan ------------------------------------------------------------------------------


def _parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match or text in {"P", "PT"} or text.endswith("T"):
        raise _bad_argument(
            "InvalidTimespan", f"{text!r} is not an ISO-8601 duration such as PT1H or P1D"
        )
    parts = {name: float(value) for name, value in match.groupdict().items() if value}
    return timedelta(**parts)


def _parse_time(text: str) -> datetime:
    try:
        return parse_instant(_LONG_FRACTION.sub(r"\1", text), setting="timespan")
    except WindowError as exc:
        raise _bad_argument("InvalidTimespan", str(exc)) from exc


def parse_timespan(
    timespan: str | None, now: datetime | None = None
) -> tuple[datetime, datetime] | None:
    """The closed interval a request's timespan names, or None when it names none.

    Accepts "start/end", "start/duration", "duration/end" and a bare duration ending now.
    """
    if timespan is None or not timespan.strip():
        return None
    now = now or datetime.now(UTC)
    parts = [part.strip() for part in timespan.strip().split("/")]
    if len(parts) == 1:
        start, end = now - _parse_duration(parts[0]), now
    elif len(parts) == 2 and parts[0].startswith("P"):
        end = _parse_time(parts[1])
        start = end - _parse_duration(parts[0])
    elif len(parts) == 2 and parts[1].startswith("P"):
        start = _parse_time(parts[0])
        end = start + _parse_duration(parts[1])
    elif len(parts) == 2:
        start, end = _parse_time(parts[0]), _parse_time(parts[1])
    else:
        raise _bad_argument("InvalidTimespan", f"{timespan!r} is not an ISO-8601 interval")
    if end < start:
        raise _bad_argument("InvalidTimespan", f"timespan {timespan!r} ends before it starts")
    return start, end


def _micros(instant: datetime) -> int:
    return (instant - _EPOCH) // _MICROSECOND


# --- query engine --------------------------------------------------------------------------


class _EmailEventsEngine:
    """EmailEvents sorted by TimeGenerated in DuckDB's reach, queried with KQL per request."""

    def __init__(self, events: pa.Table):
        if "TimeGenerated" not in events.column_names:
            raise ValueError("events table has no TimeGenerated column; the stand-in needs one")
        order = pc.sort_indices(events["TimeGenerated"])
        self.table = events.take(order).combine_chunks()
        generated = self.table["TimeGenerated"].cast(pa.timestamp("us", tz="UTC"))
        self.times = generated.cast(pa.int64()).to_numpy(zero_copy_only=False)
        self.schema = {TABLE_NAME: self.table.column_names}
        self.database: Any = None

    def open(self) -> None:
        import duckdb

        if self.database is None:
            self.database = duckdb.connect()

    def close(self) -> None:
        if self.database is not None:
            self.database.close()
            self.database = None

    def between(self, start_us: int | None, end_us: int | None, *, closed: bool) -> pa.Table:
        low = 0 if start_us is None else int(np.searchsorted(self.times, start_us, "left"))
        side = "right" if closed else "left"
        high = len(self.times) if end_us is None else int(np.searchsorted(self.times, end_us, side))
        return self.table.slice(low, max(0, high - low))

    def run(self, query: str, events: pa.Table, max_rows: int) -> _Result:
        """`query` over `events`: column names and types, and up to max_rows + 1 JSON rows."""
        import duckdb
        import duckdb_kql

        try:
            translated = duckdb_kql.to_sql(query, schema=self.schema, allow_write=False)
        except duckdb_kql.KqlSyntaxError as exc:
            raise _bad_argument("SyntaxError", str(exc)) from exc
        except duckdb_kql.KqlError as exc:
            raise _bad_argument("SemanticError", str(exc)) from exc
        except Exception as exc:
            log.warning("query translation failed: %s", exc, exc_info=True)
            message = f"the query could not be translated: {exc}"
            raise _bad_argument("SemanticError", message) from exc
        if translated.unbound:
            unbound = ", ".join(translated.unbound)
            raise _bad_argument("SemanticError", f"query parameters without value: {unbound}")

        cursor = self.database.cursor()
        try:
            cursor.execute("SET TimeZone='UTC'")
            cursor.register(TABLE_NAME, events)
            parameters = translated.parameters or None
            relation = cursor.sql(str(translated), params=parameters)
            names = list(relation.columns)
            duck_types = [str(kind).upper() for kind in relation.types]
            rows = cursor.sql(
                _json_rows_sql(str(translated), duck_types, max_rows + 1), params=parameters
            ).to_arrow_table()
        except duckdb.ParserException as exc:
            raise _bad_argument("SyntaxError", str(exc)) from exc
        except duckdb.Error as exc:
            raise _bad_argument("SemanticError", str(exc).split("\n\n")[0]) from exc
        finally:
            cursor.close()
        types = [_log_analytics_type(kind) for kind in duck_types]
        return _Result(names, types, rows.column(0).combine_chunks())


@dataclass
class _Result:
    names: list[str]
    types: list[str]
    rows: pa.Array  # one JSON array text per row


def _log_analytics_type(duck_type: str) -> str:
    from duckdb_kql.types import kusto_type

    kind = kusto_type(duck_type)
    return "real" if kind == "decimal" else kind


def _json_value_sql(column: str, duck_type: str) -> str:
    """SQL rendering one result value the way the API writes its type into JSON."""
    kind = _log_analytics_type(duck_type)
    if kind == "datetime":
        # ISO-8601 UTC with a Z, the fraction left out when it is zero, as the service does.
        moment = f"CAST({column} AS TIMESTAMP)"
        return (
            f"CASE WHEN {column} IS NULL THEN NULL "
            f"WHEN epoch_us({moment}) % 1000000 = 0 "
            f"THEN strftime({moment}, '%Y-%m-%dT%H:%M:%SZ') "
            f"ELSE strftime({moment}, '%Y-%m-%dT%H:%M:%S.%fZ') END"
        )
    if kind in {"long", "int", "bool"}:
        return column
    if kind == "real":
        number = f"CAST({column} AS DOUBLE)"
        return f"CASE WHEN isfinite({number}) THEN {number} END"
    if kind == "dynamic":
        text = column if duck_type == "JSON" else f"to_json({column})"
        return f"CAST({text} AS VARCHAR)"
    if kind == "timespan":
        return f"CAST({column} AS VARCHAR)"
    # Kusto strings cannot be null: an absent string is the empty string.
    return f"coalesce(CAST({column} AS VARCHAR), '')"


def _json_rows_sql(query_sql: str, duck_types: list[str], limit: int) -> str:
    aliases = [f'"c{i}"' for i in range(len(duck_types))]
    values = ", ".join(_json_value_sql(a, t) for a, t in zip(aliases, duck_types, strict=True))
    return (
        f"SELECT CAST(json_array({values}) AS VARCHAR) AS row "
        f"FROM ({query_sql}) AS result({', '.join(aliases)}) LIMIT {limit}"
    )


@dataclass
class _Answer:
    body: bytes
    rows: int
    partial: bool


def _partial_error(inner_message: str) -> dict[str, Any]:
    inner = {
        "code": _RESULT_TOO_LARGE_CODE,
        "message": f"{inner_message} (E_QUERY_RESULT_SET_TOO_LARGE; "
        "see https://aka.ms/kustoquerylimits)",
        "severity": 2,
        "severityName": "Error",
    }
    detail = {"code": "EngineError", "message": _ENGINE_MESSAGE, "innererror": inner}
    return {"code": "PartialError", "message": _PARTIAL_MESSAGE, "details": [detail]}


def result_body(result: _Result, *, max_rows: int, max_bytes: int) -> _Answer:
    """The JSON response for a result, truncated like the service when it breaks a limit."""
    rows = result.rows
    error: dict[str, Any] | None = None
    if len(rows) > max_rows:
        rows = rows.slice(0, max_rows)
        error = _partial_error(
            f"Query result set has exceeded the internal record count limit {max_rows}"
        )
    columns = [
        {"name": name, "type": kind} for name, kind in zip(result.names, result.types, strict=True)
    ]
    head = b'{"tables":[{"name":"PrimaryResult","columns":' + _json(columns) + b',"rows":['

    def tail(problem: dict[str, Any] | None) -> bytes:
        return b"]}]" + (b',"error":' + _json(problem) if problem else b"") + b"}"

    # Each row costs its own JSON text plus one separating comma.
    row_bytes = np.cumsum(pc.binary_length(rows).to_numpy(zero_copy_only=False) + 1)
    total = len(head) + (int(row_bytes[-1]) - 1 if len(rows) else 0) + len(tail(error))
    if total > max_bytes:
        error = _partial_error(
            f"Query result set has exceeded the internal data size limit {max_bytes}"
        )
        room = max_bytes - len(head) - len(tail(error)) + 1
        rows = rows.slice(0, int(np.searchsorted(row_bytes, room, "right")))
    return _Answer(head + _joined(rows) + tail(error), len(rows), error is not None)


def _json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _joined(rows: pa.Array) -> bytes:
    if len(rows) == 0:
        return b""
    offsets = pa.array([0, len(rows)], pa.int32())
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, rows), ",")
    return joined[0].as_buffer().to_pybytes()


# --- TLS -----------------------------------------------------------------------------------


def write_self_signed_certificate(state_dir: Path, host: str) -> tuple[Path, Path]:
    """A fresh self-signed certificate for localhost/127.0.0.1 (and `host`); (cert, key)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spamgeo local query stand-in")])
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    if host in ("0.0.0.0", "::"):
        # Listening on every interface (as in docker compose): clients reach it by host name.
        import socket

        host = socket.gethostname()
    try:
        extra: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    if extra not in alt_names:
        alt_names.append(extra)
    now = datetime.now(UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    cert_path = state_dir / "standin-ca.pem"
    key_path = state_dir / "standin-key.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    tls_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        connection, address = self.socket.accept()
        if self.tls_context is None:
            return connection, address
        # The handshake runs in the request's own thread, so one slow client blocks no other.
        wrapped = self.tls_context.wrap_socket(
            connection, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(30)
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


# --- the stand-in --------------------------------------------------------------------------


class StandIn:
    """The Log Analytics query API for one workspace, on a local port, in a background thread."""

    def __init__(
        self,
        events: pa.Table | str | Path,
        *,
        workspace_id: str = DEFAULT_WORKSPACE_ID,
        token: str = DEFAULT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = True,
        state_dir: Path | None = None,
        max_rows: int = 500_000,
        max_bytes: int = 100 * 2**20,
        delay_s: float = 0.0,
    ):
        self.workspace_id = workspace_id
        self.token = token
        self.host = host
        self.port = port
        self.tls = tls
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.url = ""
        self.ca_path: Path | None = None
        self._events_source = events
        self._defaults = (max_rows, max_bytes, delay_s)
        self._max_rows, self._max_bytes, self._delay_s = self._defaults
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._records: list[QueryRecord] = []
        self._engine: _EmailEventsEngine | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._own_state_dir: Path | None = None

    # lifecycle

    def start(self) -> StandIn:
        """Load the events (once), bind the port and serve in a daemon thread."""
        if self._server is not None:
            return self
        engine = self._load()
        engine.open()
        server = _Server((self.host, self.port), _handler_for(self))
        if self.tls:
            state_dir = self.state_dir
            if state_dir is None:
                state_dir = self._own_state_dir = Path(tempfile.mkdtemp(prefix="spamgeo-standin-"))
            cert_path, key_path = write_self_signed_certificate(state_dir, self.host)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_path, key_path)
            server.tls_context = context
            self.ca_path = cert_path
        self._server = server
        bound_port = server.server_address[1]
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://{self.host}:{bound_port}"
        self._thread = threading.Thread(
            target=server.serve_forever, name="query-standin", daemon=True
        )
        self._thread.start()
        log.info(
            "query stand-in listening url=%s workspace=%s rows=%d tls=%s",
            self.url,
            self.workspace_id,
            engine.table.num_rows,
            self.tls,
        )
        return self

    def stop(self) -> None:
        """Stop serving and release the port; the loaded events stay for a later start()."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._engine is not None:
            self._engine.close()
        if self._own_state_dir is not None:
            shutil.rmtree(self._own_state_dir, ignore_errors=True)
            self._own_state_dir = None
            self.ca_path = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _load(self) -> _EmailEventsEngine:
        if self._engine is None:
            started = time.perf_counter()
            source = self._events_source
            events = source if isinstance(source, pa.Table) else load_events(source)
            self._engine = _EmailEventsEngine(events)
            log.info(
                "query stand-in loaded events rows=%d seconds=%.2f",
                events.num_rows,
                time.perf_counter() - started,
            )
        return self._engine

    # test controls

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each answers one later query request, first in first out."""
        with self._lock:
            self._faults.extend(faults)

    def set_limits(self, *, max_rows: int | None = None, max_bytes: int | None = None) -> None:
        with self._lock:
            if max_rows is not None:
                self._max_rows = max_rows
            if max_bytes is not None:
                self._max_bytes = max_bytes

    def set_delay(self, seconds: float) -> None:
        """Slow every query response by `seconds`."""
        with self._lock:
            self._delay_s = seconds

    @property
    def requests(self) -> list[QueryRecord]:
        with self._lock:
            return list(self._records)

    def rows_in(self, window: Window) -> pa.Table:
        """Ground truth: the events with window.start <= TimeGenerated < window.end."""
        engine = self._load()
        return engine.between(_micros(window.start), _micros(window.end), closed=False)

    def reset(self) -> None:
        """Forget queued faults and recorded requests; limits and delay back to the start."""
        with self._lock:
            self._faults.clear()
            self._records.clear()
            self._max_rows, self._max_bytes, self._delay_s = self._defaults

    # request handling, called from the server's threads

    def _authorised(self, header: str | None) -> dict[str, Any] | None:
        """None when the bearer token is right, else the 401 body to send."""
        if not header:
            message = "Authentication failed. The 'Authorization' header is missing."
            return _error_body("AuthenticationFailed", message)
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or credential.strip() != self.token:
            return _error_body("InvalidAuthenticationToken", "The access token is invalid.")
        return None

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, record: QueryRecord) -> None:
        with self._lock:
            self._records.append(record)
        log.info(
            "query status=%d rows=%d bytes=%d seconds=%.3f partial=%s timespan=%s",
            record.status,
            record.rows,
            record.bytes,
            record.seconds,
            record.partial,
            record.timespan,
        )

    def answer_query(self, request: dict[str, Any], prefer_wait: float | None) -> _Answer:
        """Run one parsed query request; raises QueryRejected for an API error answer."""
        query = request.get("query")
        if not isinstance(query, str) or not query.strip():
            raise _bad_argument("MissingQuery", "the request body has no 'query' string")
        timespan = request.get("timespan")
        if timespan is not None and not isinstance(timespan, str):
            raise _bad_argument("InvalidTimespan", "'timespan' must be an ISO-8601 interval")
        interval = parse_timespan(timespan)

        with self._lock:
            delay, max_rows, max_bytes = self._delay_s, self._max_rows, self._max_bytes
        if delay > 0:
            if prefer_wait is not None and delay > prefer_wait:
                time.sleep(prefer_wait)
                code, message = _FAULT_ERRORS[504]
                raise QueryRejected(504, _error_body(code, message))
            time.sleep(delay)

        engine = self._load()
        if interval is None:
            events = engine.table
        else:
            events = engine.between(_micros(interval[0]), _micros(interval[1]), closed=True)
        result = engine.run(query, events, max_rows)
        return result_body(result, max_rows=max_rows, max_bytes=max_bytes)

    def control(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The /control endpoints, for driving the stand-in from another process."""
        if method == "GET" and path == "/control/requests":
            return 200, {"requests": [asdict(record) for record in self.requests]}
        if method == "POST" and path == "/control/reset":
            self.reset()
            return 200, {"reset": True}
        if method == "POST" and path == "/control/faults":
            try:
                faults = [Fault(**spec) for spec in body.get("faults", [])]
            except (TypeError, ValueError) as exc:
                return 400, _error_body("BadArgumentError", f"invalid fault: {exc}")
            self.inject(*faults)
            self.set_limits(max_rows=body.get("max_rows"), max_bytes=body.get("max_bytes"))
            if body.get("delay_s") is not None:
                self.set_delay(float(body["delay_s"]))
            with self._lock:
                queued = len(self._faults)
            return 200, {"queued_faults": queued}
        return 404, _error_body("PathNotFoundError", f"No control endpoint {method} {path}")


def _handler_for(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class QueryApiHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "spamgeo-query-standin"
        timeout = 120

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            if url.path.startswith("/control/"):
                self._control(method, url.path, raw)
                return
            match = _QUERY_PATH.match(url.path)
            if match is None:
                body = _error_body(
                    "PathNotFoundError", f"The requested path does not exist: {url.path}"
                )
                self._send_json(404, body)
                return
            if method == "GET":
                params = {name: values[-1] for name, values in parse_qs(url.query).items()}
                self._query(match["workspace"], params, None)
            else:
                self._query(match["workspace"], None, raw)

        def _control(self, method: str, path: str, raw: bytes) -> None:
            denied = standin._authorised(self.headers.get("Authorization"))
            if denied is not None:
                self._send_json(401, denied)
                return
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                self._send_json(400, _error_body("BadArgumentError", "body is not JSON"))
                return
            status, answer = standin.control(method, path, body)
            self._send_json(status, answer)

        def _query(self, workspace: str, params: dict[str, Any] | None, raw: bytes | None) -> None:
            started = time.perf_counter()
            query_text, timespan = "", None
            rows, partial, retry_after = 0, False, None
            try:
                request = params if params is not None else self._json_body(raw or b"")
                query_text = str(request.get("query", ""))
                timespan = request.get("timespan")
                status, body, rows, partial = self._answer(workspace, request)
            except QueryRejected as rejected:
                status, retry_after = rejected.status, rejected.retry_after
                body = _json(rejected.body) if rejected.body else b""
            except Exception:
                log.exception("query stand-in failed on a request")
                code, message = _FAULT_ERRORS[500]
                status, body = 500, _json(_error_body(code, message))

            # Recorded before the answer leaves, so a client that got it also finds it logged.
            standin._record(
                QueryRecord(
                    query=query_text,
                    timespan=timespan if isinstance(timespan, str) else None,
                    status=status,
                    rows=rows,
                    bytes=len(body),
                    seconds=round(time.perf_counter() - started, 6),
                    partial=partial,
                )
            )
            self._send_bytes(status, body, retry_after)

        def _answer(self, workspace: str, request: dict[str, Any]) -> tuple[int, bytes, int, bool]:
            """Status, body, rows and partial flag for a query request, or QueryRejected."""
            denied = standin._authorised(self.headers.get("Authorization"))
            if denied is not None:
                raise QueryRejected(401, denied)
            if workspace.lower() != standin.workspace_id.lower():
                inner = {"code": "WorkspaceNotFoundError", "message": f"No workspace {workspace}"}
                message = "The requested path does not exist"
                raise QueryRejected(404, _error_body("PathNotFoundError", message, inner))
            fault = standin._next_fault()
            if fault is not None:
                if fault.delay_s > 0:
                    time.sleep(fault.delay_s)
                if fault.status == 204:
                    raise QueryRejected(204, {}, fault.retry_after)
                code, message = _FAULT_ERRORS[fault.status]
                raise QueryRejected(fault.status, _error_body(code, message), fault.retry_after)
            answer = standin.answer_query(request, self._prefer_wait())
            return 200, answer.body, answer.rows, answer.partial

        def _json_body(self, raw: bytes) -> dict[str, Any]:
            try:
                request = json.loads(raw)
            except ValueError as exc:
                raise _bad_argument("InvalidJson", f"the request body is not JSON: {exc}") from exc
            if not isinstance(request, dict):
                raise _bad_argument("InvalidJson", "the request body must be a JSON object")
            return request

        def _prefer_wait(self) -> float | None:
            prefer = self.headers.get("Prefer") or ""
            found = re.search(r"wait\s*=\s*(\d+(?:\.\d+)?)", prefer)
            return float(found.group(1)) if found else None

        def _send_json(
            self, status: int, document: dict[str, Any], retry_after: float | None = None
        ) -> int:
            body = json.dumps(document).encode()
            self._send_bytes(status, body, retry_after)
            return len(body)

        def _send_bytes(self, status: int, body: bytes, retry_after: float | None = None) -> None:
            if status == 204:
                self.send_response(204)
                if retry_after is not None:
                    self.send_header("Retry-After", _retry_after_text(retry_after))
                self.end_headers()
                return
            accepted = self.headers.get("Accept-Encoding") or ""
            compress = "gzip" in accepted.lower() and len(body) > 256
            payload = gzip.compress(body, compresslevel=1) if compress else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Vary", "Accept-Encoding")
            if compress:
                self.send_header("Content-Encoding", "gzip")
            if retry_after is not None:
                self.send_header("Retry-After", _retry_after_text(retry_after))
            self.end_headers()
            self.wfile.write(payload)

    return QueryApiHandler


def _retry_after_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def serve_forever(
    events: pa.Table | str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token: str = DEFAULT_TOKEN,
    workspace_id: str = DEFAULT_WORKSPACE_ID,
    tls: bool = True,
    state_dir: Path | None = None,
    max_rows: int = 500_000,
    max_bytes: int = 100 * 2**20,
) -> None:
    """Serve until interrupted: the blocking form behind `python -m spamgeo serve`."""
    standin = StandIn(
        events,
        workspace_id=workspace_id,
        token=token,
        host=host,
        port=port,
        tls=tls,
        state_dir=state_dir,
        max_rows=max_rows,
        max_bytes=max_bytes,
    )
    standin.start()
    log.info(
        "query stand-in ready url=%s workspace=%s ca=%s (requests need the local bearer token)",
        standin.url,
        standin.workspace_id,
        standin.ca_path,
    )
    stopped = threading.Event()
    try:
        stopped.wait()
    except KeyboardInterrupt:
        log.info("query stand-in interrupted, stopping")
    finally:
        standin.stop()
