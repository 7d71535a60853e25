"""End-to-end: the real spamgeo_daily DAG, run with dag.test() against the stand-in and Azurite.

The expected numbers come from running the seed hunting query itself, through a KQL engine, on
the same EmailEvents the stand-in serves: the published counts must equal them.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from spamgeo.local.standin import StandIn
from spamgeo.local.synthetic import generate_email_events
from spamgeo.window import Window
from tests.e2e.conftest import (
    PREFIX,
    asset_events_of,
    container_client,
    load_daily_dag,
    task_states,
)

pytestmark = pytest.mark.e2e

FIRST_DAY = date(2026, 11, 1)
LAST_DAY = date(2026, 11, 4)

SEED_QUERY = """
let IPv4 = EmailEvents
| where ThreatTypes has "Spam"
| where SenderIPv4 != ""
| summarize count() by SenderIPv4
| project SenderIPv4, count_;
let IPv6 = EmailEvents
| where ThreatTypes has "Spam"
| where SenderIPv6 != ""
| summarize count() by SenderIPv6
| project SenderIPv6, count_;
IPv4
| union IPv6
| project SenderIPv6, SenderIPv4, count_
"""


MALFORMED = {"SenderIPv4": ["999.1.1.1", "not-an-address"], "SenderIPv6": ["2001:db8::zz"]}


def with_malformed_senders(events: pa.Table, day: date) -> pa.Table:
    """The same events plus three spam rows on `day` whose sender address is garbage."""
    import pyarrow.compute as pc

    window = Window.for_days(day)
    spam_that_day = events.filter(
        pc.and_(
            pc.equal(events["ThreatTypes"], "Spam"),
            pc.and_(
                pc.greater_equal(events["TimeGenerated"], pa.scalar(window.start)),
                pc.less(events["TimeGenerated"], pa.scalar(window.end)),
            ),
        )
    ).slice(0, 3)
    bad = spam_that_day.to_pylist()
    for row, (column, value) in zip(
        bad, [(c, v) for c, values in MALFORMED.items() for v in values], strict=True
    ):
        row["SenderIPv4"], row["SenderIPv6"] = "", ""
        row[column] = value
    return pa.concat_tables([events, pa.Table.from_pylist(bad, schema=events.schema)])


@pytest.fixture(scope="module")
def events() -> pa.Table:
    clean = generate_email_events(24_000, Window.for_days(FIRST_DAY, LAST_DAY), seed=11)
    return with_malformed_senders(clean, FIRST_DAY)


@pytest.fixture(scope="module")
def api(events: pa.Table, tmp_path_factory: pytest.TempPathFactory):
    with StandIn(events, state_dir=tmp_path_factory.mktemp("standin")) as server:
        yield server


@pytest.fixture
def dag(airflow_db, api, azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    return load_daily_dag(api, azurite, tmp_path / "runs", monkeypatch)


def published_csv(azurite, day: date) -> bytes:
    path = f"{PREFIX}/daily/date={day.isoformat()}/spam_by_ip.csv"
    return container_client(azurite).download_blob(path).readall()


def seed_query_counts(events: pa.Table, day: date) -> set[tuple[str, str, int]]:
    """What the seed hunting query returns for one UTC day of the same data."""
    import duckdb_kql
    import pyarrow.compute as pc

    window = Window.for_days(day)
    in_day = pc.and_(
        pc.greater_equal(events["TimeGenerated"], pa.scalar(window.start)),
        pc.less(events["TimeGenerated"], pa.scalar(window.end)),
    )
    con = duckdb_kql.connect()
    con.register("day_events", events.filter(in_day))
    con.sql("CREATE TABLE EmailEvents AS SELECT * FROM day_events")
    rows = duckdb_kql.query(con, SEED_QUERY).fetchall()
    return {(v6 or "", v4 or "", int(count)) for v6, v4, count in rows}


def run_day(dag, day: date, *, run_after: datetime):
    return dag.test(
        run_after=run_after,
        logical_date=run_after,
        run_conf={"start_day": day.isoformat(), "end_day": day.isoformat()},
    )


def test_published_counts_equal_the_seed_query(dag, azurite, events) -> None:
    day = date(2026, 11, 2)
    run = run_day(dag, day, run_after=datetime(2026, 11, 20, 1, tzinfo=UTC))
    assert run.state == "success"
    states = task_states(run)
    # No Power BI connection here: the refresh is skipped, visibly, and the run still succeeds.
    assert states["check_power_bi"] == "skipped"
    assert states["refresh_power_bi"] == "skipped"
    assert states["clean_up"] == "success"

    rows = list(csv.DictReader(io.StringIO(published_csv(azurite, day).decode("utf-8"))))
    published = {(row["SenderIPv6"], row["SenderIPv4"], int(row["count_"])) for row in rows}
    expected = seed_query_counts(events, day)
    assert len(expected) > 100
    assert published == expected

    header = next(csv.reader(io.StringIO(published_csv(azurite, day).decode("utf-8"))))
    assert header[:5] == ["SenderIPv6", "SenderIPv4", "Latitude", "Longitude", "count_"]
    located = [row for row in rows if row["Latitude"] and row["Longitude"]]
    assert located, "the embedded City database should locate some public senders"
    for row in located:
        assert -90 <= float(row["Latitude"]) <= 90
        assert -180 <= float(row["Longitude"]) <= 180

    manifest = json.loads(
        container_client(azurite)
        .download_blob(f"{PREFIX}/daily/date={day.isoformat()}/manifest.json")
        .readall()
    )
    assert manifest["rows_out"] == len(rows)

    page = (
        container_client(azurite)
        .download_blob(f"{PREFIX}/daily/date={day.isoformat()}/validation.html")
        .readall()
        .decode()
    )
    assert page.count("<html") == 1, "one page, both stages"
    assert "quality report: raw" in page and "quality report: aggregate" in page

    (event,) = asset_events_of(run)
    assert event["days"] == [day.isoformat()]
    assert event["rows_out"] == len(rows)
    assert event["rollup_rows"] >= len(rows)


def test_failed_quality_gate_keeps_the_last_good_output(
    dag, azurite, events, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = date(2026, 11, 3)
    first = run_day(dag, day, run_after=datetime(2026, 11, 21, 1, tzinfo=UTC))
    assert first.state == "success"
    good = published_csv(azurite, day)

    # The synthetic data has a few rows with no sender address; allowing none, as an error,
    # makes the raw gate fail, which must leave the published day exactly as it was.
    monkeypatch.setenv(
        "AIRFLOW_VAR_SPAMGEO_QUALITY",
        json.dumps({"severities": {"raw_no_address": "error"}, "max_no_address_share": 0.0}),
    )
    second = run_day(dag, day, run_after=datetime(2026, 11, 21, 2, tzinfo=UTC))
    assert second.state == "failed"
    assert published_csv(azurite, day) == good


def test_rerunning_a_day_is_byte_identical(dag, azurite) -> None:
    day = date(2026, 11, 4)
    assert run_day(dag, day, run_after=datetime(2026, 11, 22, 1, tzinfo=UTC)).state == "success"
    once = published_csv(azurite, day)
    assert run_day(dag, day, run_after=datetime(2026, 11, 22, 2, tzinfo=UTC)).state == "success"
    assert published_csv(azurite, day) == once
    assert once.count(b"\n") > 1


def test_malformed_senders_are_quarantined_and_the_day_still_publishes(dag, azurite) -> None:
    run = run_day(dag, FIRST_DAY, run_after=datetime(2026, 11, 23, 1, tzinfo=UTC))
    assert run.state == "success"

    folder = f"{PREFIX}/daily/date={FIRST_DAY.isoformat()}"
    store = container_client(azurite)
    quarantine = list(
        csv.DictReader(
            io.StringIO(store.download_blob(f"{folder}/quarantine.csv").readall().decode())
        )
    )
    held = {(row["SenderIPv4"], row["SenderIPv6"]): row["QuarantineReason"] for row in quarantine}
    assert held == {
        ("999.1.1.1", ""): "raw_sender_ipv4",
        ("not-an-address", ""): "raw_sender_ipv4",
        ("", "2001:db8::zz"): "raw_sender_ipv6",
    }
    published = published_csv(azurite, FIRST_DAY).decode()
    for values in MALFORMED.values():
        for value in values:
            assert value not in published
    manifest = json.loads(store.download_blob(f"{folder}/manifest.json").readall())
    assert manifest["rows_quarantined"] == 3
