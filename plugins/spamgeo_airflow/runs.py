"""Task bodies of the spamgeo DAG: resolve Airflow context and settings, then call the pipeline.

Each function is one task; the work itself lives in `spamgeo.pipeline`, which knows nothing of
Airflow. The window travels between tasks as two ISO-8601 strings.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from spamgeo_airflow.settings import (
    LOG_ANALYTICS_CONN_ID,
    POWER_BI_CONN_ID,
    blob_store,
    connection_exists,
    load_settings,
)

log = logging.getLogger(__name__)


def _window(window: dict[str, str]) -> Any:
    from spamgeo.window import Window

    return Window.parse(window["start"], window["end"])


def window_for_run(context: Any) -> dict[str, str]:
    """The run's window: explicit `start_day`/`end_day` params, else the scheduled data interval.

    A manual run with neither falls back to the UTC day before the run was triggered, so "Trigger
    DAG" with no input re-runs yesterday.
    """
    from spamgeo.window import Window, WindowError

    params = context.get("params") or {}
    start_day, end_day = params.get("start_day"), params.get("end_day")
    if start_day or end_day:
        try:
            window = Window.parse_days(
                start_day or end_day, end_day, settings=("start_day", "end_day")
            )
        except WindowError as exc:
            raise ValueError(f"params: {exc}") from None
        source = "params"
    elif context.get("data_interval_start") and context.get("data_interval_end"):
        window = Window(
            context["data_interval_start"].astimezone(UTC),
            context["data_interval_end"].astimezone(UTC),
        )
        source = "data interval"
    else:
        run_after = context["dag_run"].run_after.astimezone(UTC)
        window = Window.for_days(run_after.date() - timedelta(days=1))
        source = "day before run_after"
    if not window.is_day_aligned:
        raise ValueError(
            f"window {window} from the {source} does not fall on whole UTC days; daily partitions "
            "need midnight boundaries (use the start_day/end_day params)"
        )
    log.info("window %s from the %s: %d day(s)", window, source, len(window.days()))
    return {"start": window.start.isoformat(), "end": window.end.isoformat()}


def ingestion_settled(window: dict[str, str]) -> bool:
    """True once the window's end is far enough behind us for Log Analytics to hold its rows."""
    settings = load_settings()
    ready_at = _window(window).end + timedelta(minutes=settings.ingestion_delay_minutes)
    now = datetime.now(UTC)
    if now < ready_at:
        log.info("waiting for ingestion: window ends %s, reading from %s", window["end"], ready_at)
        return False
    return True


def _run_folder(context: Any) -> Any:
    from spamgeo.pipeline import run_folder_for

    return run_folder_for(load_settings().work_dir, context["dag_run"].run_id)


def run_extract(context: Any, window: dict[str, str], parallel_slices: int) -> dict[str, Any]:
    from spamgeo.pipeline import extract_step
    from spamgeo_airflow.hooks.log_analytics import LogAnalyticsHook

    hook = LogAnalyticsHook(log_analytics_conn_id=LOG_ANALYTICS_CONN_ID)
    with hook.get_client(max_parallel_slices=parallel_slices) as client:
        return extract_step(client, _window(window), _run_folder(context))


def run_validate(context: Any, window: dict[str, str]) -> dict[str, Any]:
    from spamgeo.pipeline import trailing_rows, validate_step
    from spamgeo.quality import QualityConfig

    settings = load_settings()
    store = blob_store(settings)
    span = _window(window)
    return validate_step(
        span,
        _run_folder(context),
        quality_config=QualityConfig.from_mapping(settings.quality),
        trailing_rows=trailing_rows(store, settings.prefix, span),
    )


def run_aggregate(context: Any, window: dict[str, str]) -> dict[str, Any]:
    from spamgeo.geolocate import GeoSettings, default_city_database
    from spamgeo.pipeline import aggregate_step
    from spamgeo.quality import QualityConfig

    settings = load_settings()
    geo = GeoSettings(
        city_db=settings.city_db or default_city_database(),
        asn_db=settings.asn_db,
        max_age_days=settings.geo_max_age_days,
    )
    return aggregate_step(
        _run_folder(context),
        _window(window),
        geo_settings=geo,
        quality_config=QualityConfig.from_mapping(settings.quality),
    )


def run_publish(context: Any, window: dict[str, str]) -> dict[str, Any]:
    from spamgeo.pipeline import publish_step

    settings = load_settings()
    return publish_step(
        _window(window),
        _run_folder(context),
        blob_store(settings),
        run_id=context["dag_run"].run_id,
        prefix=settings.prefix,
        rollup_days=settings.rollup_days,
    )


def require_power_bi() -> None:
    """Skip the refresh, visibly, when no Power BI connection or dataset is configured."""
    from airflow.sdk import Variable
    from airflow.sdk.exceptions import AirflowSkipException

    if not connection_exists(POWER_BI_CONN_ID):
        raise AirflowSkipException(
            f"no Airflow connection {POWER_BI_CONN_ID!r}: Power BI refresh skipped "
            "(add it, with Variables spamgeo_powerbi_dataset_id and spamgeo_powerbi_group_id)"
        )
    missing = [
        name
        for name in ("spamgeo_powerbi_dataset_id", "spamgeo_powerbi_group_id")
        if not str(Variable.get(name, default="")).strip()
    ]
    if missing:
        raise AirflowSkipException(
            f"Power BI refresh skipped: Variable(s) {', '.join(missing)} not set"
        )


def remove_run_folder(context: Any) -> None:
    folder = _run_folder(context)
    folder.remove()
    log.info("removed run folder %s", folder.root)
