"""Data-quality gates that stop a bad extract or a bad daily aggregate before it is published.

Row-level problems are found with vectorised pyarrow so the offending rows can be quarantined;
table-level expectations run in Great Expectations so every run keeps GX's own evidence.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from types import MappingProxyType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spamgeo.schema import DAILY_COLUMNS, IPV4_PATTERN, RAW_COLUMNS
from spamgeo.window import Window

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warning", "off")

# Check name -> default severity. Names are stable: they appear in configs, reports and the
# quarantine's QuarantineReason column.
DEFAULT_SEVERITIES: Mapping[str, str] = MappingProxyType(
    {
        "raw_schema": "error",
        "raw_not_empty": "error",
        "raw_time_window": "error",
        "raw_message_id": "error",
        "raw_sender_ipv4": "error",
        "raw_sender_ipv6": "error",
        "raw_spam_term": "error",
        "raw_no_address": "warning",
        "raw_volume": "warning",
        "aggregate_schema": "error",
        "aggregate_one_address": "error",
        "aggregate_unique_address_day": "error",
        "aggregate_count_positive": "error",
        "aggregate_distinct_order": "error",
        "aggregate_count_total": "error",
        "aggregate_latitude": "error",
        "aggregate_longitude": "error",
    }
)

# Row-level raw checks -> the column each one reads, in the order QuarantineReason lists them.
_ROW_CHECK_COLUMNS = {
    "raw_time_window": "TimeGenerated",
    "raw_message_id": "NetworkMessageId",
    "raw_sender_ipv4": "SenderIPv4",
    "raw_sender_ipv6": "SenderIPv6",
    "raw_spam_term": "ThreatTypes",
}
_ROW_CHECK_WHAT = {
    "raw_time_window": "TimeGenerated outside the window or null",
    "raw_message_id": "NetworkMessageId null or empty",
    "raw_sender_ipv4": "SenderIPv4 not a valid IPv4 address",
    "raw_sender_ipv6": "SenderIPv6 not a valid IPv6 address",
    "raw_spam_term": "ThreatTypes without the term Spam",
}

QUARANTINE_REASON = "QuarantineReason"

REMEDIES: Mapping[str, str] = MappingProxyType(
    {
        "raw_schema": "make the extraction query project the columns and types of "
        "schema.RAW_COLUMNS",
        "raw_not_empty": "check the workspace id, the window and EmailEvents ingestion; set "
        "severities.raw_not_empty to 'warning' if spam-free days are normal for this tenant",
        "raw_time_window": "make the extraction query's TimeGenerated filter and timespan "
        "select exactly the requested window",
        "raw_message_id": "inspect the quarantined rows: EmailEvents rows without a "
        "NetworkMessageId point to an ingestion problem upstream",
        "raw_sender_ipv4": "inspect the quarantined rows and make the query project "
        "SenderIPv4 unchanged",
        "raw_sender_ipv6": "inspect the quarantined rows and make the query project "
        "SenderIPv6 unchanged",
        "raw_spam_term": 'make the query filter with `ThreatTypes has "Spam"` (a whole '
        "term, not `contains`)",
        "raw_no_address": "check that SenderIPv4 and SenderIPv6 are projected; raise "
        "max_no_address_share if this tenant really has that many such rows",
        "raw_volume": "compare the day with the Defender portal; if the change is real, "
        "raise volume_tolerance or set severities.raw_volume",
        "aggregate_schema": "make the aggregation step emit exactly schema.DAILY_COLUMNS "
        "with their types",
        "aggregate_one_address": "fix the aggregation step: each row must carry exactly one "
        "of SenderIPv4 and SenderIPv6",
        "aggregate_unique_address_day": "fix the aggregation step: it must group by Date and "
        "address",
        "aggregate_count_positive": "fix the aggregation step: it must not emit empty groups",
        "aggregate_distinct_order": "fix the distinct counts in the aggregation step",
        "aggregate_count_total": "fix the aggregation step: it lost or duplicated rows of the "
        "clean extract",
        "aggregate_latitude": "check the GeoIP database and the geolocation step",
        "aggregate_longitude": "check the GeoIP database and the geolocation step",
    }
)

_TOLERANCES = (
    "volume_tolerance",
    "volume_min_history_days",
    "max_no_address_share",
    "max_quarantine_share",
)

# IPv6 in plain hex notation, one "::" at most: every string it matches is an address the
# ipaddress module accepts, so only the rest (IPv4 suffixes, zone indexes, junk) needs Python.
_HEXTET = "[0-9A-Fa-f]{1,4}"
_IPV6_PLAIN_PATTERN = (
    "^(?:"
    + "|".join(
        (
            f"(?:{_HEXTET}:){{7}}{_HEXTET}",
            f"(?:{_HEXTET}:){{1,7}}:",
            f"(?:{_HEXTET}:){{1,6}}:{_HEXTET}",
            f"(?:{_HEXTET}:){{1,5}}(?::{_HEXTET}){{1,2}}",
            f"(?:{_HEXTET}:){{1,4}}(?::{_HEXTET}){{1,3}}",
            f"(?:{_HEXTET}:){{1,3}}(?::{_HEXTET}){{1,4}}",
            f"(?:{_HEXTET}:){{1,2}}(?::{_HEXTET}){{1,5}}",
            f"{_HEXTET}:(?::{_HEXTET}){{1,6}}",
            f":(?:(?::{_HEXTET}){{1,7}}|:)",
        )
    )
    + ")$"
)
# KQL `has`: terms are maximal runs of letters and digits; [^\W_] is exactly that class.
_SPAM_TERM = re.compile(r"(?<![^\W_])spam(?![^\W_])", re.IGNORECASE)

_STRING_TYPES = (pa.string(), pa.large_string(), pa.string_view())


class QualityConfigError(ValueError):
    """A quality config that cannot be used: unknown key or bad value."""


class QualityGateError(Exception):
    """Raised when a stage has failed error-level checks; one line per check, with the fix."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        lines = [
            f"{check.name} failed: {check.detail} "
            f"(observed {_short(check.observed)}, expected {_short(check.expected)}); "
            f"fix: {REMEDIES.get(check.name, 'see the quality report')}"
            for check in report.errors
        ]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class QualityConfig:
    """Severity per check and the tolerances of the statistical checks."""

    severities: Mapping[str, str] = field(default_factory=lambda: DEFAULT_SEVERITIES)
    # Flag a day whose raw rows fall outside (1 +/- volume_tolerance) x the trailing median.
    volume_tolerance: float = 0.5
    # Fewer published days than this and the volume check is skipped with a note.
    volume_min_history_days: int = 3
    # Share of clean rows with neither SenderIPv4 nor SenderIPv6 above which the check fails.
    max_no_address_share: float = 0.05
    # Share of rows a row-level check may quarantine and still pass; rows are removed anyway.
    # A handful of malformed rows in a day of a million should be set aside, not stop the map;
    # a broken extract (garbage addresses en masse) still fails the run.
    max_quarantine_share: float = 0.001

    def severity(self, check: str) -> str:
        return self.severities.get(check, DEFAULT_SEVERITIES[check])

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> QualityConfig:
        """Build a config from a mapping such as a parsed Airflow Variable.

        Shape: {"severities": {"raw_volume": "error", ...}, "volume_tolerance": 0.3, ...};
        anything left out keeps its default.
        """
        if not isinstance(settings, Mapping):
            raise QualityConfigError(
                f"quality config must be a JSON object, got {type(settings).__name__}"
            )
        for key in settings:
            if key != "severities" and key not in _TOLERANCES:
                raise QualityConfigError(
                    f"quality config: unknown key {key!r}; known keys: severities, "
                    + ", ".join(_TOLERANCES)
                )

        severities = dict(DEFAULT_SEVERITIES)
        given = settings.get("severities", {})
        if not isinstance(given, Mapping):
            raise QualityConfigError("quality config: severities must be an object")
        for check, severity in given.items():
            if check not in DEFAULT_SEVERITIES:
                raise QualityConfigError(
                    f"quality config: severities.{check} is not a check; known checks: "
                    + ", ".join(DEFAULT_SEVERITIES)
                )
            if severity not in SEVERITIES:
                raise QualityConfigError(
                    f"quality config: severities.{check} must be one of "
                    f"{', '.join(SEVERITIES)}, got {severity!r}"
                )
            severities[check] = severity

        tolerances: dict[str, Any] = {}
        for key, low, high in (
            ("volume_tolerance", 0.0, math.inf),
            ("max_no_address_share", 0.0, 1.0),
            ("max_quarantine_share", 0.0, 1.0),
        ):
            if key in settings:
                tolerances[key] = _number(settings[key], key, low, high)
        if "volume_min_history_days" in settings:
            days = settings["volume_min_history_days"]
            if isinstance(days, bool) or not isinstance(days, int) or days < 1:
                raise QualityConfigError(
                    f"quality config: volume_min_history_days must be an integer >= 1, got {days!r}"
                )
            tolerances["volume_min_history_days"] = days

        return cls(severities=MappingProxyType(severities), **tolerances)

    @classmethod
    def from_json(cls, text: str | bytes) -> QualityConfig:
        """Build a config from JSON text (an Airflow Variable or a file)."""
        try:
            settings = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QualityConfigError(f"quality config is not valid JSON: {exc}") from exc
        return cls.from_mapping(settings)


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise QualityConfigError(f"quality config: {key} must be a number, got {value!r}")
    if not low <= value <= high:
        bounds = f"between {low:g} and {high:g}" if high != math.inf else f">= {low:g}"
        raise QualityConfigError(f"quality config: {key} must be {bounds}, got {value!r}")
    return float(value)


@dataclass
class CheckResult:
    """The outcome of one named check."""

    name: str
    severity: str
    success: bool
    observed: object
    detail: str
    expected: object = None
    skipped: bool = False


@dataclass
class ValidationReport:
    """All check results of one stage, with the row counts and GX's own result."""

    stage: str
    checks: list[CheckResult]
    counts: dict[str, Any] = field(default_factory=dict)
    window: str | None = None
    gx_result: dict[str, Any] | None = None

    @property
    def errors(self) -> list[CheckResult]:
        return [c for c in self.checks if c.severity == "error" and not c.success]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if c.severity == "warning" and not c.success]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> dict[str, Any]:
        """Counts and verdicts in a small JSON-safe dict, for XCom and logs."""
        return _json_safe(
            {
                "stage": self.stage,
                "window": self.window,
                "ok": self.ok,
                "errors": [c.name for c in self.errors],
                "warnings": [c.name for c in self.warnings],
                **self.counts,
            }
        )

    def to_json(self) -> bytes:
        """The full report, GX's validation result included, as UTF-8 JSON."""
        document = {
            **self.summary(),
            "checks": [asdict(c) for c in self.checks],
            "great_expectations": self.gx_result,
        }
        return json.dumps(_json_safe(document), indent=2).encode()

    def to_html(self) -> bytes:
        """A self-contained page: what failed, observed against expected, and what to fix."""
        from spamgeo.quality_report import render_html

        return render_html(self).encode()

    def to_html_section(self) -> bytes:
        """The same report as a section, for a page that holds every stage of a run."""
        from spamgeo.quality_report import render_section

        return render_section(self).encode()

    def raise_for_errors(self) -> None:
        if not self.ok:
            raise QualityGateError(self)


@dataclass
class RawValidation:
    """The raw extract split into publishable rows and quarantined rows, with the report."""

    clean: pa.Table
    quarantine: pa.Table
    report: ValidationReport


def expected_count_total(clean: pa.Table) -> int:
    """The sum of count_ the daily aggregate must reach: each row counts once per address."""
    return sum(_true_count(_non_empty(clean[column])) for column in ("SenderIPv4", "SenderIPv6"))


def validate_raw(
    raw: pa.Table,
    window: Window,
    *,
    trailing_rows: Mapping[date, int] | None = None,
    config: QualityConfig | None = None,
) -> RawValidation:
    """Check the raw extract for `window`, quarantine bad rows, and report; never raises.

    `trailing_rows` holds the raw row counts of earlier published days for the volume check.
    """
    config = config or QualityConfig()
    started = time.perf_counter()
    rows_in = raw.num_rows
    checks: list[CheckResult] = []

    expected_types = _raw_expected_types()
    problems = _schema_problems(raw, expected_types, exact_order=False)
    checks.append(_schema_check(config, "raw_schema", problems, expected_types))
    usable = {name for name in RAW_COLUMNS if name in raw.column_names} - problems.keys()

    failing = _row_failures(raw, window, usable, config)
    by_reason = {name: _true_count(mask) for name, mask in failing.items()}

    gx_frame_columns = [c for c in ("TimeGenerated", "NetworkMessageId") if c in usable]
    outcomes, gx_result = _run_gx(
        "raw", _raw_expectations(window, gx_frame_columns, config), raw.select(gx_frame_columns)
    )
    # GX's fingerprint of its frame leaves some 100 MB of freed pages cached in Arrow's pool;
    # returned now, they do not add to the peak of the next steps (DuckDB has its own allocator).
    pa.default_memory_pool().release_unused()

    # Split after GX has let go of its frame, so a copy of the clean rows never coexists with it.
    clean, quarantine = _split(raw, failing)

    not_empty = outcomes.get("raw_not_empty", {}).get("success", rows_in > 0)
    checks.append(
        _result(
            config,
            "raw_not_empty",
            not_empty,
            rows_in,
            "the extract has rows" if not_empty else "the extract has no rows for the window",
            expected=">= 1 row",
        )
    )
    for name, column in _ROW_CHECK_COLUMNS.items():
        checks.append(
            _row_check(
                config,
                name,
                raw=raw,
                column=column,
                usable=usable,
                mask=failing.get(name),
                gx_outcome=outcomes.get(name),
            )
        )

    address_columns_ok = {"SenderIPv4", "SenderIPv6"} <= usable
    no_address = _true_count(_no_address(clean)) if address_columns_ok else None
    checks.append(_no_address_check(config, no_address, clean.num_rows))
    checks.append(_volume_check(config, raw, window, usable, trailing_rows))

    counts = {
        "rows_in": rows_in,
        "clean_rows": clean.num_rows,
        "quarantined_rows": quarantine.num_rows,
        "quarantined_by_reason": by_reason,
        "no_address_rows": no_address,
        "expected_count_total": expected_count_total(clean) if address_columns_ok else None,
    }
    report = ValidationReport("raw", checks, counts, str(window), gx_result)
    log.info(
        "raw quality window=%s rows_in=%d clean=%d quarantined=%d by_reason=%s "
        "no_address=%s errors=%d warnings=%d seconds=%.2f",
        window,
        rows_in,
        clean.num_rows,
        quarantine.num_rows,
        by_reason,
        no_address,
        len(report.errors),
        len(report.warnings),
        time.perf_counter() - started,
    )
    return RawValidation(clean, quarantine, report)


def validate_aggregate(
    daily: pa.Table, *, expected_total: int, config: QualityConfig | None = None
) -> ValidationReport:
    """Check the geolocated daily aggregate before it is published; never raises."""
    config = config or QualityConfig()
    started = time.perf_counter()
    checks: list[CheckResult] = []

    expected_types = _daily_expected_types()
    problems = _schema_problems(daily, expected_types, exact_order=True)
    checks.append(_schema_check(config, "aggregate_schema", problems, expected_types))
    usable = {name for name in DAILY_COLUMNS if name in daily.column_names} - problems.keys()

    address_columns_ok = {"SenderIPv4", "SenderIPv6"} <= usable
    if address_columns_ok:
        both_or_neither = pc.invert(
            pc.xor(_non_empty(daily["SenderIPv4"]), _non_empty(daily["SenderIPv6"]))
        )
        bad_rows = _true_count(both_or_neither)
        checks.append(
            _result(
                config,
                "aggregate_one_address",
                bad_rows == 0,
                {"rows_failing": bad_rows},
                f"{bad_rows} of {daily.num_rows} rows carry both addresses or neither",
                expected="exactly one of SenderIPv4, SenderIPv6 per row",
            )
        )
    else:
        checks.append(_skipped(config, "aggregate_one_address", "address columns unusable"))

    expectations = _aggregate_expectations(usable, expected_total, config)
    frame_columns = [c for c in DAILY_COLUMNS if c in usable and c in _GX_AGGREGATE_COLUMNS]
    outcomes, gx_result = _run_gx("aggregate", expectations, daily.select(frame_columns))

    for name, expected, what in (
        ("aggregate_unique_address_day", "one row per Date and address", "duplicated rows"),
        ("aggregate_count_positive", "count_ integer >= 1", "rows with count_ null or < 1"),
        (
            "aggregate_distinct_order",
            "DistinctMessages <= DistinctMessageRecipients <= count_",
            "rows breaking the order",
        ),
        ("aggregate_count_total", f"sum(count_) == {expected_total}", "sum of count_"),
        ("aggregate_latitude", "Latitude within [-90, 90] or null", "rows out of range"),
        ("aggregate_longitude", "Longitude within [-180, 180] or null", "rows out of range"),
    ):
        outcome = outcomes.get(name)
        if config.severity(name) == "off":
            checks.append(_result(config, name, True, None, "disabled in the quality config"))
        elif outcome is None:
            checks.append(_skipped(config, name, "needed columns are missing or mistyped"))
        elif name == "aggregate_count_total":
            total = outcome["observed"].get("observed_value")
            checks.append(
                _result(
                    config,
                    name,
                    outcome["success"],
                    total,
                    f"sum of count_ is {total}, the clean extract gives {expected_total}",
                    expected=expected_total,
                )
            )
        else:
            failing_rows = outcome["observed"].get("unexpected_count", 0)
            checks.append(
                _result(
                    config,
                    name,
                    outcome["success"],
                    outcome["observed"],
                    f"{failing_rows} {what} of {daily.num_rows}",
                    expected=expected,
                )
            )

    counts = {
        "rows": daily.num_rows,
        "expected_count_total": expected_total,
        "count_total": _true_count(daily["count_"]) if "count_" in usable else None,
    }
    report = ValidationReport("aggregate", checks, counts, None, gx_result)
    log.info(
        "aggregate quality rows=%d count_total=%s expected_total=%d errors=%d warnings=%d "
        "seconds=%.2f",
        daily.num_rows,
        counts["count_total"],
        expected_total,
        len(report.errors),
        len(report.warnings),
        time.perf_counter() - started,
    )
    return report


# --- schema ---------------------------------------------------------------------------------

_GX_AGGREGATE_COLUMNS = {
    "Date",
    "SenderIPv4",
    "SenderIPv6",
    "count_",
    "DistinctMessages",
    "DistinctMessageRecipients",
    "Latitude",
    "Longitude",
}


def _raw_expected_types() -> dict[str, str]:
    return {
        name: "timestamp[UTC]" if kind == "datetime" else "string"
        for name, kind in RAW_COLUMNS.items()
    }


def _daily_expected_types() -> dict[str, str]:
    kinds = {
        "SenderIPv6": "string",
        "SenderIPv4": "string",
        "Latitude": "float64",
        "Longitude": "float64",
        "count_": "int64",
        "Date": "date32",
        "DistinctMessages": "integer",
        "DistinctMessageRecipients": "integer",
    }
    return {name: kinds.get(name, "any") for name in DAILY_COLUMNS}


def _type_matches(kind: pa.DataType, expected: str) -> bool:
    if expected == "timestamp[UTC]":
        return pa.types.is_timestamp(kind) and kind.tz in ("UTC", "+00:00", "Etc/UTC")
    if expected == "string":
        return kind in _STRING_TYPES
    if expected == "float64":
        return kind == pa.float64()
    if expected == "int64":
        return kind == pa.int64()
    if expected == "date32":
        return kind == pa.date32()
    if expected == "integer":
        return pa.types.is_integer(kind)
    return True


def _schema_problems(
    table: pa.Table, expected_types: Mapping[str, str], *, exact_order: bool
) -> dict[str, str]:
    """Column name -> what is wrong with it; "*" for the column list as a whole."""
    problems = {}
    for name, expected in expected_types.items():
        if name not in table.column_names:
            problems[name] = f"{name} is missing"
        elif not _type_matches(table.schema.field(name).type, expected):
            problems[name] = f"{name} is {table.schema.field(name).type}, expected {expected}"
    if exact_order and not problems and table.column_names != list(expected_types):
        problems["*"] = (
            f"columns {table.column_names} differ from {list(expected_types)} in order or extras"
        )
    return problems


def _schema_check(
    config: QualityConfig,
    name: str,
    problems: Mapping[str, str],
    expected_types: Mapping[str, str],
) -> CheckResult:
    return _result(
        config,
        name,
        not problems,
        list(problems.values()) or "all columns present with the expected types",
        "; ".join(problems.values()) if problems else "columns and types as expected",
        expected=dict(expected_types),
    )


# --- row-level checks (vectorised) ----------------------------------------------------------


def _true_count(values: Any) -> int:
    """The number of true values in a mask (or the sum of an integer column), nulls ignored."""
    return int(pc.sum(values).as_py() or 0)


def _non_empty(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """True where a string is neither null nor ""."""
    return pc.fill_null(pc.greater(pc.binary_length(column), 0), False)


def _row_failures(
    raw: pa.Table, window: Window, usable: set[str], config: QualityConfig
) -> dict[str, pa.ChunkedArray]:
    """Check name -> boolean mask of the rows failing it, for enabled checks that can run."""
    tests: dict[str, Callable[[], Any]] = {
        "raw_time_window": lambda: _outside_window(raw["TimeGenerated"], window),
        "raw_message_id": lambda: pc.invert(_non_empty(raw["NetworkMessageId"])),
        "raw_sender_ipv4": lambda: _flag_distinct(raw["SenderIPv4"], _invalid_ipv4),
        "raw_sender_ipv6": lambda: _flag_distinct(raw["SenderIPv6"], _invalid_ipv6),
        "raw_spam_term": lambda: _flag_distinct(raw["ThreatTypes"], _lacks_spam_term),
    }
    return {
        name: test()
        for name, test in tests.items()
        if config.severity(name) != "off" and _ROW_CHECK_COLUMNS[name] in usable
    }


def _outside_window(times: pa.ChunkedArray, window: Window) -> pa.ChunkedArray:
    start = pa.scalar(window.start, times.type)
    end = pa.scalar(window.end, times.type)
    inside = pc.and_(pc.greater_equal(times, start), pc.less(times, end))
    return pc.invert(pc.fill_null(inside, False))


def _invalid_ipv4(values: pa.Array) -> pa.Array:
    """The distinct values that are set but are no dotted-quad IPv4 address."""
    valid = pc.fill_null(pc.match_substring_regex(values, f"^{IPV4_PATTERN}$"), False)
    return values.filter(pc.and_(_non_empty(values), pc.invert(valid)))


def _is_valid_ipv6(text: str) -> bool:
    # A zone index ("%eth0") is link-local decoration, never part of a sender's public address.
    if "%" in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _invalid_ipv6(values: pa.Array) -> pa.Array:
    """The distinct values that are set but are no IPv6 address as `ipaddress` defines it."""
    plain = pc.fill_null(pc.match_substring_regex(values, _IPV6_PLAIN_PATTERN), False)
    unsure = values.filter(pc.and_(_non_empty(values), pc.invert(plain)))
    return pa.array([s for s in unsure.to_pylist() if not _is_valid_ipv6(s)], values.type)


def _lacks_spam_term(values: pa.Array) -> pa.Array:
    """The distinct values, null and "" included, without the whole term Spam."""
    return pa.array(
        [s for s in values.to_pylist() if not s or _SPAM_TERM.search(s) is None], values.type
    )


def _flag_distinct(
    column: pa.ChunkedArray, bad_values: Callable[[pa.Array], pa.Array]
) -> pa.ChunkedArray:
    """Judge each distinct value once with `bad_values` and mark every row holding a bad one.

    Sender addresses and threat labels repeat heavily, so this stays fast on large days. A null
    row is marked only if `bad_values` returns null among the bad values.
    """
    bad = bad_values(pc.unique(column))
    if not len(bad):
        return pa.chunked_array([pa.repeat(False, len(column))])
    return pc.is_in(column, value_set=bad)


def _split(raw: pa.Table, failing: Mapping[str, Any]) -> tuple[pa.Table, pa.Table]:
    """The clean rows and the quarantined rows, the latter with the names of checks they fail."""
    masks = list(failing.values())
    quarantined = masks[0] if masks else None
    for mask in masks[1:]:
        quarantined = pc.or_(quarantined, mask)
    if quarantined is None or not pc.any(quarantined).as_py():
        # The usual day: nothing to set aside, so the extract is passed on without a copy.
        no_reasons = pa.array([], pa.string())
        return raw, raw.schema.empty_table().append_column(QUARANTINE_REASON, no_reasons)

    labels = [
        pc.if_else(mask.filter(quarantined), pa.scalar(name), pa.scalar(None, pa.string()))
        for name, mask in failing.items()
    ]
    reasons = pc.binary_join_element_wise(*labels, "; ", null_handling="skip")
    quarantine = raw.filter(quarantined).append_column(QUARANTINE_REASON, reasons)
    return raw.filter(pc.invert(quarantined)), quarantine


def _no_address(table: pa.Table) -> Any:
    return pc.invert(pc.or_(_non_empty(table["SenderIPv4"]), _non_empty(table["SenderIPv6"])))


def _examples(raw: pa.Table, column: str, mask: Any, limit: int = 5) -> list[Any]:
    return pc.unique(raw[column].filter(mask)).to_pylist()[:limit]


def rows_per_day(raw: pa.Table, window: Window) -> dict[date, int]:
    """Rows of each UTC day of the window, zero-filled; rows without a time or outside it skip."""
    per_day = {day: 0 for day in window.days()}
    days = pc.cast(raw["TimeGenerated"], pa.date32())
    for item in pc.value_counts(days.drop_null()).to_pylist():
        if item["values"] in per_day:
            per_day[item["values"]] = item["counts"]
    return per_day


# --- check results --------------------------------------------------------------------------


def _result(
    config: QualityConfig,
    name: str,
    success: bool,
    observed: object,
    detail: str,
    *,
    expected: object = None,
    skipped: bool = False,
) -> CheckResult:
    severity = config.severity(name)
    if severity == "off":
        return CheckResult(name, severity, True, None, "disabled in the quality config")
    return CheckResult(name, severity, bool(success), observed, detail, expected, skipped)


def _skipped(config: QualityConfig, name: str, why: str) -> CheckResult:
    if config.severity(name) == "off":
        return _result(config, name, True, None, "disabled in the quality config")
    return _result(config, name, True, None, f"not run: {why}", skipped=True)


def _row_check(
    config: QualityConfig,
    name: str,
    *,
    raw: pa.Table,
    column: str,
    usable: set[str],
    mask: Any,
    gx_outcome: dict[str, Any] | None,
) -> CheckResult:
    if config.severity(name) == "off":
        return _result(config, name, True, None, "disabled in the quality config")
    if column not in usable or mask is None:
        return _skipped(config, name, f"column {column} is missing or mistyped")
    rows = raw.num_rows
    failing = _true_count(mask)
    share = failing / rows if rows else 0.0
    if gx_outcome is not None:
        success = gx_outcome["success"]
    else:
        success = share <= config.max_quarantine_share
    observed = {
        "rows_failing": failing,
        "share": round(share, 6),
        "examples": _examples(raw, column, mask) if failing else [],
    }
    return _result(
        config,
        name,
        success,
        observed,
        f"{failing} of {rows} rows quarantined ({_ROW_CHECK_WHAT[name]})",
        expected=f"share <= {config.max_quarantine_share:g}",
    )


def _no_address_check(
    config: QualityConfig, no_address: int | None, clean_rows: int
) -> CheckResult:
    name = "raw_no_address"
    if config.severity(name) == "off":
        return _result(config, name, True, None, "disabled in the quality config")
    if no_address is None:
        return _skipped(config, name, "SenderIPv4 or SenderIPv6 is missing or mistyped")
    share = no_address / clean_rows if clean_rows else 0.0
    return _result(
        config,
        name,
        share <= config.max_no_address_share,
        {"rows": no_address, "share": round(share, 6)},
        f"{no_address} of {clean_rows} clean rows have neither SenderIPv4 nor SenderIPv6 "
        "(kept, but not countable)",
        expected=f"share <= {config.max_no_address_share:g}",
    )


def _volume_check(
    config: QualityConfig,
    raw: pa.Table,
    window: Window,
    usable: set[str],
    trailing_rows: Mapping[date, int] | None,
) -> CheckResult:
    name = "raw_volume"
    if config.severity(name) == "off":
        return _result(config, name, True, None, "disabled in the quality config")
    if "TimeGenerated" not in usable:
        return _skipped(config, name, "TimeGenerated is missing or mistyped")
    if not window.is_day_aligned:
        return _skipped(config, name, "the window is not a set of whole UTC days")
    window_days = set(window.days())
    history = [
        int(rows)
        for day, rows in _history_days(trailing_rows or {}).items()
        if day not in window_days
    ]
    if len(history) < config.volume_min_history_days:
        return _skipped(
            config,
            name,
            f"{len(history)} earlier days of history, {config.volume_min_history_days} needed",
        )

    median = statistics.median(history)
    low = (1 - config.volume_tolerance) * median
    high = (1 + config.volume_tolerance) * median
    per_day = rows_per_day(raw, window)
    outliers = {day: rows for day, rows in per_day.items() if not low <= rows <= high}
    detail = (
        ", ".join(f"{day}: {rows} rows" for day, rows in outliers.items())
        + f" outside {low:.0f}..{high:.0f} (trailing median {median:g} over {len(history)} days)"
        if outliers
        else f"daily rows within {low:.0f}..{high:.0f} (trailing median {median:g})"
    )
    return _result(
        config,
        name,
        not outliers,
        {"rows_per_day": per_day, "trailing_median": median, "history_days": len(history)},
        detail,
        expected={"min_rows": low, "max_rows": high},
    )


def _history_days(trailing_rows: Mapping[Any, int]) -> dict[date, int]:
    days: dict[date, int] = {}
    for day, rows in trailing_rows.items():
        key = day if isinstance(day, date) else date.fromisoformat(str(day))
        days[key.date() if isinstance(key, datetime) else key] = rows
    return days


# --- Great Expectations ---------------------------------------------------------------------


def _raw_expectations(
    window: Window, columns: list[str], config: QualityConfig
) -> list[tuple[str, str, dict[str, Any]]]:
    """(check name, GX expectation class, kwargs) for the table-level and time checks."""
    mostly = {"mostly": 1.0 - config.max_quarantine_share}
    expectations: list[tuple[str, str, dict[str, Any]]] = [
        ("raw_not_empty", "ExpectTableRowCountToBeBetween", {"min_value": 1}),
    ]
    if "TimeGenerated" in columns:
        expectations += [
            (
                "raw_time_window",
                "ExpectColumnValuesToNotBeNull",
                {"column": "TimeGenerated", **mostly},
            ),
            (
                "raw_time_window",
                "ExpectColumnValuesToBeBetween",
                {
                    "column": "TimeGenerated",
                    "min_value": window.start,
                    "max_value": window.end,
                    "strict_max": True,
                    **mostly,
                },
            ),
        ]
    if "NetworkMessageId" in columns:
        expectations += [
            (
                "raw_message_id",
                "ExpectColumnValuesToNotBeNull",
                {"column": "NetworkMessageId", **mostly},
            ),
            (
                "raw_message_id",
                "ExpectColumnValueLengthsToBeBetween",
                {"column": "NetworkMessageId", "min_value": 1, **mostly},
            ),
        ]
    return [e for e in expectations if config.severity(e[0]) != "off"]


def _aggregate_expectations(
    usable: set[str], expected_total: int, config: QualityConfig
) -> list[tuple[str, str, dict[str, Any]]]:
    expectations: list[tuple[str, str, dict[str, Any]]] = []
    if {"Date", "SenderIPv4", "SenderIPv6"} <= usable:
        expectations.append(
            (
                "aggregate_unique_address_day",
                "ExpectCompoundColumnsToBeUnique",
                {"column_list": ["Date", "SenderIPv4", "SenderIPv6"]},
            )
        )
    if "count_" in usable:
        expectations += [
            ("aggregate_count_positive", "ExpectColumnValuesToNotBeNull", {"column": "count_"}),
            (
                "aggregate_count_positive",
                "ExpectColumnValuesToBeBetween",
                {"column": "count_", "min_value": 1},
            ),
            (
                "aggregate_count_total",
                "ExpectColumnSumToBeBetween",
                {"column": "count_", "min_value": expected_total, "max_value": expected_total},
            ),
        ]
    if {"DistinctMessages", "DistinctMessageRecipients", "count_"} <= usable:
        for smaller, larger in (
            ("DistinctMessages", "DistinctMessageRecipients"),
            ("DistinctMessageRecipients", "count_"),
        ):
            expectations.append(
                (
                    "aggregate_distinct_order",
                    "ExpectColumnPairValuesAToBeGreaterThanB",
                    {"column_A": larger, "column_B": smaller, "or_equal": True},
                )
            )
    for column, bound in (("Latitude", 90), ("Longitude", 180)):
        if column in usable:
            expectations.append(
                (
                    f"aggregate_{column.lower()}",
                    "ExpectColumnValuesToBeBetween",
                    {"column": column, "min_value": -bound, "max_value": bound},
                )
            )
    return [e for e in expectations if config.severity(e[0]) != "off"]


def _quiet_great_expectations() -> None:
    """Keep GX off the network and out of the task log except for real problems."""
    # Some GX modules pin their own logger to INFO on import, so the parent's level is not enough.
    for name in list(logging.root.manager.loggerDict):
        if name == "great_expectations" or name.startswith("great_expectations."):
            logging.getLogger(name).setLevel(logging.WARNING)


def _run_gx(
    stage: str, expectations: list[tuple[str, str, dict[str, Any]]], frame: pa.Table
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Validate `frame` with an in-process GX suite; returns per-check outcomes and GX's JSON.

    A check built from several expectations succeeds when all of them do; its observed value
    merges their results so the report shows GX's own counts and examples.
    """
    if not expectations:
        return {}, None
    # Without this GX tries to send usage analytics, which a loopback-only worker cannot reach.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.validator.v1_validator import Validator

    _quiet_great_expectations()

    started = time.perf_counter()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas(f"spamgeo_{stage}")
        .add_dataframe_asset(stage)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=f"spamgeo_{stage}"))
    for check, kind, kwargs in expectations:
        expectation_class = getattr(gx.expectations, kind)
        suite.add_expectation(expectation_class(**kwargs, meta={"check": check}))

    # Limitation: GX fingerprints every pandas batch under 1 GB by hashing all of its values,
    # with no setting to skip it; on a day of 1M rows that is about half the time of the raw
    # validation and most of its peak memory (~0.3 s and ~200 MB for the message ids).
    # pandas' own string dtype, not pd.ArrowDtype: that hashing is ~30x slower on ArrowDtype.
    dataframe = frame.to_pandas(date_as_object=False)
    # The validator Batch.validate builds, minus Batch itself: getting a Batch loads, and so
    # fingerprints, the frame once more before validating it.
    validator = Validator(
        batch_definition, result_format="SUMMARY", batch_parameters={"dataframe": dataframe}
    )
    document = validator.validate_expectation_suite(suite).to_json_dict()

    outcomes: dict[str, dict[str, Any]] = {}
    for item in document["results"]:
        check = item["expectation_config"]["meta"]["check"]
        outcome = outcomes.setdefault(check, {"success": True, "observed": {}})
        outcome["success"] = outcome["success"] and bool(item["success"])
        observed = item.get("result") or {}
        merged = outcome["observed"]
        if "observed_value" in observed:
            merged["observed_value"] = observed["observed_value"]
        if "unexpected_count" in observed:
            merged["unexpected_count"] = merged.get("unexpected_count", 0) + int(
                observed["unexpected_count"] or 0
            )
            merged.setdefault("examples", []).extend(
                observed.get("partial_unexpected_list", [])[:5]
            )
        if item.get("exception_info", {}).get("raised_exception"):
            outcome["success"] = False
            merged["exception"] = item["exception_info"].get("exception_message")
    log.info(
        "great_expectations stage=%s rows=%d expectations=%d success=%s seconds=%.2f",
        stage,
        frame.num_rows,
        len(expectations),
        document["success"],
        time.perf_counter() - started,
    )
    return outcomes, _json_safe(document)


# --- JSON -------------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """Turn dates, numpy scalars and other leaves into plain JSON values."""
    if isinstance(value, Mapping):
        return {
            key if isinstance(key, str) else str(_json_safe(key)): _json_safe(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return str(value)


def _short(value: object, limit: int = 160) -> str:
    text = json.dumps(_json_safe(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
