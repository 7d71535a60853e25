"""The synthetic EmailEvents generator: shape, statistics and file round trips."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from spamgeo.local.synthetic import (
    EventsFileError,
    generate_email_events,
    load_events,
    write_events,
)
from spamgeo.window import Window

WINDOW = Window.for_days(date(2026, 12, 1))
UTC_MICROS = pa.timestamp("us", tz="UTC")
STRING_COLUMNS = [
    "NetworkMessageId",
    "InternetMessageId",
    "RecipientEmailAddress",
    "SenderFromAddress",
    "SenderFromDomain",
    "SenderIPv4",
    "SenderIPv6",
    "ThreatTypes",
    "DetectionMethods",
    "DeliveryAction",
    "DeliveryLocation",
    "EmailDirection",
    "OrgLevelPolicy",
    "TenantId",
    "Type",
]
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SPAM_TERM = re.compile(r"(?i)(?<![a-z0-9])spam(?![a-z0-9])")


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return generate_email_events(40_000, WINDOW, seed=11, senders=2_000)


@pytest.fixture(scope="module")
def frame(events: pa.Table):
    return events.to_pandas()


def test_same_seed_gives_the_same_table_and_another_seed_does_not() -> None:
    first = generate_email_events(3_000, WINDOW, seed=5)
    again = generate_email_events(3_000, WINDOW, seed=5)
    other = generate_email_events(3_000, WINDOW, seed=6)

    assert first.equals(again)
    assert not first.equals(other)


def test_columns_have_log_analytics_types(events: pa.Table) -> None:
    assert events.schema.field("TimeGenerated").type == UTC_MICROS
    assert events.schema.field("Timestamp").type == UTC_MICROS
    for name in STRING_COLUMNS:
        assert events.schema.field(name).type == pa.string(), name
        assert events[name].null_count == 0, name
    assert set(events.column_names) == {"TimeGenerated", "Timestamp", *STRING_COLUMNS}


@pytest.mark.parametrize("rows", [0, 1, 7, 1_234])
def test_row_count_is_exact(rows: int) -> None:
    assert generate_email_events(rows, WINDOW).num_rows == rows


def test_times_fall_inside_the_half_open_window_and_events_precede_ingestion(frame) -> None:
    generated = frame["TimeGenerated"]
    assert generated.min() >= WINDOW.start
    assert generated.max() < WINDOW.end
    lag = generated - frame["Timestamp"]
    assert lag.min() >= timedelta(seconds=1)
    assert lag.max() <= timedelta(hours=1)


def test_a_short_window_is_respected() -> None:
    start = datetime(2026, 12, 1, 10, 15, tzinfo=UTC)
    hour = Window(start, start + timedelta(hours=1))
    generated = generate_email_events(2_000, hour)["TimeGenerated"].to_pylist()
    assert all(hour.contains(moment) for moment in generated)


def test_about_a_fifth_of_messages_come_over_ipv6(frame) -> None:
    messages = frame.drop_duplicates("NetworkMessageId")
    has_v4 = messages["SenderIPv4"] != ""
    has_v6 = messages["SenderIPv6"] != ""

    assert not (has_v4 & has_v6).any()
    assert has_v6.mean() == pytest.approx(0.2, abs=0.03)
    neither = (~has_v4 & ~has_v6).mean()
    assert 0 < neither < 0.01


def test_messages_have_several_recipients_sharing_sender_and_times(frame) -> None:
    per_message = frame.groupby("NetworkMessageId")
    recipients = per_message.size()

    assert recipients.min() >= 1
    assert (recipients >= 3).any()
    assert 1.2 < recipients.mean() < 3
    shared = ["SenderIPv4", "SenderIPv6", "TimeGenerated", "Timestamp", "SenderFromAddress"]
    assert (per_message[shared].nunique() == 1).all().all()
    assert (per_message["RecipientEmailAddress"].nunique() == recipients).all()
    assert all(GUID.match(m) for m in recipients.index)


def test_senders_are_heavy_tailed_over_the_requested_distinct_count(frame) -> None:
    address = frame["SenderIPv4"].where(frame["SenderIPv4"] != "", frame["SenderIPv6"])
    rows_per_sender = address[address != ""].value_counts()

    # Nearly every sender shows up; a few lose their only message to the no-address share.
    assert 0.97 * 2_000 <= len(rows_per_sender) <= 2_000
    top_one_percent = rows_per_sender.iloc[: len(rows_per_sender) // 100].sum()
    assert top_one_percent / rows_per_sender.sum() > 0.3


def test_addresses_are_canonical_and_mostly_public(frame) -> None:
    ipv4 = set(frame["SenderIPv4"]) - {""}
    ipv6 = set(frame["SenderIPv6"]) - {""}
    parsed = {text: ipaddress.ip_address(text) for text in ipv4 | ipv6}

    assert all(str(address) == text for text, address in parsed.items())
    assert {parsed[text].version for text in ipv4} == {4}
    assert {parsed[text].version for text in ipv6} == {6}
    not_public = [a for a in parsed.values() if not a.is_global]
    assert len(not_public) < 0.02 * len(parsed)
    assert all(a in ipaddress.ip_network("10.0.0.0/8") for a in not_public)


def test_spam_share_and_threat_values(frame) -> None:
    messages = frame.drop_duplicates("NetworkMessageId")
    spam = messages["ThreatTypes"].map(lambda text: bool(SPAM_TERM.search(text)))

    assert spam.mean() == pytest.approx(0.6, abs=0.03)
    terms = {t for value in frame["ThreatTypes"] for t in value.split(", ") if t}
    assert terms <= {"Spam", "Phish", "Malware"}
    assert set(frame["DeliveryAction"]) <= {"Delivered", "Junked", "Blocked", "Replaced"}
    assert frame["EmailDirection"].value_counts().idxmax() == "Inbound"
    assert set(frame["Type"]) == {"EmailEvents"}
    assert frame["TenantId"].nunique() == 1


def test_spam_share_and_ipv6_share_follow_their_arguments() -> None:
    table = generate_email_events(20_000, WINDOW, ipv6_share=0.0, spam_share=1.0).to_pandas()
    assert (table["SenderIPv6"] == "").all()
    assert table["ThreatTypes"].map(lambda text: bool(SPAM_TERM.search(text))).all()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_write_then_load_gives_back_the_same_table(tmp_path, suffix: str) -> None:
    table = generate_email_events(2_500, WINDOW, seed=3)
    path = write_events(table, tmp_path / f"events{suffix}")

    assert load_events(path).equals(table)


def test_load_fills_missing_strings_and_parses_utc_times(tmp_path) -> None:
    path = tmp_path / "exported.csv"
    path.write_text(
        "TimeGenerated,SenderIPv4,SenderIPv6,ThreatTypes\n"
        "2026-12-01T10:00:00Z,198.51.100.7,,Spam\n"
        "2026-12-01T10:00:01.250Z,,2001:db8::1,\n"
    )
    table = load_events(path)

    assert table.schema.field("TimeGenerated").type == UTC_MICROS
    assert table["TimeGenerated"].to_pylist() == [
        datetime(2026, 12, 1, 10, tzinfo=UTC),
        datetime(2026, 12, 1, 10, 0, 1, 250_000, tzinfo=UTC),
    ]
    assert table["SenderIPv6"].to_pylist() == ["", "2001:db8::1"]
    assert table["ThreatTypes"].to_pylist() == ["Spam", ""]


def test_load_of_json_lines_with_missing_keys_gives_empty_strings(tmp_path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"TimeGenerated": "2026-12-01T10:00:00Z", "SenderIPv4": "192.0.2.1"}\n'
        '{"TimeGenerated": "2026-12-01T11:00:00Z", "SenderIPv4": null}\n'
    )
    table = load_events(path)

    assert table["SenderIPv4"].to_pylist() == ["192.0.2.1", ""]
    assert table.schema.field("TimeGenerated").type == UTC_MICROS


def test_unknown_suffix_is_refused_with_the_file_name(tmp_path) -> None:
    path = tmp_path / "events.txt"
    path.write_text("TimeGenerated\n")
    with pytest.raises(EventsFileError, match=r"events\.txt.*\.csv.*\.parquet"):
        load_events(path)
    with pytest.raises(EventsFileError, match=r"events\.txt"):
        write_events(generate_email_events(3, WINDOW), path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("no_time.csv", "SenderIPv4,ThreatTypes\n192.0.2.1,Spam\n"),
        ("no_time.jsonl", '{"SenderIPv4": "192.0.2.1"}\n'),
    ],
)
def test_a_file_without_time_generated_gets_one_clear_error(tmp_path, name, content) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(EventsFileError, match=rf"{re.escape(name)}.*TimeGenerated"):
        load_events(path)


def test_a_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(EventsFileError, match=r"absent\.parquet.*not found"):
        load_events(tmp_path / "absent.parquet")


def test_unparseable_times_name_the_file(tmp_path) -> None:
    path = tmp_path / "bad_time.csv"
    path.write_text("TimeGenerated,SenderIPv4\nyesterday,192.0.2.1\n")
    with pytest.raises(EventsFileError, match=r"bad_time\.csv"):
        load_events(path)
