"""End-to-end: 90 days through the real DAG against a stand-in that truncates and throttles.

With results capped at 1,000 rows and throttling injected throughout, the extraction must
split its slices and retry until every row of the window has arrived exactly once; each day
is then published with the row count the stand-in holds for it.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spamgeo.local.standin import Fault, StandIn
from spamgeo.local.synthetic import generate_email_events
from spamgeo.window import Window
from tests.e2e.conftest import PREFIX, container_client, load_daily_dag

pytestmark = pytest.mark.e2e

WINDOW = Window.for_days(date(2026, 6, 1), date(2026, 8, 29))
MAX_ROWS = 1000
# Its own container: the rollup ends at the newest published day, and other end-to-end tests
# publish later days than this window's.
CONTAINER = "spamgeo-long-window"


def spam_rows_per_day(events: pa.Table) -> Counter:
    """Ground truth: rows with the term Spam in ThreatTypes, per UTC day, inside the window."""
    spam = pc.match_substring_regex(events["ThreatTypes"], r"(?i)(^|[^a-z0-9])spam($|[^a-z0-9])")
    days = pc.cast(events.filter(spam)["TimeGenerated"], pa.date32())
    return Counter(
        {entry["values"]: entry["counts"] for entry in pc.value_counts(days).to_pylist()}
    )


class Throttle(threading.Thread):
    """Keeps injecting throttling and server errors while the extraction runs."""

    def __init__(self, api: StandIn) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.done = threading.Event()
        self.bursts = 0

    def run(self) -> None:
        seen = 0
        while not self.done.wait(0.05):
            served = len(self.api.requests)
            if served - seen >= 25:
                seen = served
                self.api.inject(Fault(429), Fault(503, retry_after=0.2), Fault(429, retry_after=0))
                self.bursts += 1


def test_ninety_days_arrive_exactly_once_through_splits_and_throttling(
    airflow_db, azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = generate_email_events(300_000, WINDOW, seed=21)
    expected = spam_rows_per_day(events)
    busiest = max(expected.values())
    assert busiest > MAX_ROWS, "some day must exceed the result limit, or nothing is split"

    with StandIn(events, state_dir=tmp_path / "standin", max_rows=MAX_ROWS) as api:
        dag = load_daily_dag(api, azurite, tmp_path / "runs", monkeypatch, container=CONTAINER)
        throttle = Throttle(api)
        throttle.start()
        try:
            run = dag.test(
                run_after=datetime(2026, 9, 15, tzinfo=UTC),
                logical_date=datetime(2026, 9, 15, tzinfo=UTC),
                run_conf={
                    "start_day": WINDOW.days()[0].isoformat(),
                    "end_day": WINDOW.days()[-1].isoformat(),
                },
            )
        finally:
            throttle.done.set()
            throttle.join()
        statuses = Counter(record.status for record in api.requests)

    assert run.state == "success"
    assert throttle.bursts > 0 and statuses[429] > 0 and statuses[503] > 0
    assert any(record.partial for record in api.requests), "the row limit was never hit"

    extract = run.get_task_instance("extract").xcom_pull(task_ids="extract")
    assert extract["rows"] == sum(expected.values())
    assert extract["splits"] > 0
    assert extract["queries"] > len(WINDOW.days()) + extract["splits"]

    store = container_client(azurite, CONTAINER)
    for day in WINDOW.days():
        folder = f"{PREFIX}/daily/date={day.isoformat()}"
        manifest = json.loads(store.download_blob(f"{folder}/manifest.json").readall())
        assert manifest["rows_in"] == expected[day], f"{day}: rows extracted"

    latest = json.loads(store.download_blob(f"{PREFIX}/latest/manifest.json").readall())
    rollup = latest["rollups"]["spam_by_ip_90d.csv"]
    assert rollup["last_day"] == WINDOW.days()[-1].isoformat()
    # The window is 90 days and every day of it was published: the rollup is complete.
    assert rollup["complete"] is True
    assert WINDOW.duration == timedelta(days=90)
