"""Synthetic Defender EmailEvents: seeded, vectorised, shaped like a real tenant's mail flow.

Local runs, tests and benchmarks need realistic volumes (a million rows a day, tens of
thousands of sender addresses with a heavy tail) without access to a real workspace.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spamgeo.window import Window

log = logging.getLogger(__name__)

_UTC_MICROS = pa.timestamp("us", tz="UTC")

# The EmailEvents columns the generator produces, in Log Analytics order, with their types.
EVENT_COLUMNS: dict[str, pa.DataType] = {
    "TimeGenerated": _UTC_MICROS,
    "Timestamp": _UTC_MICROS,
    "NetworkMessageId": pa.string(),
    "InternetMessageId": pa.string(),
    "RecipientEmailAddress": pa.string(),
    "SenderFromAddress": pa.string(),
    "SenderFromDomain": pa.string(),
    "SenderIPv4": pa.string(),
    "SenderIPv6": pa.string(),
    "ThreatTypes": pa.string(),
    "DetectionMethods": pa.string(),
    "DeliveryAction": pa.string(),
    "DeliveryLocation": pa.string(),
    "EmailDirection": pa.string(),
    "OrgLevelPolicy": pa.string(),
    "TenantId": pa.string(),
    "Type": pa.string(),
}
TIME_COLUMNS = ("TimeGenerated", "Timestamp")
EVENTS_SCHEMA = pa.schema(list(EVENT_COLUMNS.items()))

# Threat combinations as Defender writes them; the second list are the ones with the term Spam.
_CLEAN_THREATS = ["", "Phish", "Malware", "Phish, Malware"]
_CLEAN_WEIGHTS = [0.86, 0.08, 0.04, 0.02]
_SPAM_THREATS = ["Spam", "Phish, Spam", "Spam, Phish", "Malware, Spam"]
_SPAM_WEIGHTS = [0.86, 0.07, 0.04, 0.03]
_THREATS = _CLEAN_THREATS + _SPAM_THREATS
_DETECTIONS = {
    "": ["", ""],
    "Phish": ['{"Phish":["URL detonation"]}', '{"Phish":["Impersonation domain"]}'],
    "Malware": ['{"Malware":["File detonation"]}', '{"Malware":["Antimalware protection"]}'],
    "Phish, Malware": ['{"Phish":["URL detonation"],"Malware":["File detonation"]}'] * 2,
    "Spam": ['{"Spam":["Advanced filter"]}', '{"Spam":["Mixed analysis detection"]}'],
    "Phish, Spam": ['{"Phish":["Spoof DMARC"],"Spam":["Advanced filter"]}'] * 2,
    "Spam, Phish": ['{"Spam":["URL malicious reputation"],"Phish":["URL detonation"]}'] * 2,
    "Malware, Spam": ['{"Malware":["File detonation"],"Spam":["Advanced filter"]}'] * 2,
}
_ACTIONS = ["Delivered", "Junked", "Blocked", "Replaced"]
_LOCATIONS = ["Inbox/folder", "Junk folder", "Quarantine", "Inbox/folder"]
_ACTION_WEIGHTS = {
    "clean": [0.97, 0.03, 0.0, 0.0],
    "spam": [0.10, 0.60, 0.25, 0.05],
    "threat": [0.05, 0.10, 0.70, 0.15],
}
_DIRECTIONS = ["Inbound", "Intra-org", "Outbound"]
_DIRECTION_WEIGHTS = [0.95, 0.03, 0.02]
_POLICIES = ["", "Phishing simulation", "SecOps Mailbox"]
_POLICY_WEIGHTS = [0.99, 0.007, 0.003]

# First octets whose whole /8 is public unicast; the special-purpose blocks live in the rest.
_PUBLIC_FIRST_OCTETS = np.array(
    [o for o in range(1, 224) if o not in {10, 100, 127, 169, 172, 192, 198, 203}],
    dtype=np.uint32,
)
_PRIVATE_RELAY_SHARE = 0.005
_NO_ADDRESS_SHARE = 0.003
# First IPv6 group ranges of allocated global prefixes: 2001:4860::/32 and four /12 blocks.
_IPV6_BLOCKS = [(0x2A00, 16), (0x2400, 16), (0x2600, 16), (0x2800, 16)]
_ZIPF_EXPONENT = 1.1
_WORDS = [
    "northwind", "fabrikam", "tailspin", "adatum", "litware", "proseware", "wingtip",
    "alpine", "bluesky", "coho", "lucerne", "margie", "nod", "relecloud", "woodgrove",
    "trey", "wideworld", "fourthcoffee", "humongous", "graphic",
]  # fmt: skip
_TLDS = ["com", "net", "org", "info", "biz", "ru", "cn", "br", "de", "xyz", "top", "io"]
_TENANT_DOMAIN = "contoso.com"
_RECIPIENT_POOL = 5000


class EventsFileError(ValueError):
    """An events file that cannot be read: wrong type, missing, or without TimeGenerated."""


def default_senders(rows: int) -> int:
    """Distinct sender addresses for a table of `rows`: one per dozen rows, within sane bounds."""
    return max(1, min(rows // 12, 250_000)) if rows else 0


def generate_email_events(
    rows: int,
    window: Window,
    *,
    seed: int = 7,
    ipv6_share: float = 0.2,
    senders: int | None = None,
    spam_share: float = 0.6,
) -> pa.Table:
    """A seeded table of `rows` EmailEvents rows with TimeGenerated inside `window`.

    Rows come in messages of one to several recipients; sender addresses follow a heavy tail
    over `senders` distinct addresses, every one of which appears when there are enough
    messages. Addresses are written canonically, as `ipaddress` prints them.
    """
    if rows < 0:
        raise ValueError(f"rows must be zero or more, got {rows}")
    if not 0.0 <= ipv6_share <= 1.0 or not 0.0 <= spam_share <= 1.0:
        raise ValueError("ipv6_share and spam_share must lie between 0 and 1")
    if rows == 0:
        return EVENTS_SCHEMA.empty_table()
    senders = default_senders(rows) if senders is None else senders
    if senders < 1:
        raise ValueError(f"senders must be at least 1, got {senders}")
    rng = np.random.default_rng(seed)

    recipients = _recipients_per_message(rng, rows)
    messages = len(recipients)
    message_of_row = np.repeat(np.arange(messages), recipients)
    first_row = np.cumsum(recipients) - recipients
    position_in_message = np.arange(rows) - first_row[message_of_row]

    start_us = (window.start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    span_us = window.duration // timedelta(microseconds=1)
    generated = np.sort(start_us + rng.integers(0, span_us, messages, dtype=np.int64))
    event_lag = rng.gamma(2.0, 40.0, messages) * 1e6 + 2e6
    happened = generated - event_lag.astype(np.int64)

    ipv4, ipv6, sender_key = _sender_addresses(rng, messages, senders, ipv6_share)
    domains = _domains(max(1, senders // 3))
    sender_domain = domains.take(pa.array(sender_key % len(domains)))
    local_parts = _local_parts(max(1, senders))
    sender_address = pc.binary_join_element_wise(
        local_parts.take(pa.array(sender_key % len(local_parts))), sender_domain, "@"
    )
    internet_id = pc.binary_join_element_wise(
        "<", _hex_strings(rng, messages, 16), "@", sender_domain, ">", ""
    )

    is_spam = rng.random(messages) < spam_share
    threat = np.where(
        is_spam,
        len(_CLEAN_THREATS) + rng.choice(len(_SPAM_THREATS), messages, p=_SPAM_WEIGHTS),
        rng.choice(len(_CLEAN_THREATS), messages, p=_CLEAN_WEIGHTS),
    )
    detection = threat * 2 + rng.integers(0, 2, messages)
    action = _delivery_actions(rng, threat, is_spam)

    per_message = pa.table(
        {
            "TimeGenerated": pa.array(generated, _UTC_MICROS),
            "Timestamp": pa.array(happened, _UTC_MICROS),
            "NetworkMessageId": _guids(rng, messages),
            "InternetMessageId": internet_id,
            "SenderFromAddress": sender_address,
            "SenderFromDomain": sender_domain,
            "SenderIPv4": ipv4,
            "SenderIPv6": ipv6,
            "ThreatTypes": pa.array(_THREATS).take(pa.array(threat)),
            "DetectionMethods": pa.array([d for t in _THREATS for d in _DETECTIONS[t]]).take(
                pa.array(detection)
            ),
            "DeliveryAction": pa.array(_ACTIONS).take(pa.array(action)),
            "DeliveryLocation": pa.array(_LOCATIONS).take(pa.array(action)),
            "EmailDirection": pa.array(_DIRECTIONS).take(
                pa.array(rng.choice(len(_DIRECTIONS), messages, p=_DIRECTION_WEIGHTS))
            ),
            "OrgLevelPolicy": pa.array(_POLICIES).take(
                pa.array(rng.choice(len(_POLICIES), messages, p=_POLICY_WEIGHTS))
            ),
        }
    )
    table = per_message.take(pa.array(message_of_row))

    # Recipients of one message are consecutive users, so they never repeat within it.
    first_recipient = rng.integers(0, _RECIPIENT_POOL, messages)
    recipient = (first_recipient[message_of_row] + position_in_message) % _RECIPIENT_POOL
    table = table.add_column(
        4, "RecipientEmailAddress", _recipient_pool().take(pa.array(recipient))
    )
    tenant = str(_guids(np.random.default_rng(seed + 1), 1)[0])
    table = table.append_column("TenantId", pa.repeat(pa.scalar(tenant), rows))
    table = table.append_column("Type", pa.repeat(pa.scalar("EmailEvents"), rows))
    log.info(
        "generated email events rows=%d messages=%d senders=%d window=%s",
        rows,
        messages,
        senders,
        window,
    )
    return table.select(list(EVENT_COLUMNS)).cast(EVENTS_SCHEMA)


def _recipients_per_message(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Recipients per message, summing to exactly `rows` (mean about 1.8, up to 40)."""
    drawn = np.empty(0, dtype=np.int64)
    while drawn.sum() < rows:
        more = math.ceil((rows - drawn.sum()) / 1.7) + 16
        drawn = np.concatenate([drawn, np.minimum(rng.geometric(0.55, more), 40)])
    total = np.cumsum(drawn)
    messages = int(np.searchsorted(total, rows)) + 1
    counts = drawn[:messages].copy()
    counts[-1] -= total[messages - 1] - rows
    return counts


def _zipf_ranks(rng: np.random.Generator, size: int, distinct: int) -> np.ndarray:
    """`size` ranks in [0, distinct), heavy-tailed, each rank drawn at least once if possible."""
    weights = 1.0 / np.arange(1, distinct + 1, dtype=np.float64) ** _ZIPF_EXPONENT
    cdf = np.cumsum(weights)
    ranks = np.searchsorted(cdf, rng.random(size) * cdf[-1]).clip(max=distinct - 1)
    covered = min(size, distinct)
    ranks[rng.choice(size, covered, replace=False)] = rng.permutation(distinct)[:covered]
    return ranks


def _sender_addresses(
    rng: np.random.Generator, messages: int, senders: int, ipv6_share: float
) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """SenderIPv4 and SenderIPv6 per message, and a sender key for the sender's mail address."""
    ipv6_pool_size = min(senders - 1, round(senders * ipv6_share)) if senders > 1 else 0
    if ipv6_share >= 1.0:
        ipv6_pool_size = senders
    ipv4_pool_size = senders - ipv6_pool_size
    is_v6 = rng.random(messages) < ipv6_share
    if ipv6_pool_size == 0:
        is_v6[:] = False
    if ipv4_pool_size == 0:
        is_v6[:] = True
    no_address = rng.random(messages) < _NO_ADDRESS_SHARE

    key = np.zeros(messages, dtype=np.int64)
    v4_rows = np.flatnonzero(~is_v6)
    v6_rows = np.flatnonzero(is_v6)
    ipv4 = np.zeros(messages, dtype=np.int64)
    ipv6 = np.zeros(messages, dtype=np.int64)
    if len(v4_rows):
        ipv4[v4_rows] = _zipf_ranks(rng, len(v4_rows), ipv4_pool_size)
        key[v4_rows] = ipv4[v4_rows]
    if len(v6_rows):
        ipv6[v6_rows] = _zipf_ranks(rng, len(v6_rows), ipv6_pool_size)
        key[v6_rows] = ipv4_pool_size + ipv6[v6_rows]

    empty = pa.scalar("", pa.string())
    ipv4_pool = _ipv4_pool(rng, max(ipv4_pool_size, 1))
    ipv6_pool = _ipv6_pool(rng, max(ipv6_pool_size, 1))
    ipv4_text = pc.if_else(pa.array(is_v6 | no_address), empty, ipv4_pool.take(pa.array(ipv4)))
    ipv6_text = pc.if_else(pa.array(~is_v6 | no_address), empty, ipv6_pool.take(pa.array(ipv6)))
    return ipv4_text, ipv6_text, key


def _unique_first(draw: pa.Array, count: int) -> pa.Array | None:
    distinct = pc.unique(draw)
    return distinct.slice(0, count) if len(distinct) >= count else None


def _ipv4_pool(rng: np.random.Generator, count: int) -> pa.Array:
    """`count` distinct dotted-quad addresses, mostly public, a few private relays in 10/8."""
    while True:
        size = count + count // 10 + 64
        first = rng.choice(_PUBLIC_FIRST_OCTETS, size)
        first[rng.random(size) < _PRIVATE_RELAY_SHARE] = 10
        middle = rng.integers(0, 1 << 16, size, dtype=np.uint32)
        last = rng.integers(1, 255, size, dtype=np.uint32)
        octets = [first, middle >> 8, middle & 0xFF, last]
        text = pc.binary_join_element_wise(*[pa.array(o).cast(pa.string()) for o in octets], ".")
        pool = _unique_first(text, count)
        if pool is not None:
            return pool


def _ipv6_pool(rng: np.random.Generator, count: int) -> pa.Array:
    """`count` distinct IPv6 addresses in allocated global prefixes, in RFC 5952 form.

    No group is zero except, in the short form, the three before the interface's last group,
    so the canonical text is either eight groups or four groups, `::` and one group.
    """
    hex_groups = _hex_groups()
    while True:
        size = count + count // 10 + 64
        groups = rng.integers(1, 1 << 16, (size, 8), dtype=np.int64)
        block = rng.integers(0, len(_IPV6_BLOCKS) + 1, size)
        google = block == len(_IPV6_BLOCKS)
        base = np.array([b for b, _ in _IPV6_BLOCKS] + [0x2001])[block]
        groups[:, 0] = np.where(google, 0x2001, base + rng.integers(0, 16, size))
        groups[google, 1] = 0x4860
        text = [hex_groups.take(pa.array(groups[:, i])) for i in range(8)]
        full = pc.binary_join_element_wise(*text, ":")
        short = pc.binary_join_element_wise(*text[:4], "", text[7], ":")
        pool = _unique_first(pc.if_else(pa.array(rng.random(size) < 0.4), short, full), count)
        if pool is not None:
            return pool


def _delivery_actions(
    rng: np.random.Generator, threat: np.ndarray, is_spam: np.ndarray
) -> np.ndarray:
    kind = {
        "clean": threat == 0,
        "spam": is_spam,
        "threat": (threat != 0) & ~is_spam,
    }
    action = np.zeros(len(threat), dtype=np.int64)
    for name, chosen in kind.items():
        picks = rng.choice(len(_ACTIONS), int(chosen.sum()), p=_ACTION_WEIGHTS[name])
        action[chosen] = picks
    return action


def _guids(rng: np.random.Generator, count: int) -> pa.Array:
    """Random version-4 GUID strings, lower-case as Log Analytics prints them."""
    raw = rng.integers(0, 256, (count, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hex_chars = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype="S1").reshape(count, 32)
    guid = np.full((count, 36), b"-", dtype="S1")
    for source, target in (((0, 8), 0), ((8, 12), 9), ((12, 16), 14), ((16, 20), 19)):
        guid[:, target : target + source[1] - source[0]] = hex_chars[:, source[0] : source[1]]
    guid[:, 24:] = hex_chars[:, 20:]
    return pa.array(guid.view("S36").ravel()).cast(pa.binary()).cast(pa.string())


def _hex_strings(rng: np.random.Generator, count: int, length: int) -> pa.Array:
    raw = rng.integers(0, 256, (count, length // 2), dtype=np.uint8)
    text = np.frombuffer(raw.tobytes().hex().upper().encode("ascii"), dtype=f"S{length}")
    return pa.array(text).cast(pa.binary()).cast(pa.string())


@cache
def _hex_groups() -> pa.Array:
    return pa.array([format(value, "x") for value in range(1 << 16)])


@cache
def _domains(count: int) -> pa.Array:
    index = np.arange(count)
    return pc.binary_join_element_wise(
        pa.array(_WORDS).take(pa.array(index % len(_WORDS))),
        pa.array(index // len(_WORDS)).cast(pa.string()),
        ".",
        pa.array(_TLDS).take(pa.array((index * 7 + index // 5) % len(_TLDS))),
        "",
    )


@cache
def _local_parts(count: int) -> pa.Array:
    stems = pa.array(["info", "news", "offers", "noreply", "billing", "support", "promo"])
    index = np.arange(count)
    return pc.binary_join_element_wise(
        stems.take(pa.array(index % len(stems))), pa.array(index).cast(pa.string()), ""
    )


@cache
def _recipient_pool() -> pa.Array:
    return pa.array([f"user{n:04d}@{_TENANT_DOMAIN}" for n in range(_RECIPIENT_POOL)])


# --- files -------------------------------------------------------------------------------

_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _file_format(path: Path) -> str:
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise EventsFileError(
            f"{path}: unknown events file type {path.suffix!r}; "
            "name it .csv, .jsonl (or .json, one object per line) or .parquet"
        )
    return kind


def write_events(table: pa.Table, path: str | Path) -> Path:
    """Write events as CSV, JSON lines (.jsonl/.json) or Parquet, chosen by the suffix."""
    path = Path(path)
    kind = _file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif kind == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(_with_iso_times(table), path)
    else:
        _write_json_lines(_with_iso_times(table), path)
    log.info("wrote events rows=%d bytes=%d path=%s", table.num_rows, path.stat().st_size, path)
    return path


def _with_iso_times(table: pa.Table) -> pa.Table:
    """Timestamps as ISO-8601 UTC text ending in Z, the form Log Analytics exports."""
    for name in TIME_COLUMNS:
        if name in table.column_names and pa.types.is_timestamp(table.schema.field(name).type):
            text = iso_utc_strings(table[name])
            table = table.set_column(table.column_names.index(name), name, text)
    return table


def iso_utc_strings(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Timestamps as "2026-12-01T10:00:00.123456Z", or without the fraction when it is zero."""
    if column.type.tz is not None:
        column = column.cast(pa.timestamp("us", tz="UTC"))
    # Arrow's cast to text is far faster than strftime; it prints "YYYY-MM-DD HH:MM:SS.ffffff".
    text = column.cast(pa.timestamp("us")).cast(pa.string())
    text = pc.utf8_replace_slice(text, 10, 11, "T")
    whole_second = pc.ends_with(text, ".000000")
    text = pc.if_else(whole_second, pc.utf8_slice_codeunits(text, 0, 19), text)
    return pc.binary_join_element_wise(text, "Z", "")


def _write_json_lines(table: pa.Table, path: Path) -> None:
    import duckdb

    con = duckdb.connect()
    try:
        con.register("events", table)
        target = str(path).replace("'", "''")
        con.execute(f"COPY events TO '{target}' (FORMAT JSON)")
    finally:
        con.close()


def load_events(path: str | Path) -> pa.Table:
    """Read an events file written by `write_events` (or exported alike) back to typed columns.

    TimeGenerated and Timestamp become timestamp[us, UTC]; string columns hold "" for missing.
    """
    path = Path(path)
    kind = _file_format(path)
    if not path.is_file():
        raise EventsFileError(f"{path}: events file not found; check the events path setting")
    try:
        table = _read(path, kind)
    except pa.ArrowInvalid as exc:
        raise EventsFileError(
            f"{path}: cannot read it as {kind}: {exc}; TimeGenerated must be ISO-8601 UTC"
        ) from exc
    if "TimeGenerated" not in table.column_names:
        raise EventsFileError(
            f"{path}: no TimeGenerated column; every events row needs one (ISO-8601 UTC)"
        )
    return _normalised(table, path)


def _read(path: Path, kind: str) -> pa.Table:
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if kind == "csv":
        import pyarrow.csv as pacsv

        options = pacsv.ConvertOptions(
            column_types=dict(EVENT_COLUMNS),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        return pacsv.read_csv(path, convert_options=options)

    import pyarrow.json as pajson

    with path.open("rb") as handle:
        first_line = handle.readline()
    if not first_line.strip():
        return pa.table({})
    known = [field for field in EVENTS_SCHEMA if f'"{field.name}"'.encode() in first_line]
    options = pajson.ParseOptions(
        explicit_schema=pa.schema(known), unexpected_field_behavior="infer"
    )
    return pajson.read_json(path, parse_options=options)


def _normalised(table: pa.Table, path: Path) -> pa.Table:
    for index, field in enumerate(table.schema):
        column = table.column(index)
        if field.name in TIME_COLUMNS:
            column = _as_utc_micros(column, path, field.name)
        elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            column = pc.fill_null(column.cast(pa.string()), "")
        elif pa.types.is_null(field.type):
            column = pa.chunked_array([pa.repeat(pa.scalar(""), len(column))])
        else:
            continue
        table = table.set_column(index, field.name, column)
    return table


def _as_utc_micros(column: pa.ChunkedArray, path: Path, name: str) -> pa.ChunkedArray:
    kind = column.type
    try:
        if pa.types.is_timestamp(kind) and kind.tz is not None:
            return column.cast(_UTC_MICROS)
        if pa.types.is_timestamp(kind):
            naive = column.cast(pa.timestamp("us"))
            return pa.chunked_array([c.view(_UTC_MICROS) for c in naive.chunks], _UTC_MICROS)
        return column.cast(pa.string()).cast(_UTC_MICROS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise EventsFileError(
            f"{path}: column {name} is not ISO-8601 UTC date-times ({exc}); fix the file"
        ) from exc
