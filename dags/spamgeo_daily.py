"""
### spamgeo_daily

Every night, yesterday's spam from Microsoft Defender **EmailEvents**: pulled from Log Analytics,
checked with Great Expectations, counted per sender IP (IPv4 and IPv6), geolocated, and published
as CSV to Blob Storage for Power BI, whose dataset is then refreshed when configured.

* **Window**: the previous UTC day, `[00:00, 24:00)`. A manual run takes the params `start_day`
  and `end_day` (inclusive, `YYYY-MM-DD`) to re-run or backfill whole days.
* **Connections**: `spamgeo_log_analytics` (workspace and credentials), `spamgeo_blob` (a `wasb`
  connection), and optionally `spamgeo_powerbi` (without it the refresh is skipped, visibly).
* **Output**: `<container>/<prefix>/daily/date=YYYY-MM-DD/spam_by_ip.csv` and the rolling
  `<prefix>/latest/spam_by_ip_90d.csv`, each day with its manifest, quarantine and validation
  reports. A failed run publishes nothing and leaves the last good output in place.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.microsoft.azure.operators.powerbi import PowerBIDatasetRefreshOperator
from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task
from airflow.sdk.bases.sensor import PokeReturnValue

SPAM_BY_IP = Asset(name="spamgeo_spam_by_ip")
LOG_ANALYTICS_POOL = "log_analytics_api"
# Slices of one extraction queried at once; the task takes as many pool slots, so the pool
# (5 slots: the API's concurrent queries per user) caps queries across runs and backfills.
EXTRACT_PARALLEL_SLICES = 2
PUBLISH_POOL = "spamgeo_publish"


@dag(
    dag_id="spamgeo_daily",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=4,
    dagrun_timeout=timedelta(hours=8),
    default_args={"retries": 0, "owner": "spamgeo"},
    params={
        "start_day": Param(
            None,
            type=["null", "string"],
            format="date",
            description="First UTC day to process (YYYY-MM-DD); empty: the scheduled day.",
        ),
        "end_day": Param(
            None,
            type=["null", "string"],
            format="date",
            description="Last UTC day to process, inclusive; empty: same as start_day.",
        ),
    },
    tags=["spamgeo", "security", "power-bi"],
    doc_md=__doc__,
)
def spamgeo_daily() -> None:
    @task
    def resolve_window() -> dict[str, str]:
        from spamgeo_airflow.runs import window_for_run

        return window_for_run(get_current_context())

    @task.sensor(poke_interval=300, timeout=6 * 3600, mode="reschedule")
    def wait_for_ingestion(window: dict[str, str]) -> PokeReturnValue:
        from spamgeo_airflow.runs import ingestion_settled

        return PokeReturnValue(is_done=ingestion_settled(window))

    @task(
        pool=LOG_ANALYTICS_POOL,
        pool_slots=EXTRACT_PARALLEL_SLICES,
        retries=3,
        retry_delay=timedelta(minutes=2),
        retry_exponential_backoff=True,
        execution_timeout=timedelta(hours=4),
    )
    def extract(window: dict[str, str]) -> dict[str, Any]:
        from spamgeo_airflow.runs import run_extract

        return run_extract(get_current_context(), window, EXTRACT_PARALLEL_SLICES)

    @task
    def validate(window: dict[str, str], extracted: dict[str, Any]) -> dict[str, Any]:
        from spamgeo_airflow.runs import run_validate

        return run_validate(get_current_context(), window)

    @task
    def count_and_geolocate(window: dict[str, str], validated: dict[str, Any]) -> dict[str, Any]:
        from spamgeo_airflow.runs import run_aggregate

        return run_aggregate(get_current_context(), window)

    @task(
        pool=PUBLISH_POOL,
        outlets=[SPAM_BY_IP],
        retries=3,
        retry_delay=timedelta(minutes=1),
    )
    def publish(window: dict[str, str], aggregated: dict[str, Any]) -> dict[str, Any]:
        from spamgeo_airflow.runs import run_publish

        context = get_current_context()
        summary = run_publish(context, window)
        context["outlet_events"][SPAM_BY_IP].extra = {
            "days": [item["day"] for item in summary["days"]],
            "rows_out": summary["rows_out"],
            "rollup_rows": summary["rollup"]["rows"],
            "rollup_complete": summary["rollup"]["complete"],
        }
        return summary

    @task
    def check_power_bi(published: dict[str, Any]) -> None:
        from spamgeo_airflow.runs import require_power_bi

        require_power_bi()

    refresh_power_bi = PowerBIDatasetRefreshOperator(
        task_id="refresh_power_bi",
        conn_id="spamgeo_powerbi",
        dataset_id="{{ var.value.get('spamgeo_powerbi_dataset_id', '') }}",
        group_id="{{ var.value.get('spamgeo_powerbi_group_id', '') }}",
        retries=2,
        retry_delay=timedelta(minutes=5),
    )

    @task
    def clean_up(published: dict[str, Any]) -> None:
        # Only after a successful publish: a failed run keeps its folder (quarantine, reports)
        # for the operator, and a retry picks it up.
        from spamgeo_airflow.runs import remove_run_folder

        remove_run_folder(get_current_context())

    window = resolve_window()
    extracted = extract(window)
    wait_for_ingestion(window) >> extracted
    validated = validate(window, extracted)
    aggregated = count_and_geolocate(window, validated)
    published = publish(window, aggregated)
    check_power_bi(published) >> refresh_power_bi
    clean_up(published)


spamgeo_daily()
