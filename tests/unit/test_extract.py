"""Extraction against the local stand-in over real HTTPS: limits, faults, slicing, exactness."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spamgeo.credentials import make_credential
from spamgeo.extract import (
    MANIFEST_NAME,
    RAW_ARROW_SCHEMA,
    AccessDeniedError,
    ExtractError,
    LogAnalyticsClient,
    LogAnalyticsSettings,
    PartialResultError,
    QueryRejectedError,
    RetriesExhaustedError,
    SettingsError,
    SliceTooLargeError,
    build_query,
    extract_files,
    extract_window,
    parse_answer,
    read_extract,
)
from spamgeo.local.standin import DEFAULT_TOKEN, DEFAULT_WORKSPACE_ID, Fault, StandIn
from spamgeo.local.synthetic import generate_email_events
from spamgeo.schema import RAW_COLUMNS
from spamgeo.window import Window

KEY = ["NetworkMessageId", "RecipientEmailAddress"]
DAYS = Window.for_days(date(2026, 11, 1), date(2026, 11, 3))
EVENTS = generate_email_events(12_000, DAYS, seed=11)


def _is_spam(threat_types: str | None) -> bool:
    """KQL `has "Spam"`: a whole term, case-insensitive, terms being runs of letters/digits."""
    terms = re.split(r"[^0-9A-Za-z]+", threat_types or "")
    return any(term.lower() == "spam" for term in terms)


def expected_spam_rows(events: pa.Table, window: Window) -> pa.Table:
    """The rows the extraction must return, computed here without the code under test."""
    times = events["TimeGenerated"].to_pylist()
    threats = events["ThreatTypes"].to_pylist()
    keep = [
        window.start <= moment < window.end and _is_spam(threat)
        for moment, threat in zip(times, threats, strict=True)
    ]
    rows = events.filter(pa.array(keep)).select(list(RAW_COLUMNS))
    return _sorted(rows)


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(name, "ascending") for name in KEY]).combine_chunks()


def assert_same_rows(actual: pa.Table, expected: pa.Table) -> None:
    """Every expected row exactly once, nothing else."""
    keys = pc.binary_join_element_wise(
        actual["NetworkMessageId"], actual["RecipientEmailAddress"], "|"
    )
    assert pc.count_distinct(keys).as_py() == actual.num_rows, "a row was extracted twice"
    assert actual.schema == RAW_ARROW_SCHEMA
    assert actual.num_rows == expected.num_rows
    assert _sorted(actual).equals(expected)


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    with StandIn(EVENTS) as server:
        yield server


@pytest.fixture
def server(standin: StandIn) -> StandIn:
    standin.reset()
    return standin


def make_client(server: StandIn, **overrides: object) -> LogAnalyticsClient:
    values: dict[str, object] = {
        "workspace_id": DEFAULT_WORKSPACE_ID,
        "endpoint": server.url,
        "ca_bundle": str(server.ca_path),
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "min_slice": timedelta(minutes=1),
    }
    values.update(overrides)
    token = str(values.pop("token", DEFAULT_TOKEN))
    settings = LogAnalyticsSettings(**values)  # type: ignore[arg-type]
    return LogAnalyticsClient(settings, make_credential("static_token", token=token))


@pytest.fixture
def client(server: StandIn) -> Iterator[LogAnalyticsClient]:
    with make_client(server) as made:
        yield made


# --- the query and the answers ---------------------------------------------------------------


def test_query_pushes_spam_filter_then_half_open_window_then_projection() -> None:
    window = Window.for_days(date(2026, 11, 1))
    query = build_query(window)

    spam = query.index('| where ThreatTypes has "Spam"')
    time_filter = query.index(
        "TimeGenerated >= datetime(2026-11-01T00:00:00Z) and "
        "TimeGenerated < datetime(2026-11-02T00:00:00Z)"
    )
    projection = query.index("| project " + ", ".join(RAW_COLUMNS))
    assert query.startswith("EmailEvents")
    assert spam < time_filter < projection


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("workspace_id", " "),
        ("endpoint", "http://127.0.0.1:1"),
        ("ca_bundle", "/nonexistent/ca.pem"),
        ("server_timeout_s", 601),
        ("slice_length", timedelta(seconds=30)),
        ("min_slice", timedelta(0)),
        ("max_attempts", 0),
        ("backoff_max_s", 0.001),
        ("max_retry_after_s", -1.0),
        ("max_retry_after_s", float("nan")),
        ("max_parallel_slices", 6),
    ],
)
def test_settings_name_the_bad_value(setting: str, value: object) -> None:
    values: dict[str, object] = {"workspace_id": "w", "backoff_base_s": 1.0, setting: value}
    with pytest.raises(SettingsError, match=setting):
        LogAnalyticsSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "extra_column",
    [None, ("Extra", "long", 5)],
    ids=["all-text-columns", "with-a-numeric-column"],
)
def test_parse_answer_types_columns_and_fills_missing_strings(
    extra_column: tuple[str, str, int] | None,
) -> None:
    columns = [{"name": name, "type": kind} for name, kind in RAW_COLUMNS.items()]
    rows: list[list[object]] = [
        [
            "2026-11-01T10:20:30.1234567Z",
            "2026-11-01T10:20:29Z",
            "m1",
            'o\'brien "quoted" \u00e9l\u00e8ve@contoso.com',
            "203.0.113.9",
            None,
            "Phish, Spam",
        ],
        ["2026-11-01T00:00:00Z", None, "m2", "b@contoso.com", "", "2001:db8::1", "Spam"],
    ]
    if extra_column is not None:
        name, kind, value = extra_column
        columns.append({"name": name, "type": kind})
        rows = [[*row, value] for row in rows]
    body = json.dumps(
        {"tables": [{"name": "PrimaryResult", "columns": columns, "rows": rows}]}
    ).encode()

    table = parse_answer(body)

    assert table.schema == RAW_ARROW_SCHEMA
    assert table.num_rows == 2
    by_message = {row["NetworkMessageId"]: row for row in table.to_pylist()}
    first, second = by_message["m1"], by_message["m2"]
    assert first["TimeGenerated"] == datetime(2026, 11, 1, 10, 20, 30, 123456, tzinfo=UTC)
    assert first["Timestamp"] == datetime(2026, 11, 1, 10, 20, 29, tzinfo=UTC)
    assert first["RecipientEmailAddress"] == 'o\'brien "quoted" \u00e9l\u00e8ve@contoso.com'
    assert first["SenderIPv6"] == ""
    assert second["TimeGenerated"] == datetime(2026, 11, 1, tzinfo=UTC)
    assert second["Timestamp"] is None
    assert second["SenderIPv6"] == "2001:db8::1"


def test_parse_answer_of_a_table_without_rows() -> None:
    columns = [{"name": name, "type": kind} for name, kind in RAW_COLUMNS.items()]
    body = json.dumps({"tables": [{"name": "PrimaryResult", "columns": columns, "rows": []}]})

    assert parse_answer(body.encode()).equals(RAW_ARROW_SCHEMA.empty_table())


def test_parse_answer_reports_the_engine_code_of_a_partial_answer() -> None:
    # The shape the real service sends when a result passes its record limit.
    body = json.dumps(
        {
            "tables": [{"name": "PrimaryResult", "columns": [], "rows": [["a"], ["b"], ["c"]]}],
            "error": {
                "code": "PartialError",
                "message": "There were some errors when processing your query.",
                "details": [
                    {
                        "code": "EngineError",
                        "message": "Something went wrong processing your query on the server.",
                        "innererror": {
                            "code": "-2133196797",
                            "message": "Query result set has exceeded the internal record count "
                            "limit 500000 (E_QUERY_RESULT_SET_TOO_LARGE; see "
                            "https://aka.ms/kustoquerylimits)",
                        },
                    }
                ],
            },
        }
    ).encode()

    with pytest.raises(PartialResultError) as caught:
        parse_answer(body)

    assert caught.value.inner_code == "E_QUERY_RESULT_SET_TOO_LARGE"
    assert caught.value.rows == 3


def test_parse_answer_of_an_empty_body_is_an_empty_table() -> None:
    assert parse_answer(b"").equals(RAW_ARROW_SCHEMA.empty_table())


# --- whole windows -----------------------------------------------------------------------------


def test_extracts_every_spam_row_of_the_window(client: LogAnalyticsClient, tmp_path: Path) -> None:
    result = extract_window(client, DAYS, tmp_path)

    expected = expected_spam_rows(EVENTS, DAYS)
    assert 0 < expected.num_rows < EVENTS.num_rows
    assert result.rows == expected.num_rows
    assert [report.window for report in result.slices] == list(DAYS.split(timedelta(days=1)))
    assert len(result.files) == 3
    assert result.files == extract_files(tmp_path)
    assert_same_rows(read_extract(tmp_path), expected)

    summary = json.loads(json.dumps(result.to_summary()))
    assert summary["rows"] == expected.num_rows
    assert summary["queries"] == 3
    assert summary["splits"] == 0
    assert summary["bytes"] == result.bytes > 0
    assert DEFAULT_TOKEN not in json.dumps(summary)


def test_rows_exactly_on_slice_boundaries_land_once(tmp_path: Path) -> None:
    window = Window.for_days(date(2026, 11, 1))
    base = generate_email_events(9, window, seed=3)
    instants = [
        window.start - timedelta(microseconds=1),  # before the window: excluded
        window.start,
        window.start + timedelta(hours=6),
        window.start + timedelta(hours=12),
        window.start + timedelta(hours=12, microseconds=-1),
        window.start + timedelta(hours=18),
        window.end - timedelta(microseconds=1),
        window.end,  # the next window's first instant: excluded
        window.end + timedelta(hours=1),
    ]
    moments = pa.array(instants[: base.num_rows], pa.timestamp("us", tz="UTC"))
    events = base.set_column(0, "TimeGenerated", moments)
    events = events.set_column(
        events.schema.get_field_index("ThreatTypes"),
        "ThreatTypes",
        pa.array(["Spam"] * base.num_rows),
    )

    with StandIn(events) as server, make_client(server, slice_length=timedelta(hours=6)) as client:
        result = extract_window(client, window, tmp_path)
        extracted = read_extract(tmp_path)

    assert result.rows == 6
    assert len(result.slices) == 4
    assert sorted(extracted["TimeGenerated"].to_pylist()) == sorted(instants[1:7])
    assert_same_rows(extracted, expected_spam_rows(events, window))


def test_a_window_without_rows_gives_an_empty_extract(
    client: LogAnalyticsClient, tmp_path: Path
) -> None:
    quiet = Window.for_days(date(2026, 10, 1))

    result = extract_window(client, quiet, tmp_path)

    assert result.rows == 0
    assert result.files == []
    assert read_extract(tmp_path).equals(RAW_ARROW_SCHEMA.empty_table())


def test_a_rerun_into_the_same_directory_keeps_each_row_once(
    client: LogAnalyticsClient, tmp_path: Path
) -> None:
    extract_window(client, DAYS, tmp_path, slice_length=timedelta(hours=8))
    extract_window(client, DAYS, tmp_path)

    assert_same_rows(read_extract(tmp_path), expected_spam_rows(EVENTS, DAYS))


# --- the API's limits ----------------------------------------------------------------------


def test_partial_results_are_split_until_every_slice_is_complete(
    server: StandIn, client: LogAnalyticsClient, tmp_path: Path
) -> None:
    expected = expected_spam_rows(EVENTS, DAYS)
    per_day_limit = expected.num_rows // 3 // 3
    server.set_limits(max_rows=per_day_limit)

    result = extract_window(client, DAYS, tmp_path)

    assert all(report.splits >= 3 for report in result.slices)
    assert any("E_QUERY_RESULT_SET_TOO_LARGE" in reason for reason in result.slices[0].reasons)
    assert max(pq_rows(path) for path in result.files) <= per_day_limit
    assert result.rows == expected.num_rows
    assert_same_rows(read_extract(tmp_path), expected)


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def test_partial_and_throttled_together_in_parallel(server: StandIn, tmp_path: Path) -> None:
    expected = expected_spam_rows(EVENTS, DAYS)
    server.set_limits(max_rows=expected.num_rows // 10)
    server.inject(Fault(429, retry_after=0.01), Fault(503), Fault(429), Fault(500), Fault(429))

    with make_client(server, max_parallel_slices=3) as client:
        result = extract_window(client, DAYS, tmp_path, slice_length=timedelta(hours=12))

    reasons = [reason for report in result.slices for reason in report.reasons]
    assert sum("HTTP 429" in reason for reason in reasons) == 3
    assert sum("HTTP 503" in reason for reason in reasons) == 1
    assert sum(report.splits for report in result.slices) > 0
    assert_same_rows(read_extract(tmp_path), expected)


def test_a_slice_still_partial_at_min_slice_fails_and_keeps_nothing(
    server: StandIn, client: LogAnalyticsClient, tmp_path: Path
) -> None:
    server.set_limits(max_rows=1)

    with pytest.raises(SliceTooLargeError, match="min_slice") as caught:
        extract_window(client, DAYS, tmp_path, min_slice=timedelta(hours=12))

    assert "E_QUERY_RESULT_SET_TOO_LARGE" in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExtractError, match=MANIFEST_NAME):
        read_extract(tmp_path)


def test_a_server_timeout_splits_the_slice(
    server: StandIn, client: LogAnalyticsClient, tmp_path: Path
) -> None:
    day = Window.for_days(date(2026, 11, 2))
    server.inject(Fault(504))

    result = extract_window(client, day, tmp_path)

    assert result.slices[0].splits == 1
    assert "HTTP 504" in result.slices[0].reasons[0]
    assert len(result.files) == 2
    assert_same_rows(read_extract(tmp_path), expected_spam_rows(EVENTS, day))


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_failures_are_retried(
    server: StandIn, client: LogAnalyticsClient, tmp_path: Path, status: int
) -> None:
    day = Window.for_days(date(2026, 11, 1))
    server.inject(Fault(status), Fault(status))

    result = extract_window(client, day, tmp_path)

    assert result.slices[0].attempts == 3
    reasons = result.slices[0].reasons
    assert len(reasons) == 2
    assert all(reason.startswith(f"HTTP {status} ") for reason in reasons)
    assert_same_rows(read_extract(tmp_path), expected_spam_rows(EVENTS, day))


def test_retry_after_is_honoured(
    server: StandIn, client: LogAnalyticsClient, caplog: pytest.LogCaptureFixture
) -> None:
    server.inject(Fault(429, retry_after=0.2))

    with caplog.at_level(logging.WARNING, logger="spamgeo.extract"):
        answer = client.query_window(Window.for_days(date(2026, 11, 1)))

    assert answer.attempts == 2
    assert any(
        "HTTP 429" in record.getMessage()
        and "retrying in 0.20 s (Retry-After)" in record.getMessage()
        for record in caplog.records
    )


def test_a_retry_after_beyond_the_limit_fails_at_once_naming_the_setting(
    server: StandIn,
) -> None:
    server.inject(Fault(429, retry_after=3600))

    with (
        make_client(server, max_retry_after_s=60.0) as client,
        pytest.raises(RetriesExhaustedError, match=r"Retry-After 3600 s.*max_retry_after_s"),
    ):
        client.query_window(Window.for_days(date(2026, 11, 1)))

    assert len(server.requests) == 1  # no second attempt after an hour's (or a minute's) wait


def test_retries_stop_at_max_attempts(server: StandIn) -> None:
    server.inject(*[Fault(503)] * 3)

    with (
        make_client(server, max_attempts=3) as client,
        pytest.raises(RetriesExhaustedError) as caught,
    ):
        client.query_window(Window.for_days(date(2026, 11, 1)))

    message = str(caught.value)
    assert "3 attempts" in message
    assert message.count("HTTP 503") == 3
    assert "max_attempts" in message
    assert len(server.requests) == 3


def test_an_unreachable_endpoint_is_retried_then_named(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = LogAnalyticsSettings(
        workspace_id="w", endpoint=f"https://127.0.0.1:{port}", max_attempts=2, backoff_base_s=0.01
    )

    credential = make_credential("static_token", token="t")
    with (
        LogAnalyticsClient(settings, credential) as client,
        pytest.raises(RetriesExhaustedError, match="connection error") as caught,
    ):
        extract_window(client, Window.for_days(date(2026, 11, 1)), tmp_path)

    assert "2 attempts" in str(caught.value)


def test_no_content_means_no_rows(server: StandIn, client: LogAnalyticsClient) -> None:
    server.inject(Fault(204))

    answer = client.query_window(Window.for_days(date(2026, 11, 1)))

    assert answer.table.equals(RAW_ARROW_SCHEMA.empty_table())
    assert answer.attempts == 1


def test_refused_credentials_fail_at_once_naming_the_role(
    server: StandIn, client: LogAnalyticsClient
) -> None:
    server.inject(Fault(401))

    with pytest.raises(AccessDeniedError, match="Log Analytics Reader"):
        client.query_window(Window.for_days(date(2026, 11, 1)))

    assert len(server.requests) == 1


def test_a_wrong_token_is_refused(server: StandIn, tmp_path: Path) -> None:
    with (
        make_client(server, token="not-the-token") as client,
        pytest.raises(AccessDeniedError, match="credentials"),
    ):
        extract_window(client, DAYS, tmp_path)

    assert list(tmp_path.glob("*.parquet")) == []


def test_a_bad_query_fails_at_once_quoting_the_api(
    server: StandIn, client: LogAnalyticsClient
) -> None:
    with pytest.raises(QueryRejectedError, match="HTTP 400") as caught:
        client.query("EmailEvents | where (", Window.for_days(date(2026, 11, 1)))

    assert len(server.requests) == 1
    assert ":" in str(caught.value).split("HTTP 400", 1)[1]


# --- the "done when" ---------------------------------------------------------------------------


class Throttler(threading.Thread):
    """Queues a burst of throttling and server errors after every `every` requests."""

    def __init__(self, server: StandIn, every: int) -> None:
        super().__init__(daemon=True)
        self.server, self.every, self.bursts = server, every, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            if len(self.server.requests) >= self.every * (self.bursts + 1):
                self.server.inject(Fault(429, retry_after=0.01), Fault(503), Fault(429))
                self.bursts += 1


def test_ninety_days_under_a_small_row_limit_and_throttling(tmp_path: Path) -> None:
    # A lighter version of the real 90-day run (see the extraction notes): longer slices keep the
    # number of stand-in queries, which dominate the time, down.
    window = Window.for_days(date(2026, 8, 1), date(2026, 10, 29))
    events = generate_email_events(20_000, window, seed=5)
    expected = expected_spam_rows(events, window)
    slice_rows = expected.num_rows // 6

    with StandIn(events, max_rows=slice_rows // 3) as server:
        throttler = Throttler(server, every=6)
        throttler.start()
        try:
            with make_client(server, max_parallel_slices=2) as client:
                result = extract_window(client, window, tmp_path, slice_length=timedelta(days=15))
        finally:
            throttler.done.set()
            throttler.join()

    reasons = [reason for report in result.slices for reason in report.reasons]
    assert throttler.bursts >= 3
    assert sum("HTTP 429" in reason for reason in reasons) >= 2 * (throttler.bursts - 1)
    assert len(result.slices) == 6
    assert all(report.splits >= 3 for report in result.slices)
    assert_same_rows(read_extract(tmp_path), expected)


# --- speed without changing the answer ---------------------------------------------------------


def test_the_next_slice_downloads_while_one_is_parsed_but_queries_stay_within_the_limit(
    client: LogAnalyticsClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lock = threading.Lock()
    sending = {"now": 0, "most": 0, "started": 0}
    second_send_started = threading.Event()
    overlapped: list[bool] = []
    send, answer = client._send, client._answer

    def counted_send(query: str, window: Window) -> object:
        with lock:
            sending["now"] += 1
            sending["started"] += 1
            sending["most"] = max(sending["most"], sending["now"])
            if sending["started"] >= 2:
                second_send_started.set()
        try:
            return send(query, window)
        finally:
            with lock:
                sending["now"] -= 1

    def slow_first_answer(response: object, window: Window) -> object:
        if not overlapped:
            overlapped.append(second_send_started.wait(timeout=10))
        return answer(response, window)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "_send", counted_send)
    monkeypatch.setattr(client, "_answer", slow_first_answer)

    extract_window(client, DAYS, tmp_path, max_parallel_slices=1)

    assert overlapped == [True], "the second slice did not download while the first was parsed"
    assert sending["most"] == 1
    assert_same_rows(read_extract(tmp_path), expected_spam_rows(EVENTS, DAYS))


def test_parse_answer_falls_back_to_python_when_the_rows_cannot_be_spooled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import spamgeo.extract

    def unwritable(*args: object, **kwargs: object) -> object:
        raise OSError("No space left on device")

    events = generate_email_events(50, Window.for_days(date(2026, 11, 1)), seed=2)
    columns = [{"name": name, "type": kind} for name, kind in RAW_COLUMNS.items()]
    cells = events.select(list(RAW_COLUMNS)).to_pylist()
    rows = [
        [value.isoformat() if isinstance(value, datetime) else value for value in row.values()]
        for row in cells
    ]
    body = json.dumps({"tables": [{"name": "T", "columns": columns, "rows": rows}]}).encode()
    spooled = parse_answer(body)

    monkeypatch.setattr(spamgeo.extract.tempfile, "NamedTemporaryFile", unwritable)
    in_python = parse_answer(body)

    assert in_python.num_rows == 50
    assert in_python.equals(spooled)
