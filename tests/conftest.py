"""Test-wide set-up: an isolated Airflow home on SQLite, so no test touches a real deployment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported, so this must run before any test module
# imports airflow. Each pytest session gets its own home and metadata database.
_home = Path(tempfile.mkdtemp(prefix="spamgeo-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_home)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_home}/airflow.db"
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

pytest_plugins = ["tests.azurite_fixture"]
