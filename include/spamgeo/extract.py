"""Extraction of spam EmailEvents from the Log Analytics query API into Parquet slices.

The API truncates big answers (500k rows, ~100 MiB, 3-10 minutes of query time) and throttles
busy callers, so the window is queried in time slices that are halved until each answer is
complete; only complete slices are written, each as its own Parquet file.
"""

from __future__ import annotations

import email.utils
import gc
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from spamgeo.schema import EMAIL_EVENTS_TABLE, RAW_COLUMNS
from spamgeo.window import Window

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)

_ARROW_TYPES: dict[str, pa.DataType] = {
    "datetime": pa.timestamp("us", tz="UTC"),
    "string": pa.string(),
    "guid": pa.string(),
    "long": pa.int64(),
    "int": pa.int32(),
    "real": pa.float64(),
    "bool": pa.bool_(),
}

RAW_ARROW_SCHEMA: pa.Schema = pa.schema(
    [pa.field(name, _ARROW_TYPES[kind]) for name, kind in RAW_COLUMNS.items()]
)

PUBLIC_ENDPOINT = "https://api.loganalytics.io"
MAX_SERVER_TIMEOUT_S = 600  # the API never runs a query longer than 10 minutes
MAX_CONCURRENT_QUERIES = 5  # per user; further queries queue on the service and risk 429
MANIFEST_NAME = "extract.json"
_SLICE_GLOB = "slice-*.parquet"
_TRANSIENT_STATUSES = {
    429: "throttled",
    500: "server error",
    502: "bad gateway",
    503: "unavailable",
}
_READ_BLOCK_BYTES = 1 << 20
# Slice files are intermediate and read back whole, once: cheap compression, dictionaries only
# where values repeat a lot, and no statistics (nothing filters on them).
_SLICE_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "lz4",
    "use_dictionary": ["ThreatTypes"],
    "write_statistics": False,
}
_TEXT_TYPES = frozenset({"string", "datetime", "guid"})
_ENGINE_CODE = re.compile(r"\bE_[A-Z_]+\b")


# --- the query -------------------------------------------------------------------------------


def build_query(window: Window) -> str:
    """KQL for the spam rows of one window, filtered and projected on the server."""
    columns = ", ".join(RAW_COLUMNS)
    return (
        f"{EMAIL_EVENTS_TABLE}\n"
        f'| where ThreatTypes has "Spam"\n'
        f"| where {window.kql_filter('TimeGenerated')}\n"
        f"| project {columns}"
    )


# --- settings --------------------------------------------------------------------------------


class SettingsError(ValueError):
    """A Log Analytics setting has a value that cannot work; the message names it."""


@dataclass(frozen=True)
class LogAnalyticsSettings:
    """Where and how to query: workspace, endpoint, limits, retries and slicing."""

    workspace_id: str
    endpoint: str = PUBLIC_ENDPOINT
    ca_bundle: str | None = None
    server_timeout_s: int = 180
    slice_length: timedelta = timedelta(days=1)
    min_slice: timedelta = timedelta(minutes=1)
    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0
    max_parallel_slices: int = 1

    def __post_init__(self) -> None:
        if not self.workspace_id or not self.workspace_id.strip():
            raise SettingsError("workspace_id is empty: set it to the Log Analytics workspace ID")
        endpoint = self.endpoint.strip().rstrip("/")
        if not endpoint.startswith("https://"):
            raise SettingsError(
                f"endpoint {self.endpoint!r} must start with https:// "
                "(azure-core sends bearer tokens over TLS only)"
            )
        object.__setattr__(self, "endpoint", endpoint)
        if self.ca_bundle is not None and not Path(self.ca_bundle).is_file():
            raise SettingsError(f"ca_bundle {self.ca_bundle!r} is not a readable file")
        if not 1 <= self.server_timeout_s <= MAX_SERVER_TIMEOUT_S:
            raise SettingsError(
                f"server_timeout_s={self.server_timeout_s} must be between 1 and "
                f"{MAX_SERVER_TIMEOUT_S} seconds"
            )
        if self.min_slice < timedelta(seconds=1):
            raise SettingsError(f"min_slice={self.min_slice} must be at least one second")
        if self.slice_length < self.min_slice:
            raise SettingsError(
                f"slice_length={self.slice_length} must not be shorter than "
                f"min_slice={self.min_slice}"
            )
        if self.max_attempts < 1:
            raise SettingsError(f"max_attempts={self.max_attempts} must be at least 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise SettingsError(
                f"backoff_base_s={self.backoff_base_s} and backoff_max_s={self.backoff_max_s} "
                "must satisfy 0 <= backoff_base_s <= backoff_max_s"
            )
        if not 0 <= self.max_retry_after_s < math.inf:
            raise SettingsError(
                f"max_retry_after_s={self.max_retry_after_s} must be a number of seconds >= 0"
            )
        if not 1 <= self.max_parallel_slices <= MAX_CONCURRENT_QUERIES:
            raise SettingsError(
                f"max_parallel_slices={self.max_parallel_slices} must be between 1 and "
                f"{MAX_CONCURRENT_QUERIES} (the API's concurrent queries per user)"
            )

    @property
    def read_timeout_s(self) -> int:
        """Client read timeout: the server's own limit plus room for sending the answer."""
        return self.server_timeout_s + 60


# --- errors ----------------------------------------------------------------------------------


class ExtractError(RuntimeError):
    """Extraction failed in a way retrying the same request cannot fix."""


class AccessDeniedError(ExtractError):
    """The API refused the credentials (401/403) or no token could be obtained."""


class QueryRejectedError(ExtractError):
    """The API rejected the request itself (400, 404, ...): a bug or a wrong setting."""


class RetriesExhaustedError(ExtractError):
    """Transient failures (throttling, 5xx, connection errors) outlasted max_attempts."""


class SliceTooLargeError(ExtractError):
    """A slice at min_slice still came back incomplete."""


class IncompleteResultError(ExtractError):
    """An answer that must not be used as is; the slice has to be split and queried again."""

    def __init__(
        self, message: str, *, rows: int = 0, attempts: int = 1, response_bytes: int = 0
    ) -> None:
        super().__init__(message)
        self.rows = rows
        self.attempts = attempts
        self.bytes = response_bytes
        self.retries: list[str] = []


class PartialResultError(IncompleteResultError):
    """HTTP 200 with a PartialError: the tables are truncated."""

    def __init__(self, inner_code: str, message: str, *, rows: int, **kwargs: Any) -> None:
        super().__init__(
            f"partial result ({inner_code}, {rows} rows returned)", rows=rows, **kwargs
        )
        self.inner_code = inner_code
        self.api_message = message


class QueryTimeoutError(IncompleteResultError):
    """HTTP 504: the query outran the server's time limit."""


# --- answers ---------------------------------------------------------------------------------


class _Column(msgspec.Struct):
    name: str
    type: str = "string"


class _Table(msgspec.Struct):
    name: str = ""
    columns: list[_Column] = []
    # Kept as raw JSON: building a Python object per cell is the slowest way to read it.
    rows: msgspec.Raw = msgspec.Raw(b"[]")


class _Answer(msgspec.Struct):
    tables: list[_Table] = []
    error: dict[str, Any] | None = None


_ANSWER_DECODER = msgspec.json.Decoder(_Answer)
_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while millions of row lists are created: it would rescan them all.

    Reference-counted so that parallel slices do not re-enable it under each other.
    """
    global _gc_pausers, _gc_was_enabled  # noqa: PLW0603
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def _text(values: Any) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.cast(pa.string())
    return pa.array(values, pa.string())


def _timestamps(values: Any) -> pa.Array | pa.ChunkedArray:
    """ISO-8601 strings (up to 100 ns precision, `Z` suffix) to timestamp[us, UTC]."""
    text = _text(values)
    try:
        nanos = text.cast(pa.timestamp("ns", tz="UTC"))
        return nanos.cast(pa.timestamp("us", tz="UTC"), safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Outside the nanosecond range: cut the fraction to microseconds and parse directly.
        trimmed = pc.replace_substring_regex(text, r"(\.\d{6})\d+", r"\1")
        return trimmed.cast(pa.timestamp("us", tz="UTC"))


def _column_array(values: Any, kind: str) -> pa.Array | pa.ChunkedArray:
    if kind == "datetime":
        return _timestamps(values)
    if kind == "string":
        text = _text(values)
        # fill_null copies the column even when there is nothing to fill.
        return pc.fill_null(text, "") if text.null_count else text
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.cast(_ARROW_TYPES[kind])
    return pa.array(values, _ARROW_TYPES[kind])


_duckdb_local = threading.local()


def _duckdb_connection() -> Any:
    """This thread's DuckDB connection, made once: connecting costs as much as a small answer."""
    import duckdb

    connection = getattr(_duckdb_local, "connection", None)
    if connection is None:
        # One thread per connection: the JSON reader parses an array on a single thread anyway,
        # and parallel slices already keep the other cores busy.
        connection = duckdb.connect(config={"threads": 1})
        _duckdb_local.connection = connection
    return connection


def _text_columns_in_duckdb(rows: msgspec.Raw, width: int) -> list[pa.ChunkedArray] | None:
    """Columns of an all-text answer, parsed by DuckDB's JSON reader; None if it cannot."""
    import duckdb

    cells = ", ".join(f"r[{index + 1}] AS c{index}" for index in range(width))
    try:
        # DuckDB reads a file natively but a Python file object through Python calls, which
        # costs more than writing the rows out once.
        with tempfile.NamedTemporaryFile(prefix="spamgeo-answer-", suffix=".json") as spool:
            spool.write(memoryview(rows))
            spool.flush()
            relation = _duckdb_connection().read_json(
                spool.name, format="array", records="false", columns={"r": "VARCHAR[]"}
            )
            table = relation.select(cells).to_arrow_table()
    except OSError as exc:
        log.warning("could not spool the answer rows for DuckDB (%s); parsing them in Python", exc)
        return None
    except duckdb.Error as exc:
        log.debug("DuckDB could not read the answer rows (%s); parsing them in Python", exc)
        return None
    return list(table.columns)


def _columns_of(table: _Table) -> list[Any]:
    """The row-major cells of an answer, transposed to one sequence per column."""
    width = len(table.columns)
    if all(column.type in _TEXT_TYPES for column in table.columns):
        # C++ end to end and multi-threaded: about twice as fast as decoding cells to
        # Python objects and transposing them.
        columns = _text_columns_in_duckdb(table.rows, width)
        if columns is not None:
            return columns
    with _gc_paused():
        rows = msgspec.json.decode(table.rows, type=list[list[Any]])
        return list(zip(*rows, strict=False)) if rows else [[] for _ in range(width)]


def _row_count(rows: msgspec.Raw) -> int:
    return len(msgspec.json.decode(rows, type=list[msgspec.Raw]))


def _has_rows(rows: msgspec.Raw) -> bool:
    head = bytes(memoryview(rows)[:64]).lstrip()
    return head[:1] == b"[" and head[1:].lstrip()[:1] not in (b"]", b"")


def _raw_table(table: _Table) -> pa.Table:
    """The raw columns of one answer table as Arrow, built column by column."""
    positions = {column.name: index for index, column in enumerate(table.columns)}
    missing = [name for name in RAW_COLUMNS if name not in positions]
    if missing:
        raise QueryRejectedError(
            f"the API answer lacks column(s) {', '.join(missing)}; it returned "
            f"{', '.join(positions) or 'no columns'}"
        )
    if not _has_rows(table.rows):
        return RAW_ARROW_SCHEMA.empty_table()

    by_column = _columns_of(table)
    arrays = [_column_array(by_column[positions[name]], kind) for name, kind in RAW_COLUMNS.items()]
    return pa.Table.from_arrays(arrays, schema=RAW_ARROW_SCHEMA)


def parse_answer(body: bytes) -> pa.Table:
    """The raw columns of a query API answer body as an Arrow table.

    Raises PartialResultError when the answer carries an error next to its (truncated) rows.
    """
    if not body.strip():
        return RAW_ARROW_SCHEMA.empty_table()
    answer = _ANSWER_DECODER.decode(body)
    if answer.error is not None:
        raise PartialResultError(
            _innermost_code(answer.error),
            str(answer.error.get("message", "")),
            rows=_row_count(answer.tables[0].rows) if answer.tables else 0,
        )
    if not answer.tables:
        return RAW_ARROW_SCHEMA.empty_table()
    return _raw_table(answer.tables[0])


def _innermost_code(error: dict[str, Any]) -> str:
    """The most specific cause in an API error, e.g. E_QUERY_RESULT_SET_TOO_LARGE.

    The service nests causes in `details[]` and `innererror`, and the engine code may sit in a
    code field or only in a message, so both are searched and the deepest match wins.
    """
    found: list[str] = []

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        for key in ("code", "message"):
            value = node.get(key)
            if isinstance(value, str):
                found.extend(_ENGINE_CODE.findall(value))
        for detail in node.get("details") or []:
            walk(detail)
        walk(node.get("innererror"))

    walk(error)
    if found:
        return found[-1]
    details = error.get("details") or []
    if details and isinstance(details[0], dict) and details[0].get("code"):
        return str(details[0]["code"])
    return str(error.get("code") or "unknown")


def _error_message(body: bytes) -> str:
    """The API's own message from an error body, or the start of the body when it has none."""
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return body[:300].decode("utf-8", "replace").strip() or "(empty body)"
    message = error.get("message") or "(no message)"
    inner = (error.get("innererror") or {}).get("message")
    code = error.get("code")
    text = f"{code}: {message}" if code else message
    return f"{text} ({inner})" if inner and inner != message else text


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


# --- the client ------------------------------------------------------------------------------


@dataclass
class QueryAnswer:
    """A complete answer: its rows and what it cost to get them."""

    table: pa.Table
    bytes: int
    attempts: int
    seconds: float
    retries: list[str] = field(default_factory=list)


@dataclass
class _FinalResponse:
    """A response no retry would change, not yet parsed."""

    status: int
    body: bytes
    attempts: int
    total_bytes: int
    retries: list[str]
    started: float


class LogAnalyticsClient:
    """The query API over the SDK's pipeline (credential, auth, transport), parsed fast here.

    The SDK's own model layer builds a Python object per row, far too slow for a million
    rows, so the request goes through `send_request` and the JSON is turned into Arrow
    column by column.
    """

    def __init__(self, settings: LogAnalyticsSettings, credential: TokenCredential) -> None:
        from azure.core.pipeline.policies import RetryPolicy
        from azure.monitor.query import LogsQueryClient

        self.settings = settings
        options: dict[str, Any] = {}
        if settings.ca_bundle:
            options["connection_verify"] = settings.ca_bundle
        # All retries are owned here, not by azure-core: its policy retries only some statuses
        # (500/503/504 and Retry-After) and never a bare 429, would retry a 504 we rather split,
        # and would hide the attempts from the per-slice count and logs.
        self._sdk = LogsQueryClient(
            credential,
            endpoint=settings.endpoint,
            retry_policy=RetryPolicy.no_retries(),
            # azure-core reads a streamed body in 4 KiB blocks by default: thousands of Python
            # round trips for an answer of tens of MB.
            connection_data_block_size=_READ_BLOCK_BYTES,
            **options,
        )
        self._path = f"/workspaces/{quote(settings.workspace_id, safe='')}/query"

    def close(self) -> None:
        self._sdk.close()

    def __enter__(self) -> LogAnalyticsClient:
        return self

    def __exit__(self, *exc_details: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"LogAnalyticsClient(endpoint={self.settings.endpoint!r}, "
            f"workspace_id={self.settings.workspace_id!r})"
        )

    def query_window(self, window: Window) -> QueryAnswer:
        """The spam rows of one window (see build_query)."""
        return self.query(build_query(window), window)

    def query(self, query: str, window: Window) -> QueryAnswer:
        """Run one query over one window, retrying transient failures with backoff.

        Raises PartialResultError or QueryTimeoutError when the answer is incomplete, and
        another ExtractError when retrying cannot help.
        """
        return self._answer(self._send(query, window), window)

    def _send(self, query: str, window: Window) -> _FinalResponse:
        """The first response that retrying would not change, its body read whole."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.core.rest import HttpRequest

        settings = self.settings
        payload = msgspec.json.encode({"query": query, "timespan": window.iso_timespan()})
        request = HttpRequest(
            "POST",
            self._path,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Prefer": f"wait={settings.server_timeout_s}",
            },
            content=payload,
        )
        retries: list[str] = []
        total_bytes = 0
        started = time.perf_counter()

        for attempt in range(1, settings.max_attempts + 1):
            retry_after: float | None = None
            try:
                # stream=True keeps azure-core's ContentDecodePolicy from parsing the JSON too.
                response = self._sdk.send_request(
                    request,
                    stream=True,
                    read_timeout=settings.read_timeout_s,
                    connection_timeout=60,
                )
                try:
                    body = response.read()
                finally:
                    response.close()
            except ClientAuthenticationError as exc:
                raise AccessDeniedError(
                    f"could not get a token for {settings.endpoint}: {exc.message}; check the "
                    "credentials (auth, tenant_id, client_id, client_secret)"
                ) from exc
            except (ServiceRequestError, ServiceResponseError) as exc:
                reason = f"connection error ({type(exc).__name__}: {exc.message})"
            else:
                status = response.status_code
                total_bytes += len(body)
                if status in _TRANSIENT_STATUSES:
                    retry_after = _retry_after_s(response.headers.get("Retry-After"))
                    reason = f"HTTP {status} {_TRANSIENT_STATUSES[status]}"
                else:
                    return _FinalResponse(status, body, attempt, total_bytes, retries, started)

            retries.append(reason)
            if attempt == settings.max_attempts:
                break
            if retry_after is not None and retry_after > settings.max_retry_after_s:
                # Sleeping that long would hold a worker slot for nothing: fail now, and let
                # the task's own retry, or the next run, ask again later.
                raise RetriesExhaustedError(
                    f"query for {window}: {reason} with Retry-After {retry_after:.0f} s, more "
                    f"than max_retry_after_s={settings.max_retry_after_s:.0f}; the workspace is "
                    "throttled: run again later, or raise max_retry_after_s to wait it out"
                )
            if retry_after is not None:
                delay, why = retry_after, "Retry-After"
            else:
                ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
                delay, why = random.uniform(0, ceiling), "backoff"
            log.warning(
                "query %s: %s on attempt %d of %d, retrying in %.2f s (%s)",
                window,
                reason,
                attempt,
                settings.max_attempts,
                delay,
                why,
            )
            time.sleep(delay)

        raise RetriesExhaustedError(
            f"query for {window} failed after {settings.max_attempts} attempts "
            f"({'; '.join(retries)}); the API kept throttling or failing: raise max_attempts "
            "or backoff_max_s, or lower max_parallel_slices"
        )

    def _answer(self, response: _FinalResponse, window: Window) -> QueryAnswer:
        """The rows of a final response, or the error that says why there are none."""
        table = self._classify(
            response.status,
            response.body,
            window,
            attempts=response.attempts,
            total_bytes=response.total_bytes,
            retries=response.retries,
        )
        seconds = time.perf_counter() - response.started
        return QueryAnswer(
            table, response.total_bytes, response.attempts, seconds, response.retries
        )

    def _classify(
        self,
        status: int,
        body: bytes,
        window: Window,
        *,
        attempts: int,
        total_bytes: int,
        retries: list[str],
    ) -> pa.Table:
        """Rows of a final answer, or the error that says why there are none."""
        if status == 204 or (200 <= status < 300 and not body.strip()):
            return RAW_ARROW_SCHEMA.empty_table()
        if 200 <= status < 300:
            try:
                return parse_answer(body)
            except PartialResultError as exc:
                exc.attempts = attempts
                exc.bytes = total_bytes
                exc.retries = retries
                raise
            except msgspec.DecodeError as exc:
                raise QueryRejectedError(
                    f"query for {window}: the API answer is not valid JSON ({exc})"
                ) from exc

        message = _error_message(body)
        if status == 504:
            timeout = QueryTimeoutError(
                f"server timeout (HTTP 504, Prefer: wait={self.settings.server_timeout_s})",
                attempts=attempts,
                response_bytes=total_bytes,
            )
            timeout.retries = retries
            raise timeout
        if status in (401, 403):
            raise AccessDeniedError(
                f"the API refused access to workspace {self.settings.workspace_id} "
                f"(HTTP {status}: {message}); check the credentials and that their identity "
                "has the 'Log Analytics Reader' role on the workspace"
            )
        if status == 404:
            raise QueryRejectedError(
                f"workspace {self.settings.workspace_id} not found at {self.settings.endpoint} "
                f"(HTTP 404: {message}); check workspace_id and endpoint"
            )
        raise QueryRejectedError(
            f"the API rejected the query for {window} (HTTP {status}: {message})"
        )


# --- slicing ---------------------------------------------------------------------------------


@dataclass
class SliceReport:
    """One slice of `slice_length` and everything spent on it, its halves included."""

    window: Window
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    attempts: int = 0
    splits: int = 0
    reasons: list[str] = field(default_factory=list)

    def to_summary(self) -> dict[str, Any]:
        return {
            "window": str(self.window),
            "rows": self.rows,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "attempts": self.attempts,
            "splits": self.splits,
            "reasons": list(self.reasons),
        }


@dataclass
class ExtractResult:
    """What an extraction wrote and what it cost."""

    window: Window
    files: list[Path]
    rows: int
    bytes: int
    slices: list[SliceReport]
    seconds: float = 0.0

    def to_summary(self) -> dict[str, Any]:
        """A JSON-safe summary for task logs and XCom; it holds no secrets."""
        return {
            "window": str(self.window),
            "start": self.window.start.isoformat(),
            "end": self.window.end.isoformat(),
            "rows": self.rows,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "files": [path.name for path in self.files],
            "queries": sum(report.attempts for report in self.slices),
            "splits": sum(report.splits for report in self.slices),
            "slices": [report.to_summary() for report in self.slices],
        }


@dataclass
class _Leaf:
    """The outcome of querying one (possibly halved) slice."""

    window: Window
    rows: int
    bytes: int
    attempts: int
    seconds: float
    retries: list[str]
    path: Path | None = None
    incomplete: IncompleteResultError | None = None


def _slice_file_name(window: Window) -> str:
    def stamp(instant: datetime) -> str:
        return instant.strftime("%Y%m%dT%H%M%S%fZ")

    return f"slice-{stamp(window.start)}-{stamp(window.end)}.parquet"


def _write_atomically(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, partial, **_SLICE_PARQUET_OPTIONS)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _clear_extract(out_dir: Path) -> None:
    """Remove what an earlier attempt left, so a retried task never counts a row twice."""
    for pattern in (MANIFEST_NAME, _SLICE_GLOB, ".slice-*.tmp"):
        for stale in out_dir.glob(pattern):
            stale.unlink(missing_ok=True)


@dataclass
class _Gates:
    """Who may query and who may parse: `queries` slots for each, taken in that order.

    A slice's thread leaves its query slot once the body is read, so the next slice downloads
    while this one is parsed and written; at most 2 x `queries` bodies are held at once.
    """

    queries: int
    sending: threading.Semaphore = field(init=False)
    parsing: threading.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.sending = threading.Semaphore(self.queries)
        self.parsing = threading.Semaphore(self.queries)

    @property
    def threads(self) -> int:
        return 2 * self.queries


def _fetch_slice(client: LogAnalyticsClient, window: Window, out_dir: Path, gates: _Gates) -> _Leaf:
    # A slice's seconds are its own work: time spent waiting for a slot is left out.
    with gates.sending:
        started = time.perf_counter()
        response = client._send(build_query(window), window)
    queued = time.perf_counter()
    with gates.parsing:
        waited = time.perf_counter() - queued
        try:
            answer = client._answer(response, window)
        except IncompleteResultError as exc:
            seconds = time.perf_counter() - started - waited
            return _Leaf(window, exc.rows, exc.bytes, exc.attempts, seconds, exc.retries, None, exc)

        path = None
        if answer.table.num_rows:
            path = out_dir / _slice_file_name(window)
            _write_atomically(answer.table, path)
    seconds = time.perf_counter() - started - waited
    rows = answer.table.num_rows
    return _Leaf(window, rows, answer.bytes, answer.attempts, seconds, answer.retries, path)


def extract_window(
    client: LogAnalyticsClient,
    window: Window,
    out_dir: Path,
    *,
    slice_length: timedelta | None = None,
    min_slice: timedelta | None = None,
    max_parallel_slices: int | None = None,
) -> ExtractResult:
    """Extract every spam row of `window` into Parquet slices under `out_dir`, each row once.

    The keyword arguments override the client's settings. Earlier extract files in `out_dir`
    are removed first (a retried task starts over), and everything written is removed again
    when the extraction fails; a finished extraction is marked by its manifest.
    """
    overrides = {
        "slice_length": slice_length,
        "min_slice": min_slice,
        "max_parallel_slices": max_parallel_slices,
    }
    settings = replace(
        client.settings, **{name: value for name, value in overrides.items() if value is not None}
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_extract(out_dir)

    started = time.perf_counter()
    reports = {root: SliceReport(root) for root in window.split(settings.slice_length)}
    files: list[Path] = []
    log.info(
        "extracting %s in %d slice(s) of %s, up to %d in parallel, into %s",
        window,
        len(reports),
        settings.slice_length,
        settings.max_parallel_slices,
        out_dir,
    )

    gates = _Gates(settings.max_parallel_slices)
    with ThreadPoolExecutor(gates.threads, "spamgeo-extract") as pool:
        pending: dict[Future[_Leaf], Window] = {
            pool.submit(_fetch_slice, client, root, out_dir, gates): root for root in reports
        }
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    root = pending.pop(future)
                    leaf = future.result()
                    report = reports[root]
                    report.bytes += leaf.bytes
                    report.seconds += leaf.seconds
                    report.attempts += leaf.attempts
                    report.reasons.extend(leaf.retries)
                    if leaf.incomplete is None:
                        _accept(leaf, report, files)
                        continue
                    report.reasons.append(f"{leaf.window}: {leaf.incomplete}")
                    _refuse_below_min_slice(leaf, settings.min_slice)
                    report.splits += 1
                    log.info(
                        "slice %s: %s after %d attempt(s), %.2f s -> splitting into 2 halves",
                        leaf.window,
                        leaf.incomplete,
                        leaf.attempts,
                        leaf.seconds,
                    )
                    for half in leaf.window.halves():
                        pending[pool.submit(_fetch_slice, client, half, out_dir, gates)] = root
        except BaseException:
            for future in pending:
                future.cancel()
            # Let queries already running finish, so none writes a file after the cleanup.
            wait(pending)
            _clear_extract(out_dir)
            raise

    files.sort()
    slices = list(reports.values())
    result = ExtractResult(
        window=window,
        files=files,
        rows=sum(report.rows for report in slices),
        bytes=sum(report.bytes for report in slices),
        slices=slices,
        seconds=time.perf_counter() - started,
    )
    manifest = out_dir / MANIFEST_NAME
    manifest.write_text(json.dumps(result.to_summary(), indent=1), encoding="utf-8")
    summary = result.to_summary()
    log.info(
        "extracted %s: %d rows in %d file(s), %d response bytes, %d queries, %d splits, %.2f s",
        window,
        result.rows,
        len(files),
        result.bytes,
        summary["queries"],
        summary["splits"],
        result.seconds,
    )
    return result


def _accept(leaf: _Leaf, report: SliceReport, files: list[Path]) -> None:
    report.rows += leaf.rows
    if leaf.path is not None:
        files.append(leaf.path)
    retried = f", retried: {'; '.join(leaf.retries)}" if leaf.retries else ""
    log.info(
        "slice %s: %d rows, %d bytes in %.2f s after %d attempt(s)%s",
        leaf.window,
        leaf.rows,
        leaf.bytes,
        leaf.seconds,
        leaf.attempts,
        retried,
    )


def _refuse_below_min_slice(leaf: _Leaf, min_slice: timedelta) -> None:
    if leaf.window.duration > min_slice:
        return
    hint = (
        "raise server_timeout_s"
        if isinstance(leaf.incomplete, QueryTimeoutError)
        else "lower min_slice"
    )
    raise SliceTooLargeError(
        f"slice {leaf.window} is still incomplete at {leaf.window.duration} "
        f"(min_slice={min_slice}): {leaf.incomplete}; nothing was kept, {hint}"
    )


# --- reading back ----------------------------------------------------------------------------


def extract_files(out_dir: Path) -> list[Path]:
    """The Parquet files of the finished extraction in `out_dir`, in time order."""
    manifest = Path(out_dir) / MANIFEST_NAME
    try:
        summary = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ExtractError(
            f"no finished extraction in {out_dir} (no {MANIFEST_NAME}); run extract_window first"
        ) from exc
    return [Path(out_dir) / name for name in summary["files"]]


def iter_extract(out_dir: Path) -> Iterator[pa.Table]:
    """The finished extraction in `out_dir` one slice file at a time, as raw tables."""
    import pyarrow.parquet as pq

    for path in extract_files(out_dir):
        yield pq.read_table(path, schema=RAW_ARROW_SCHEMA).select(list(RAW_COLUMNS))


def read_extract(out_dir: Path) -> pa.Table:
    """The whole finished extraction in `out_dir` as one raw table."""
    tables = list(iter_extract(out_dir))
    if not tables:
        return RAW_ARROW_SCHEMA.empty_table().select(list(RAW_COLUMNS))
    return pa.concat_tables(tables)
