"""The Log Analytics stand-in over real HTTPS: the Azure SDK, raw requests, faults and limits."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from azure.core.credentials import AccessToken
from azure.monitor.query import LogsQueryClient, LogsQueryPartialResult, LogsQueryStatus

from spamgeo.local.standin import Fault, QueryRejected, StandIn, parse_timespan
from spamgeo.local.synthetic import generate_email_events, write_events
from spamgeo.window import Window

# Two whole days shortly before today, so that relative timespans and ago() reach them.
FIRST_DAY = datetime.now(UTC).date() - timedelta(days=4)
DAYS = Window.for_days(FIRST_DAY, FIRST_DAY + timedelta(days=1))
DAY_ONE = Window.for_days(FIRST_DAY)
SEED_QUERY = """
let v4 = EmailEvents
| where ThreatTypes has "Spam"
| where TimeGenerated > ago(90d)
| where SenderIPv4 != ""
| summarize count() by SenderIPv4;
let v6 = EmailEvents
| where ThreatTypes has "Spam"
| where TimeGenerated > ago(90d)
| where SenderIPv6 != ""
| summarize count() by SenderIPv6;
union v4, v6
| project SenderIPv6, SenderIPv4, count_
"""
SPAM_TERM = re.compile(r"(?i)(?<![a-z0-9])spam(?![a-z0-9])")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z$")


class StandInCredential:
    """A TokenCredential handing out the stand-in's local token for any scope."""

    def __init__(self, token: str):
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return generate_email_events(30_000, DAYS, seed=21, senders=1_500)


@pytest.fixture(scope="module")
def standin(events: pa.Table, tmp_path_factory):
    with StandIn(events, state_dir=tmp_path_factory.mktemp("standin")) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(standin: StandIn):
    standin.reset()
    yield
    standin.reset()


@pytest.fixture(scope="module")
def client(standin: StandIn) -> LogsQueryClient:
    return LogsQueryClient(
        StandInCredential(standin.token),
        endpoint=standin.url,
        connection_verify=str(standin.ca_path),
    )


def post(
    standin: StandIn,
    body: dict[str, Any] | bytes,
    *,
    token: str | None = "default",
    path: str | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTPS request; returns status, headers and the (decompressed) body."""
    import ssl

    url = standin.url + (path or f"/v1/workspaces/{standin.workspace_id}/query")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header(
            "Authorization", f"Bearer {standin.token if token == 'default' else token}"
        )
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    context = ssl.create_default_context(cafile=str(standin.ca_path))
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as response:
            status, answer_headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, answer_headers, raw = error.code, dict(error.headers), error.read()
    if answer_headers.get("Content-Encoding") == "gzip":
        raw = gzip.decompress(raw)
    return status, answer_headers, raw


def query(standin: StandIn, text: str, timespan: str | None = None, **kwargs: Any):
    status, headers, raw = post(standin, {"query": text, "timespan": timespan}, **kwargs)
    return status, headers, json.loads(raw) if raw else None


def in_closed_interval(events: pa.Table, start: datetime, end: datetime) -> pa.Table:
    generated = events["TimeGenerated"]
    keep = pc.and_(pc.greater_equal(generated, start), pc.less_equal(generated, end))
    return events.filter(keep)


def expected_seed_counts(events: pa.Table) -> Counter:
    """count_ per (SenderIPv6, SenderIPv4), computed here with pandas and a regex."""
    frame = events.select(["ThreatTypes", "SenderIPv4", "SenderIPv6"]).to_pandas()
    spam = frame[frame["ThreatTypes"].map(lambda text: bool(SPAM_TERM.search(text)))]
    counts: Counter = Counter()
    for address, n in spam.loc[spam["SenderIPv4"] != "", "SenderIPv4"].value_counts().items():
        counts[("", address)] = int(n)
    for address, n in spam.loc[spam["SenderIPv6"] != "", "SenderIPv6"].value_counts().items():
        counts[(address, "")] = int(n)
    return counts


# --- the real SDK ----------------------------------------------------------------------------


def test_seed_query_through_the_sdk_matches_independent_counts(client, standin, events) -> None:
    result = client.query_workspace(
        standin.workspace_id, SEED_QUERY, timespan=(DAY_ONE.start, DAY_ONE.end)
    )

    assert result.status == LogsQueryStatus.SUCCESS
    table = result.tables[0]
    assert table.columns == ["SenderIPv6", "SenderIPv4", "count_"]
    assert table.columns_types == ["string", "string", "long"]
    returned = Counter({(row[0], row[1]): row[2] for row in table.rows})
    expected = expected_seed_counts(in_closed_interval(events, DAY_ONE.start, DAY_ONE.end))
    assert returned == expected
    assert sum(expected.values()) > 1_000


def test_sdk_parses_datetimes_and_sees_the_timespan(client, standin, events) -> None:
    six_hours = Window(DAY_ONE.start, DAY_ONE.start + timedelta(hours=6))
    result = client.query_workspace(
        standin.workspace_id,
        "EmailEvents | project TimeGenerated, NetworkMessageId | order by TimeGenerated asc",
        timespan=(six_hours.start, six_hours.end),
    )

    truth = in_closed_interval(events, six_hours.start, six_hours.end)
    rows = result.tables[0].rows
    assert len(rows) == truth.num_rows
    assert [row[0] for row in rows] == sorted(truth["TimeGenerated"].to_pylist())


def test_sdk_gets_a_partial_result_when_rows_exceed_the_limit(client, standin) -> None:
    standin.set_limits(max_rows=40)
    result = client.query_workspace(
        standin.workspace_id, "EmailEvents | project SenderIPv4", timespan=(DAYS.start, DAYS.end)
    )

    assert isinstance(result, LogsQueryPartialResult)
    assert len(result.partial_data[0].rows) == 40
    assert result.partial_error.code == "PartialError"


def test_sdk_retries_a_429_that_carries_retry_after(client, standin) -> None:
    standin.inject(Fault(429, retry_after=0))
    result = client.query_workspace(
        standin.workspace_id, "EmailEvents | count", timespan=(DAYS.start, DAYS.end)
    )

    assert result.tables[0].rows[0][0] == standin.rows_in(DAYS).num_rows
    assert [r.status for r in standin.requests] == [429, 200]


# --- timespans -------------------------------------------------------------------------------


def test_closed_interval_includes_a_row_exactly_at_the_end(standin, events) -> None:
    moments = sorted(events["TimeGenerated"].to_pylist())
    end = moments[len(moments) // 3]
    timespan = f"{DAYS.start.isoformat()}/{end.isoformat()}"

    status, _, body = query(standin, "EmailEvents | count", timespan)

    expected = sum(1 for moment in moments if DAYS.start <= moment <= end)
    assert status == 200
    assert body["tables"][0]["rows"] == [[expected]]


@pytest.mark.parametrize(
    "timespan",
    [
        "{start}/P1D",
        "P1D/{end}",
        "{start}/PT86400.0S",
        "{start}/{end}",
    ],
)
def test_timespan_forms_select_the_same_day(standin, events, timespan: str) -> None:
    text = timespan.format(
        start=DAY_ONE.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        end=DAY_ONE.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    _, _, body = query(standin, "EmailEvents | count", text)

    expected = in_closed_interval(events, DAY_ONE.start, DAY_ONE.end).num_rows
    assert body["tables"][0]["rows"] == [[expected]]


def test_a_bare_duration_ends_now_and_no_timespan_means_everything(standin, events) -> None:
    _, _, recent = query(standin, "EmailEvents | count", "P30D")
    _, _, unbounded = query(standin, "EmailEvents | count", None)
    _, _, too_short = query(standin, "EmailEvents | count", "PT1H")

    assert recent["tables"][0]["rows"] == [[events.num_rows]]
    assert unbounded["tables"][0]["rows"] == [[events.num_rows]]
    assert too_short["tables"][0]["rows"] == [[0]]


def test_parse_timespan_forms() -> None:
    now = datetime(2026, 12, 3, 12, tzinfo=UTC)
    day = (datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC))

    assert parse_timespan("2026-12-01T00:00:00Z/2026-12-02T00:00:00Z") == day
    assert parse_timespan("2026-12-01T00:00:00.0000000Z/P1D") == day
    assert parse_timespan("P1D/2026-12-02T00:00:00Z") == day
    assert parse_timespan("PT1H30M", now) == (now - timedelta(minutes=90), now)
    assert parse_timespan(None) is None


@pytest.mark.parametrize("bad", ["yesterday", "P1Y", "2026-12-02/2026-12-01", "PT", "a/b/c"])
def test_parse_timespan_refuses_nonsense(bad: str) -> None:
    with pytest.raises(QueryRejected) as caught:
        parse_timespan(bad)
    assert caught.value.status == 400
    assert caught.value.body["error"]["code"] == "BadArgumentError"


def test_a_bad_timespan_over_http_is_a_400(standin) -> None:
    status, _, body = query(standin, "EmailEvents | count", "next tuesday")
    assert status == 400
    assert body["error"]["innererror"]["code"] == "InvalidTimespan"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "code"), [(None, "AuthenticationFailed"), ("wrong", None)])
def test_missing_or_wrong_token_is_a_401(standin, token, code) -> None:
    status, _, body = query(standin, "EmailEvents | count", token=token)

    assert status == 401
    assert set(body["error"]) >= {"code", "message"}
    if code:
        assert body["error"]["code"] == code
    assert standin.token not in json.dumps(body)


def test_another_workspace_is_not_found(standin) -> None:
    status, _, body = query(
        standin,
        "EmailEvents | count",
        path="/v1/workspaces/11111111-2222-3333-4444-555555555555/query",
    )
    assert status == 404
    assert body["error"]["code"] == "PathNotFoundError"


@pytest.mark.parametrize(
    ("kql", "inner"),
    [
        ("EmailEvents | wherex", "SyntaxError"),
        ("EmailEvents | where NoSuchColumn == 1", "SemanticError"),
        ("NoSuchTable | take 1", "SemanticError"),
        ("EmailEvents | extend g = geo_info_from_ip_address(SenderIPv4)", "SemanticError"),
        (".drop table EmailEvents", "SemanticError"),
    ],
    ids=["syntax", "unknown-column", "unknown-table", "unsupported-function", "control-command"],
)
def test_bad_kql_is_a_400_with_the_api_error_shape(standin, kql: str, inner: str) -> None:
    status, _, body = query(standin, kql)

    assert status == 400
    assert body["error"]["code"] == "BadArgumentError"
    assert body["error"]["message"]
    assert body["error"]["innererror"]["code"] == inner
    assert body["error"]["innererror"]["message"]


def test_a_body_that_is_not_json_is_a_400(standin) -> None:
    status, _, raw = post(standin, b"{not json")
    assert status == 400
    assert json.loads(raw)["error"]["code"] == "BadArgumentError"


@pytest.mark.parametrize("status", [401, 429, 500, 502, 503, 504])
def test_each_fault_answers_one_request_with_the_error_shape(standin, status: int) -> None:
    standin.inject(Fault(status, retry_after=2))

    first_status, headers, body = query(standin, "EmailEvents | count")
    second_status, _, _ = query(standin, "EmailEvents | count")

    assert first_status == status
    assert headers["Retry-After"] == "2"
    assert set(body["error"]) >= {"code", "message"}
    assert second_status == 200
    assert [r.status for r in standin.requests] == [status, 200]


def test_faults_are_consumed_first_in_first_out(standin) -> None:
    standin.inject(Fault(503), Fault(429), Fault(204))
    statuses = [query(standin, "EmailEvents | count")[0] for _ in range(4)]
    assert statuses == [503, 429, 204, 200]


def test_a_204_fault_has_an_empty_body(standin) -> None:
    standin.inject(Fault(204))
    status, _, raw = post(standin, {"query": "EmailEvents | count"})
    assert status == 204
    assert raw == b""


def test_an_unknown_fault_status_is_refused() -> None:
    with pytest.raises(ValueError, match="418"):
        Fault(418)


def test_prefer_wait_shorter_than_the_delay_times_out_with_504(standin) -> None:
    standin.set_delay(0.5)
    status, _, body = query(standin, "EmailEvents | count", headers={"Prefer": "wait=0.05"})
    assert status == 504
    assert body["error"]["code"] == "GatewayTimeout"


# --- results ---------------------------------------------------------------------------------


def test_partial_result_is_a_200_with_truncated_rows_and_details(standin) -> None:
    standin.set_limits(max_rows=25)
    status, _, body = query(standin, "EmailEvents | project NetworkMessageId")

    assert status == 200
    assert len(body["tables"][0]["rows"]) == 25
    error = body["error"]
    assert error["code"] == "PartialError"
    assert error["message"] == "There were some errors when processing your query."
    inner = error["details"][0]["innererror"]
    assert "E_QUERY_RESULT_SET_TOO_LARGE" in inner["message"]
    assert "record count limit 25" in inner["message"]
    assert standin.requests[-1].partial


def test_size_limit_keeps_only_the_rows_that_fit(standin, events) -> None:
    standin.set_limits(max_bytes=20_000)
    status, _, raw = post(standin, {"query": "EmailEvents | project NetworkMessageId, SenderIPv4"})
    body = json.loads(raw)

    assert status == 200
    assert len(raw) <= 20_000
    rows = body["tables"][0]["rows"]
    assert 0 < len(rows) < events.num_rows
    inner = body["error"]["details"][0]["innererror"]
    assert "data size limit 20000" in inner["message"]


def test_column_types_and_value_forms(standin) -> None:
    kql = (
        "EmailEvents | take 1 | project When = TimeGenerated, Count = 1, Ratio = 1.5,"
        " Flag = true, Text = SenderFromDomain, Missing = tostring(int(null))"
    )
    _, _, body = query(standin, kql)

    table = body["tables"][0]
    types = {column["name"]: column["type"] for column in table["columns"]}
    assert types == {
        "When": "datetime",
        "Count": "long",
        "Ratio": "real",
        "Flag": "bool",
        "Text": "string",
        "Missing": "string",
    }
    when, count, ratio, flag, text, missing = table["rows"][0]
    assert ISO_UTC.match(when)
    assert (count, ratio, flag, missing) == (1, 1.5, True, "")
    assert text


def test_datetimes_are_iso_utc_with_z(standin, events) -> None:
    _, _, body = query(standin, "EmailEvents | project TimeGenerated", DAYS.iso_timespan())

    texts = [row[0] for row in body["tables"][0]["rows"]]
    assert all(ISO_UTC.match(text) for text in texts)
    parsed = sorted(datetime.fromisoformat(text.replace("Z", "+00:00")) for text in texts)
    assert parsed == sorted(events["TimeGenerated"].to_pylist())


def test_gzip_only_when_asked(standin) -> None:
    kql = "EmailEvents | take 500 | project NetworkMessageId"
    _, zipped_headers, zipped = post(standin, {"query": kql}, headers={"Accept-Encoding": "gzip"})
    _, plain_headers, plain = post(standin, {"query": kql}, headers={"Accept-Encoding": "identity"})

    assert zipped_headers.get("Content-Encoding") == "gzip"
    assert "Content-Encoding" not in plain_headers
    assert len(json.loads(zipped)["tables"][0]["rows"]) == 500
    assert len(json.loads(plain)["tables"][0]["rows"]) == 500


def test_concurrent_queries_each_get_their_own_window(standin, events) -> None:
    hours = list(
        Window(DAY_ONE.start, DAY_ONE.start + timedelta(hours=8)).split(timedelta(hours=1))
    )

    def count(window: Window) -> int:
        timespan = f"{window.start.isoformat()}/{window.end.isoformat()}"
        return query(standin, "EmailEvents | count", timespan)[2]["tables"][0]["rows"][0][0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(count, hours))

    expected = [in_closed_interval(events, w.start, w.end).num_rows for w in hours]
    assert counts == expected


def test_rows_in_is_the_half_open_ground_truth(standin, events) -> None:
    truth = standin.rows_in(DAY_ONE)
    generated = events["TimeGenerated"]
    keep = pc.and_(pc.greater_equal(generated, DAY_ONE.start), pc.less(generated, DAY_ONE.end))

    assert truth.num_rows == pc.sum(keep).as_py()
    assert all(DAY_ONE.contains(t) for t in truth["TimeGenerated"].to_pylist())


def test_requests_log_what_was_asked_and_answered(standin) -> None:
    query(standin, "EmailEvents | take 3", DAYS.iso_timespan())
    query(standin, "EmailEvents | wherex")

    first, second = standin.requests
    assert (first.query, first.timespan, first.status, first.rows) == (
        "EmailEvents | take 3",
        DAYS.iso_timespan(),
        200,
        3,
    )
    assert first.bytes > 0
    assert (second.status, second.rows) == (400, 0)


# --- control endpoint ------------------------------------------------------------------------


def test_control_endpoint_drives_faults_limits_and_the_log(standin) -> None:
    settings = {"faults": [{"status": 503, "retry_after": 1}], "max_rows": 5, "delay_s": 0}
    status, _, raw = post(standin, settings, path="/control/faults")
    assert status == 200
    assert json.loads(raw)["queued_faults"] == 1

    assert query(standin, "EmailEvents | take 50")[0] == 503
    _, _, body = query(standin, "EmailEvents | take 50")
    assert len(body["tables"][0]["rows"]) == 5

    status, _, raw = post(standin, b"", path="/control/requests", method="GET")
    logged = json.loads(raw)["requests"]
    assert [r["status"] for r in logged] == [503, 200]
    assert logged[1]["rows"] == 5

    assert post(standin, {}, path="/control/reset")[0] == 200
    assert standin.requests == []
    assert len(query(standin, "EmailEvents | take 50")[2]["tables"][0]["rows"]) == 50


def test_control_endpoint_needs_the_token(standin) -> None:
    status, _, raw = post(
        standin, {"faults": [{"status": 500}]}, path="/control/faults", token=None
    )
    assert status == 401
    assert json.loads(raw)["error"]["code"] == "AuthenticationFailed"
    assert query(standin, "EmailEvents | count")[0] == 200


def test_control_endpoint_refuses_a_bad_fault(standin) -> None:
    status, _, _ = post(standin, {"faults": [{"status": 418}]}, path="/control/faults")
    assert status == 400


# --- other ways to run it --------------------------------------------------------------------


def test_serves_events_from_a_file_over_plain_http(tmp_path: Path) -> None:
    window = Window.for_days(date(2026, 12, 1))
    table = generate_email_events(500, window, seed=2)
    path = write_events(table, tmp_path / "events.parquet")

    with StandIn(path, tls=False, workspace_id="abc", token="t0k") as plain:
        assert plain.url.startswith("http://")
        assert plain.ca_path is None
        request = urllib.request.Request(
            f"{plain.url}/v1/workspaces/abc/query",
            data=json.dumps({"query": "EmailEvents | count"}).encode(),
            headers={"Authorization": "Bearer t0k", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
    assert body["tables"][0]["rows"] == [[500]]


def test_stop_releases_the_port_and_a_restart_serves_again(events: pa.Table) -> None:
    standin = StandIn(events.slice(0, 100))
    standin.start()
    first_url = standin.url
    standin.stop()
    standin.start()
    try:
        assert query(standin, "EmailEvents | count")[2]["tables"][0]["rows"] == [[100]]
    finally:
        standin.stop()
    assert first_url.startswith("https://127.0.0.1:")


def test_server_thread_is_a_daemon(standin) -> None:
    names = {thread.name: thread.daemon for thread in threading.enumerate()}
    assert names.get("query-standin") is True
