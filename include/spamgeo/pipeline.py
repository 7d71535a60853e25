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

from spamgeo.memory import keep_freed_memory
from spamgeo.window import Window

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "spamgeo"
DEFAULT_ROLLUP_DAYS = 90
TRAILING_DAYS_FOR_VOLUME = 7


@dataclass(frozen=True)
class RunFolder:
    """Where one run keeps its intermediate files; safe to delete once the run has published."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

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

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def create(self) -> RunFolder:
        self.reports.mkdir(parents=True, exist_ok=True)
        return self

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def run_folder_for(work_dir: Path, run_id: str) -> RunFolder:
    """The run folder for an Airflow run id or CLI run key, with a filesystem-safe name."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return RunFolder(Path(work_dir) / safe)


def _write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
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
    """Check the raw extract, set aside quarantined rows, and stop the run on an error.

    The clean rows, the quarantine and the reports are written before the gate is applied, so an
    operator can read why a run failed in its run folder.
    """
    from spamgeo.extract import read_extract
    from spamgeo.quality import rows_per_day, validate_raw

    keep_freed_memory()
    raw = read_extract(folder.raw)
    checked = validate_raw(raw, window, trailing_rows=trailing_rows, config=quality_config)
    _write_table(checked.clean, folder.clean)
    _write_table(checked.quarantine, folder.quarantine)
    _write_reports(folder, "raw", checked.report)

    summary = {
        "rows_in": raw.num_rows,
        "rows_clean": checked.clean.num_rows,
        "rows_quarantined": checked.quarantine.num_rows,
        "rows_in_per_day": {
            day.isoformat(): rows for day, rows in rows_per_day(raw, window).items()
        },
        "quality": checked.report.summary(),
    }
    _update_summary(folder, "validate", summary)
    checked.report.raise_for_errors()
    return summary


def aggregate_step(
    folder: RunFolder, *, geo_settings: Any, quality_config: Any = None
) -> dict[str, Any]:
    """Count spam per sender address and day, geolocate each address, and check the result."""
    from spamgeo.aggregate import count_spam
    from spamgeo.geolocate import geolocate, open_geolocator
    from spamgeo.quality import expected_count_total, validate_aggregate

    keep_freed_memory()
    clean = pq.read_table(folder.clean)
    started = time.perf_counter()
    counts = count_spam(clean)
    with open_geolocator(geo_settings) as geolocator:
        daily = geolocate(counts.by_ip, geolocator)
        databases = geolocator.describe()
    log.info(
        "counted and geolocated %d spam rows into %d address-days in %.2f s",
        clean.num_rows,
        daily.num_rows,
        time.perf_counter() - started,
    )

    report = validate_aggregate(
        daily, expected_total=expected_count_total(clean), config=quality_config
    )
    _write_reports(folder, "aggregate", report)
    _write_table(daily, folder.daily)

    import pyarrow.compute as pc

    addresses = pc.if_else(
        pc.equal(daily["SenderIPv4"], ""), daily["SenderIPv6"], daily["SenderIPv4"]
    )
    summary = {
        "rows_out": daily.num_rows,
        "distinct_addresses": len(pc.unique(addresses)),
        "unparsable_addresses_dropped": counts.rejected_sightings,
        "geolocation_databases": databases,
        "quality": report.summary(),
    }
    _update_summary(folder, "aggregate", summary)
    report.raise_for_errors()
    return summary


def _write_reports(folder: RunFolder, stage: str, report: Any) -> None:
    """A stage's report as JSON and as a page (for the operator), and as a section to publish."""
    folder.reports.mkdir(parents=True, exist_ok=True)
    (folder.reports / f"validation_{stage}.json").write_bytes(report.to_json())
    (folder.reports / f"validation_{stage}.html").write_bytes(report.to_html())
    (folder.reports / f"validation_{stage}.section.html").write_bytes(report.to_html_section())


def _report_bytes(folder: RunFolder, window: Window) -> dict[str, bytes]:
    """The run's validation reports merged into one JSON document and one HTML page."""
    from spamgeo.quality_report import render_page

    parts, sections = {}, []
    for stage in ("raw", "aggregate"):
        data = folder.reports / f"validation_{stage}.json"
        section = folder.reports / f"validation_{stage}.section.html"
        if data.exists():
            parts[stage] = json.loads(data.read_bytes())
        if section.exists():
            sections.append(section.read_text(encoding="utf-8"))
    page = render_page(sections, title=f"spamgeo quality reports {window}")
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

    daily = pq.read_table(folder.daily)
    quarantine = pq.read_table(folder.quarantine)
    earlier = _read_summary(folder)
    rows_in_per_day = earlier.get("validate", {}).get("rows_in_per_day", {})
    reports = _report_bytes(folder, window)
    quarantine_days = pc.cast(quarantine["TimeGenerated"], pa.timestamp("us", tz="UTC")).cast(
        pa.date32()
    )
    days = window.days()
    # Quarantined rows stamped outside the window belong to no day of it; they are published
    # with the window's first day rather than dropped.
    outside = pc.invert(pc.fill_null(pc.is_in(quarantine_days, pa.array(days, pa.date32())), False))

    published = []
    for day in days:
        this_day = pa.scalar(day, pa.date32())
        day_rows = daily.filter(pc.equal(daily["Date"], this_day))
        held = pc.fill_null(pc.equal(quarantine_days, this_day), False)
        if day == days[0]:
            held = pc.or_(held, outside)
        day_quarantine = quarantine.filter(held)
        manifest = build_manifest(
            window=window,
            run_id=run_id,
            rows_in=int(rows_in_per_day.get(day.isoformat(), 0)),
            rows_out=day_rows.num_rows,
            geolocation_database=earlier.get("aggregate", {}).get("geolocation_databases"),
            quality={
                "raw": earlier.get("validate", {}).get("quality"),
                "aggregate": earlier.get("aggregate", {}).get("quality"),
            },
            rows_quarantined=day_quarantine.num_rows,
            extract=earlier.get("extract", {}),
        )
        attachments = {"quarantine.csv": csv_bytes(day_quarantine), **reports}
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
