"""Small GeoIP2-layout City and ASN databases built at test time, with their known answers.

Use `build_city_db(path)` and `build_asn_db(path)` (or the `city_db` / `asn_db` fixtures after
`from tests.mmdb_fixtures import city_db, asn_db`), then compare results with CITY_ANSWERS and
ASN_ANSWERS. The networks are real public ranges; the records are test data, not real locations.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

CITY_DATABASE_TYPE = "GeoIP2-City"
ASN_DATABASE_TYPE = "GeoLite2-ASN"

# address -> what the City database answers for it, in the pipeline's column names.
CITY_ANSWERS: dict[str, dict[str, Any]] = {
    "81.2.69.160": {
        "CountryIsoCode": "GB",
        "Country": "United Kingdom",
        "Subdivision": "England",
        "City": "London",
        "Latitude": 51.5142,
        "Longitude": -0.0931,
        "AccuracyRadiusKm": 10,
    },
    "216.160.83.56": {
        "CountryIsoCode": "US",
        "Country": "United States",
        "Subdivision": "Washington",
        "City": "Milton",
        "Latitude": 47.2513,
        "Longitude": -122.3149,
        "AccuracyRadiusKm": 22,
    },
    "2001:480:10::1": {
        "CountryIsoCode": "US",
        "Country": "United States",
        "Subdivision": "California",
        "City": "San Diego",
        "Latitude": 32.7203,
        "Longitude": -117.1552,
        "AccuracyRadiusKm": 100,
    },
    # Country known, no subdivision, city or location.
    "89.160.20.112": {
        "CountryIsoCode": "SE",
        "Country": "Sweden",
        "Subdivision": None,
        "City": None,
        "Latitude": None,
        "Longitude": None,
        "AccuracyRadiusKm": None,
    },
    # Country and location, no city.
    "2a02:ff00::5": {
        "CountryIsoCode": "NL",
        "Country": "Netherlands",
        "Subdivision": None,
        "City": None,
        "Latitude": 52.3824,
        "Longitude": 4.8995,
        "AccuracyRadiusKm": 100,
    },
}

# address -> (ASN, ASOrganization) in the ASN database.
ASN_ANSWERS: dict[str, tuple[int, str]] = {
    "81.2.69.160": (20712, "Andrews & Arnold Ltd"),
    "216.160.83.56": (209, "CenturyLink Communications"),
    "2001:480:10::1": (668, "Example Defense Network"),
    "89.160.20.112": (2914, "Example Transit"),
}

# Networks present in the City database that a correct pipeline never looks up: a lookup would
# report this fake country.
NEVER_LOOKED_UP_COUNTRY = "ZZ"
NON_GLOBAL_NETWORKS_IN_CITY_DB = ["10.0.0.0/8", "192.0.2.0/24", "100.64.0.0/10", "fc00::/7"]

# Global addresses no database here knows.
UNKNOWN_GLOBAL = ["8.8.8.8", "2606:4700:4700::1111"]

_CITY_NETWORKS = {
    "81.2.69.160": "81.2.69.0/24",
    "216.160.83.56": "216.160.83.0/24",
    "2001:480:10::1": "2001:480::/32",
    "89.160.20.112": "89.160.20.0/24",
    "2a02:ff00::5": "2a02:ff00::/32",
}
_ASN_NETWORKS = {address: _CITY_NETWORKS[address] for address in ASN_ANSWERS}


class _DatedWriter(MMDBWriter):
    """MMDBWriter with a chosen build date, to build stale databases."""

    def __init__(self, build_epoch: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        if self._build_epoch is not None:
            meta["build_epoch"] = self._build_epoch
        return meta


def _named(name: str | None, geoname_id: int, **extra: Any) -> dict[str, Any]:
    return {"geoname_id": geoname_id, "names": {"en": name, "de": f"{name} (de)"}, **extra}


def _city_record(answer: dict[str, Any], geoname_id: int) -> dict[str, Any]:
    record: dict[str, Any] = {
        "continent": _named("Somewhere", 6255148, code="EU"),
        "country": _named(answer["Country"], geoname_id, iso_code=answer["CountryIsoCode"]),
        "registered_country": _named(
            answer["Country"], geoname_id, iso_code=answer["CountryIsoCode"]
        ),
    }
    if answer["Subdivision"]:
        # Two levels, largest first as in GeoIP2; the pipeline reports the first.
        record["subdivisions"] = [
            _named(answer["Subdivision"], geoname_id + 1, iso_code="AA"),
            _named(f"{answer['Subdivision']} County", geoname_id + 2, iso_code="BB"),
        ]
    if answer["City"]:
        record["city"] = _named(answer["City"], geoname_id + 3)
    if answer["Latitude"] is not None:
        record["location"] = {
            "accuracy_radius": answer["AccuracyRadiusKm"],
            "latitude": answer["Latitude"],
            "longitude": answer["Longitude"],
            "time_zone": "Etc/UTC",
        }
    return record


def build_city_db(
    path: Path | str,
    *,
    database_type: str = CITY_DATABASE_TYPE,
    build_epoch: int | None = None,
) -> Path:
    """Write a GeoIP2-City layout database answering CITY_ANSWERS; returns its path.

    `build_epoch` (Unix seconds) sets the recorded build time; the default is now.
    """
    writer = _DatedWriter(
        build_epoch,
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en", "de"],
        description="spamgeo test City database",
    )
    for number, (address, network) in enumerate(_CITY_NETWORKS.items()):
        writer.insert_network(IPSet([network]), _city_record(CITY_ANSWERS[address], 1000 * number))
    trap = {
        "country": _named("Never Looked Up", 9999, iso_code=NEVER_LOOKED_UP_COUNTRY),
        "location": {"accuracy_radius": 1, "latitude": 0.0, "longitude": 0.0},
    }
    writer.insert_network(IPSet(NON_GLOBAL_NETWORKS_IN_CITY_DB), trap)
    target = Path(path)
    writer.to_db_file(str(target))
    return target


def build_asn_db(
    path: Path | str,
    *,
    database_type: str = ASN_DATABASE_TYPE,
    build_epoch: int | None = None,
) -> Path:
    """Write a GeoLite2-ASN layout database answering ASN_ANSWERS; returns its path."""
    writer = _DatedWriter(
        build_epoch,
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description="spamgeo test ASN database",
    )
    for address, network in _ASN_NETWORKS.items():
        number, organization = ASN_ANSWERS[address]
        writer.insert_network(
            IPSet([network]),
            {"autonomous_system_number": number, "autonomous_system_organization": organization},
        )
    target = Path(path)
    writer.to_db_file(str(target))
    return target


def days_ago(days: int) -> int:
    """A Unix time `days` days before now, for `build_epoch`."""
    return int(time.time()) - days * 86400


@pytest.fixture(scope="session")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh City database answering CITY_ANSWERS."""
    return build_city_db(tmp_path_factory.mktemp("mmdb") / "test-city.mmdb")


@pytest.fixture(scope="session")
def asn_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ASN database answering ASN_ANSWERS."""
    return build_asn_db(tmp_path_factory.mktemp("mmdb") / "test-asn.mmdb")
