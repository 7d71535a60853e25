"""Airflow connections and Variables that point the DAG at the local stand-ins.

Both the quick-start and the end-to-end tests run the real DAG; this is the one place that says
how it reaches the local Log Analytics stand-in and Azurite, as `AIRFLOW_CONN_*` and
`AIRFLOW_VAR_*` environment variables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def local_airflow_env(
    api: Any, blob: Any, *, work_dir: Path, container: str = "spamgeo", prefix: str = "spamgeo"
) -> dict[str, str]:
    """Environment variables that configure spamgeo_daily for a running StandIn and Azurite."""
    log_analytics = {
        "conn_type": "generic",
        "host": api.url,
        "schema": api.workspace_id,
        "extra": {
            "auth": "static_token",
            "token": api.token,
            "ca_bundle": str(api.ca_path) if api.ca_path else None,
        },
    }
    wasb = {"conn_type": "wasb", "extra": {"connection_string": blob.connection_string}}
    return {
        "AIRFLOW_CONN_SPAMGEO_LOG_ANALYTICS": json.dumps(log_analytics),
        "AIRFLOW_CONN_SPAMGEO_BLOB": json.dumps(wasb),
        "AIRFLOW_VAR_SPAMGEO_WORK_DIR": str(work_dir),
        "AIRFLOW_VAR_SPAMGEO_CONTAINER": container,
        "AIRFLOW_VAR_SPAMGEO_PREFIX": prefix,
        # Local data is complete the moment it is generated: no need to wait for ingestion.
        "AIRFLOW_VAR_SPAMGEO_INGESTION_DELAY_MINUTES": "0",
    }
