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

from spamgeo.schema import IPV4_PATTERN

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
    # Arrow's and numpy's kernels run without the GIL, so a second thread takes the IPv6
    # addresses, the message ids (the costliest: one id per message) and the recipients, and
    # then proves the message ids, while this one does the rest: both take about as long.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending_v6 = pool.submit(_dense_ids, raw.column("SenderIPv6"))
        pending_messages = pool.submit(_message_ids, raw.column("NetworkMessageId"))
        pending_recipients = pool.submit(_dense_ids, raw.column("RecipientEmailAddress"))
        # The worker runs its tasks in order, so the message ids are ready when this starts.
        merged = pool.submit(lambda: pending_messages.result().merged_two_texts())
        dates = _dense_ids(_utc_dates(raw.column("TimeGenerated")))
        v4 = _dense_ids(raw.column("SenderIPv4"))
        addresses = _address_ids(v4, pending_v6.result(), invalid_texts)
        order = _address_order(addresses.values)
        messages, recipients = pending_messages.result(), pending_recipients.result()
        counts = _count_sightings(dates, addresses, messages, recipients)
        by_ip = _with_address_columns(counts, dates.values, addresses.values, order)
        if merged.result():
            log.warning("Two message ids fold to the same integer; counting on the texts instead")
            messages = _dense_ids(raw.column("NetworkMessageId"))
            counts = _count_sightings(dates, addresses, messages, recipients)
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

    @property
    def count(self) -> int:
        """How many distinct values there are: ids run from 0 to count - 1."""
        return len(self.values)

    def merged_two_texts(self) -> bool:
        """Never: every distinct value has an id of its own."""
        return False


def _message_ids(column: pa.ChunkedArray) -> _FoldedIds | _DenseIds:
    """Ids for the message ids; equal for equal texts, and for different texts only if the
    returned ids' `merged_two_texts` says so.

    Message ids are GUIDs, all of one length, so each text is read as a few 64-bit words and
    folded into one integer, and sorting the integers numbers them: twice as fast as hashing the
    texts, and without a hash table's memory. Texts of mixed length, or with nulls, are hashed.
    """
    import numpy as np

    texts = _FixedWidthTexts.of(column)
    if texts is None:
        return _dense_ids(column)
    order, new_value = _sorted_by_fold(texts.fold())
    ids = np.empty(len(order), np.int32)
    ids[order] = np.cumsum(new_value, dtype=np.int32) - 1
    return _FoldedIds(ids, int(np.count_nonzero(new_value)), texts, order, new_value)


# Up to 2**21 rows, sorting packs the row number into a fold's low bits. At a million rows the 44
# bits left make two of the ~550k message ids fold alike about one day in a hundred, and
# merged_two_texts then sends the count to the hashed texts; past 2**21 rows the full folds are
# sorted.
_PACKED_ROW_BITS = 21


def _sorted_by_fold(folded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows in order of their fold, and where a new fold starts in that order.

    Sorting plain integers is two and a half times faster than an argsort, so for up to
    2**_PACKED_ROW_BITS rows the fold's high bits are sorted with the row number below them.
    """
    import numpy as np

    rows = len(folded)
    row_bits = max(rows - 1, 1).bit_length()
    if row_bits > _PACKED_ROW_BITS:
        order = np.argsort(folded)
        return order, _changes(folded[order])
    shift = np.uint64(row_bits)
    packed = folded >> shift
    packed <<= shift
    packed |= np.arange(rows, dtype=np.uint64)
    packed.sort()
    order = (packed & np.uint64((1 << row_bits) - 1)).view(np.int64)
    packed >>= shift
    return order, _changes(packed)


class _FoldedIds(NamedTuple):
    """Ids numbered by folded text, with what it takes to prove no two texts folded alike."""

    ids: np.ndarray
    count: int
    texts: _FixedWidthTexts
    order: np.ndarray
    new_value: np.ndarray

    def merged_two_texts(self) -> bool:
        """Whether two different texts folded to one integer and so got one id.

        Texts that fold alike sit side by side in the fold's order, so comparing each text word
        for word with its neighbour where the folds are equal settles it.
        """
        return self.texts.differ_where_equal(self.order, ~self.new_value)


# Odd 64-bit constants (from well-known hash functions) that spread each word over all bits.
_FOLD_FACTORS = [
    0x9E3779B97F4A7C15,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x27D4EB2F165667C5,
    0xFF51AFD7ED558CCD,
    0xC4CEB9FE1A85EC53,
]
_WORD = 8


class _FixedWidthTexts:
    """A text column whose texts all have one byte length, seen as 64-bit words per text.

    The words are strided views straight into Arrow's buffers, nothing is copied. When the
    length is not a multiple of eight the last word overlaps the one before, so every byte is in
    some word.
    """

    def __init__(self, chunks: list[pa.Array], width: int) -> None:
        import numpy as np

        starts = sorted({*range(0, width - _WORD, _WORD), width - _WORD})
        self.rows = sum(len(chunk) for chunk in chunks)
        self.words: list[list[np.ndarray]] = [[] for _ in starts]
        for chunk in chunks:
            first = int(np.frombuffer(chunk.buffers()[1], np.int32, 1, chunk.offset * 4)[0])
            data = chunk.buffers()[2]
            for views, start in zip(self.words, starts, strict=True):
                views.append(np.ndarray((len(chunk),), np.uint64, data, first + start, (width,)))

    @classmethod
    def of(cls, column: pa.ChunkedArray) -> _FixedWidthTexts | None:
        """The column seen as words; None unless it is text without nulls, all of one length
        that the fold factors cover."""
        if not pa.types.is_string(column.type) or column.null_count:
            return None
        chunks = [chunk for chunk in column.chunks if len(chunk)]
        widths = {_text_width(chunk) for chunk in chunks}
        if len(widths) != 1:
            return None
        width = widths.pop()
        if width is None or not _WORD <= width <= _WORD * len(_FOLD_FACTORS):
            return None
        return cls(chunks, width)

    def fold(self) -> np.ndarray:
        """One integer per text: the sum of its words times odd constants, modulo 2**64."""
        import numpy as np

        folded = np.zeros(self.rows, np.uint64)
        product = np.empty(self.rows, np.uint64)
        for views, factor in zip(self.words, _FOLD_FACTORS, strict=False):
            word = self._word(views, product)
            np.multiply(word, np.uint64(factor), out=word)
            folded += word
        return folded

    def differ_where_equal(self, order: np.ndarray, equal_to_previous: np.ndarray) -> bool:
        """Whether a text differs from the one before it in `order` where the mask says equal."""
        import numpy as np

        word = np.empty(self.rows, np.uint64)
        ordered = np.empty(self.rows, np.uint64)
        differs = np.empty(max(self.rows - 1, 0), bool)
        for views in self.words:
            np.take(self._word(views, word), order, out=ordered)
            np.not_equal(ordered[1:], ordered[:-1], out=differs)
            differs &= equal_to_previous[1:]
            if differs.any():
                return True
        return False

    def _word(self, views: list[np.ndarray], out: np.ndarray) -> np.ndarray:
        row = 0
        for view in views:
            out[row : row + len(view)] = view
            row += len(view)
        return out


def _text_width(chunk: pa.Array) -> int | None:
    """The byte length shared by all texts of a string chunk, None if they differ."""
    import numpy as np

    offsets = np.frombuffer(chunk.buffers()[1], np.int32, len(chunk) + 1, chunk.offset * 4)
    lengths = np.diff(offsets)
    width = int(lengths[0])
    return width if bool((lengths == width).all()) else None


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


def _address_ids(v4: _DenseIds, v6: _DenseIds, invalid_texts: set[str]) -> _AddressIds:
    """The distinct canonical addresses, and per row the index of its IPv4 and IPv6 address.

    `v4` and `v6` are the address columns' ids. An index is -1 where the column is empty, null
    or does not parse; unparsable texts are added to `invalid_texts`. Only distinct texts are
    normalised, and both columns share one list of addresses, so an IPv4-mapped IPv6 address
    gets the index of its IPv4 form.
    """
    canonical = pa.concat_arrays(
        [
            _canonical_texts(v4.values, invalid_texts, ipv4_column=True),
            _canonical_texts(v6.values, invalid_texts),
        ]
    )
    addresses = pc.dictionary_encode(canonical)
    ids_of_texts = addresses.indices.fill_null(-1).to_numpy().astype("int64")
    return _AddressIds(
        addresses.dictionary,
        ids_of_texts[: len(v4.values)][v4.ids],
        ids_of_texts[len(v4.values) :][v6.ids],
    )


def _canonical_texts(
    texts: pa.Array, invalid_texts: set[str], *, ipv4_column: bool = False
) -> pa.Array:
    """normalise_address of each text, null for empty texts and for those that do not parse.

    In the IPv4 column only the IPv4 shape is looked for; anything else there takes the slow
    path, which gives the same answer.
    """
    # Nearly every address arrives already canonical: those skip the per-value Python call.
    if ipv4_column:
        canonical = pc.match_substring_regex(texts, f"^{IPV4_PATTERN}$")
    else:
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
_CANONICAL_SHAPES = rf"^({IPV4_PATTERN}|{_FULL_IPV6}|{_COMPRESSED_IPV6})$"
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
    messages: _FoldedIds | _DenseIds,
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

    date_count = dates.count
    message_count = messages.count
    recipient_count = recipients.count
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
    # Missing addresses are -1, so where a row has one address the larger index is that one.
    address = np.maximum(addresses.v4, addresses.v6)
    if np.count_nonzero(in_v4) + np.count_nonzero(in_v6) == len(address) and bool(
        (address >= 0).all()
    ):
        return slice(None), address
    address = np.where(in_v4, addresses.v4, addresses.v6)
    seen = np.flatnonzero(in_v4 | in_v6)
    seen_twice = np.flatnonzero(in_v4 & in_v6)
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
    day = dates.take(pa.array(counts.date_ids))
    rows = pa.array(counts.rows, pa.int64())
    versions = order.versions.take(address_ids)
    sorted_rows = _output_order(counts, dates, order)
    if sorted_rows is None:
        sort_keys = pa.table(
            {
                "Date": day,
                "count_": rows,
                "IPVersion": versions,
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
    version = versions.take(sorted_rows)
    is_v6 = pc.equal(version, 6)
    table = pa.table(
        {
            "SenderIPv6": pc.if_else(is_v6, address, ""),
            "SenderIPv4": pc.if_else(is_v6, "", address),
            "count_": rows.take(sorted_rows),
            "Date": day.take(sorted_rows),
            "DistinctMessages": pa.array(counts.messages, pa.int64()).take(sorted_rows),
            "DistinctMessageRecipients": pa.array(counts.message_recipients, pa.int64()).take(
                sorted_rows
            ),
            "IPVersion": version,
        }
    )
    return table.select(COUNT_COLUMNS).cast(COUNT_SCHEMA)


def _output_order(counts: _Counts, dates: pa.Array, order: _AddressOrder) -> pa.Array | None:
    """The address-days' order (Date, count_ descending, IPVersion, address) as indices.

    All four keys are small integers here, so one packed int64 per address-day sorts three
    times faster than a four-key table sort. None when the packed key could overflow.
    """
    import numpy as np

    if not len(counts.rows):
        return None
    most = int(counts.rows.max())
    date_rank = pc.rank(dates, sort_keys="ascending").to_numpy()
    address_count = len(order.ranks)
    if len(dates) * (most + 1) * 2 * address_count > _KEY_LIMIT:
        return None
    key = date_rank[counts.date_ids].astype(np.int64) - 1
    key *= most + 1
    key += most - counts.rows
    key *= 2
    key += order.versions.to_numpy()[counts.address_ids] == 6
    key *= address_count
    key += order.ranks.to_numpy()[counts.address_ids].astype(np.int64) - 1
    return pa.array(np.argsort(key))


def _rejected_rows(raw: pa.Table, invalid_texts: set[str]) -> tuple[pa.Table, int]:
    """The raw rows with at least one unparsable address, and how many sightings were lost."""
    if not invalid_texts:
        return raw.slice(0, 0), 0
    value_set = pa.array(sorted(invalid_texts), pa.string())
    bad_v4 = pc.is_in(raw.column("SenderIPv4"), value_set=value_set)
    bad_v6 = pc.is_in(raw.column("SenderIPv6"), value_set=value_set)
    sightings = (pc.sum(bad_v4).as_py() or 0) + (pc.sum(bad_v6).as_py() or 0)
    return raw.filter(pc.or_(bad_v4, bad_v6)), sightings
