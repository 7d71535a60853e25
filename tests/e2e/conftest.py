"""Fixtures for end-to-end runs of the real DAG: a migrated metadata database and its pools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spamgeo.local.wiring import local_airflow_env
from tests.conftest import REPO

CONTAINER = "spamgeo"
PREFIX = "spamgeo"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated metadata database and the DAG's pools, as a deployment would have them."""
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], check=True, capture_output=True, timeout=300)
    for pool, slots in (("log_analytics_api", "5"), ("spamgeo_publish", "1")):
        subprocess.run(
            [*airflow, "pools", "set", pool, slots, "spamgeo"],
            check=True,
            capture_output=True,
            timeout=120,
        )


def load_daily_dag(
    api, azurite, work_dir: Path, monkeypatch: pytest.MonkeyPatch, container: str = CONTAINER
):
    """spamgeo_daily as the DAG processor sees it, configured for the given stand-ins."""
    from airflow.dag_processing.dagbag import DagBag

    env = local_airflow_env(api, azurite, work_dir=work_dir, container=container, prefix=PREFIX)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["spamgeo_daily"]


def container_client(azurite, container: str = CONTAINER):
    from azure.storage.blob import ContainerClient

    return ContainerClient.from_connection_string(azurite.connection_string, container)


def task_states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def asset_events_of(run) -> list[dict]:
    """The extras of the asset events a DAG run emitted, oldest first."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(AssetEvent.source_run_id == run.run_id).order_by(AssetEvent.id)
        ).all()
        return [dict(event.extra) for event in events]
