"""Task bodies that decide something themselves: the run's window and the Power BI gate."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from spamgeo_airflow.runs import require_power_bi, window_for_run

POWER_BI = json.dumps({"conn_type": "powerbi", "login": "client", "password": "secret"})


def context(**values: object) -> dict[str, object]:
    run_after = values.pop("run_after", datetime(2026, 12, 3, 5, tzinfo=UTC))
    return {"params": {}, "dag_run": SimpleNamespace(run_after=run_after), **values}


def test_scheduled_run_takes_its_data_interval() -> None:
    window = window_for_run(
        context(
            data_interval_start=datetime(2026, 12, 1, tzinfo=UTC),
            data_interval_end=datetime(2026, 12, 2, tzinfo=UTC),
        )
    )
    assert window == {"start": "2026-12-01T00:00:00+00:00", "end": "2026-12-02T00:00:00+00:00"}


def test_params_take_precedence_and_end_day_is_inclusive() -> None:
    window = window_for_run(
        context(
            params={"start_day": "2026-11-01", "end_day": "2026-11-03"},
            data_interval_start=datetime(2026, 12, 1, tzinfo=UTC),
            data_interval_end=datetime(2026, 12, 2, tzinfo=UTC),
        )
    )
    assert window == {"start": "2026-11-01T00:00:00+00:00", "end": "2026-11-04T00:00:00+00:00"}


def test_manual_run_without_interval_processes_the_day_before_it_was_triggered() -> None:
    window = window_for_run(context(run_after=datetime(2026, 12, 3, 0, 10, tzinfo=UTC)))
    assert window == {"start": "2026-12-02T00:00:00+00:00", "end": "2026-12-03T00:00:00+00:00"}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"start_day": "2026-11-31"}, "start_day"),
        ({"start_day": "2026-11-05", "end_day": "2026-11-01"}, "before first day"),
    ],
    ids=["impossible-date", "reversed"],
)
def test_bad_params_say_what_to_fix(params: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        window_for_run(context(params=params))


def test_a_window_off_midnight_is_refused() -> None:
    with pytest.raises(ValueError, match="whole UTC days"):
        window_for_run(
            context(
                data_interval_start=datetime(2026, 12, 1, 6, tzinfo=UTC),
                data_interval_end=datetime(2026, 12, 2, 6, tzinfo=UTC),
            )
        )


def test_power_bi_refresh_is_skipped_without_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_SPAMGEO_POWERBI", raising=False)
    with pytest.raises(AirflowSkipException, match="spamgeo_powerbi"):
        require_power_bi()


def configure_power_bi(monkeypatch: pytest.MonkeyPatch, *, dataset: str | None) -> None:
    """The Power BI connection and group as Airflow reads them; the dataset only if given."""
    monkeypatch.setenv("AIRFLOW_CONN_SPAMGEO_POWERBI", POWER_BI)
    monkeypatch.setenv("AIRFLOW_VAR_SPAMGEO_POWERBI_GROUP_ID", "group")
    if dataset is None:
        monkeypatch.delenv("AIRFLOW_VAR_SPAMGEO_POWERBI_DATASET_ID", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW_VAR_SPAMGEO_POWERBI_DATASET_ID", dataset)


def test_power_bi_refresh_is_skipped_without_its_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_power_bi(monkeypatch, dataset=None)
    with pytest.raises(AirflowSkipException, match="spamgeo_powerbi_dataset_id"):
        require_power_bi()


def test_power_bi_refresh_goes_ahead_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_power_bi(monkeypatch, dataset="dataset")
    assert require_power_bi() is None
