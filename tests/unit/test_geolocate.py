"""Geolocation against City and ASN databases built at test time, and the embedded default one."""

from __future__ import annotations

import ipaddress
import json
import logging
import random
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from spamgeo import geolocate as geolocate_module
from spamgeo.geolocate import (
    GeoDatabaseError,
    GeoSettings,
    _parse,
    _parse_many,
    _plain_ipv4_pattern,
    classify_address,
    default_city_database,
    geolocate,
    open_geolocator,
)
from spamgeo.schema import DAILY_COLUMNS
from tests.mmdb_fixtures import (
    ASN_ANSWERS,
    CITY_ANSWERS,
    NEVER_LOOKED_UP_COUNTRY,
    UNKNOWN_GLOBAL,
    asn_db,
    build_asn_db,
    build_city_db,
    city_db,
    days_ago,
)

__all__ = ["asn_db", "city_db"]


def counts_for(addresses: list[str], dates: list[date] | None = None) -> pa.Table:
    """A spam_counts_by_ip-shaped table with one row per address (and date)."""
    dates = dates or [date(2026, 3, 1)] * len(addresses)
    return pa.table(
        {
            "SenderIPv6": [a if ":" in a else "" for a in addresses],
            "SenderIPv4": ["" if ":" in a else a for a in addresses],
            "count_": pa.array(range(1, len(addresses) + 1), pa.int64()),
            "Date": pa.array(dates, pa.date32()),
            "DistinctMessages": pa.array([1] * len(addresses), pa.int64()),
            "DistinctMessageRecipients": pa.array([1] * len(addresses), pa.int64()),
            "IPVersion": pa.array([6 if ":" in a else 4 for a in addresses], pa.int64()),
        }
    )


def by_address(table: pa.Table) -> dict[str, dict]:
    return {r["SenderIPv4"] or r["SenderIPv6"]: r for r in table.to_pylist()}


# --- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("81.2.69.160", "global"),
        ("2001:480:10::1", "global"),
        ("::ffff:81.2.69.160", "global"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("192.0.2.10", "private"),  # documentation (TEST-NET-1)
        ("2001:db8::1", "private"),  # documentation
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.1.1", "link_local"),
        ("fe80::1", "link_local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not_global"),  # shared address space (carrier-grade NAT)
        ("not-an-ip", "invalid"),
        ("", "invalid"),
    ],
)
def test_classify_address_known_answers(address: str, expected: str) -> None:
    assert classify_address(address) == expected
    assert _parse(address)[1] == expected


def test_fast_classification_agrees_with_ipaddress() -> None:
    # Edges of every special network, and random addresses, through both paths.
    rng = random.Random(11)
    samples: list[str] = []
    for text in ["0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/29", "224.0.0.0/4", "fc00::/7"]:
        network = ipaddress.ip_network(text)
        top = 2**network.max_prefixlen - 1
        for edge in (int(network.network_address), int(network.broadcast_address)):
            for number in (edge - 1, edge, edge + 1):
                if 0 <= number <= top:
                    samples.append(str(network.network_address.__class__(number)))
    samples += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(3000)]
    samples += [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(1000)]
    samples += [
        str(ipaddress.IPv6Address((0x2 << 124) | rng.getrandbits(124))) for _ in range(1000)
    ]
    for text in samples:
        assert _parse(text)[1] == classify_address(text), text


@pytest.fixture(params=["arrow", "one_by_one"])
def plain_ipv4(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the Arrow shortcut for plain IPv4 texts, and with `_parse` for every text."""
    if request.param == "one_by_one":
        monkeypatch.setattr(geolocate_module, "_PLAIN_IPV4", None)
    return request.param


def test_parse_many_agrees_with_parse(plain_ipv4: str) -> None:
    # Texts the shortcut must refuse (leading zeros, spaces, a newline, octets over 255, other
    # digits, special first octets) beside ones it takes; every one must come out as from _parse.
    texts: list[str | None] = [
        "1.2.3.4", "01.2.3.4", "1.2.3.04", "1.2.3.00", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\n",
        "1.2.3.4\x00", "256.1.1.1", "1.2.3.256", "1.2.3", "1.2.3.4.5", "1..2.3", "1.2.3.",
        "\u0661.2.3.4", "+1.2.3.4", "0.0.0.0", "9.9.9.9", "99.255.255.255", "100.63.255.255",
        "100.64.0.1", "101.0.0.0", "126.255.255.255", "127.0.0.1", "128.0.0.0", "169.254.1.1",
        "172.15.255.255", "172.16.0.1", "192.0.2.1", "192.169.0.1", "198.18.0.1", "203.0.113.9",
        "223.255.255.255", "224.0.0.1", "255.255.255.255", "::ffff:1.2.3.4", "::ffff:10.0.0.1",
        "2a00::1", "2001:db8::1", "::1", "", "x", None,
    ]  # fmt: skip
    rng = random.Random(5)
    texts += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(3000)]
    texts += [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(300)]

    lookup_texts, address_classes = _parse_many(pa.array(texts, pa.string()))

    expected = [_parse(text or "") for text in texts]
    assert list(zip(lookup_texts, address_classes, strict=True)) == expected


def test_plain_ipv4_pattern_without_registries_takes_nothing() -> None:
    assert _plain_ipv4_pattern(([], [])) is None
    assert _plain_ipv4_pattern(([0], [2**32 - 1])) is None


# --- lookups ----------------------------------------------------------------------------------


@pytest.fixture(params=["maxminddb_rust", "maxminddb"])
def reader_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the field-path reader when installed, and with the maxminddb C reader."""
    if request.param == "maxminddb_rust":
        pytest.importorskip("maxminddb_rust")
    else:
        monkeypatch.setattr(geolocate_module, "_path_reader", lambda path: None)
    return request.param


def test_geolocate_known_answers(city_db: Path, asn_db: Path, reader_backend: str) -> None:
    addresses = [*CITY_ANSWERS, *UNKNOWN_GLOBAL]
    with open_geolocator(GeoSettings(city_db=city_db, asn_db=asn_db)) as geolocator:
        result = geolocate(counts_for(addresses), geolocator)

    assert result.column_names == DAILY_COLUMNS
    rows = by_address(result)
    for address, answer in CITY_ANSWERS.items():
        row = rows[address]
        assert row["AddressClass"] == "global"
        for column, expected in answer.items():
            assert row[column] == expected, (address, column)
        expected_asn = ASN_ANSWERS.get(address, (None, None))
        assert (row["ASN"], row["ASOrganization"]) == expected_asn, address
    for address in UNKNOWN_GLOBAL:
        row = rows[address]
        assert row["AddressClass"] == "global"
        assert row["Country"] is None and row["Latitude"] is None and row["ASN"] is None
    assert result.schema.field("Latitude").type == pa.float64()
    assert result.schema.field("ASN").type == pa.int64()
    # Count columns pass through untouched.
    assert result.column("count_").to_pylist() == list(range(1, len(addresses) + 1))


def test_answers_do_not_depend_on_the_order_of_addresses(
    city_db: Path, asn_db: Path, reader_backend: str, plain_ipv4: str
) -> None:
    # Lookups run in sorted order; each answer must still land on its own address.
    known = [*CITY_ANSWERS, *UNKNOWN_GLOBAL]
    addresses = [*reversed(known), "bogus", "10.1.2.3", *known, "fc00::1", "::ffff:81.2.69.160"]
    with open_geolocator(GeoSettings(city_db=city_db, asn_db=asn_db)) as geolocator:
        result = geolocate(counts_for(addresses), geolocator)
        one_by_one = [geolocate(counts_for([a]), geolocator).to_pylist()[0] for a in addresses]

    assert result.to_pylist() == [
        {**row, "count_": number} for number, row in enumerate(one_by_one, start=1)
    ]
    assert result.column("City").to_pylist()[-1] == "London"


def test_missing_address_is_invalid(city_db: Path) -> None:
    counts = counts_for(["81.2.69.160", "", "81.2.69.160"])
    counts = counts.set_column(1, "SenderIPv4", pa.array(["81.2.69.160", None, None]))
    counts = counts.set_column(0, "SenderIPv6", pa.array(["", None, None], pa.string()))
    with open_geolocator(GeoSettings(city_db=city_db)) as geolocator:
        result = geolocate(counts, geolocator)

    assert result.column("AddressClass").to_pylist() == ["global", "invalid", "invalid"]
    assert result.column("City").to_pylist() == ["London", None, None]


def test_no_rows(city_db: Path) -> None:
    with open_geolocator(GeoSettings(city_db=city_db)) as geolocator:
        result = geolocate(counts_for([]), geolocator)

    assert result.num_rows == 0
    assert result.column_names == DAILY_COLUMNS


def test_ipv4_only_database_leaves_ipv6_addresses_unknown(
    tmp_path: Path, reader_backend: str
) -> None:
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-City", languages=["en"])
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {"country": {"iso_code": "GB", "names": {"en": "United Kingdom"}}},
    )
    path = tmp_path / "ipv4-city.mmdb"
    writer.to_db_file(str(path))
    addresses = ["2001:480:10::1", "81.2.69.160", "::ffff:81.2.69.161"]
    with open_geolocator(GeoSettings(city_db=path)) as geolocator:
        assert geolocator.ip_version("city_db") == 4
        assert geolocator.ip_version("asn_db") is None
        rows = by_address(geolocate(counts_for(addresses), geolocator))

    assert rows["2001:480:10::1"]["AddressClass"] == "global"
    assert rows["2001:480:10::1"]["CountryIsoCode"] is None
    assert rows["81.2.69.160"]["CountryIsoCode"] == "GB"
    assert rows["::ffff:81.2.69.161"]["Country"] == "United Kingdom"


def test_non_global_addresses_are_never_looked_up(city_db: Path) -> None:
    # The City database holds a record for each of these; a lookup would leak its country.
    addresses = ["10.1.2.3", "192.0.2.1", "100.64.1.1", "fc00::1", "127.0.0.1", "fe80::1"]
    with open_geolocator(GeoSettings(city_db=city_db)) as geolocator:
        rows = by_address(geolocate(counts_for(addresses), geolocator))

    for address in addresses:
        assert rows[address]["AddressClass"] != "global"
        assert rows[address]["CountryIsoCode"] is None
        assert rows[address]["CountryIsoCode"] != NEVER_LOOKED_UP_COUNTRY


def test_mapped_and_malformed_addresses(city_db: Path, reader_backend: str) -> None:
    addresses = ["::ffff:81.2.69.160", "bogus", "999.1.1.1"]
    with open_geolocator(GeoSettings(city_db=city_db)) as geolocator:
        rows = by_address(geolocate(counts_for(addresses), geolocator))

    assert rows["::ffff:81.2.69.160"]["City"] == "London"
    assert rows["bogus"]["AddressClass"] == "invalid"
    assert rows["999.1.1.1"]["AddressClass"] == "invalid"
    assert rows["bogus"]["Country"] is None


def test_same_address_on_several_dates_gets_the_same_answer(city_db: Path) -> None:
    addresses = ["81.2.69.160", "81.2.69.160", "216.160.83.56"]
    dates = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 2)]
    with open_geolocator(GeoSettings(city_db=city_db)) as geolocator:
        result = geolocate(counts_for(addresses, dates), geolocator)

    assert result.column("City").to_pylist() == ["London", "London", "Milton"]
    assert result.column("Date").to_pylist() == dates


def test_describe_is_json_safe(city_db: Path, asn_db: Path) -> None:
    with open_geolocator(GeoSettings(city_db=city_db, asn_db=asn_db)) as geolocator:
        described = geolocator.describe()

    assert json.loads(json.dumps(described)) == described
    assert described["city_db"]["path_name"] == city_db.name
    assert described["city_db"]["database_type"] == "GeoIP2-City"
    assert described["city_db"]["ip_version"] == 6
    assert described["city_db"]["age_days"] == 0
    assert date.fromisoformat(described["city_db"]["build_date"][:10]) <= date.today()
    assert described["asn_db"]["database_type"] == "GeoLite2-ASN"


# --- database checks --------------------------------------------------------------------------


def test_asn_database_given_as_city_is_refused(asn_db: Path) -> None:
    with pytest.raises(GeoDatabaseError, match=r"^city_db: .*'GeoLite2-ASN'") as raised:
        open_geolocator(GeoSettings(city_db=asn_db))
    assert str(asn_db) in str(raised.value)


def test_city_database_given_as_asn_is_refused(city_db: Path) -> None:
    with pytest.raises(GeoDatabaseError, match=r"^asn_db: .*'GeoIP2-City'"):
        open_geolocator(GeoSettings(city_db=city_db, asn_db=city_db))


def test_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.mmdb"
    with pytest.raises(GeoDatabaseError, match=r"^city_db: .*nowhere\.mmdb does not exist"):
        open_geolocator(GeoSettings(city_db=missing))


def test_corrupt_database(tmp_path: Path, city_db: Path) -> None:
    corrupt = tmp_path / "corrupt.mmdb"
    corrupt.write_bytes(b"this is not a MaxMind database" * 100)
    with pytest.raises(GeoDatabaseError, match=r"^asn_db: .*not a valid MaxMind DB file"):
        open_geolocator(GeoSettings(city_db=city_db, asn_db=corrupt))


def test_directory_instead_of_database(tmp_path: Path) -> None:
    with pytest.raises(GeoDatabaseError, match=r"^city_db: .*not a readable file"):
        open_geolocator(GeoSettings(city_db=tmp_path))


def test_other_city_types_are_accepted(tmp_path: Path) -> None:
    for database_type in ("GeoLite2-City", "DBIP-City-Lite", "GeoIP2-Enterprise"):
        path = build_city_db(tmp_path / f"{database_type}.mmdb", database_type=database_type)
        with open_geolocator(GeoSettings(city_db=path)) as geolocator:
            assert geolocator.describe()["city_db"]["database_type"] == database_type


def test_stale_database_logs_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    city = build_city_db(tmp_path / "old-city.mmdb", build_epoch=days_ago(60))
    asn = build_asn_db(tmp_path / "fresh-asn.mmdb")
    with caplog.at_level(logging.INFO, logger="spamgeo.geolocate"):
        open_geolocator(GeoSettings(city_db=city, asn_db=asn, max_age_days=45)).close()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "old-city.mmdb" in warnings[0] and "60 days" in warnings[0]


def test_fresh_database_logs_no_warning(city_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spamgeo.geolocate"):
        open_geolocator(GeoSettings(city_db=city_db)).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_default_database_opens_stale_and_locates(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="spamgeo.geolocate"),
        open_geolocator(GeoSettings(city_db=default_city_database())) as geolocator,
    ):
        described = geolocator.describe()["city_db"]
        rows = by_address(geolocate(counts_for(["8.8.8.8", "81.2.69.160"]), geolocator))

    assert described["database_type"] == "GeoLite2-City"
    assert described["build_date"].startswith("2019-12-24")
    stale = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2019-12-24" in message and "stale" in message for message in stale)
    # Google's public resolver is registered in the United States; 81.2.69.160 is in the UK.
    assert rows["8.8.8.8"]["CountryIsoCode"] == "US"
    assert rows["81.2.69.160"]["CountryIsoCode"] == "GB"
