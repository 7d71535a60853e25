"""End-to-end: `airflow backfill create` over a date range, run by a real scheduler.

The scheduler, the API server (tasks report to its execution API) and the DAG processor run as
separate processes on their own SQLite metadata database, as `airflow standalone` would; the
backfill must publish exactly the requested days, each once.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from spamgeo.local.standin import StandIn
from spamgeo.local.synthetic import generate_email_events
from spamgeo.local.wiring import local_airflow_env
from spamgeo.window import Window
from tests.conftest import REPO
from tests.e2e.conftest import PREFIX, container_client

pytestmark = pytest.mark.e2e

FIRST, LAST = date(2026, 10, 5), date(2026, 10, 7)
DEADLINE_S = 420
# Its own container, so days other end-to-end tests published are not counted here.
CONTAINER = "spamgeo-backfill"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def events() -> pa.Table:
    return generate_email_events(9000, Window.for_days(FIRST - timedelta(days=1), LAST), seed=9)


def airflow_env(home: Path, api: StandIn, azurite, work_dir: Path) -> dict[str, str]:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "PYTHONPATH": f"{REPO / 'include'}:{REPO / 'plugins'}",
            "GX_ANALYTICS_ENABLED": "False",
        }
    )
    env.update(local_airflow_env(api, azurite, work_dir=work_dir, container=CONTAINER))
    return env


def stop(process: subprocess.Popen, timeout: float = 120) -> None:
    """Ask a component to exit, and kill it if it has not within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def backfill_runs(home: Path) -> list[tuple[str, str]]:
    # Unpausing also lets the scheduler start the latest scheduled interval; only the
    # backfill's own runs are this test's business.
    with sqlite3.connect(home / "airflow.db") as db:
        return db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = 'spamgeo_daily' "
            "AND run_type = 'backfill' ORDER BY run_id"
        ).fetchall()


def test_backfill_publishes_each_requested_day_once(
    events: pa.Table, azurite, tmp_path: Path
) -> None:
    home = tmp_path / "airflow"
    home.mkdir()
    airflow = [sys.executable, "-m", "airflow"]
    with StandIn(events, state_dir=tmp_path / "standin") as api:
        env = airflow_env(home, api, azurite, tmp_path / "runs")

        def cli(*args: str) -> str:
            # SQLite allows one writer: a command racing the scheduler may find the database
            # locked, which a deployment on PostgreSQL never sees; try such a command again.
            for _ in range(5):
                done = subprocess.run(
                    [*airflow, *args],
                    check=False,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if "database is locked" not in done.stderr:
                    break
                time.sleep(2)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            return done.stdout

        cli("db", "migrate")
        cli("pools", "set", "log_analytics_api", "5", "spamgeo")
        cli("pools", "set", "spamgeo_publish", "1", "spamgeo")
        log = (tmp_path / "components.log").open("w")
        components = [
            subprocess.Popen([*airflow, name], env=env, stdout=log, stderr=subprocess.STDOUT)
            for name in ("api-server", "scheduler", "dag-processor")
        ]
        try:
            started = time.monotonic()
            while "spamgeo_daily" not in cli("dags", "list", "-o", "plain"):
                assert time.monotonic() - started < DEADLINE_S, "the DAG was never parsed"
                time.sleep(3)
            cli(
                "backfill",
                "create",
                "--dag-id",
                "spamgeo_daily",
                "--from-date",
                FIRST.isoformat(),
                "--to-date",
                LAST.isoformat(),
            )
            cli("dags", "unpause", "spamgeo_daily")
            while True:
                runs = backfill_runs(home)
                if len(runs) == 3 and all(state in ("success", "failed") for _, state in runs):
                    break
                assert time.monotonic() - started < DEADLINE_S, f"backfill unfinished: {runs}"
                time.sleep(3)
        finally:
            # The scheduler first: its executor lets running tasks (the scheduled run's, say)
            # finish, and they report to the API server, which must still be up.
            api_server, scheduler, dag_processor = components
            for process in (scheduler, dag_processor, api_server):
                stop(process)
            log.close()

    assert [state for _, state in runs] == ["success"] * 3, runs
    assert all(run_id.startswith("backfill__") for run_id, _ in runs)
    store = container_client(azurite, CONTAINER)
    published = sorted(
        blob.name.split("/")[2]
        for blob in store.list_blobs(name_starts_with=f"{PREFIX}/daily/")
        if blob.name.endswith("/spam_by_ip.csv")
    )
    expected_days = [FIRST + timedelta(days=n) for n in range((LAST - FIRST).days + 1)]
    assert published == [f"date={day.isoformat()}" for day in expected_days]
