"""spamgeo's settings inside Airflow: Airflow Variables and connections, read only inside tasks.

Every setting has a default that works for the local quick-start, so a new deployment needs only
its two connections; each Variable can be set in the UI, with `airflow variables set`, or as
`AIRFLOW_VAR_<NAME>` in the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_ANALYTICS_CONN_ID = "spamgeo_log_analytics"
BLOB_CONN_ID = "spamgeo_blob"
POWER_BI_CONN_ID = "spamgeo_powerbi"


class SettingError(ValueError):
    """A Variable whose value cannot be used; the message names the Variable."""


@dataclass(frozen=True)
class Settings:
    """Everything a run reads from Airflow Variables, resolved once per task."""

    work_dir: Path
    container: str
    prefix: str
    city_db: Path | None
    asn_db: Path | None
    geo_max_age_days: int
    rollup_days: int
    ingestion_delay_minutes: int
    quality: dict[str, Any]


def _variable(name: str, default: str) -> str:
    from airflow.sdk import Variable

    return str(Variable.get(name, default=default)).strip()


def _int_variable(name: str, default: int, *, minimum: int) -> int:
    text = _variable(name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise SettingError(f"Variable {name} must be a whole number, got {text!r}") from None
    if value < minimum:
        raise SettingError(f"Variable {name} must be at least {minimum}, got {value}")
    return value


def load_settings() -> Settings:
    """Read spamgeo's Variables, with defaults for anything not set."""
    import json

    home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    quality_text = _variable("spamgeo_quality", "{}") or "{}"
    try:
        quality = json.loads(quality_text)
    except json.JSONDecodeError as exc:
        raise SettingError(f"Variable spamgeo_quality is not valid JSON: {exc}") from None
    if not isinstance(quality, dict):
        raise SettingError("Variable spamgeo_quality must be a JSON object")
    city_db = _variable("spamgeo_city_db", "")
    asn_db = _variable("spamgeo_asn_db", "")
    return Settings(
        work_dir=Path(_variable("spamgeo_work_dir", str(home / "spamgeo-runs"))),
        container=_variable("spamgeo_container", "spamgeo"),
        prefix=_variable("spamgeo_prefix", "spamgeo").strip("/"),
        city_db=Path(city_db) if city_db else None,
        asn_db=Path(asn_db) if asn_db else None,
        geo_max_age_days=_int_variable("spamgeo_geo_max_age_days", 45, minimum=1),
        rollup_days=_int_variable("spamgeo_rollup_days", 90, minimum=1),
        ingestion_delay_minutes=_int_variable("spamgeo_ingestion_delay_minutes", 30, minimum=0),
        quality=quality,
    )


def connection_exists(conn_id: str) -> bool:
    """True when Airflow can resolve the connection (metadata database, secrets or environment)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return False
    return True


def blob_store(settings: Settings, conn_id: str = BLOB_CONN_ID) -> Any:
    """The publishing target: a container reached through the Azure provider's WasbHook."""
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    from spamgeo.publish import BlobStore

    service = WasbHook(wasb_conn_id=conn_id).get_conn()
    return BlobStore(service.get_container_client(settings.container))
