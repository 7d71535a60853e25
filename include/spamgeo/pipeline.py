"""The pipeline's steps over one window, each reading and writing a run folder.

The Airflow DAG calls one step per task and the command line calls the same steps in order, so
both run exactly the same code. Steps hand data to each other as Parquet files in the run folder and
return small JSON-safe summaries, which become the tasks' XComs and the run's manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from spamgeo.memory import keep_freed_memory, release_freed_memory
from spamgeo.window import Window

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "spamgeo"
DEFAULT_ROLLUP_DAYS = 90
TRAILING_DAYS_FOR_VOLUME = 7


@dataclass(frozen=True)
class DayFolder:
    """One UTC day's files in a run folder: its raw rows and what validating and counting made."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw.parquet"

    @property
    def clean(self) -> Path:
        return self.root / "clean.parquet"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine.parquet"

    @property
    def daily(self) -> Path:
        return self.root / "daily.parquet"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


@dataclass(frozen=True)
class RunFolder:
    """Where one run keeps its intermediate files; safe to delete once the run has published.

    The extract covers the whole window; everything after it is kept per UTC day, so that each
    step holds one day in memory however long the window is.
    """

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def day(self, day: date) -> DayFolder:
        return DayFolder(self.root / "days" / day.isoformat())

    def create(self) -> RunFolder:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def run_folder_for(work_dir: Path, run_id: str) -> RunFolder:
    """The run folder for an Airflow run id or CLI run key, with a filesystem-safe name."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return RunFolder(Path(work_dir) / safe)


# Run-folder files are read back whole, once or twice, by the next step: fast compression and no
# statistics, which nothing filters on (lz4 writes a day of a million rows in half zstd's time).
_PARQUET_OPTIONS: dict[str, Any] = {"compression": "lz4", "write_statistics": False}


def _write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, **_PARQUET_OPTIONS)
    tmp.replace(path)


def _update_summary(folder: RunFolder, step: str, summary: Mapping[str, Any]) -> None:
    """Keep every step's summary in the run folder, for the manifest and for a person reading it."""
    current = _read_summary(folder)
    current[step] = summary
    folder.summary.write_text(json.dumps(current, indent=2, sort_keys=True, default=str))


def _read_summary(folder: RunFolder) -> dict[str, Any]:
    return json.loads(folder.summary.read_text()) if folder.summary.exists() else {}


def extract_step(client: Any, window: Window, folder: RunFolder) -> dict[str, Any]:
    """Pull every spam row of the window into Parquet slices under the run folder."""
    from spamgeo.extract import extract_window

    keep_freed_memory()
    folder.create()
    result = extract_window(client, window, folder.raw)
    summary = result.to_summary()
    _update_summary(folder, "extract", summary)
    return summary


def validate_step(
    window: Window,
    folder: RunFolder,
    *,
    quality_config: Any = None,
    trailing_rows: Mapping[date, int] | None = None,
) -> dict[str, Any]:
    """Check the raw extract day by day, set aside quarantined rows, and stop the run on an error.

    Each day's clean rows, quarantine and reports are written before the gate is applied, so an
    operator can read why a run failed in its run folder.
    """
    from spamgeo.extract import read_extract
    from spamgeo.quality import rows_per_day, validate_raw

    keep_freed_memory()
    if not window.is_day_aligned:
        raise ValueError(f"window {window} does not fall on whole UTC days")
    days = window.days()
    # A one-day window (every scheduled run) is its whole extract: no need to split it first.
    if len(days) > 1:
        _split_extract_by_day(folder, window)
    reports, rows = {}, {"rows_in": 0, "rows_clean": 0, "rows_quarantined": 0}
    rows_in_per_day = {}
    for day in days:
        files = folder.day(day)
        raw = read_extract(folder.raw) if len(days) == 1 else pq.read_table(files.raw)
        checked = validate_raw(
            raw, Window.for_days(day), trailing_rows=trailing_rows, config=quality_config
        )
        _write_table(checked.clean, files.clean)
        _write_table(checked.quarantine, files.quarantine)
        _write_reports(files.reports, "raw", checked.report)
        reports[day] = checked.report
        rows["rows_in"] += raw.num_rows
        rows["rows_clean"] += checked.clean.num_rows
        rows["rows_quarantined"] += checked.quarantine.num_rows
        rows_in_per_day[day.isoformat()] = rows_per_day(raw, window)[day]
        del raw, checked
        _end_of_day()

    summary = {
        **rows,
        "rows_in_per_day": rows_in_per_day,
        "quality": _window_quality("raw", window, reports),
        "quality_per_day": {day.isoformat(): report.summary() for day, report in reports.items()},
    }
    _update_summary(folder, "validate", summary)
    _raise_for_errors("raw", window, reports)
    return summary


def _end_of_day() -> None:
    """Free what a finished day left behind before the next day is read.

    Great Expectations leaves its pandas copy of each day in reference cycles, which only the
    cyclic collector frees, and it rarely runs on its own: without this, ten days of a million
    rows piled up to 1.1 GB in the validate step instead of staying near one day's 0.9 GB. The
    freed memory then goes back to the kernel, so fragments do not pile up over a long window.
    """
    import gc

    gc.collect()
    release_freed_memory()


def _split_extract_by_day(folder: RunFolder, window: Window) -> list[date]:
    """Write the extract's rows into one raw file per UTC day of the window; return the days.

    One slice file is read at a time, so memory follows the slice. Rows stamped outside the
    window, or not at all, go with its first day: validation quarantines them there, and they
    are published with that day rather than lost.
    """
    import pyarrow.compute as pc

    from spamgeo.extract import RAW_ARROW_SCHEMA, iter_extract

    if not window.is_day_aligned:
        raise ValueError(f"window {window} does not fall on whole UTC days")
    days = window.days()
    in_window = pa.array(days, pa.date32())
    writers: dict[date, pq.ParquetWriter] = {}
    try:
        for table in iter_extract(folder.raw):
            stamped = pc.cast(table["TimeGenerated"], pa.date32())
            parts = [
                (day, pc.fill_null(pc.equal(stamped, pa.scalar(day, pa.date32())), False))
                for day in pc.unique(stamped.drop_null()).to_pylist()
                if day in days
            ]
            outside = pc.invert(pc.fill_null(pc.is_in(stamped, value_set=in_window), False))
            if pc.any(outside).as_py():
                parts.append((days[0], outside))
            for day, rows in parts:
                if day not in writers:
                    writers[day] = _day_writer(folder.day(day).raw, RAW_ARROW_SCHEMA)
                writers[day].write_table(table.filter(rows))
    finally:
        for writer in writers.values():
            writer.close()
    for day in days:
        if day not in writers:
            _day_writer(folder.day(day).raw, RAW_ARROW_SCHEMA).close()
    return days


def _day_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    return pq.ParquetWriter(path, schema, **_PARQUET_OPTIONS)


def _window_quality(stage: str, window: Window, reports: Mapping[date, Any]) -> dict[str, Any]:
    """The days' quality summaries as one for the window: verdicts joined, row counts added."""
    summaries = [report.summary() for report in reports.values()]
    counts: dict[str, Any] = {}
    for summary in summaries:
        for key, value in summary.items():
            if key in ("stage", "window", "ok", "errors", "warnings"):
                continue
            counts[key] = _added(counts.get(key, _NOTHING), value)
    errors = sorted({name for summary in summaries for name in summary["errors"]})
    return {
        "stage": stage,
        "window": str(window),
        "ok": not errors,
        "errors": errors,
        "warnings": sorted({name for summary in summaries for name in summary["warnings"]}),
        "days_failed": [day.isoformat() for day, report in reports.items() if not report.ok],
        **counts,
    }


_NOTHING = object()


def _added(total: Any, value: Any) -> Any:
    """Counts added across days; per-reason counts key by key; unknown (None) stays unknown."""
    if total is _NOTHING:
        return value
    if total is None or value is None:
        return None
    if isinstance(total, dict) and isinstance(value, dict):
        return {key: _added(total.get(key, 0), value.get(key, 0)) for key in total | value}
    if isinstance(total, int) and isinstance(value, int):
        return total + value
    return None


def _raise_for_errors(stage: str, window: Window, reports: Mapping[date, Any]) -> None:
    """Stop the run when any day failed an error-level check, naming each day's failures."""
    from dataclasses import replace

    from spamgeo.quality import QualityGateError, ValidationReport

    failed = [
        replace(check, detail=f"{day.isoformat()}: {check.detail}")
        for day, report in reports.items()
        for check in report.errors
    ]
    if failed:
        raise QualityGateError(ValidationReport(stage, failed, window=str(window)))


_MERGE_ADDRESSES_EVERY = 8


def aggregate_step(
    folder: RunFolder, window: Window, *, geo_settings: Any, quality_config: Any = None
) -> dict[str, Any]:
    """Count spam per sender address, day by day, geolocate each address, and check the result."""
    import pyarrow.compute as pc

    from spamgeo.aggregate import count_spam
    from spamgeo.geolocate import geolocate, open_geolocator
    from spamgeo.quality import expected_count_total, validate_aggregate

    keep_freed_memory()
    started = time.perf_counter()
    reports, addresses = {}, []
    rows_in = rows_out = dropped = 0
    with open_geolocator(geo_settings) as geolocator:
        for day in window.days():
            files = folder.day(day)
            clean = pq.read_table(files.clean)
            counts = count_spam(clean)
            daily = geolocate(counts.by_ip, geolocator)
            reports[day] = validate_aggregate(
                daily, expected_total=expected_count_total(clean), config=quality_config
            )
            _write_reports(files.reports, "aggregate", reports[day])
            _write_table(daily, files.daily)
            addresses.append(
                pc.unique(
                    pc.if_else(
                        pc.equal(daily["SenderIPv4"], ""), daily["SenderIPv6"], daily["SenderIPv4"]
                    )
                )
            )
            if len(addresses) >= _MERGE_ADDRESSES_EVERY:
                # Senders recur from day to day: the window's distinct set stays far smaller
                # than its days' sets side by side.
                addresses = [pc.unique(pa.chunked_array(addresses, pa.string()))]
            rows_in += clean.num_rows
            rows_out += daily.num_rows
            dropped += counts.rejected_sightings
            del clean, counts, daily
            _end_of_day()
        databases = geolocator.describe()
    log.info(
        "counted and geolocated %d spam rows of %d day(s) into %d address-days in %.2f s",
        rows_in,
        len(reports),
        rows_out,
        time.perf_counter() - started,
    )

    summary = {
        "rows_out": rows_out,
        "distinct_addresses": len(pc.unique(pa.chunked_array(addresses, pa.string()))),
        "unparsable_addresses_dropped": dropped,
        "geolocation_databases": databases,
        "quality": _window_quality("aggregate", window, reports),
        "quality_per_day": {day.isoformat(): report.summary() for day, report in reports.items()},
    }
    _update_summary(folder, "aggregate", summary)
    _raise_for_errors("aggregate", window, reports)
    return summary


def _write_reports(reports: Path, stage: str, report: Any) -> None:
    """A stage's report as JSON and as a page (for the operator), and as a section to publish."""
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"validation_{stage}.json").write_bytes(report.to_json())
    (reports / f"validation_{stage}.html").write_bytes(report.to_html())
    (reports / f"validation_{stage}.section.html").write_bytes(report.to_html_section())


def _report_bytes(reports: Path, day: date) -> dict[str, bytes]:
    """A day's validation reports merged into one JSON document and one HTML page."""
    from spamgeo.quality_report import render_page

    parts, sections = {}, []
    for stage in ("raw", "aggregate"):
        data = reports / f"validation_{stage}.json"
        section = reports / f"validation_{stage}.section.html"
        if data.exists():
            parts[stage] = json.loads(data.read_bytes())
        if section.exists():
            sections.append(section.read_text(encoding="utf-8"))
    page = render_page(sections, title=f"spamgeo quality reports {Window.for_days(day)}")
    return {
        "validation.json": json.dumps(parts, indent=2, sort_keys=True).encode(),
        "validation.html": page.encode(),
    }


def publish_step(
    window: Window,
    folder: RunFolder,
    store: Any,
    *,
    run_id: str,
    prefix: str = DEFAULT_PREFIX,
    rollup_days: int = DEFAULT_ROLLUP_DAYS,
) -> dict[str, Any]:
    """Publish one daily partition per day of the window, then rebuild the rolling rollup.

    The rollup always ends at the newest published day, so backfilling old days fills gaps in
    it instead of moving it back in time.
    """
    import pyarrow.compute as pc

    from spamgeo.publish import (
        build_manifest,
        build_rollup,
        csv_bytes,
        publish_day,
        published_days,
    )

    keep_freed_memory()

    earlier = _read_summary(folder)
    rows_in_per_day = earlier.get("validate", {}).get("rows_in_per_day", {})
    quality = {
        stage: earlier.get(step, {}).get("quality_per_day", {})
        for stage, step in (("raw", "validate"), ("aggregate", "aggregate"))
    }
    days = window.days()
    published = []
    for day in days:
        files = folder.day(day)
        daily = pq.read_table(files.daily)
        day_rows = daily.filter(pc.equal(daily["Date"], pa.scalar(day, pa.date32())))
        # Quarantined rows stamped outside the window are in its first day's file.
        day_quarantine = pq.read_table(files.quarantine)
        manifest = build_manifest(
            window=window,
            run_id=run_id,
            rows_in=int(rows_in_per_day.get(day.isoformat(), 0)),
            rows_out=day_rows.num_rows,
            geolocation_database=earlier.get("aggregate", {}).get("geolocation_databases"),
            quality={stage: by_day.get(day.isoformat()) for stage, by_day in quality.items()},
            rows_quarantined=day_quarantine.num_rows,
            extract=earlier.get("extract", {}),
        )
        attachments = {
            "quarantine.csv": csv_bytes(day_quarantine),
            **_report_bytes(files.reports, day),
        }
        result = publish_day(
            store, prefix, day, day_rows, attachments=attachments, manifest=manifest
        )
        published.append(
            {
                "day": day.isoformat(),
                "rows_out": result.rows,
                "path": result.paths["spam_by_ip.csv"],
            }
        )

    as_of = max([*days, *published_days(store, prefix)])
    rollup = build_rollup(store, prefix, as_of, days=rollup_days)
    summary = {
        "store": store.describe(),
        "days": published,
        "rows_out": sum(item["rows_out"] for item in published),
        "rollup": {
            "as_of": as_of.isoformat(),
            "rows": rollup.rows,
            "complete": rollup.complete,
            "days_missing": [day.isoformat() for day in rollup.days_missing],
            "paths": rollup.paths,
        },
    }
    _update_summary(folder, "publish", summary)
    return summary


def trailing_rows(store: Any, prefix: str, window: Window) -> dict[date, int]:
    """Raw row counts of the days before the window, from their published manifests."""
    from spamgeo.publish import read_daily_manifests

    first = window.days()[0]
    days = [first - timedelta(days=n) for n in range(1, TRAILING_DAYS_FOR_VOLUME + 1)]
    manifests = read_daily_manifests(store, prefix, days)
    return {
        day: int(manifest["rows_in"])
        for day, manifest in manifests.items()
        if isinstance(manifest.get("rows_in"), int)
    }
