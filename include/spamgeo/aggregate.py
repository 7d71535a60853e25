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

import concurrent.futures
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import numpy as np

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
    started = time.perf_counter()
    invalid_texts: set[str] = set()
    # Arrow's and numpy's kernels run without the GIL, so a second thread takes the encoding of
    # the message ids, by far the costliest (one hash entry per message), while this one does
    # everything else that does not need them: the two sides then take about as long.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending_messages = pool.submit(_dense_ids, raw.column("NetworkMessageId"))
        recipients = _dense_ids(raw.column("RecipientEmailAddress"))
        dates = _dense_ids(_utc_dates(raw.column("TimeGenerated")))
        addresses = _address_ids(raw.column("SenderIPv4"), raw.column("SenderIPv6"), invalid_texts)
        order = _address_order(addresses.values)
        counts = _count_sightings(dates, addresses, pending_messages.result(), recipients)
    by_ip = _with_address_columns(counts, dates.values, addresses.values, order)

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
        len(addresses.values),
        time.perf_counter() - started,
    )
    return SpamCounts(by_ip=by_ip, rejected=rejected, rejected_sightings=rejected_sightings)


def spam_counts_by_ip(raw: pa.Table) -> pa.Table:
    """One row per (Date, sender address) with count_, distinct counts and IPVersion.

    Sorted by Date, then count_ descending, then address, so re-runs are byte-identical.
    """
    return count_spam(raw).by_ip


class _DenseIds(NamedTuple):
    """Per row, the index of the row's value in `values`, which holds each value once."""

    ids: np.ndarray
    values: pa.Array


def _dense_ids(column: pa.ChunkedArray) -> _DenseIds:
    """Integer ids for a column's values; null is a value of its own, as in a GROUP BY."""
    import numpy as np

    # Encoding the chunks as they are avoids copying the strings; the encoded chunks all share
    # the final dictionary, so their indices are ids into it. The system allocator because the
    # default one (mimalloc) hands out fresh large segments whose first touch costs more in
    # kernel time than the hashing itself on the benchmark's virtual machines.
    encoded = pc.dictionary_encode(
        column, null_encoding="encode", memory_pool=pa.system_memory_pool()
    )
    if not encoded.num_chunks:
        return _DenseIds(np.empty(0, np.int32), pa.array([], column.type))
    indices = [chunk.indices.to_numpy() for chunk in encoded.chunks]
    ids = np.concatenate(indices, dtype=np.int64)
    return _DenseIds(ids, encoded.chunk(0).dictionary)


def _utc_dates(generated: pa.ChunkedArray) -> pa.ChunkedArray:
    """The UTC calendar date of each timestamp."""
    # Casting a zoned timestamp to a date would go through the zone's local time.
    if pa.types.is_timestamp(generated.type) and generated.type.tz is not None:
        generated = generated.cast(pa.timestamp(generated.type.unit))
    return generated.cast(pa.date32())


class _AddressIds(NamedTuple):
    """Per row, the index in `values` of its IPv4 and of its IPv6 address, -1 for none."""

    values: pa.Array
    v4: np.ndarray
    v6: np.ndarray


def _address_ids(
    v4_column: pa.ChunkedArray, v6_column: pa.ChunkedArray, invalid_texts: set[str]
) -> _AddressIds:
    """The distinct canonical addresses, and per row the index of its IPv4 and IPv6 address.

    An index is -1 where the column is empty, null or does not parse; unparsable texts are added
    to `invalid_texts`. Only distinct texts are normalised, and both columns share one list of
    addresses, so an IPv4-mapped IPv6 address gets the index of its IPv4 form.
    """
    v4 = _dense_ids(v4_column)
    v6 = _dense_ids(v6_column)
    canonical = pa.concat_arrays(
        [_canonical_texts(v4.values, invalid_texts), _canonical_texts(v6.values, invalid_texts)]
    )
    addresses = pc.dictionary_encode(canonical)
    ids_of_texts = addresses.indices.fill_null(-1).to_numpy().astype("int64")
    return _AddressIds(
        addresses.dictionary,
        ids_of_texts[: len(v4.values)][v4.ids],
        ids_of_texts[len(v4.values) :][v6.ids],
    )


def _canonical_texts(texts: pa.Array, invalid_texts: set[str]) -> pa.Array:
    """normalise_address of each text, null for empty texts and for those that do not parse."""
    # Nearly every address arrives already canonical: those skip the per-value Python call.
    canonical = pc.and_not(
        pc.match_substring_regex(texts, _CANONICAL_SHAPES),
        pc.match_substring_regex(texts, _ADJACENT_ZERO_HEXTETS),
    )
    to_normalise = pc.invert(canonical).fill_null(False)
    normalised: list[str | None] = []
    for text in texts.filter(to_normalise).to_pylist():
        address = normalise_address(text) if text else None
        if address is None and text:
            invalid_texts.add(text)
        normalised.append(address)
    return pc.replace_with_mask(texts, to_normalise, pa.array(normalised, pa.string()))


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
# Two IPv6 spellings that are canonical as they stand (RFC 5952, which `ipaddress` follows):
# all eight hextets in lower case without leading zeros, no two zero hextets side by side (those
# must be compressed); or a non-zero first hextet, then only non-zero hextets around a "::" that
# stands for at least two zero hextets (a lone zero hextet is never compressed). Neither spelling
# can be IPv4-mapped or print as embedded IPv4, which both need leading zero hextets.
_HEXTET = "[1-9a-f][0-9a-f]{0,3}"
_FULL_IPV6 = rf"(0|{_HEXTET})(:(0|{_HEXTET})){{7}}"
_COMPRESSED_IPV6 = "|".join(
    rf"{_HEXTET}(:{_HEXTET}){{{left - 1}}}::"
    + (rf"{_HEXTET}(:{_HEXTET}){{{right - 1}}}" if right else "")
    for left in range(1, 7)
    for right in range(0, 7 - left)
)
_CANONICAL_SHAPES = rf"^({_CANONICAL_IPV4}|{_FULL_IPV6}|{_COMPRESSED_IPV6})$"
_ADJACENT_ZERO_HEXTETS = "(^|:)0:0(:|$)"


class _Counts(NamedTuple):
    """The three counts per (date id, address id), one entry per address-day."""

    date_ids: np.ndarray
    address_ids: np.ndarray
    rows: np.ndarray
    messages: np.ndarray
    message_recipients: np.ndarray


def _count_sightings(
    dates: _DenseIds,
    addresses: _AddressIds,
    messages: _DenseIds,
    recipients: _DenseIds,
) -> _Counts:
    """Count rows, distinct messages and distinct (message, recipient) pairs per address-day.

    A sighting is a row seen from one of its addresses: like the seed query's two branches, a
    row with both a valid IPv4 and a valid IPv6 address is seen twice. Sorting the sightings by
    (address, date, message, recipient) puts each address-day, each message within it and each
    recipient within that in one run, so every count is a count of runs.
    """
    import numpy as np

    rows, address = _sightings(addresses)
    if not len(address):
        empty = np.empty(0, np.int64)
        return _Counts(empty, empty, empty, empty, empty)

    date_count = len(dates.values)
    message_count = len(messages.values)
    recipient_count = len(recipients.values)
    per_address = date_count * message_count * recipient_count
    if len(addresses.values) * per_address <= _KEY_LIMIT:
        # One int64 key per sighting: a single sort, and each level's key is a division away.
        # The arithmetic is in place because fresh memory (page faults) costs as much as the sort.
        sightings = address.astype(np.int64)
        for ids, count in ((dates, date_count), (messages, message_count)):
            sightings *= count
            sightings += ids.ids[rows]
        sightings *= recipient_count
        sightings += recipients.ids[rows]
        sightings.sort()
        new_recipient = _changes(sightings)
        prefix = np.floor_divide(sightings, recipient_count)
        new_message = _changes(prefix)
        address_day = np.floor_divide(sightings, message_count * recipient_count, out=prefix)
        new_address_day = _changes(address_day)
    else:
        date, message, recipient = dates.ids[rows], messages.ids[rows], recipients.ids[rows]
        order = np.lexsort((recipient, message, date, address))
        address_day = address[order].astype(np.int64) * date_count + date[order]
        new_address_day = _changes(address_day)
        new_message = new_address_day | _changes(message[order])
        new_recipient = new_message | _changes(recipient[order])

    starts = np.flatnonzero(new_address_day)
    first_of_run = address_day[starts]
    return _Counts(
        date_ids=first_of_run % date_count,
        address_ids=first_of_run // date_count,
        rows=np.diff(np.append(starts, len(address))),
        messages=np.add.reduceat(new_message, starts, dtype=np.int64),
        message_recipients=np.add.reduceat(new_recipient, starts, dtype=np.int64),
    )


def _sightings(addresses: _AddressIds) -> tuple[slice | np.ndarray, np.ndarray]:
    """The row of each sighting and its address id: a row is seen once from each valid address.

    The rows are a plain slice in the usual case, every row having exactly one valid address.
    """
    import numpy as np

    in_v4 = addresses.v4 >= 0
    in_v6 = addresses.v6 >= 0
    address = np.where(in_v4, addresses.v4, addresses.v6)
    seen = np.flatnonzero(in_v4 | in_v6)
    seen_twice = np.flatnonzero(in_v4 & in_v6)
    if len(seen) == len(address) and not len(seen_twice):
        return slice(None), address
    rows = np.concatenate([seen, seen_twice])
    return rows, np.concatenate([address[seen], addresses.v6[seen_twice]])


# Sighting keys are packed into int64; past this, the product of the id ranges would overflow.
_KEY_LIMIT = 2**63 - 1


def _changes(values: np.ndarray) -> np.ndarray:
    """True where a value differs from the one before it, and for the first value."""
    import numpy as np

    changed = np.empty(len(values), dtype=bool)
    changed[:1] = True
    np.not_equal(values[1:], values[:-1], out=changed[1:])
    return changed


class _AddressOrder(NamedTuple):
    """Per distinct address, its IPVersion and its place in ascending text order."""

    versions: pa.Array
    ranks: pa.Array


def _address_order(addresses: pa.Array) -> _AddressOrder:
    """Sort keys of the distinct addresses, so address-days sort on integers, not on text."""
    versions = pc.if_else(pc.match_substring(addresses, ":"), 6, 4).cast(pa.int64())
    return _AddressOrder(versions, pc.rank(addresses, sort_keys="ascending"))


def _with_address_columns(
    counts: _Counts, dates: pa.Array, addresses: pa.Array, order: _AddressOrder
) -> pa.Table:
    """Turn date and address ids back into Date, SenderIPv6/SenderIPv4/IPVersion, and sort."""
    address_ids = pa.array(counts.address_ids)
    sort_keys = pa.table(
        {
            "Date": dates.take(pa.array(counts.date_ids)),
            "count_": pa.array(counts.rows, pa.int64()),
            "IPVersion": order.versions.take(address_ids),
            "address": order.ranks.take(address_ids),
        }
    )
    sorted_rows = pc.sort_indices(
        sort_keys,
        sort_keys=[
            ("Date", "ascending"),
            ("count_", "descending"),
            ("IPVersion", "ascending"),
            ("address", "ascending"),
        ],
    )

    address = addresses.take(address_ids.take(sorted_rows))
    version = sort_keys.column("IPVersion").take(sorted_rows)
    is_v6 = pc.equal(version, 6)
    table = pa.table(
        {
            "SenderIPv6": pc.if_else(is_v6, address, ""),
            "SenderIPv4": pc.if_else(is_v6, "", address),
            "count_": sort_keys.column("count_").take(sorted_rows),
            "Date": sort_keys.column("Date").take(sorted_rows),
            "DistinctMessages": pa.array(counts.messages, pa.int64()).take(sorted_rows),
            "DistinctMessageRecipients": pa.array(counts.message_recipients, pa.int64()).take(
                sorted_rows
            ),
            "IPVersion": version,
        }
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
