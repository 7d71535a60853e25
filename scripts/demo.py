"""Quick-start: run spamgeo_daily for yesterday on local stand-ins and print what it published.

Starts the Log Analytics stand-in (serving synthetic EmailEvents for the last three days) and
Azurite on free loopback ports, prepares an Airflow home on SQLite inside the repository, runs the
real DAG with `airflow dags test`, prints a summary, and stops everything it started, also when a
step fails.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

from spamgeo.local.azurite import Azurite  # noqa: E402
from spamgeo.local.standin import StandIn  # noqa: E402
from spamgeo.local.synthetic import generate_email_events  # noqa: E402
from spamgeo.local.wiring import local_airflow_env  # noqa: E402
from spamgeo.window import Window  # noqa: E402

log = logging.getLogger("spamgeo.demo")

STATE = REPO / ".state" / "demo"
AIRFLOW_HOME = REPO / ".airflow"
POOLS = {"log_analytics_api": 5, "spamgeo_publish": 1}


def airflow_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
            "PYTHONPATH": f"{REPO / 'include'}:{REPO / 'plugins'}",
            "NO_COLOR": "1",
            "GX_ANALYTICS_ENABLED": "False",
        }
    )
    env.update(extra)
    return env


def airflow(args: list[str], env: dict[str, str], log_file: Path) -> None:
    """Run an airflow command, its output into log_file; on failure show the end of it."""
    command = [str(REPO / ".venv" / "bin" / "airflow"), *args]
    with log_file.open("a") as sink:
        sink.write(f"\n$ airflow {' '.join(args)}\n")
        sink.flush()
        result = subprocess.run(
            command, check=False, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(
            f"`airflow {' '.join(args)}` failed (exit {result.returncode}); last lines of "
            f"{log_file}:\n" + "\n".join(tail)
        )


def print_summary(blob: Azurite, window: Window, container: str, prefix: str) -> None:
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(blob.connection_string, container)
    day = window.days()[-1].isoformat()
    folder = f"{prefix}/daily/date={day}"
    manifest = json.loads(client.download_blob(f"{folder}/manifest.json").readall())
    table = client.download_blob(f"{folder}/spam_by_ip.csv").readall().decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(table)))
    published = sorted(blob_.name for blob_ in client.list_blobs(name_starts_with=prefix))

    print()
    print(f"window          {window}")
    print(f"rows pulled     {manifest.get('rows_in')}")
    print(f"quarantined     {manifest.get('rows_quarantined')}")
    print(f"distinct IPs    {len(rows)}")
    print(f"published to    {blob.blob_endpoint}/{container}/")
    for name in published:
        print(f"                {name}")
    print("\ntop senders (seed columns, then country and city):")
    header = ["SenderIPv6", "SenderIPv4", "Latitude", "Longitude", "count_", "Country", "City"]
    print("  " + " | ".join(header))
    for row in rows[:10]:
        print("  " + " | ".join(row.get(column, "") for column in header))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=50_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("azure", "urllib3", "spamgeo.local"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    AIRFLOW_HOME.mkdir(exist_ok=True)
    log_file = STATE / "airflow.log"
    today = datetime.now(UTC).date()
    yesterday = Window.for_days(today - timedelta(days=1))
    served = Window.for_days(today - timedelta(days=3), today - timedelta(days=1))

    started = time.perf_counter()
    events = generate_email_events(args.rows_per_day * 3, served, seed=7)
    log.info("generated %d synthetic EmailEvents rows for %s", events.num_rows, served)

    with (
        StandIn(events, state_dir=STATE / "standin") as api,
        Azurite(STATE / "azurite") as blob,
    ):
        log.info("Log Analytics stand-in at %s, Azurite at %s", api.url, blob.blob_endpoint)
        env = airflow_env(local_airflow_env(api, blob, work_dir=STATE / "runs"))
        airflow(["db", "migrate"], env, log_file)
        for pool, slots in POOLS.items():
            airflow(["pools", "set", pool, str(slots), f"spamgeo: {pool}"], env, log_file)
        log.info("running spamgeo_daily for %s (Airflow log: %s)", yesterday, log_file)
        airflow(["dags", "test", "spamgeo_daily", today.isoformat()], env, log_file)
        print_summary(blob, yesterday, "spamgeo", "spamgeo")

    print(f"\ndone in {time.perf_counter() - started:.0f} s; Airflow log: {log_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
