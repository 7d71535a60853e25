"""Half-open UTC windows: the boundaries every step relies on to keep each row exactly once."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from spamgeo.window import Window, WindowError, parse_instant

MIDNIGHT = datetime(2026, 12, 1, tzinfo=UTC)


def test_for_days_covers_whole_days_with_the_last_inclusive() -> None:
    window = Window.for_days(date(2026, 12, 1), date(2026, 12, 3))
    assert window.start == MIDNIGHT
    assert window.end == datetime(2026, 12, 4, tzinfo=UTC)
    assert window.days() == [date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 3)]
    assert window.is_day_aligned


def test_half_open_contains_its_start_but_not_its_end() -> None:
    window = Window.for_days(date(2026, 12, 1))
    assert window.contains(MIDNIGHT)
    assert window.contains(MIDNIGHT + timedelta(days=1) - timedelta(microseconds=1))
    assert not window.contains(MIDNIGHT + timedelta(days=1))


@pytest.mark.parametrize("step_hours", [1, 5, 7, 24], ids=lambda h: f"{h}h")
def test_split_slices_meet_end_to_start_and_cover_the_window(step_hours: int) -> None:
    window = Window.for_days(date(2026, 12, 1))
    slices = list(window.split(timedelta(hours=step_hours)))
    assert slices[0].start == window.start and slices[-1].end == window.end
    for earlier, later in itertools.pairwise(slices):
        assert earlier.end == later.start
    assert all(piece.duration <= timedelta(hours=step_hours) for piece in slices)


def test_halves_meet_at_the_midpoint() -> None:
    first, second = Window(MIDNIGHT, MIDNIGHT + timedelta(hours=1)).halves()
    assert first.end == second.start == MIDNIGHT + timedelta(minutes=30)


def test_a_window_of_one_microsecond_cannot_be_halved() -> None:
    with pytest.raises(WindowError, match="too short"):
        Window(MIDNIGHT, MIDNIGHT + timedelta(microseconds=1)).halves()


def test_query_texts_state_the_window_in_utc() -> None:
    window = Window(MIDNIGHT, MIDNIGHT + timedelta(hours=6, microseconds=500))
    assert window.iso_timespan() == "2026-12-01T00:00:00Z/2026-12-01T06:00:00.000500Z"
    assert window.kql_filter() == (
        "TimeGenerated >= datetime(2026-12-01T00:00:00Z) and "
        "TimeGenerated < datetime(2026-12-01T06:00:00.000500Z)"
    )


def test_parse_days_names_the_setting_that_is_wrong() -> None:
    assert Window.parse_days("2026-12-01") == Window.for_days(date(2026, 12, 1))
    with pytest.raises(WindowError, match="--end"):
        Window.parse_days("2026-12-01", "tomorrow", settings=("--start", "--end"))


def test_instants_are_read_as_utc() -> None:
    assert parse_instant("2026-12-01") == MIDNIGHT
    assert parse_instant("2026-12-01T02:00:00+02:00") == MIDNIGHT


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (MIDNIGHT, MIDNIGHT, "after its start"),
        (MIDNIGHT, MIDNIGHT - timedelta(hours=1), "after its start"),
        (MIDNIGHT.replace(tzinfo=None), MIDNIGHT + timedelta(days=1), "timezone-aware UTC"),
        (
            MIDNIGHT.astimezone(timezone(timedelta(hours=1))),
            MIDNIGHT + timedelta(days=1),
            "timezone-aware UTC",
        ),
    ],
    ids=["empty", "reversed", "naive", "not-utc"],
)
def test_unusable_windows_are_refused(start: datetime, end: datetime, message: str) -> None:
    with pytest.raises(WindowError, match=message):
        Window(start, end)
