"""Time windows: the half-open UTC intervals every step of the pipeline agrees on.

A window `[start, end)` contains a row when `start <= TimeGenerated < end`, so adjacent
windows and slices never share or lose a boundary row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta


class WindowError(ValueError):
    """A window that cannot be queried: naive, empty, reversed or misaligned."""


def parse_instant(text: str, *, setting: str = "window") -> datetime:
    """Parse an ISO-8601 date or datetime into an aware UTC datetime.

    A bare date means midnight UTC; a naive datetime is taken as UTC, since Log Analytics
    stores every timestamp in UTC.
    """
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise WindowError(
            f"{setting}: {text!r} is not an ISO-8601 date or datetime (e.g. 2026-12-01)"
        ) from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _iso(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


@dataclass(frozen=True, order=True)
class Window:
    """A half-open UTC interval `[start, end)`."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name, instant in (("start", self.start), ("end", self.end)):
            if instant.tzinfo is None or instant.utcoffset() != timedelta(0):
                raise WindowError(f"window {name} {instant!r} must be timezone-aware UTC")
        if self.end <= self.start:
            raise WindowError(
                f"window end {_iso(self.end)} must be after its start {_iso(self.start)}"
            )

    @classmethod
    def for_days(cls, first: date, last: date | None = None) -> Window:
        """The window covering whole UTC days `first` to `last`, both inclusive."""
        last = last or first
        if last < first:
            raise WindowError(f"last day {last} is before first day {first}")
        start = datetime.combine(first, time(), tzinfo=UTC)
        end = datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC)
        return cls(start, end)

    @classmethod
    def parse_days(
        cls, first: str, last: str | None = None, *, settings: tuple[str, str] = ("start", "end")
    ) -> Window:
        """Whole UTC days from dates as a person types them; `last` is inclusive, default `first`.

        `settings` name the two inputs in error messages, e.g. a command's options or params.
        """
        first_day = parse_instant(first, setting=settings[0]).date()
        last_day = parse_instant(last, setting=settings[1]).date() if last else first_day
        return cls.for_days(first_day, last_day)

    @classmethod
    def parse(cls, start: str, end: str) -> Window:
        """A window from two ISO-8601 strings, as given on a command line or in params."""
        return cls(parse_instant(start, setting="start"), parse_instant(end, setting="end"))

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    @property
    def is_day_aligned(self) -> bool:
        """True when both ends fall on midnight UTC, so the window is a set of whole days."""
        return self.start.time() == time() and self.end.time() == time()

    def days(self) -> list[date]:
        """The UTC dates this window touches, in order."""
        first = self.start.date()
        last = (self.end - timedelta(microseconds=1)).date()
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]

    def split(self, step: timedelta) -> Iterator[Window]:
        """Consecutive slices of at most `step`; together they cover the window exactly."""
        if step <= timedelta(0):
            raise WindowError(f"slice length must be positive, got {step}")
        cursor = self.start
        while cursor < self.end:
            upper = min(cursor + step, self.end)
            yield Window(cursor, upper)
            cursor = upper

    def halves(self) -> tuple[Window, Window]:
        """The two halves of this window, split at its midpoint (to the microsecond)."""
        middle = self.start + (self.duration // 2)
        if middle <= self.start:
            raise WindowError(f"window {self} is too short to split")
        return Window(self.start, middle), Window(middle, self.end)

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end

    def iso_timespan(self) -> str:
        """The window as the query API's `timespan` value, `start/end` in ISO-8601."""
        return f"{_iso(self.start)}/{_iso(self.end)}"

    def kql_filter(self, column: str = "TimeGenerated") -> str:
        """A KQL predicate that keeps exactly the rows of this half-open window."""
        return f"{column} >= datetime({_iso(self.start)}) and {column} < datetime({_iso(self.end)})"

    def __str__(self) -> str:
        return f"[{_iso(self.start)}, {_iso(self.end)})"
