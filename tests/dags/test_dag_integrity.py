"""Every DAG file imports cleanly, quickly, and without touching the network or a database."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DAG_FILES = sorted((REPO / "dags").glob("*.py"))


@pytest.fixture(scope="module")
def dag_bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_every_dag_file_imports_without_errors(dag_bag) -> None:
    assert DAG_FILES, "no DAG files found"
    assert dag_bag.import_errors == {}
    assert "spamgeo_daily" in dag_bag.dags


def test_daily_dag_processes_the_previous_utc_day(dag_bag) -> None:
    from datetime import UTC, datetime

    from airflow.sdk import CronDataIntervalTimetable
    from airflow.serialization.encoders import coerce_to_core_timetable

    dag = dag_bag.dags["spamgeo_daily"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(
        run_after=datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    )
    assert interval.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert interval.end == datetime(2026, 12, 2, tzinfo=UTC)
    assert interval.end - interval.start > datetime.resolution


def test_daily_dag_wiring(dag_bag) -> None:
    dag = dag_bag.dags["spamgeo_daily"]
    extract = dag.get_task("extract")
    assert extract.retries >= 1
    assert extract.pool == "log_analytics_api"
    # The API allows 5 concurrent queries per user: one extraction may not take them all.
    assert 1 <= extract.pool_slots < 5
    assert dag.get_task("publish").outlets, "publish must update the spam_by_ip asset"
    assert set(dag.params.keys()) == {"start_day", "end_day"}
    order = ["resolve_window", "extract", "validate", "count_and_geolocate", "publish"]
    for upstream, downstream in itertools.pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids


PARSE_PROBE = """
import socket, sqlite3, sys, runpy
touched = []
def refuse(kind):
    def _refuse(*args, **kwargs):
        touched.append(kind)
        raise OSError(kind + " at parse time")
    return _refuse
socket.socket.connect = refuse("network")
socket.create_connection = refuse("network")
sqlite3.connect = refuse("database")
runpy.run_path(sys.argv[1])
heavy = [m for m in ("pandas", "great_expectations", "geoip2", "duckdb", "spamgeo.extract",
                     "spamgeo.quality", "spamgeo.geolocate") if m in sys.modules]
print("RESULT", ",".join(sorted(set(touched))), ",".join(heavy))
"""


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda path: path.name)
def test_dag_file_parses_without_network_database_or_heavy_imports(dag_file: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, str(dag_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    line = next(row for row in result.stdout.splitlines() if row.startswith("RESULT"))
    _, touched, heavy = [*line.split(" "), "", ""][:3]
    assert touched == "", f"{dag_file.name} touched {touched} while being parsed"
    assert heavy == "", f"{dag_file.name} imported {heavy} while being parsed"
