"""Spam counts per sender IP and UTC day, counted exactly like the seed hunting query.

Three numbers describe each address and day, and they differ on purpose:

- `count_` counts EmailEvents ROWS, as the seed query's `summarize count()` does. The table holds
  one row per recipient (after distribution-list expansion) per event, and a message can have
  several events (delivery, then a later move or zap), so `count_` = recipients x events.
- `DistinctMessageRecipients` counts distinct (NetworkMessageId, RecipientEmailAddress) pairs:
  the mailboxes reached, each counted once however many events it had. This is what a later
  revision of the hunting query counts after its de-duplication.
- `DistinctMessages` counts distinct NetworkMessageId: the messages sent, whatever their reach.

So DistinctMessages <= DistinctMessageRecipients <= count_ always holds.

Like the seed query, a row is counted in the IPv4 branch when SenderIPv4 is not empty and in the
IPv6 branch when SenderIPv6 is not empty, so a row carrying both addresses counts under each of
them and the total of `count_` equals the seed query's. Unlike the seed query, addresses are
normalised before grouping: IPv6 is written in canonical compressed lower case, and an
IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts under its IPv4 form, so one sender is never
split across two spellings. Rows whose address does not parse are left out and reported.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

COUNT_COLUMNS: list[str] = [
    "SenderIPv6",
    "SenderIPv4",
    "count_",
    "Date",
    "DistinctMessages",
    "DistinctMessageRecipients",
    "IPVersion",
]

COUNT_SCHEMA = pa.schema(
    [
        pa.field("SenderIPv6", pa.string(), nullable=False),
        pa.field("SenderIPv4", pa.string(), nullable=False),
        pa.field("count_", pa.int64(), nullable=False),
        pa.field("Date", pa.date32(), nullable=False),
        pa.field("DistinctMessages", pa.int64(), nullable=False),
        pa.field("DistinctMessageRecipients", pa.int64(), nullable=False),
        pa.field("IPVersion", pa.int64(), nullable=False),
    ]
)

_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_EXAMPLES_LOGGED = 5


def normalise_address(text: str) -> str | None:
    """The canonical text of an IP address, or None when `text` is not one.

    Surrounding whitespace is ignored, IPv6 comes out compressed in lower case (RFC 5952, as
    `ipaddress` writes it) and an IPv4-mapped IPv6 address becomes its IPv4 address. Zone
    indexes (`fe80::1%eth0`) are refused: a relaying server's address never carries one.
    """
    candidate = text.strip()
    # The C parser and printer are ten times faster than `ipaddress` and agree with it on every
    # form they accept; the embedded-IPv4 spellings below are the only ones they print apart.
    try:
        if ":" not in candidate:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, candidate))
        packed = socket.inet_pton(socket.AF_INET6, candidate)
    except (OSError, ValueError, UnicodeError):
        return None
    if packed.startswith(_MAPPED_PREFIX):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    canonical = socket.inet_ntop(socket.AF_INET6, packed)
    if "." in canonical:
        return ipaddress.IPv6Address(packed).compressed
    return canonical


def normalise_addresses(values: Iterable[str]) -> dict[str, str | None]:
    """Canonical text for each DISTINCT value given, None for the invalid ones."""
    return {value: normalise_address(value) for value in set(values)}


@dataclass(frozen=True)
class SpamCounts:
    """The per-address counts and the raw rows left out because an address did not parse."""

    by_ip: pa.Table
    rejected: pa.Table
    rejected_sightings: int


def count_spam(raw: pa.Table) -> SpamCounts:
    """Count spam rows per (UTC date, sender address), keeping rows with unparsable addresses aside.

    `raw` has the extract's columns (schema.RAW_COLUMNS) and holds spam rows only. See the module
    docstring for what each count means.
    """
    import duckdb

    started = time.perf_counter()
    addresses: dict[str, int] = {}
    invalid_texts: set[str] = set()
    v4_ids = _address_ids(raw.column("SenderIPv4"), addresses, invalid_texts)
    v6_ids = _address_ids(raw.column("SenderIPv6"), addresses, invalid_texts)

    # DuckDB groups on plain dates, so hand it the UTC wall-clock time without the zone.
    generated = raw.column("TimeGenerated")
    if pa.types.is_timestamp(generated.type) and generated.type.tz is not None:
        generated = generated.cast(pa.timestamp(generated.type.unit))
    events = pa.table(
        {
            "Date": generated.cast(pa.date32()),
            "NetworkMessageId": raw.column("NetworkMessageId"),
            "RecipientEmailAddress": raw.column("RecipientEmailAddress"),
            "v4_address_id": v4_ids,
            "v6_address_id": v6_ids,
        }
    )
    con = duckdb.connect()
    try:
        con.register("events", events)
        grouped = con.sql(_COUNT_SQL).to_arrow_table()
    finally:
        con.close()

    by_ip = _with_address_columns(grouped, list(addresses))
    rejected, rejected_sightings = _rejected_rows(raw, invalid_texts)
    if rejected_sightings:
        log.warning(
            "Left out %d address sightings in %d rows: address does not parse, e.g. %r",
            rejected_sightings,
            rejected.num_rows,
            sorted(invalid_texts)[:_EXAMPLES_LOGGED],
        )
    log.info(
        "Counted %d spam rows into %d address-days (%d distinct addresses) in %.3f s",
        raw.num_rows,
        by_ip.num_rows,
        len(addresses),
        time.perf_counter() - started,
    )
    return SpamCounts(by_ip=by_ip, rejected=rejected, rejected_sightings=rejected_sightings)


def spam_counts_by_ip(raw: pa.Table) -> pa.Table:
    """One row per (Date, sender address) with count_, distinct counts and IPVersion.

    Sorted by Date, then count_ descending, then address, so re-runs are byte-identical.
    """
    return count_spam(raw).by_ip


# Each `sightings` branch mirrors one `let` of the seed query. Grouping first per recipient and
# then per message yields the row count and both distinct counts without COUNT(DISTINCT), which
# DuckDB computes much more slowly over long string keys.
_COUNT_SQL = """
WITH sightings AS (
    SELECT Date, v4_address_id AS address_id, NetworkMessageId, RecipientEmailAddress
    FROM events WHERE v4_address_id IS NOT NULL
    UNION ALL
    SELECT Date, v6_address_id AS address_id, NetworkMessageId, RecipientEmailAddress
    FROM events WHERE v6_address_id IS NOT NULL
),
per_recipient AS (
    SELECT Date, address_id, NetworkMessageId, count(*) AS event_rows
    FROM sightings
    GROUP BY Date, address_id, NetworkMessageId, RecipientEmailAddress
),
per_message AS (
    SELECT Date, address_id, sum(event_rows) AS event_rows, count(*) AS recipients
    FROM per_recipient
    GROUP BY Date, address_id, NetworkMessageId
)
SELECT
    Date,
    address_id,
    CAST(sum(event_rows) AS BIGINT) AS count_,
    CAST(count(*) AS BIGINT) AS DistinctMessages,
    CAST(sum(recipients) AS BIGINT) AS DistinctMessageRecipients
FROM per_message
GROUP BY Date, address_id
"""


def _address_ids(
    column: pa.ChunkedArray, addresses: dict[str, int], invalid_texts: set[str]
) -> pa.Array:
    """Per row, the id of the row's canonical address in `addresses`; null when empty or invalid.

    Only the column's distinct values are normalised; new addresses are added to `addresses`
    and unparsable texts to `invalid_texts`.
    """
    encoded = pc.dictionary_encode(column.combine_chunks())
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    ids_of_texts: list[int | None] = []
    for text in encoded.dictionary.to_pylist():
        if not text:
            ids_of_texts.append(None)
            continue
        address = normalise_address(text)
        if address is None:
            invalid_texts.add(text)
            ids_of_texts.append(None)
            continue
        ids_of_texts.append(addresses.setdefault(address, len(addresses)))
    return pc.take(pa.array(ids_of_texts, pa.int32()), encoded.indices)


def _with_address_columns(grouped: pa.Table, addresses: list[str]) -> pa.Table:
    """Turn address ids back into SenderIPv6/SenderIPv4/IPVersion and sort deterministically."""
    versions = pa.array([6 if ":" in address else 4 for address in addresses], pa.int64())
    texts = pa.array(addresses, pa.string())
    address_ids = grouped.column("address_id")
    address = pc.take(texts, address_ids)
    version = pc.take(versions, address_ids)
    is_v6 = pc.equal(version, 6)
    table = pa.table(
        {
            "SenderIPv6": pc.if_else(is_v6, address, ""),
            "SenderIPv4": pc.if_else(is_v6, "", address),
            "count_": grouped.column("count_"),
            "Date": grouped.column("Date"),
            "DistinctMessages": grouped.column("DistinctMessages"),
            "DistinctMessageRecipients": grouped.column("DistinctMessageRecipients"),
            "IPVersion": version,
            "_address": address,
        }
    )
    table = table.sort_by(
        [
            ("Date", "ascending"),
            ("count_", "descending"),
            ("IPVersion", "ascending"),
            ("_address", "ascending"),
        ]
    )
    return table.select(COUNT_COLUMNS).cast(COUNT_SCHEMA)


def _rejected_rows(raw: pa.Table, invalid_texts: set[str]) -> tuple[pa.Table, int]:
    """The raw rows with at least one unparsable address, and how many sightings were lost."""
    if not invalid_texts:
        return raw.slice(0, 0), 0
    value_set = pa.array(sorted(invalid_texts), pa.string())
    bad_v4 = pc.is_in(raw.column("SenderIPv4"), value_set=value_set)
    bad_v6 = pc.is_in(raw.column("SenderIPv6"), value_set=value_set)
    sightings = (pc.sum(bad_v4).as_py() or 0) + (pc.sum(bad_v6).as_py() or 0)
    return raw.filter(pc.or_(bad_v4, bad_v6)), sightings
