"""Per-IP spam counts: address normalisation, hand-computed counts and the seed query itself."""

from __future__ import annotations

import ipaddress
import random
import uuid
from datetime import UTC, date, datetime, timedelta

import duckdb_kql
import pyarrow as pa
import pytest

from spamgeo import aggregate
from spamgeo.aggregate import COUNT_COLUMNS, count_spam, normalise_address, spam_counts_by_ip
from spamgeo.schema import RAW_COLUMNS

# The seed hunting query (version 1.0.0) without its geolocation function, which duckdb-kql
# does not have.
SEED_QUERY = """
let ipv4position = EmailEvents
| where ThreatTypes has "Spam"
| where TimeGenerated > ago(90d)
| where SenderIPv4 != ""
| summarize count() by SenderIPv4
| project SenderIPv4, count_;
let ipv6position = EmailEvents
| where ThreatTypes has "Spam"
| where TimeGenerated > ago(90d)
| where SenderIPv6 != ""
| summarize count() by SenderIPv6
| project SenderIPv6, count_;
ipv4position
| union ipv6position
| project SenderIPv6, SenderIPv4, count_
"""


def raw_table(rows: list[tuple[datetime, str, str, str, str, str]]) -> pa.Table:
    """An extract from (TimeGenerated, NetworkMessageId, Recipient, IPv4, IPv6, ThreatTypes)."""
    columns = list(zip(*rows, strict=True))
    stamps = pa.array(columns[0], pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "TimeGenerated": stamps,
            "Timestamp": stamps,
            "NetworkMessageId": pa.array(columns[1], pa.string()),
            "RecipientEmailAddress": pa.array(columns[2], pa.string()),
            "SenderIPv4": pa.array(columns[3], pa.string()),
            "SenderIPv6": pa.array(columns[4], pa.string()),
            "ThreatTypes": pa.array(columns[5], pa.string()),
        }
    )
    assert table.column_names == list(RAW_COLUMNS)
    return table


# --- normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("81.2.69.160", "81.2.69.160"),
        ("  81.2.69.160\t", "81.2.69.160"),
        ("2001:DB8::ABCD", "2001:db8::abcd"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
        ("::ffff:81.2.69.160", "81.2.69.160"),
        ("::FFFF:5102:45a0", "81.2.69.160"),
        ("::1", "::1"),
        ("::", "::"),
        ("::81.2.69.160", "::5102:45a0"),
        ("", None),
        ("   ", None),
        ("not an address", None),
        ("256.1.1.1", None),
        ("01.2.3.4", None),
        ("1.2.3", None),
        ("2001:db8::1::2", None),
        ("fe80::1%eth0", None),
        ("1.2.3.4\x00", None),
    ],
    ids=repr,
)
def test_normalise_address_known_answers(text: str, expected: str | None) -> None:
    assert normalise_address(text) == expected


def test_normalise_address_agrees_with_ipaddress_on_random_addresses() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        # Runs of zero groups exercise the choice of which run `::` replaces.
        groups = [rng.choice([0, 0, 0, rng.getrandbits(16)]) for _ in range(8)]
        text = ":".join(f"{group:X}" for group in groups)
        reference = ipaddress.IPv6Address(text)
        expected = str(reference.ipv4_mapped or reference.compressed)
        assert normalise_address(text) == expected, text
        v4 = str(ipaddress.IPv4Address(rng.getrandbits(32)))
        assert normalise_address(v4) == v4


# --- counting ---------------------------------------------------------------------------------

DAY_1 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
DAY_2 = datetime(2026, 3, 2, 23, 59, 59, tzinfo=UTC)


def sample_rows(day_1: datetime, day_2: datetime) -> list[tuple[datetime, str, str, str, str, str]]:
    """A small spam extract whose counts are worked out by hand in the tests below."""
    return [
        # 81.2.69.160 on day 1: message m1 to 3 recipients, a's event repeated (a later move).
        (day_1, "m1", "a@x", "81.2.69.160", "", "Spam"),
        (day_1 + timedelta(hours=1), "m1", "a@x", "81.2.69.160", "", "Spam"),
        (day_1, "m1", "b@x", "81.2.69.160", "", "Spam"),
        (day_1, "m1", "c@x", "81.2.69.160", "", "Phish, Spam"),
        # ... and message m2 to 1 recipient.
        (day_1, "m2", "a@x", "81.2.69.160", "", "Spam"),
        # 216.160.83.56 on day 1, with both addresses on the row: counts in both branches.
        (day_1, "m3", "a@x", "216.160.83.56", "2001:480:10::1", "Spam"),
        # 2001:480:10::1 on day 1 alone, twice the same pair.
        (day_1, "m4", "d@x", "", "2001:480:10::1", "Spam"),
        (day_1 + timedelta(minutes=5), "m4", "d@x", "", "2001:480:10::1", "Spam"),
        # 81.2.69.160 again on day 2 (a late second of the day).
        (day_2, "m5", "a@x", "81.2.69.160", "", "Spam"),
        (day_2, "m5", "b@x", "81.2.69.160", "", "Spam"),
    ]


def test_counts_match_hand_computed_values() -> None:
    counts = spam_counts_by_ip(raw_table(sample_rows(DAY_1, DAY_2)))

    assert counts.column_names == COUNT_COLUMNS
    rows = {
        (r["Date"], r["SenderIPv4"], r["SenderIPv6"]): (
            r["count_"],
            r["DistinctMessages"],
            r["DistinctMessageRecipients"],
            r["IPVersion"],
        )
        for r in counts.to_pylist()
    }
    assert rows == {
        (date(2026, 3, 1), "81.2.69.160", ""): (5, 2, 4, 4),
        (date(2026, 3, 1), "216.160.83.56", ""): (1, 1, 1, 4),
        (date(2026, 3, 1), "", "2001:480:10::1"): (3, 2, 2, 6),
        (date(2026, 3, 2), "81.2.69.160", ""): (2, 1, 2, 4),
    }
    # Sorted by Date, then count_ descending.
    assert [(r["Date"], r["count_"]) for r in counts.to_pylist()] == [
        (date(2026, 3, 1), 5),
        (date(2026, 3, 1), 3),
        (date(2026, 3, 1), 1),
        (date(2026, 3, 2), 2),
    ]
    assert counts.schema.field("Date").type == pa.date32()
    assert counts.schema.field("count_").type == pa.int64()


def test_counts_equal_the_seed_query_run_by_duckdb_kql() -> None:
    # Recent timestamps, since the seed query keeps the last 90 days only.
    yesterday = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    rows = sample_rows(yesterday - timedelta(days=1), yesterday)
    rows += [
        # Non-spam rows, which the pipeline's query filters out before counting.
        (yesterday, "m9", "a@x", "81.2.69.160", "", "Phish"),
        (yesterday, "m9", "b@x", "81.2.69.160", "", "Spammy"),
    ]
    table = raw_table(rows)
    spam_only = table.filter(pa.array([r[5] in ("Spam", "Phish, Spam") for r in rows]))

    con = duckdb_kql.connect()
    con.register("email_events_arrow", table)
    con.sql("CREATE TABLE EmailEvents AS SELECT * FROM email_events_arrow")
    seed = {
        (v6 or "", v4 or "", count)
        for v6, v4, count in duckdb_kql.query(con, SEED_QUERY).fetchall()
    }

    totals: dict[tuple[str, str], int] = {}
    for r in spam_counts_by_ip(spam_only).to_pylist():
        key = (r["SenderIPv6"], r["SenderIPv4"])
        totals[key] = totals.get(key, 0) + r["count_"]
    ours = {(v6, v4, count) for (v6, v4), count in totals.items()}

    assert seed == {("", "81.2.69.160", 7), ("", "216.160.83.56", 1), ("2001:480:10::1", "", 3)}
    assert ours == seed


def test_mapped_and_differently_written_addresses_count_as_one_sender() -> None:
    rows = [
        (DAY_1, "m1", "a@x", "81.2.69.160", "", "Spam"),
        (DAY_1, "m2", "a@x", "", "::ffff:81.2.69.160", "Spam"),
        (DAY_1, "m3", "a@x", "", "2001:0480:0010:0000:0000:0000:0000:0001", "Spam"),
        (DAY_1, "m4", "a@x", "", "2001:480:10::1", "Spam"),
        (DAY_1, "m5", "a@x", " 81.2.69.160 ", "", "Spam"),
    ]
    counts = spam_counts_by_ip(raw_table(rows)).to_pylist()

    assert [(r["SenderIPv6"], r["SenderIPv4"], r["count_"], r["IPVersion"]) for r in counts] == [
        ("", "81.2.69.160", 3, 4),
        ("2001:480:10::1", "", 2, 6),
    ]


def test_invalid_addresses_are_left_out_and_reported() -> None:
    rows = [
        (DAY_1, "m1", "a@x", "81.2.69.160", "", "Spam"),
        (DAY_1, "m2", "a@x", "999.1.1.1", "", "Spam"),
        (DAY_1, "m3", "a@x", "81.2.69.160", "not-ipv6", "Spam"),
        (DAY_1, "m4", "a@x", "", "", "Spam"),
    ]
    result = count_spam(raw_table(rows))

    assert [(r["SenderIPv4"], r["count_"]) for r in result.by_ip.to_pylist()] == [
        ("81.2.69.160", 2)
    ]
    assert result.rejected_sightings == 2
    assert result.rejected.column("NetworkMessageId").to_pylist() == ["m2", "m3"]


def test_empty_extract_gives_empty_counts() -> None:
    empty = raw_table([(DAY_1, "m", "a", "81.2.69.160", "", "Spam")]).slice(0, 0)
    counts = spam_counts_by_ip(empty)
    assert counts.num_rows == 0
    assert counts.column_names == COUNT_COLUMNS


def test_reruns_are_identical() -> None:
    rng = random.Random(3)
    addresses = ["81.2.69.160", "216.160.83.56", "2001:480:10::1", "89.160.20.112"]
    rows = []
    for n in range(2000):
        sender = rng.choice(addresses)
        v4, v6 = ("", sender) if ":" in sender else (sender, "")
        stamp = DAY_1 + timedelta(minutes=rng.randrange(3000))
        rows.append((stamp, f"m{rng.randrange(300)}", f"r{n % 17}@x", v4, v6, "Spam"))
    table = raw_table(rows)
    first = spam_counts_by_ip(table)
    shuffled = table.take(pa.array(rng.sample(range(table.num_rows), table.num_rows)))
    assert spam_counts_by_ip(shuffled).equals(first)
    assert sum(first.column("count_").to_pylist()) == table.num_rows


# --- counting paths ------------------------------------------------------------------------------


def random_rows(seed: int, n: int) -> list[tuple[datetime, str, str, str, str, str]]:
    """Rows with repeated messages, recipients, both address columns and unparsable addresses."""
    rng = random.Random(seed)
    v4s = ["81.2.69.160", "216.160.83.56", " 89.160.20.112", "89.160.20.112", "1.2.3", ""]
    v6s = ["2001:480:10::1", "2001:0480:0010::1", "::ffff:81.2.69.160", "zz::1", "", "", ""]
    rows = []
    for _ in range(n):
        stamp = DAY_1 + timedelta(minutes=rng.randrange(4000))
        message = f"m{rng.randrange(40)}"
        recipient = f"r{rng.randrange(9)}@x"
        rows.append((stamp, message, recipient, rng.choice(v4s), rng.choice(v6s), "Spam"))
    return rows


def test_counts_without_packed_keys_equal_counts_with_them(monkeypatch) -> None:
    # Past the int64 key range the ids are sorted column by column instead of as one key.
    table = raw_table(random_rows(11, 3000))
    packed = count_spam(table)
    monkeypatch.setattr(aggregate, "_KEY_LIMIT", 0)
    unpacked = count_spam(table)

    assert unpacked.by_ip.equals(packed.by_ip)
    assert unpacked.rejected_sightings == packed.rejected_sightings
    assert spam_counts_by_ip(raw_table(sample_rows(DAY_1, DAY_2))).to_pylist() == [
        {
            "SenderIPv6": "",
            "SenderIPv4": "81.2.69.160",
            "count_": 5,
            "Date": date(2026, 3, 1),
            "DistinctMessages": 2,
            "DistinctMessageRecipients": 4,
            "IPVersion": 4,
        },
        {
            "SenderIPv6": "2001:480:10::1",
            "SenderIPv4": "",
            "count_": 3,
            "Date": date(2026, 3, 1),
            "DistinctMessages": 2,
            "DistinctMessageRecipients": 2,
            "IPVersion": 6,
        },
        {
            "SenderIPv6": "",
            "SenderIPv4": "216.160.83.56",
            "count_": 1,
            "Date": date(2026, 3, 1),
            "DistinctMessages": 1,
            "DistinctMessageRecipients": 1,
            "IPVersion": 4,
        },
        {
            "SenderIPv6": "",
            "SenderIPv4": "81.2.69.160",
            "count_": 2,
            "Date": date(2026, 3, 2),
            "DistinctMessages": 1,
            "DistinctMessageRecipients": 2,
            "IPVersion": 4,
        },
    ]


def test_counts_do_not_depend_on_how_the_extract_is_chunked() -> None:
    table = raw_table(random_rows(5, 2000))
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=170))
    assert chunked.column("NetworkMessageId").num_chunks > 1

    assert spam_counts_by_ip(chunked).equals(spam_counts_by_ip(table))
    no_chunks = pa.Table.from_batches([], table.schema)
    assert spam_counts_by_ip(no_chunks).num_rows == 0


def guid_rows(seed: int, n: int) -> list[tuple[datetime, str, str, str, str, str]]:
    """random_rows with message ids written as GUIDs, the shape the service sends."""
    rng = random.Random(seed)
    guids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(60)]
    return [
        (stamp, guids[int(message[1:])], recipient, v4, v6, threat)
        for stamp, message, recipient, v4, v6, threat in random_rows(seed, n)
    ]


def test_guid_message_ids_are_folded_and_count_like_the_texts(monkeypatch) -> None:
    table = pa.Table.from_batches(raw_table(guid_rows(8, 3000)).to_batches(max_chunksize=700))
    messages = table.column("NetworkMessageId")
    assert isinstance(aggregate._message_ids(messages), aggregate._FoldedIds)
    folded = count_spam(table)

    monkeypatch.setattr(aggregate._FixedWidthTexts, "of", classmethod(lambda cls, column: None))
    assert isinstance(aggregate._message_ids(messages), aggregate._DenseIds)
    hashed = count_spam(table)

    assert folded.by_ip.equals(hashed.by_ip)
    assert (
        folded.by_ip.column("DistinctMessages").to_pylist()
        != folded.by_ip.column("count_").to_pylist()
    )


def test_packed_and_full_fold_sorts_number_the_messages_alike(monkeypatch) -> None:
    table = raw_table(guid_rows(10, 3000))
    packed = aggregate._message_ids(table.column("NetworkMessageId"))
    packed_counts = count_spam(table)
    monkeypatch.setattr(aggregate, "_PACKED_ROW_BITS", 0)
    full = aggregate._message_ids(table.column("NetworkMessageId"))

    assert not packed.merged_two_texts()
    assert not full.merged_two_texts()
    assert full.count == packed.count == len(set(table.column("NetworkMessageId").to_pylist()))
    # Both number the ids in fold order; no two of these folds share their high bits.
    assert (full.ids == packed.ids).all()
    assert count_spam(table).by_ip.equals(packed_counts.by_ip)


def test_texts_that_fold_alike_are_caught_and_counted_on_the_texts(monkeypatch) -> None:
    table = raw_table(guid_rows(9, 2000))
    expected = count_spam(table)

    # With every factor zero all texts fold to 0: one id for 40 different messages.
    monkeypatch.setattr(aggregate, "_FOLD_FACTORS", [0] * len(aggregate._FOLD_FACTORS))
    merged = aggregate._message_ids(table.column("NetworkMessageId"))
    assert merged.count == 1
    assert merged.merged_two_texts()

    assert count_spam(table).by_ip.equals(expected.by_ip)


@pytest.mark.parametrize(
    ("texts", "ids_equal"),
    [
        # Nine bytes: the second word overlaps the first and holds the last byte.
        (["abcdefgh1", "abcdefgh2", "abcdefgh1"], [False, False, True]),
        (["12345678", "12345678", "12345679"], [True, False, False]),
        (["x" * 48, "x" * 47 + "y", "x" * 48], [False, False, True]),
    ],
)
def test_fixed_width_ids_differ_exactly_where_the_texts_do(
    texts: list[str], ids_equal: list[bool]
) -> None:
    column = pa.chunked_array([pa.array(texts[:1]), pa.array(texts[1:])])
    result = aggregate._message_ids(column)

    assert isinstance(result, aggregate._FoldedIds)
    assert not result.merged_two_texts()
    ids = result.ids.tolist()
    assert [ids[0] == ids[1], ids[1] == ids[2], ids[0] == ids[2]] == ids_equal
    assert result.count == len(set(texts))


@pytest.mark.parametrize(
    "texts",
    [["short", "short"], ["12345678", "123456789"], ["12345678", None], ["y" * 49, "y" * 49]],
)
def test_ids_that_cannot_be_folded_are_hashed(texts: list[str | None]) -> None:
    # Too short for a word, mixed lengths, nulls, longer than the fold factors cover.
    result = aggregate._message_ids(pa.chunked_array([pa.array(texts, pa.string())]))

    assert isinstance(result, aggregate._DenseIds)
    assert result.count == len(set(texts))


def test_null_ids_count_as_one_value_and_null_addresses_as_none() -> None:
    table = raw_table(
        [
            (DAY_1, "m1", "a@x", "81.2.69.160", "", "Spam"),
            (DAY_1, "m1", "b@x", "81.2.69.160", "", "Spam"),
            (DAY_1, "m2", "a@x", "81.2.69.160", "", "Spam"),
            (DAY_1, "m3", "a@x", "81.2.69.160", "", "Spam"),
            (DAY_1, "m4", "a@x", "81.2.69.160", "", "Spam"),
        ]
    )
    table = table.set_column(2, "NetworkMessageId", pa.array(["m1", "m1", None, None, "m4"]))
    table = table.set_column(3, "RecipientEmailAddress", pa.array(["a", None, "a", "a", None]))
    table = table.set_column(5, "SenderIPv6", pa.array([None, None, None, None, "::1"]))
    result = count_spam(table)

    columns = [
        "SenderIPv4",
        "SenderIPv6",
        "count_",
        "DistinctMessages",
        "DistinctMessageRecipients",
    ]
    assert [tuple(r[c] for c in columns) for r in result.by_ip.to_pylist()] == [
        ("81.2.69.160", "", 5, 3, 4),
        ("", "::1", 1, 1, 1),
    ]
    assert result.rejected_sightings == 0


# Spellings the canonical-shape shortcuts must judge as normalise_address does: canonical and
# not, valid and not.
IPV4_SPELLINGS = [
    "81.2.69.160",
    "0.0.0.0",
    "255.255.255.255",
    "01.2.3.4",
    "1.2.3.04",
    "256.1.1.1",
    " 1.2.3.4",
    "1.2.3.4\n",
    "1.2.3",
    "1.2.3.4.5",
    "1..2.3",
    "\u0661.2.3.4",
    "",
    "x",
]
IPV6_SPELLINGS = [
    "2001:db8:1:2:3:4:5:6",
    "2001:db8:0:2:3:0:5:6",
    "0:1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:0",
    "1:0:0:2:3:4:5:6",
    "1:2:3:4:5:6:0:0",
    "0:0:1:2:3:4:5:6",
    "2001:db8::1",
    "2001:db8::",
    "1:2:3:4:5:6::",
    "1:2:3:4:5:6:7::",
    "1::2:3:4:5:6:7",
    "1:2:3:4::5:6:7",
    "1:0::2",
    "1::0:2",
    "::1",
    "::",
    "::ffff:1.2.3.4",
    "::ffff:102:304",
    "0:0:0:0:0:ffff:102:304",
    "::102:304",
    "2001:DB8::1",
    "2001:0db8::1",
    "12345::1",
    "1:2:3:4:5:6:7:8:9",
    "g::1",
    " 2001:db8::1",
]


@pytest.mark.parametrize("text", IPV4_SPELLINGS + IPV6_SPELLINGS, ids=repr)
@pytest.mark.parametrize("ipv4_column", [False, True], ids=["any column", "IPv4 column"])
def test_canonical_shortcut_agrees_with_normalise_address(text: str, ipv4_column: bool) -> None:
    invalid: set[str] = set()
    canonical = aggregate._canonical_texts(pa.array([text]), invalid, ipv4_column=ipv4_column)

    assert canonical.to_pylist() == [normalise_address(text)]
    assert invalid == ({text} if text and normalise_address(text) is None else set())


def test_canonical_ipv6_shortcut_agrees_with_normalise_address_on_every_spelling() -> None:
    rng = random.Random(5952)
    texts: set[str] = set()
    for _ in range(2_000):
        hextets = [rng.choice([0, 0, 1, 0xFFFF, rng.randrange(16), rng.randrange(1 << 16)])]
        hextets += [rng.choice([0, 0, 0, 1, 0xFFFF, rng.randrange(1 << 16)]) for _ in range(7)]
        address = ipaddress.IPv6Address(b"".join(h.to_bytes(2, "big") for h in hextets))
        texts |= {address.compressed, address.exploded, address.compressed.upper()}
        # Every run of zero hextets, compressed or not, whatever its length.
        for start in range(8):
            for end in range(start + 1, 9):
                if not any(hextets[start:end]):
                    left = ":".join(f"{h:x}" for h in hextets[:start])
                    right = ":".join(f"{h:x}" for h in hextets[end:])
                    texts.add(f"{left}::{right}")
    ordered = sorted(texts)

    canonical = aggregate._canonical_texts(pa.array(ordered), set())

    assert canonical.to_pylist() == [normalise_address(text) for text in ordered]
