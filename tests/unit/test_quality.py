"""Tests for the data-quality gates: each check fed deliberately broken data, run through GX."""

from __future__ import annotations

import ipaddress
import json
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from spamgeo.quality import (
    QUARANTINE_REASON,
    QualityConfig,
    QualityConfigError,
    QualityGateError,
    ValidationReport,
    expected_count_total,
    validate_aggregate,
    validate_raw,
)
from spamgeo.schema import DAILY_COLUMNS, RAW_COLUMNS
from spamgeo.window import Window

DAY = date(2026, 3, 10)
WINDOW = Window.for_days(DAY)
NOON = datetime(2026, 3, 10, 12, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")


def event(**overrides: Any) -> dict[str, Any]:
    row = {
        "TimeGenerated": NOON,
        "Timestamp": NOON,
        "NetworkMessageId": "msg-1",
        "RecipientEmailAddress": "alice@contoso.example",
        "SenderIPv4": "81.2.69.160",
        "SenderIPv6": "",
        "ThreatTypes": "Spam",
    }
    row.update(overrides)
    return row


def raw_table(rows: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema(
        [(name, TS if kind == "datetime" else pa.string()) for name, kind in RAW_COLUMNS.items()]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def numbered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every row its own message id so rows can be traced through the split."""
    return [{**row, "NetworkMessageId": f"m{i}"} for i, row in enumerate(rows)]


def check(report: ValidationReport, name: str):
    return next(c for c in report.checks if c.name == name)


def assert_split_is_complete(raw: pa.Table, result) -> None:
    assert result.clean.num_rows + result.quarantine.num_rows == raw.num_rows
    summary = result.report.summary()
    assert summary["rows_in"] == raw.num_rows
    assert summary["clean_rows"] + summary["quarantined_rows"] == raw.num_rows
    back = result.quarantine.drop_columns([QUARANTINE_REASON])
    rejoined = sorted(map(repr, result.clean.to_pylist() + back.to_pylist()))
    assert rejoined == sorted(map(repr, raw.to_pylist()))


# --- raw extract ----------------------------------------------------------------------------


def test_clean_extract_passes_every_check():
    raw = raw_table(
        [
            event(NetworkMessageId="a"),
            event(NetworkMessageId="b", SenderIPv4="", SenderIPv6="2001:480:10::1"),
            event(NetworkMessageId="c", ThreatTypes="Phish, Spam"),
            event(NetworkMessageId="d", SenderIPv6="::ffff:81.2.69.160"),
            event(NetworkMessageId="e", TimeGenerated=WINDOW.start),
        ]
    )

    result = validate_raw(raw, WINDOW)

    assert result.report.ok
    assert result.report.errors == [] and result.report.warnings == []
    assert result.clean.equals(raw)
    assert result.quarantine.num_rows == 0
    assert result.quarantine.column_names == [*RAW_COLUMNS, QUARANTINE_REASON]
    assert all(c.success for c in result.report.checks)


def test_missing_column_fails_schema_and_skips_what_needs_it():
    raw = raw_table([event()]).drop_columns(["ThreatTypes"])

    result = validate_raw(raw, WINDOW)

    schema = check(result.report, "raw_schema")
    assert not schema.success and schema.severity == "error"
    assert "ThreatTypes is missing" in schema.detail
    assert check(result.report, "raw_spam_term").skipped
    assert not result.report.ok
    assert result.clean.num_rows == 1


def test_wrong_column_type_fails_schema():
    raw = raw_table([event()])
    as_text = raw.set_column(0, "TimeGenerated", pa.array(["2026-03-10T12:00:00Z"]))

    result = validate_raw(as_text, WINDOW)

    schema = check(result.report, "raw_schema")
    assert not schema.success
    assert "TimeGenerated is string" in schema.detail
    assert check(result.report, "raw_time_window").skipped
    assert [c.name for c in result.report.errors] == ["raw_schema"]


def test_rows_outside_the_half_open_window_are_quarantined():
    raw = raw_table(
        numbered(
            [
                event(TimeGenerated=WINDOW.start),
                event(TimeGenerated=WINDOW.end - timedelta(microseconds=1)),
                event(TimeGenerated=WINDOW.end),
                event(TimeGenerated=WINDOW.start - timedelta(seconds=1)),
                event(TimeGenerated=None),
            ]
        )
    )

    result = validate_raw(raw, WINDOW)

    assert result.clean["NetworkMessageId"].to_pylist() == ["m0", "m1"]
    assert result.quarantine["NetworkMessageId"].to_pylist() == ["m2", "m3", "m4"]
    assert set(result.quarantine[QUARANTINE_REASON].to_pylist()) == {"raw_time_window"}
    window_check = check(result.report, "raw_time_window")
    assert not window_check.success and window_check.observed["rows_failing"] == 3
    assert not result.report.ok
    assert result.report.summary()["quarantined_by_reason"]["raw_time_window"] == 3
    assert_split_is_complete(raw, result)


@pytest.mark.parametrize("message_id", [None, ""], ids=["null", "empty"])
def test_missing_message_id_is_quarantined(message_id):
    raw = raw_table([event(NetworkMessageId="ok"), event(NetworkMessageId=message_id)])

    result = validate_raw(raw, WINDOW)

    assert result.quarantine[QUARANTINE_REASON].to_pylist() == ["raw_message_id"]
    assert result.clean["NetworkMessageId"].to_pylist() == ["ok"]
    assert not check(result.report, "raw_message_id").success
    assert not result.report.ok


@pytest.mark.parametrize(
    "address",
    ["300.1.1.1", "1.2.3", "01.2.3.4", " 81.2.69.160", "2001:db8::1", "::ffff:1.2.3.4", "x"],
    ids=["octet-300", "three-octets", "leading-zero", "space", "ipv6", "mapped-ipv6", "word"],
)
def test_invalid_sender_ipv4_is_quarantined(address):
    raw = raw_table(
        [event(NetworkMessageId="good"), event(NetworkMessageId="bad", SenderIPv4=address)]
    )

    result = validate_raw(raw, WINDOW)

    assert result.quarantine["NetworkMessageId"].to_pylist() == ["bad"]
    assert result.quarantine[QUARANTINE_REASON].to_pylist() == ["raw_sender_ipv4"]
    ipv4 = check(result.report, "raw_sender_ipv4")
    assert not ipv4.success and ipv4.severity == "error"
    assert ipv4.observed["examples"] == [address]


@pytest.mark.parametrize(
    "address",
    ["2001:db8::g", "81.2.69.160", "2001:db8:::1", "fe80::1%eth0"],
    ids=["bad-hex", "ipv4", "triple-colon", "zone-index"],
)
def test_invalid_sender_ipv6_is_quarantined(address):
    raw = raw_table(
        [
            event(NetworkMessageId="v6", SenderIPv4="", SenderIPv6="2001:480:10::1"),
            event(NetworkMessageId="mapped", SenderIPv4="", SenderIPv6="::ffff:81.2.69.160"),
            event(NetworkMessageId="bad", SenderIPv4="", SenderIPv6=address),
        ]
    )

    result = validate_raw(raw, WINDOW)

    assert result.clean["NetworkMessageId"].to_pylist() == ["v6", "mapped"]
    assert result.quarantine["NetworkMessageId"].to_pylist() == ["bad"]
    assert result.quarantine[QUARANTINE_REASON].to_pylist() == ["raw_sender_ipv6"]
    assert not check(result.report, "raw_sender_ipv6").success


def ipv6_like(rng: random.Random) -> str:
    """A string near the IPv6 grammar: right, slightly wrong, or with an IPv4 or zone suffix."""
    hextets = [
        "".join(
            rng.choice("0123456789abcdefABCDEFg") for _ in range(rng.choice([0, 1, 2, 4, 4, 5]))
        )
        for _ in range(rng.randint(1, 9))
    ]
    text = rng.choice([":", ":", ":", "::", ":::"]).join(hextets)
    if rng.random() < 0.3:
        text = rng.choice(["::", ":", ""]) + text
    if rng.random() < 0.3:
        text += rng.choice(["::", ":", ""])
    if rng.random() < 0.1:
        text += rng.choice([":1.2.3.4", ":01.2.3.4", ":300.2.3.4", "%eth0", " "])
    return text


def test_sender_ipv6_is_judged_exactly_as_the_ipaddress_module_does():
    rng = random.Random(7)
    addresses = sorted({ipv6_like(rng) for _ in range(3000)} - {""})
    addresses += ["::", "::1", "1::", "1:2:3:4:5:6:7::", "::1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8"]
    addresses += ["1::2::3", "1:2:3:4:5:6:7:8:9", "1:2:3:4::5:6:7:8", "12345::", ":1::", "1:::"]
    rows = [
        event(NetworkMessageId=f"m{i}", SenderIPv4="", SenderIPv6=address)
        for i, address in enumerate(addresses)
    ]

    def is_valid(address: str) -> bool:
        try:
            return "%" not in address and bool(ipaddress.IPv6Address(address))
        except ValueError:
            return False

    lenient = QualityConfig.from_mapping({"max_quarantine_share": 1.0})
    result = validate_raw(raw_table(rows), WINDOW, config=lenient)

    assert sorted(result.clean["SenderIPv6"].to_pylist()) == sorted(filter(is_valid, addresses))
    invalid = [a for a in addresses if not is_valid(a)]
    assert sorted(result.quarantine["SenderIPv6"].to_pylist()) == sorted(invalid)
    assert len(invalid) > 100 and len(addresses) - len(invalid) > 100


def test_extract_in_several_chunks_splits_as_in_one():
    rows = [event(NetworkMessageId=f"m{i}") for i in range(12)]
    rows[1]["SenderIPv4"] = "1.2.3"
    rows[5]["ThreatTypes"] = None
    rows[5]["SenderIPv6"] = "2001:db8:::1"
    rows[10]["TimeGenerated"] = WINDOW.end
    one_chunk = raw_table(rows)
    chunked = pa.Table.from_batches(
        [one_chunk.slice(0, 3).to_batches()[0], *one_chunk.slice(3).to_batches(max_chunksize=4)]
    )

    result = validate_raw(chunked, WINDOW)

    assert result.quarantine.to_pylist() == validate_raw(one_chunk, WINDOW).quarantine.to_pylist()
    assert result.quarantine[QUARANTINE_REASON].to_pylist() == [
        "raw_sender_ipv4",
        "raw_sender_ipv6; raw_spam_term",
        "raw_time_window",
    ]
    assert_split_is_complete(chunked, result)


def test_clean_extract_is_passed_on_without_a_copy():
    raw = raw_table([event(NetworkMessageId="a"), event(NetworkMessageId="b")])

    result = validate_raw(raw, WINDOW)

    assert result.clean is raw
    assert result.quarantine.schema == raw.schema.append(pa.field(QUARANTINE_REASON, pa.string()))


def test_gx_loads_and_fingerprints_the_frame_once(monkeypatch):
    from great_expectations.execution_engine import pandas_execution_engine as engine

    fingerprints = []
    original = engine.hash_pandas_dataframe
    monkeypatch.setattr(
        engine, "hash_pandas_dataframe", lambda df: fingerprints.append(len(df)) or original(df)
    )

    validate_raw(raw_table([event(NetworkMessageId=f"m{i}") for i in range(3)]), WINDOW)

    assert fingerprints == [3]


@pytest.mark.parametrize(
    ("threat_types", "has_spam"),
    [
        ("Spam", True),
        ("Phish, Spam", True),
        ("SPAM", True),
        ("Malware,spam", True),
        ("Spammy", False),
        ("NotSpam", False),
        ("Phish", False),
        ("", False),
        (None, False),
    ],
)
def test_spam_term_is_a_case_insensitive_whole_term(threat_types, has_spam):
    raw = raw_table([event(NetworkMessageId="x", ThreatTypes=threat_types)])

    result = validate_raw(raw, WINDOW)

    assert result.clean.num_rows == (1 if has_spam else 0)
    expected_reasons = [] if has_spam else ["raw_spam_term"]
    assert result.quarantine[QUARANTINE_REASON].to_pylist() == expected_reasons
    assert check(result.report, "raw_spam_term").success is has_spam


def test_a_row_failing_several_checks_lists_every_reason():
    raw = raw_table(
        [
            event(NetworkMessageId="good"),
            event(
                NetworkMessageId="",
                TimeGenerated=WINDOW.end,
                SenderIPv4="999.1.1.1",
                ThreatTypes="Spammy",
            ),
        ]
    )

    result = validate_raw(raw, WINDOW)

    assert result.quarantine[QUARANTINE_REASON].to_pylist() == [
        "raw_time_window; raw_message_id; raw_sender_ipv4; raw_spam_term"
    ]
    assert {c.name for c in result.report.errors} == {
        "raw_time_window",
        "raw_message_id",
        "raw_sender_ipv4",
        "raw_spam_term",
    }
    assert_split_is_complete(raw, result)


def test_rows_without_any_address_are_counted_but_kept():
    rows = [event(NetworkMessageId=f"m{i}") for i in range(8)]
    rows += [
        event(NetworkMessageId="n1", SenderIPv4=""),
        event(NetworkMessageId="n2", SenderIPv4=None),
    ]
    raw = raw_table(rows)

    result = validate_raw(raw, WINDOW)

    assert result.clean.num_rows == 10 and result.quarantine.num_rows == 0
    no_address = check(result.report, "raw_no_address")
    assert no_address.observed == {"rows": 2, "share": 0.2}
    assert not no_address.success and no_address.severity == "warning"
    assert result.report.ok
    assert [c.name for c in result.report.warnings] == ["raw_no_address"]

    relaxed = QualityConfig.from_mapping({"max_no_address_share": 0.25})
    assert check(validate_raw(raw, WINDOW, config=relaxed).report, "raw_no_address").success


def history(rows_per_day: int, days: int = 7) -> dict[date, int]:
    return {DAY - timedelta(days=n): rows_per_day for n in range(1, days + 1)}


def test_volume_drop_against_trailing_median_warns():
    raw = raw_table([event(NetworkMessageId=f"m{i}") for i in range(4)])
    trailing = history(10)
    trailing[DAY - timedelta(days=1)] = 1000  # one spike must not move the median

    result = validate_raw(raw, WINDOW, trailing_rows=trailing)

    volume = check(result.report, "raw_volume")
    assert not volume.success and volume.severity == "warning"
    assert volume.observed["trailing_median"] == 10
    assert volume.observed["rows_per_day"] == {DAY: 4}
    assert volume.expected == {"min_rows": 5.0, "max_rows": 15.0}
    assert result.report.ok


def test_volume_spike_warns_and_volume_within_tolerance_passes():
    raw = raw_table([event(NetworkMessageId=f"m{i}") for i in range(12)])

    assert check(validate_raw(raw, WINDOW, trailing_rows=history(10)).report, "raw_volume").success
    spike = validate_raw(raw, WINDOW, trailing_rows=history(5))
    assert not check(spike.report, "raw_volume").success


def test_volume_without_history_is_skipped_with_a_note():
    raw = raw_table([event()])

    for trailing in (None, {}, history(10, days=2)):
        volume = check(validate_raw(raw, WINDOW, trailing_rows=trailing).report, "raw_volume")
        assert volume.success and volume.skipped
        assert "needed" in volume.detail


def test_empty_extract_is_an_error():
    raw = raw_table([])

    result = validate_raw(raw, WINDOW, trailing_rows=history(10))

    not_empty = check(result.report, "raw_not_empty")
    assert not not_empty.success and not_empty.observed == 0
    assert not result.report.ok
    assert "raw_not_empty" in [c.name for c in result.report.errors]
    assert not check(result.report, "raw_volume").success
    assert result.clean.num_rows == 0 and result.quarantine.num_rows == 0


def test_expected_count_total_counts_each_address_branch():
    raw = raw_table(
        [
            event(SenderIPv4="81.2.69.160", SenderIPv6=""),
            event(SenderIPv4="", SenderIPv6="2001:480:10::1"),
            event(SenderIPv4="81.2.69.160", SenderIPv6="2001:480:10::1"),
            event(SenderIPv4="", SenderIPv6=""),
            event(SenderIPv4=None, SenderIPv6="::ffff:81.2.69.160"),
        ]
    )

    assert expected_count_total(raw) == 1 + 1 + 2 + 0 + 1


# --- configuration --------------------------------------------------------------------------


def test_severity_from_config_turns_an_error_into_a_warning():
    raw = raw_table([event(NetworkMessageId="a"), event(NetworkMessageId="b", SenderIPv4="1.2.3")])
    config = QualityConfig.from_mapping({"severities": {"raw_sender_ipv4": "warning"}})

    result = validate_raw(raw, WINDOW, config=config)

    ipv4 = check(result.report, "raw_sender_ipv4")
    assert ipv4.severity == "warning" and not ipv4.success
    assert result.report.ok
    result.report.raise_for_errors()
    assert result.quarantine["NetworkMessageId"].to_pylist() == ["b"]


def test_severity_off_disables_the_check_and_its_quarantine():
    raw = raw_table([event(NetworkMessageId="a"), event(NetworkMessageId="b", ThreatTypes="Phish")])
    config = QualityConfig.from_json('{"severities": {"raw_spam_term": "off"}}')

    result = validate_raw(raw, WINDOW, config=config)

    spam = check(result.report, "raw_spam_term")
    assert spam.severity == "off" and spam.success
    assert result.clean.num_rows == 2 and result.quarantine.num_rows == 0
    assert result.report.ok


def test_quarantine_share_tolerance_passes_check_but_still_removes_rows():
    rows = [event(NetworkMessageId=f"m{i}") for i in range(9)]
    raw = raw_table([*rows, event(NetworkMessageId="", SenderIPv4="1.2.3")])
    config = QualityConfig.from_mapping({"max_quarantine_share": 0.2})

    result = validate_raw(raw, WINDOW, config=config)

    assert check(result.report, "raw_message_id").success
    assert check(result.report, "raw_sender_ipv4").success
    assert result.report.ok
    assert result.quarantine[QUARANTINE_REASON].to_pylist() == ["raw_message_id; raw_sender_ipv4"]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"severity": {}}, "'severity'"),
        ({"severities": {"raw_colour": "error"}}, "severities.raw_colour"),
        ({"severities": {"raw_volume": "fatal"}}, "severities.raw_volume"),
        ({"volume_tolerance": -0.1}, "volume_tolerance"),
        ({"volume_tolerance": "wide"}, "volume_tolerance"),
        ({"max_no_address_share": 1.5}, "max_no_address_share"),
        ({"max_quarantine_share": True}, "max_quarantine_share"),
        ({"volume_min_history_days": 0}, "volume_min_history_days"),
    ],
    ids=[
        "unknown-key",
        "unknown-check",
        "bad-severity",
        "negative-tolerance",
        "text-tolerance",
        "share-above-one",
        "bool-share",
        "zero-history",
    ],
)
def test_bad_config_names_the_key(settings, named):
    with pytest.raises(QualityConfigError) as caught:
        QualityConfig.from_mapping(settings)

    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


def test_config_from_json_rejects_invalid_json_and_keeps_defaults():
    with pytest.raises(QualityConfigError, match="not valid JSON"):
        QualityConfig.from_json("{severities:")

    config = QualityConfig.from_json('{"volume_tolerance": 0.3}')
    assert config.volume_tolerance == 0.3
    assert config.severity("raw_volume") == "warning"
    assert config.severity("raw_schema") == "error"


# --- report outputs -------------------------------------------------------------------------


def test_gate_error_lists_each_failed_error_check_with_its_fix():
    raw = raw_table([event(NetworkMessageId=""), event(NetworkMessageId="b", SenderIPv4="1.2.3")])
    report = validate_raw(raw, WINDOW).report

    with pytest.raises(QualityGateError) as caught:
        report.raise_for_errors()

    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("raw_message_id failed")
    assert lines[1].startswith("raw_sender_ipv4 failed")
    assert all("fix:" in line for line in lines)
    assert caught.value.report is report


def test_json_report_parses_and_carries_the_gx_result():
    raw = raw_table(
        [event(NetworkMessageId="a"), event(NetworkMessageId="b", TimeGenerated=WINDOW.end)]
    )
    report = validate_raw(raw, WINDOW, trailing_rows=history(2)).report

    document = json.loads(report.to_json())

    assert document["stage"] == "raw" and document["ok"] is False
    assert document["errors"] == ["raw_time_window"]
    assert {c["name"] for c in document["checks"]} >= {"raw_schema", "raw_volume"}
    gx_types = {r["expectation_config"]["type"] for r in document["great_expectations"]["results"]}
    assert "expect_column_values_to_be_between" in gx_types
    between = next(
        r
        for r in document["great_expectations"]["results"]
        if r["expectation_config"]["type"] == "expect_column_values_to_be_between"
    )
    assert between["success"] is False and between["result"]["unexpected_count"] == 1


def test_html_report_names_the_failed_checks():
    raw = raw_table([event(NetworkMessageId="a", SenderIPv4="1.2.3", ThreatTypes="Spammy")])
    page = validate_raw(raw, WINDOW).report.to_html().decode()

    assert page.startswith("<!DOCTYPE html>")
    assert "raw_sender_ipv4" in page and "raw_spam_term" in page
    assert "FAILED" in page
    assert "Spammy" in page


# --- daily aggregate ------------------------------------------------------------------------


def aggregate_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "SenderIPv6": "",
        "SenderIPv4": "81.2.69.160",
        "Latitude": 51.5142,
        "Longitude": -0.0931,
        "count_": 5,
        "Date": DAY,
        "DistinctMessages": 2,
        "DistinctMessageRecipients": 4,
        "IPVersion": 4,
        "AddressClass": "global",
        "CountryIsoCode": "GB",
        "Country": "United Kingdom",
        "Subdivision": "England",
        "City": "London",
        "AccuracyRadiusKm": 100,
        "ASN": None,
        "ASOrganization": "",
    }
    row.update(overrides)
    return row


DAILY_SCHEMA = pa.schema(
    [
        ("SenderIPv6", pa.string()),
        ("SenderIPv4", pa.string()),
        ("Latitude", pa.float64()),
        ("Longitude", pa.float64()),
        ("count_", pa.int64()),
        ("Date", pa.date32()),
        ("DistinctMessages", pa.int64()),
        ("DistinctMessageRecipients", pa.int64()),
        ("IPVersion", pa.int8()),
        ("AddressClass", pa.string()),
        ("CountryIsoCode", pa.string()),
        ("Country", pa.string()),
        ("Subdivision", pa.string()),
        ("City", pa.string()),
        ("AccuracyRadiusKm", pa.int32()),
        ("ASN", pa.int64()),
        ("ASOrganization", pa.string()),
    ]
)


def daily_table(rows: list[dict[str, Any]]) -> pa.Table:
    assert DAILY_SCHEMA.names == DAILY_COLUMNS
    return pa.Table.from_pylist(rows, schema=DAILY_SCHEMA)


GOOD_DAILY = [
    aggregate_row(),
    aggregate_row(
        SenderIPv4="",
        SenderIPv6="2001:480:10::1",
        count_=3,
        DistinctMessages=1,
        DistinctMessageRecipients=3,
    ),
    aggregate_row(
        SenderIPv4="10.0.0.1",
        Latitude=None,
        Longitude=None,
        count_=1,
        DistinctMessages=1,
        DistinctMessageRecipients=1,
    ),
]


def test_good_aggregate_with_null_coordinates_passes():
    report = validate_aggregate(daily_table(GOOD_DAILY), expected_total=5 + 3 + 1)

    assert report.ok, [c for c in report.checks if not c.success]
    assert report.stage == "aggregate"
    assert all(c.success for c in report.checks)
    assert check(report, "aggregate_count_total").observed == 9


def failing_aggregate(rows, expected_total, name):
    report = validate_aggregate(daily_table(rows), expected_total=expected_total)
    result = check(report, name)
    assert not result.success and result.severity == "error"
    assert not report.ok
    assert [c.name for c in report.errors] == [name]
    return result


def test_duplicate_address_day_fails():
    rows = [*GOOD_DAILY, aggregate_row(count_=1, DistinctMessages=1, DistinctMessageRecipients=1)]
    failing_aggregate(rows, 10, "aggregate_unique_address_day")


@pytest.mark.parametrize("count", [0, -2], ids=["zero", "negative"])
def test_count_must_be_positive(count):
    rows = [
        *GOOD_DAILY,
        aggregate_row(
            SenderIPv4="1.1.1.1",
            count_=count,
            DistinctMessages=count,
            DistinctMessageRecipients=count,
        ),
    ]
    result = failing_aggregate(rows, 9 + count, "aggregate_count_positive")
    assert result.observed["unexpected_count"] == 1


def test_count_total_mismatch_fails():
    result = failing_aggregate(GOOD_DAILY, 10, "aggregate_count_total")
    assert result.observed == 9 and result.expected == 10


def test_distinct_counts_must_not_exceed_rows():
    rows = [aggregate_row(count_=3, DistinctMessages=2, DistinctMessageRecipients=4)]
    failing_aggregate(rows, 3, "aggregate_distinct_order")
    rows = [aggregate_row(count_=5, DistinctMessages=3, DistinctMessageRecipients=2)]
    failing_aggregate(rows, 5, "aggregate_distinct_order")


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"Latitude": 91.0}, "aggregate_latitude"),
        ({"Latitude": -90.5}, "aggregate_latitude"),
        ({"Longitude": -181.0}, "aggregate_longitude"),
        ({"Longitude": 180.01}, "aggregate_longitude"),
    ],
)
def test_coordinates_out_of_range_fail(overrides, name):
    rows = [
        *GOOD_DAILY,
        aggregate_row(
            SenderIPv4="1.1.1.1",
            count_=1,
            DistinctMessages=1,
            DistinctMessageRecipients=1,
            **overrides,
        ),
    ]
    failing_aggregate(rows, 10, name)


@pytest.mark.parametrize(
    ("v4", "v6"), [("81.2.69.160", "2001:480:10::1"), ("", "")], ids=["both", "neither"]
)
def test_each_aggregate_row_has_exactly_one_address(v4, v6):
    rows = [aggregate_row(SenderIPv4=v4, SenderIPv6=v6)]
    failing_aggregate(rows, 5, "aggregate_one_address")


def test_aggregate_schema_problem_is_reported_not_raised():
    daily = daily_table(GOOD_DAILY).drop_columns(["Latitude"])

    report = validate_aggregate(daily, expected_total=9)

    schema = check(report, "aggregate_schema")
    assert not schema.success and "Latitude is missing" in schema.detail
    assert check(report, "aggregate_latitude").skipped
    assert check(report, "aggregate_count_total").success


def test_aggregate_error_downgraded_to_warning_publishes():
    config = QualityConfig.from_mapping({"severities": {"aggregate_count_total": "warning"}})

    report = validate_aggregate(daily_table(GOOD_DAILY), expected_total=8, config=config)

    assert report.ok
    assert [c.name for c in report.warnings] == ["aggregate_count_total"]
