"""The deployment files agree with the code: no Docker engine here, so check what can be checked."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from tests.conftest import REPO

AIRFLOW_SERVICES = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def pinned(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("==")[1].strip()
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def test_every_requirement_is_pinned() -> None:
    for path in ("requirements.txt", "requirements-dev.txt"):
        for raw in (REPO / path).read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith(("#", "-r")):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line), f"{path}: {line}"


def test_image_matches_the_pinned_airflow() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"apache/airflow:{pinned('apache-airflow')}-python3.11" in dockerfile
    assert "requirements.txt" in dockerfile


def test_stack_runs_every_airflow_3_component(compose: dict) -> None:
    services = compose["services"]
    for name in [*AIRFLOW_SERVICES, "postgres", "redis"]:
        assert name in services, f"docker-compose.yaml lacks {name}"
    commands = {services[name].get("command") for name in AIRFLOW_SERVICES[:-1]}
    assert commands == {"api-server", "scheduler", "dag-processor", "celery worker", "triggerer"}


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_see_the_project(compose: dict, service: str) -> None:
    spec = compose["services"][service]
    mounts = {volume.split(":")[1] for volume in spec["volumes"]}
    for folder in ("dags", "plugins", "include", "spamgeo-runs"):
        assert f"/opt/airflow/{folder}" in mounts, f"{service} does not mount {folder}"
    env = spec["environment"]
    assert "/opt/airflow/include" in env["PYTHONPATH"]
    assert env["AIRFLOW_VAR_SPAMGEO_WORK_DIR"] == "/opt/airflow/spamgeo-runs"


def test_init_creates_the_pools_the_dag_uses(compose: dict) -> None:
    dag_source = (REPO / "dags" / "spamgeo_daily.py").read_text()
    pools = set(re.findall(r'_POOL = "([a-z_]+)"', dag_source))
    assert pools == {"log_analytics_api", "spamgeo_publish"}
    init_script = "\n".join(compose["services"]["airflow-init"]["command"])
    for pool in pools:
        assert f"pools set {pool} " in init_script


def test_example_env_configures_every_connection_the_dag_reads() -> None:
    example = (REPO / ".env.example").read_text()
    for conn_id in ("SPAMGEO_LOG_ANALYTICS", "SPAMGEO_BLOB"):
        assert re.search(rf"^AIRFLOW_CONN_{conn_id}=\{{", example, re.MULTILINE)


def _assigned_number(path: str, name: str) -> int:
    """The integer a module assigns to `name` at top level, read without importing the module."""
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} assigns no {name}")


def test_benchmark_extracts_with_the_dags_parallel_slices() -> None:
    # The benchmark's fetch figure is only the DAG's if it queries as many slices at once.
    dag = _assigned_number("dags/spamgeo_daily.py", "EXTRACT_PARALLEL_SLICES")
    assert _assigned_number("bench/run.py", "DAG_PARALLEL_SLICES") == dag
