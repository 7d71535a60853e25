"""The measured stages, each run in a fresh child process so its memory high-water mark is its own.

Project stages call the project's modules exactly as the pipeline does; naive stages are the
obvious hand-written pipeline (SDK model layer, pandas object strings, one geoip2 lookup per
row, DataFrame.to_csv) that the project is compared with.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.responses import load_responses
from spamgeo.window import Window

log = logging.getLogger(__name__)

WORKSPACE_ID = "00000000-0000-0000-0000-00000000bench"
STATIC_TOKEN = "bench-token-not-a-secret"
CONTAINER = "bench"


@dataclass(frozen=True)
class Context:
    """What a child needs: where the answers, the stand-in, Azurite and the work files are."""

    responses: Path
    work: Path
    endpoint: str
    cert: Path
    azurite: str
    parallel_slices: int
    save: bool

    @classmethod
    def from_json(cls, text: str) -> Context:
        raw = json.loads(text)
        return cls(
            responses=Path(raw["responses"]),
            work=Path(raw["work"]),
            endpoint=raw["endpoint"],
            cert=Path(raw["cert"]),
            azurite=raw["azurite"],
            parallel_slices=int(raw["parallel_slices"]),
            save=bool(raw["save"]),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "responses": str(self.responses),
                "work": str(self.work),
                "endpoint": self.endpoint,
                "cert": str(self.cert),
                "azurite": self.azurite,
                "parallel_slices": self.parallel_slices,
                "save": self.save,
            }
        )


@dataclass
class Outcome:
    """What a stage did: how many units (rows or distinct addresses) and anything else to note."""

    units: int
    extra: dict[str, Any]


# --- memory and timing -------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_high_water_mark() -> bool:
    """Reset VmHWM (Linux >= 4.0), so the peak measured excludes loading the stage's input."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _mb(kib: int) -> float:
    return kib * 1024 / 1e6


def measure(stage: Callable[[], Outcome]) -> dict[str, Any]:
    """Run one stage once and report seconds, units and memory in MB (10^6 bytes)."""
    gc.collect()
    rss_before = _status_kib("VmRSS")
    setup_peak = _status_kib("VmHWM")
    was_reset = _reset_high_water_mark()
    started = time.perf_counter()
    outcome = stage()
    seconds = time.perf_counter() - started
    stage_peak = _status_kib("VmHWM")
    # VmHWM belongs to this program's own address space. ru_maxrss would not do: Linux carries
    # the parent's RSS at fork into it across exec, so a big parent would inflate every child.
    process_peak = max(setup_peak, stage_peak) if was_reset else stage_peak
    return {
        "seconds": seconds,
        "units": outcome.units,
        "rss_before_mb": _mb(rss_before),
        "stage_peak_mb": _mb(stage_peak) if was_reset else None,
        "process_peak_mb": _mb(process_peak),
        "ru_maxrss_mb": _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        **outcome.extra,
    }


# --- project stages ----------------------------------------------------------------------------


def _window(ctx: Context) -> Window:
    return load_responses(ctx.responses).window


def _extract_dir(ctx: Context) -> Path:
    return ctx.work / "extract"


def _client(ctx: Context) -> Any:
    from spamgeo.credentials import make_credential
    from spamgeo.extract import LogAnalyticsClient, LogAnalyticsSettings

    responses = load_responses(ctx.responses)
    settings = LogAnalyticsSettings(
        workspace_id=WORKSPACE_ID,
        endpoint=ctx.endpoint,
        ca_bundle=str(ctx.cert),
        slice_length=responses.slice_length,
        min_slice=timedelta(minutes=1),
        max_attempts=2,
        max_parallel_slices=ctx.parallel_slices,
    )
    return LogAnalyticsClient(settings, make_credential("static_token", token=STATIC_TOKEN))


def project_fetch(ctx: Context) -> Callable[[], Outcome]:
    from spamgeo.extract import extract_window

    client = _client(ctx)
    window = _window(ctx)

    def stage() -> Outcome:
        result = extract_window(client, window, _extract_dir(ctx))
        return Outcome(
            result.rows,
            {
                "files": len(result.files),
                "response_bytes": result.bytes,
                "queries": len(result.slices),
            },
        )

    return stage


def project_parse(ctx: Context) -> Callable[[], Outcome]:
    """Parsing alone, answer bodies read from disk: fetch minus HTTP, TLS and Parquet."""
    from spamgeo.extract import parse_answer

    paths = [answer.path for answer in load_responses(ctx.responses).slices]

    def stage() -> Outcome:
        rows = 0
        for path in paths:
            rows += parse_answer(path.read_bytes()).num_rows
        return Outcome(rows, {})

    return stage


def project_validate(ctx: Context) -> Callable[[], Outcome]:
    import pyarrow.parquet as pq

    from spamgeo.extract import read_extract
    from spamgeo.quality import expected_count_total, validate_aggregate, validate_raw

    raw = read_extract(_extract_dir(ctx))
    daily = pq.read_table(ctx.work / "daily.parquet")
    window = _window(ctx)
    imported = _import_great_expectations()

    def stage() -> Outcome:
        checked = validate_raw(raw, window)
        total = expected_count_total(checked.clean)
        report = validate_aggregate(daily, expected_total=total)
        return Outcome(
            raw.num_rows,
            {
                "gx_import_seconds": imported,
                "raw_ok": checked.report.ok,
                "aggregate_ok": report.ok,
                "quarantined": checked.quarantine.num_rows,
            },
        )

    return stage


def _import_great_expectations() -> float:
    """Import GX before the clock starts (an Airflow worker pays it once); return its cost."""
    started = time.perf_counter()
    import great_expectations  # noqa: F401

    return time.perf_counter() - started


def project_count(ctx: Context) -> Callable[[], Outcome]:
    import pyarrow.parquet as pq

    from spamgeo.aggregate import spam_counts_by_ip

    clean = pq.read_table(ctx.work / "clean.parquet")
    import duckdb  # noqa: F401  (imported before the clock, like GX)

    def stage() -> Outcome:
        counts = spam_counts_by_ip(clean)
        return Outcome(clean.num_rows, {"address_days": counts.num_rows})

    return stage


def project_geolocate(ctx: Context) -> Callable[[], Outcome]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from spamgeo.geolocate import GeoSettings, default_city_database, geolocate, open_geolocator

    counts = pq.read_table(ctx.work / "counts.parquet")
    address = pc.binary_join_element_wise(counts["SenderIPv4"], counts["SenderIPv6"], "")
    distinct = pc.count_distinct(address).as_py()
    settings = GeoSettings(default_city_database())

    def stage() -> Outcome:
        with open_geolocator(settings) as geolocator:
            daily = geolocate(counts, geolocator)
        located = daily.num_rows - daily["Latitude"].null_count
        return Outcome(distinct, {"address_days": counts.num_rows, "located_rows": located})

    return stage


def project_csv(ctx: Context) -> Callable[[], Outcome]:
    import pyarrow.parquet as pq

    from spamgeo.publish import csv_bytes

    daily = pq.read_table(ctx.work / "daily.parquet")

    def stage() -> Outcome:
        data = csv_bytes(daily)
        return Outcome(daily.num_rows, {"bytes": len(data)})

    return stage


def project_upload(ctx: Context) -> Callable[[], Outcome]:
    from spamgeo.publish import blob_store_from_connection_string

    data = (ctx.work / "daily.csv").read_bytes()
    rows = data.count(b"\n") - 1
    store = blob_store_from_connection_string(ctx.azurite, CONTAINER)

    def stage() -> Outcome:
        store.write(f"project/{ctx.work.name}/spam_by_ip.csv", data, content_type="text/csv")
        return Outcome(rows, {"bytes": len(data)})

    return stage


def _steps_folder(ctx: Context) -> Any:
    """A run folder whose extract is the fetched one, for the pipeline's own steps."""
    from spamgeo.pipeline import RunFolder

    folder = RunFolder(ctx.work / "steps").create()
    if not folder.raw.exists():
        folder.raw.symlink_to(_extract_dir(ctx).resolve(), target_is_directory=True)
    return folder


def project_validate_step(ctx: Context) -> Callable[[], Outcome]:
    """pipeline.validate_step as the validate task runs it: the window one day at a time."""
    from spamgeo.pipeline import validate_step

    folder = _steps_folder(ctx)
    window = _window(ctx)
    _import_great_expectations()

    def stage() -> Outcome:
        summary = validate_step(window, folder)
        return Outcome(summary["rows_in"], {"days": len(window.days())})

    return stage


def project_aggregate_step(ctx: Context) -> Callable[[], Outcome]:
    """pipeline.aggregate_step as the count_and_geolocate task runs it, after validate_step."""
    from spamgeo.geolocate import GeoSettings, default_city_database
    from spamgeo.pipeline import aggregate_step

    folder = _steps_folder(ctx)
    window = _window(ctx)
    settings = GeoSettings(default_city_database())
    _import_great_expectations()

    def stage() -> Outcome:
        summary = aggregate_step(folder, window, geo_settings=settings)
        return Outcome(summary["rows_out"], {"days": len(window.days())})

    return stage


ROLLUP_DAYS = 90


def _rollup_days(ctx: Context) -> tuple[Any, str, list[Any]]:
    """The store, prefix and days of the published window the rollup stage reads."""
    from spamgeo.publish import blob_store_from_connection_string

    last = _window(ctx).days()[-1]
    days = [last - timedelta(days=back) for back in range(ROLLUP_DAYS - 1, -1, -1)]
    store = blob_store_from_connection_string(ctx.azurite, CONTAINER)
    return store, f"rollup/{ctx.work.name}", days


def project_rollup_prepare(ctx: Context) -> Callable[[], Outcome]:
    """Not a measurement: the measured day's daily table published as each of 90 days."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spamgeo.publish import publish_day

    store, prefix, days = _rollup_days(ctx)
    daily = pq.read_table(ctx.work / "daily.parquet")
    date_column = daily.schema.get_field_index("Date")

    def stage() -> Outcome:
        for day in days:
            dated = daily.set_column(
                date_column, "Date", pa.array([day] * daily.num_rows, pa.date32())
            )
            publish_day(store, prefix, day, dated, attachments={}, manifest={})
        return Outcome(daily.num_rows * len(days), {"days": len(days)})

    return stage


def project_rollup(ctx: Context) -> Callable[[], Outcome]:
    """build_rollup over 90 published days in Azurite, as every publish task ends."""
    from spamgeo.publish import build_rollup

    store, prefix, days = _rollup_days(ctx)

    def stage() -> Outcome:
        rollup = build_rollup(store, prefix, days[-1], days=len(days))
        return Outcome(rollup.rows, {"days": len(rollup.days_present)})

    return stage


def project_prepare(ctx: Context) -> Callable[[], Outcome]:
    """Not a measurement: the inputs of the later stages, from the fetched extract."""
    import pyarrow.parquet as pq

    from spamgeo.aggregate import spam_counts_by_ip
    from spamgeo.extract import read_extract
    from spamgeo.geolocate import GeoSettings, default_city_database, geolocate, open_geolocator
    from spamgeo.publish import csv_bytes
    from spamgeo.quality import validate_raw

    def stage() -> Outcome:
        raw = read_extract(_extract_dir(ctx))
        clean = validate_raw(raw, _window(ctx)).clean
        pq.write_table(clean, ctx.work / "clean.parquet")
        counts = spam_counts_by_ip(clean)
        pq.write_table(counts, ctx.work / "counts.parquet")
        with open_geolocator(GeoSettings(default_city_database())) as geolocator:
            daily = geolocate(counts, geolocator)
        pq.write_table(daily, ctx.work / "daily.parquet")
        (ctx.work / "daily.csv").write_bytes(csv_bytes(daily))
        return Outcome(raw.num_rows, {"clean_rows": clean.num_rows, "daily_rows": daily.num_rows})

    return stage


def project_whole(ctx: Context) -> Callable[[], Outcome]:
    """parse -> validate -> count -> geolocate -> check -> CSV in one process, no network."""
    started = time.perf_counter()
    import great_expectations  # noqa: F401
    import pyarrow as pa

    from spamgeo.aggregate import spam_counts_by_ip
    from spamgeo.extract import parse_answer
    from spamgeo.geolocate import GeoSettings, default_city_database, geolocate, open_geolocator
    from spamgeo.publish import csv_bytes
    from spamgeo.quality import expected_count_total, validate_aggregate, validate_raw

    import_seconds = time.perf_counter() - started
    responses = load_responses(ctx.responses)
    settings = GeoSettings(default_city_database())

    def stage() -> Outcome:
        laps: dict[str, float] = {}
        lap = time.perf_counter()

        def split(name: str) -> None:
            nonlocal lap
            now = time.perf_counter()
            laps[name] = round(now - lap, 3)
            lap = now

        raw = pa.concat_tables(parse_answer(a.path.read_bytes()) for a in responses.slices)
        split("parse")
        checked = validate_raw(raw, responses.window)
        split("validate_raw")
        counts = spam_counts_by_ip(checked.clean)
        split("count")
        with open_geolocator(settings) as geolocator:
            daily = geolocate(counts, geolocator)
        split("geolocate")
        report = validate_aggregate(daily, expected_total=expected_count_total(checked.clean))
        split("validate_aggregate")
        data = csv_bytes(daily)
        split("csv")
        return Outcome(
            raw.num_rows,
            {
                "import_seconds": import_seconds,
                "laps": laps,
                "csv_bytes": len(data),
                "checks_ok": checked.report.ok and report.ok,
            },
        )

    return stage


# --- the naive pipeline ------------------------------------------------------------------------


def _naive_file(ctx: Context, name: str) -> Path:
    return ctx.work / f"naive-{name}.pkl"


def naive_fetch(ctx: Context) -> Callable[[], Outcome]:
    import pandas as pd
    from azure.monitor.query import LogsQueryClient

    from spamgeo.credentials import make_credential
    from spamgeo.extract import build_query

    responses = load_responses(ctx.responses)
    client = LogsQueryClient(
        make_credential("static_token", token=STATIC_TOKEN),
        endpoint=ctx.endpoint,
        connection_verify=str(ctx.cert),
    )

    def stage() -> Outcome:
        frames = []
        for answer in responses.slices:
            window = answer.window
            result = client.query_workspace(
                WORKSPACE_ID, build_query(window), timespan=(window.start, window.end)
            )
            table = result.tables[0]
            frames.append(pd.DataFrame(data=table.rows, columns=table.columns, dtype=object))
        raw = pd.concat(frames, ignore_index=True)
        if ctx.save:
            _pickle(raw, _naive_file(ctx, "raw"))
        return Outcome(len(raw), {})

    return stage


def naive_count(ctx: Context) -> Callable[[], Outcome]:
    import pandas as pd

    raw = pd.read_pickle(_naive_file(ctx, "raw"))

    def stage() -> Outcome:
        branches = []
        for column, other in (("SenderIPv4", "SenderIPv6"), ("SenderIPv6", "SenderIPv4")):
            sent = raw[raw[column] != ""]
            counted = sent.groupby(column).size().reset_index(name="count_")
            counted[other] = ""
            branches.append(counted)
        counts = pd.concat(branches, ignore_index=True)[["SenderIPv6", "SenderIPv4", "count_"]]
        if ctx.save:
            _pickle(counts, _naive_file(ctx, "counts"))
        return Outcome(len(raw), {"address_rows": len(counts)})

    return stage


def naive_geolocate(ctx: Context) -> Callable[[], Outcome]:
    import geoip2.database
    import geoip2.errors
    import pandas as pd

    from spamgeo.geolocate import default_city_database

    counts = pd.read_pickle(_naive_file(ctx, "counts"))
    database = default_city_database()

    def stage() -> Outcome:
        # A plain loop rather than DataFrame.apply: apply's per-row Series would dwarf the
        # lookups themselves and make the baseline look worse than a careful naive script.
        fields: list[list[Any]] = [[], [], [], []]
        with geoip2.database.Reader(str(database)) as reader:
            for v4, v6 in zip(counts["SenderIPv4"], counts["SenderIPv6"], strict=True):
                try:
                    city = reader.city(v4 or v6)
                except (geoip2.errors.AddressNotFoundError, ValueError):
                    values: tuple[Any, ...] = ("", "", "", "")
                else:
                    values = (
                        city.location.latitude,
                        city.location.longitude,
                        city.country.name or "",
                        city.city.name or "",
                    )
                for column, value in zip(fields, values, strict=True):
                    column.append(value)
        located = counts.copy()
        for name, column in zip(("Latitude", "Longitude", "Country", "City"), fields, strict=True):
            located[name] = pd.Series(column, index=counts.index, dtype=object)
        if ctx.save:
            _pickle(located, _naive_file(ctx, "daily"))
        return Outcome(len(counts), {})

    return stage


def naive_csv(ctx: Context) -> Callable[[], Outcome]:
    import pandas as pd

    daily = pd.read_pickle(_naive_file(ctx, "daily"))

    def stage() -> Outcome:
        data = daily.to_csv(index=False).encode("utf-8")
        if ctx.save:
            (ctx.work / "naive-daily.csv").write_bytes(data)
        return Outcome(len(daily), {"bytes": len(data)})

    return stage


def naive_upload(ctx: Context) -> Callable[[], Outcome]:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    data = (ctx.work / "naive-daily.csv").read_bytes()
    service = BlobServiceClient.from_connection_string(ctx.azurite)
    container = service.get_container_client(CONTAINER)
    with contextlib.suppress(ResourceExistsError):
        container.create_container()

    def stage() -> Outcome:
        container.upload_blob(f"naive/{ctx.work.name}/spam_by_ip.csv", data, overwrite=True)
        return Outcome(data.count(b"\n") - 1, {"bytes": len(data)})

    return stage


def _pickle(frame: Any, path: Path) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    frame.to_pickle(partial)
    os.replace(partial, path)


STAGES: dict[str, Callable[[Context], Callable[[], Outcome]]] = {
    "fetch": project_fetch,
    "parse": project_parse,
    "validate": project_validate,
    "count": project_count,
    "geolocate": project_geolocate,
    "csv": project_csv,
    "upload": project_upload,
    "prepare": project_prepare,
    "rollup_prepare": project_rollup_prepare,
    "rollup": project_rollup,
    "validate_step": project_validate_step,
    "aggregate_step": project_aggregate_step,
    "whole": project_whole,
    "naive_fetch": naive_fetch,
    "naive_count": naive_count,
    "naive_geolocate": naive_geolocate,
    "naive_csv": naive_csv,
    "naive_upload": naive_upload,
}


# Measured a second time in the same process: the steady rate, once the process holds its memory.
STEADY_STAGES = {"fetch", "parse", "validate", "count", "geolocate", "csv", "upload"}


def run_child(stage_name: str, context_json: str) -> dict[str, Any]:
    """Set a stage up (untimed), then measure its first call and, for the project's stages, a
    second one ("steady"); the result is one JSON-safe dict."""
    ctx = Context.from_json(context_json)
    if not stage_name.startswith("naive_"):
        from spamgeo.memory import keep_freed_memory

        keep_freed_memory()  # as every pipeline step does before its work
    stage = STAGES[stage_name](ctx)
    result = measure(stage)
    if stage_name in STEADY_STAGES:
        result["steady"] = measure(stage)
    return result
