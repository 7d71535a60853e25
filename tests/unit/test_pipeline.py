"""The steps over a run folder: the extract split into UTC days, then validation and counting
day by day."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spamgeo import pipeline
from spamgeo.extract import MANIFEST_NAME, RAW_ARROW_SCHEMA
from spamgeo.geolocate import GeoSettings, default_city_database
from spamgeo.pipeline import RunFolder, aggregate_step, validate_step
from spamgeo.quality import QualityConfig, QualityGateError
from spamgeo.window import Window

DAY_1, DAY_2, DAY_3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
WINDOW = Window.for_days(DAY_1, DAY_3)


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def row(stamp: datetime | None, message: str, **overrides: Any) -> dict[str, Any]:
    return {
        "TimeGenerated": stamp,
        "Timestamp": stamp,
        "NetworkMessageId": message,
        "RecipientEmailAddress": "alice@contoso.example",
        "SenderIPv4": "81.2.69.160",
        "SenderIPv6": "",
        "ThreatTypes": "Spam",
        **overrides,
    }


def write_extract(folder: RunFolder, slices: list[list[dict[str, Any]]]) -> None:
    """Slice files and the manifest, as a finished extraction leaves them."""
    folder.raw.mkdir(parents=True)
    names = []
    for index, rows in enumerate(slices):
        names.append(f"slice-{index}.parquet")
        pq.write_table(pa.Table.from_pylist(rows, schema=RAW_ARROW_SCHEMA), folder.raw / names[-1])
    (folder.raw / MANIFEST_NAME).write_text(json.dumps({"files": names}))


def messages(path) -> list[str]:
    return sorted(pq.read_table(path).column("NetworkMessageId").to_pylist())


def test_extract_is_split_into_a_file_per_day_and_loses_no_row(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    write_extract(
        folder,
        [
            # A slice across midnight, then one holding rows the window does not cover.
            [row(at(DAY_1, 22), "a"), row(at(DAY_1, 23), "b"), row(at(DAY_2, 0), "c")],
            [
                row(at(DAY_2, 5), "d"),
                row(at(DAY_1, 0) - timedelta(seconds=1), "early"),
                row(at(DAY_3, 0) + timedelta(days=1), "late"),
                row(None, "unstamped"),
            ],
        ],
    )

    assert pipeline._split_extract_by_day(folder, WINDOW) == [DAY_1, DAY_2, DAY_3]

    # Rows outside the window go with its first day, where validation quarantines them.
    assert messages(folder.day(DAY_1).raw) == ["a", "b", "early", "late", "unstamped"]
    assert messages(folder.day(DAY_2).raw) == ["c", "d"]
    assert messages(folder.day(DAY_3).raw) == []
    assert pq.read_schema(folder.day(DAY_3).raw) == RAW_ARROW_SCHEMA


def test_a_window_of_part_days_is_refused(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    write_extract(folder, [[row(at(DAY_1, 1), "a")]])
    part_day = Window(at(DAY_1, 0), at(DAY_1, 12))

    with pytest.raises(ValueError, match="whole UTC days"):
        pipeline._split_extract_by_day(folder, part_day)


def test_validation_runs_per_day_and_the_gate_names_the_failing_day(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    good = [
        row(at(day, hour), f"m-{day}-{hour}") for day in (DAY_1, DAY_2, DAY_3) for hour in (1, 2)
    ]
    write_extract(folder, [good, [row(at(DAY_2, 3), "")]])

    with pytest.raises(QualityGateError) as caught:
        validate_step(WINDOW, folder)

    lines = str(caught.value).splitlines()
    assert any(line.startswith("raw_message_id failed: 2026-03-02: ") for line in lines)
    assert not any("2026-03-01" in line or "2026-03-03" in line for line in lines)

    summary = json.loads(folder.summary.read_text())["validate"]
    assert summary["quality"]["days_failed"] == ["2026-03-02"]
    assert not summary["quality"]["ok"]
    assert summary["quality_per_day"]["2026-03-01"]["ok"]
    assert (summary["rows_in"], summary["rows_clean"], summary["rows_quarantined"]) == (7, 6, 1)
    assert summary["quality"]["quarantined_by_reason"]["raw_message_id"] == 1
    assert summary["rows_in_per_day"] == {"2026-03-01": 2, "2026-03-02": 3, "2026-03-03": 2}
    for day in (DAY_1, DAY_2, DAY_3):
        # Every day's files are written before the gate, for the operator to read.
        assert pq.read_table(folder.day(day).clean).num_rows == 2
        assert (folder.day(day).reports / "validation_raw.html").exists()
    assert messages(folder.day(DAY_2).quarantine) == [""]


def test_a_one_day_window_is_validated_straight_from_the_extract(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    late = row(at(DAY_2, 0) + timedelta(hours=1), "late")
    write_extract(folder, [[row(at(DAY_1, 1), "a"), row(at(DAY_1, 2), "b")], [late]])
    quality = QualityConfig.from_mapping({"max_quarantine_share": 0.5})

    summary = validate_step(Window.for_days(DAY_1), folder, quality_config=quality)

    assert not folder.day(DAY_1).raw.exists()
    assert messages(folder.day(DAY_1).clean) == ["a", "b"]
    assert messages(folder.day(DAY_1).quarantine) == ["late"]
    assert summary["rows_in_per_day"] == {"2026-03-01": 2}
    assert (summary["rows_in"], summary["rows_quarantined"]) == (3, 1)


def test_counting_day_by_day_keeps_the_window_distinct_addresses(tmp_path, monkeypatch) -> None:
    # Merge the per-day address sets after every second day, so three days cross a merge.
    monkeypatch.setattr(pipeline, "_MERGE_ADDRESSES_EVERY", 2)
    folder = RunFolder(tmp_path / "run")
    senders = {DAY_1: ["81.2.69.160", "2001:db8::1"], DAY_2: ["81.2.69.160"]}
    senders[DAY_3] = ["81.2.69.161", "2001:DB8::1"]  # the same IPv6 address, written otherwise
    rows = []
    for day, addresses in senders.items():
        for index, address in enumerate(addresses):
            family = "SenderIPv6" if ":" in address else "SenderIPv4"
            rows.append(
                row(at(day, index), f"{day}-{index}", **{"SenderIPv4": "", family: address})
            )
    write_extract(folder, [rows])
    validate_step(WINDOW, folder)

    summary = aggregate_step(folder, WINDOW, geo_settings=GeoSettings(default_city_database()))

    assert summary["rows_out"] == 5
    assert summary["distinct_addresses"] == 3
    assert sorted(summary["quality_per_day"]) == ["2026-03-01", "2026-03-02", "2026-03-03"]
    for day, addresses in senders.items():
        assert pq.read_table(folder.day(day).daily).num_rows == len(addresses)
