"""The command line: generate data, and run a whole window against the stand-in to a folder."""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from spamgeo.cli import main
from spamgeo.local.standin import StandIn
from spamgeo.local.synthetic import generate_email_events, load_events
from spamgeo.window import Window

DAY = date(2026, 11, 10)


def seed_counts(events: pa.Table, day: date) -> Counter:
    """Rows per sender address for one day, as the hunting query counts them."""
    window = Window.for_days(day)
    spam = pc.match_substring_regex(events["ThreatTypes"], r"(?i)(^|[^a-z0-9])spam($|[^a-z0-9])")
    in_day = pc.and_(
        pc.greater_equal(events["TimeGenerated"], pa.scalar(window.start)),
        pc.less(events["TimeGenerated"], pa.scalar(window.end)),
    )
    rows = events.filter(pc.and_(spam, in_day))
    counts: Counter = Counter()
    for column in ("SenderIPv4", "SenderIPv6"):
        counts.update(address for address in rows[column].to_pylist() if address)
    return counts


def run_one_day(api: StandIn, tmp_path: Path) -> list[str]:
    """`python -m spamgeo run` for DAY against the stand-in, publishing to a local folder."""
    return [
        "run",
        "--start",
        DAY.isoformat(),
        "--endpoint",
        api.url,
        "--workspace-id",
        api.workspace_id,
        "--ca-bundle",
        str(api.ca_path),
        "--out",
        str(tmp_path / "published"),
        "--work-dir",
        str(tmp_path / "work"),
    ]


def test_generate_writes_the_requested_rows(tmp_path: Path) -> None:
    out = tmp_path / "events.parquet"
    code = main(["generate", "--start", "2026-11-01", "--rows", "3000", "--out", str(out)])

    assert code == 0
    events = load_events(out)
    assert events.num_rows == 3000
    assert pc.min(events["TimeGenerated"]).as_py().date() == date(2026, 11, 1)


def test_run_publishes_a_day_equal_to_the_seed_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = generate_email_events(6000, Window.for_days(DAY), seed=3)
    with StandIn(events, state_dir=tmp_path / "standin") as api:
        monkeypatch.setenv("SPAMGEO_AUTH", "static_token")
        monkeypatch.setenv("SPAMGEO_TOKEN", api.token)
        code = main(run_one_day(api, tmp_path))

    assert code == 0
    daily = tmp_path / "published" / "spamgeo" / "daily" / f"date={DAY}" / "spam_by_ip.csv"
    rows = list(csv.DictReader(io.StringIO(daily.read_text(encoding="utf-8"))))
    published = Counter(
        {row["SenderIPv4"] or row["SenderIPv6"]: int(row["count_"]) for row in rows}
    )
    assert published == seed_counts(events, DAY)
    assert (tmp_path / "published" / "spamgeo" / "latest" / "spam_by_ip_90d.csv").exists()
    assert not any((tmp_path / "work").iterdir()), "the run folder is removed after success"


def test_a_bad_date_names_the_option(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        code = main(["run", "--start", "2026-13-01", "--out", str(tmp_path)])
    assert code == 2
    assert "--start" in caplog.text


def test_run_without_a_workspace_says_which_setting_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SPAMGEO_WORKSPACE_ID", raising=False)
    with caplog.at_level(logging.ERROR):
        code = main(["run", "--start", "2026-11-01", "--out", str(tmp_path)])
    assert code == 2
    assert "--workspace-id" in caplog.text and "SPAMGEO_WORKSPACE_ID" in caplog.text


def test_a_refused_token_ends_the_run_with_the_credentials_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    events = generate_email_events(500, Window.for_days(DAY), seed=4)
    with StandIn(events, state_dir=tmp_path / "standin") as api:
        monkeypatch.setenv("SPAMGEO_AUTH", "static_token")
        monkeypatch.setenv("SPAMGEO_TOKEN", "not-the-token")
        with caplog.at_level(logging.ERROR):
            code = main(run_one_day(api, tmp_path))
    assert code == 1
    assert "run failed" in caplog.text and "not-the-token" not in caplog.text
    assert not (tmp_path / "published").exists() or not any((tmp_path / "published").rglob("*.csv"))
