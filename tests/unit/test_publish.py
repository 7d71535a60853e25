"""Tests of publishing against a real Azurite and a local folder: CSV form, layout, manifests,
idempotent re-runs, the rolling rollup and atomicity under injected failures."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from azure.storage.blob import ContainerClient

from spamgeo.local.azurite import Azurite, AzuriteError
from spamgeo.publish import (
    BlobStore,
    LocalStore,
    PublishError,
    RollupFold,
    Store,
    blob_store_from_connection_string,
    build_manifest,
    build_rollup,
    code_version,
    csv_bytes,
    daily_partition_path,
    day_ranges,
    publish_day,
    published_days,
    read_daily_manifests,
    read_published_day,
    spam_rollup,
)
from spamgeo.window import Window

PREFIX = "spamgeo"
DAY = date(2026, 12, 1)

# The published daily schema as the brief defines it, written out here rather than imported.
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
        ("IPVersion", pa.int64()),
        ("AddressClass", pa.string()),
        ("CountryIsoCode", pa.string()),
        ("Country", pa.string()),
        ("Subdivision", pa.string()),
        ("City", pa.string()),
        ("AccuracyRadiusKm", pa.int64()),
        ("ASN", pa.int64()),
        ("ASOrganization", pa.string()),
    ]
)
HEADER = DAILY_SCHEMA.names
GEO = [
    "IPVersion",
    "AddressClass",
    "CountryIsoCode",
    "Country",
    "Subdivision",
    "City",
    "AccuracyRadiusKm",
    "ASN",
    "ASOrganization",
]
INT_COLUMNS = {
    "count_",
    "DistinctMessages",
    "DistinctMessageRecipients",
    "IPVersion",
    "AccuracyRadiusKm",
    "ASN",
    "DaysSeen",
}
FLOAT_COLUMNS = {"Latitude", "Longitude"}


def row(day: date, ipv4: str = "", ipv6: str = "", count: int = 1, **geo: object) -> dict:
    values = {
        "SenderIPv6": ipv6,
        "SenderIPv4": ipv4,
        "Latitude": None,
        "Longitude": None,
        "count_": count,
        "Date": day,
        "DistinctMessages": count,
        "DistinctMessageRecipients": count,
        "IPVersion": 6 if ipv6 else 4,
        "AddressClass": "global",
        "CountryIsoCode": None,
        "Country": None,
        "Subdivision": None,
        "City": None,
        "AccuracyRadiusKm": None,
        "ASN": None,
        "ASOrganization": None,
    }
    values.update(geo)
    return values


def table_of(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=DAILY_SCHEMA)


def london(day: date, count: int = 3) -> dict:
    return row(
        day,
        ipv4="81.2.69.160",
        count=count,
        Latitude=51.5142,
        Longitude=-0.0931,
        CountryIsoCode="GB",
        Country="United Kingdom",
        Subdivision="England",
        City="London",
        AccuracyRadiusKm=100,
        ASN=20712,
        ASOrganization='Andrews & Arnold "AAISP", Ltd',
    )


def sao_paulo(day: date, count: int = 7) -> dict:
    return row(
        day,
        ipv6="2804:14c::1",
        count=count,
        Latitude=-23.5475,
        Longitude=-46.6361,
        CountryIsoCode="BR",
        Country="Brazil",
        Subdivision="São Paulo",
        City="São Paulo",
        AccuracyRadiusKm=5,
        ASN=28573,
        ASOrganization="Claro NXT",
    )


def unlocated(day: date, count: int = 2) -> dict:
    return row(day, ipv4="10.1.2.3", count=count, AddressClass="private")


def parse_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def typed(record: dict[str, str]) -> dict[str, object]:
    """CSV text back to values: empty is null, integer and float columns converted."""
    out: dict[str, object] = {}
    for name, text in record.items():
        if text == "" and name not in ("SenderIPv6", "SenderIPv4"):
            out[name] = None
        elif name in INT_COLUMNS:
            out[name] = int(text)
        elif name in FLOAT_COLUMNS:
            out[name] = float(text)
        else:
            out[name] = text
    return out


def run_manifest(day: date = DAY, rows_in: int = 100) -> dict[str, object]:
    return build_manifest(
        window=Window.for_days(day),
        run_id=f"scheduled__{day.isoformat()}",
        rows_in=rows_in,
        rows_out=3,
        geolocation_database="GeoLite2-City built 2019-12-24",
        quality={"success": True, "evaluated": 12},
    )


def attachments(tag: str, *, html: bool = True) -> dict[str, bytes]:
    files = {
        "quarantine.csv": f"TimeGenerated,reason\n2026-12-01T00:00:00Z,{tag}\n".encode(),
        "validation.json": json.dumps({"run": tag}).encode(),
    }
    if html:
        files["validation.html"] = f"<html><body>{tag}</body></html>".encode()
    return files


# --- Stores ----------------------------------------------------------------------------------


@pytest.fixture(params=["local", "blob"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """A factory of fresh, empty stores of one kind (a folder, or a container on Azurite)."""
    containers: list[ContainerClient] = []

    def make() -> Store:
        if request.param == "local":
            return LocalStore(tmp_path / uuid.uuid4().hex)
        server = request.getfixturevalue("azurite")
        client = ContainerClient.from_connection_string(
            server.connection_string, f"pub-{uuid.uuid4().hex[:16]}"
        )
        containers.append(client)
        return BlobStore(client)

    yield make
    for client in containers:
        client.delete_container()


class InjectedError(RuntimeError):
    pass


class FailingStore:
    """Wraps a store and fails its Nth change (write, copy or delete); 0 never fails."""

    def __init__(self, inner: Store, fail_at: int = 0) -> None:
        self.inner = inner
        self.fail_at = fail_at
        self.changes = 0

    def _change(self, what: str, path: str) -> None:
        self.changes += 1
        if self.changes == self.fail_at:
            raise InjectedError(f"injected failure at change {self.changes}: {what} {path}")

    def write(self, path: str, data: bytes, *, content_type: str) -> None:
        self._change("write", path)
        self.inner.write(path, data, content_type=content_type)

    def copy(self, src: str, dst: str) -> None:
        self._change("copy", dst)
        self.inner.copy(src, dst)

    def delete(self, path: str) -> None:
        self._change("delete", path)
        self.inner.delete(path)

    def read(self, path: str) -> bytes | None:
        return self.inner.read(path)

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def describe(self) -> str:
        return self.inner.describe()


class CorruptingStore(FailingStore):
    """Stores different bytes than it was given for staged files, as a broken upload would."""

    def write(self, path: str, data: bytes, *, content_type: str) -> None:
        if "/runs/" in path:
            data = data[:-1]
        self.inner.write(path, data, content_type=content_type)


# --- CSV conventions -------------------------------------------------------------------------


def test_csv_follows_power_bi_conventions() -> None:
    table = table_of([london(DAY), sao_paulo(DAY), unlocated(DAY)])

    data = csv_bytes(table)

    assert not data.startswith(b"\xef\xbb\xbf")
    assert b"\r" not in data
    lines = data.split(b"\n")
    assert lines[0] == ",".join(HEADER).encode()
    assert lines[-1] == b"" and len(lines) == 5
    rows = {r["SenderIPv4"] or r["SenderIPv6"]: r for r in parse_csv(data)}
    assert list(rows) == ["81.2.69.160", "2804:14c::1", "10.1.2.3"]
    assert rows["81.2.69.160"]["Latitude"] == "51.5142"
    assert rows["81.2.69.160"]["Longitude"] == "-0.0931"
    assert rows["81.2.69.160"]["ASOrganization"] == 'Andrews & Arnold "AAISP", Ltd'
    assert rows["2804:14c::1"]["City"] == "São Paulo"
    assert rows["2804:14c::1"]["SenderIPv4"] == ""
    assert rows["10.1.2.3"]["Latitude"] == "" and rows["10.1.2.3"]["ASN"] == ""
    for record in rows.values():
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", record["Date"])
        assert date.fromisoformat(record["Date"]) == DAY
    # Numbers are never quoted, so Power BI types them without a transform step.
    assert b',51.5142,-0.0931,3,2026-12-01,3,3,4,"global"' in data


def test_csv_prints_small_coordinates_without_exponent_and_timestamps_as_utc() -> None:
    instant = datetime(2026, 12, 1, 23, 59, 58, tzinfo=UTC)
    table = pa.table(
        {
            "Latitude": pa.array([0.0001, float("nan")]),
            "Seen": pa.array([instant, None], pa.timestamp("s", tz="UTC")),
        }
    )

    records = parse_csv(csv_bytes(table))

    assert records[0]["Latitude"] == "0.0001"
    assert records[1]["Latitude"] == ""
    assert records[0]["Seen"] == "2026-12-01T23:59:58Z"
    assert datetime.fromisoformat(records[0]["Seen"]) == instant
    assert records[1]["Seen"] == ""


def test_csv_of_an_empty_day_is_just_the_header() -> None:
    assert csv_bytes(table_of([])) == (",".join(HEADER) + "\n").encode()


# --- Daily partitions ------------------------------------------------------------------------


def test_publish_day_writes_the_layout_and_a_manifest_matching_the_bytes(
    new_store: Callable[[], Store],
) -> None:
    store = new_store()
    daily = table_of([london(DAY), sao_paulo(DAY), unlocated(DAY)])

    published = publish_day(
        store, PREFIX, DAY, daily, attachments=attachments("a"), manifest=run_manifest()
    )

    folder = "spamgeo/daily/date=2026-12-01/"
    assert daily_partition_path(PREFIX, DAY) == folder + "spam_by_ip.csv"
    stable = [path for path in store.list("spamgeo/daily/")]
    assert stable == sorted(
        folder + name
        for name in [
            "manifest.json",
            "quarantine.csv",
            "spam_by_ip.csv",
            "validation.html",
            "validation.json",
        ]
    )
    manifest = json.loads(store.read(folder + "manifest.json"))
    assert manifest["day"] == "2026-12-01"
    assert manifest["rows_in"] == 100
    assert manifest["run_id"] == "scheduled__2026-12-01"
    assert manifest["window"] == {"start": "2026-12-01T00:00:00Z", "end": "2026-12-02T00:00:00Z"}
    assert manifest["code_version"]["package"] == "0.1.0"
    assert set(manifest["files"]) == {
        "spam_by_ip.csv",
        "quarantine.csv",
        "validation.json",
        "validation.html",
    }
    for entry in manifest["files"].values():
        data = store.read(entry["path"])
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert entry["bytes"] == len(data)
    assert manifest["files"]["spam_by_ip.csv"]["rows"] == 3
    assert manifest["files"]["quarantine.csv"]["rows"] == 1
    assert published.rows == 3
    assert published.manifest_path == folder + "manifest.json"

    published_rows = [typed(r) for r in parse_csv(store.read(folder + "spam_by_ip.csv"))]
    expected = [
        {**r, "Date": r["Date"].isoformat()}
        for r in sorted(daily.to_pylist(), key=lambda r: -r["count_"])
    ]
    assert published_rows == expected

    assert read_daily_manifests(store, PREFIX, [DAY, DAY - timedelta(days=1)]) == {DAY: manifest}


def test_republishing_the_same_input_is_byte_identical(new_store: Callable[[], Store]) -> None:
    store = new_store()
    rows = [london(DAY), sao_paulo(DAY), unlocated(DAY), row(DAY, ipv4="1.2.3.4", count=3)]
    first = publish_day(
        store, PREFIX, DAY, table_of(rows), attachments=attachments("a"), manifest=run_manifest()
    )
    first_bytes = {name: store.read(path) for name, path in first.paths.items()}

    # The counting step may emit rows in another order; the published files must not change.
    second = publish_day(
        store,
        PREFIX,
        DAY,
        table_of(rows[::-1]),
        attachments=attachments("a"),
        manifest=run_manifest(),
    )

    assert {name: store.read(path) for name, path in second.paths.items()} == first_bytes
    assert second.run_key != first.run_key
    run_folders = {path.split("/")[3] for path in store.list("spamgeo/runs/")}
    assert run_folders == {first.run_key, second.run_key}


def test_republishing_removes_files_the_new_run_does_not_write(
    new_store: Callable[[], Store],
) -> None:
    store = new_store()
    daily = table_of([london(DAY)])
    publish_day(store, PREFIX, DAY, daily, attachments=attachments("a"), manifest=run_manifest())

    publish_day(
        store,
        PREFIX,
        DAY,
        daily,
        attachments=attachments("b", html=False),
        manifest=run_manifest(),
    )

    assert store.read(daily_partition_path(PREFIX, DAY, "validation.html")) is None
    manifest = read_daily_manifests(store, PREFIX, [DAY])[DAY]
    assert "validation.html" not in manifest["files"]
    assert store.read(daily_partition_path(PREFIX, DAY, "quarantine.csv")).endswith(b",b\n")


def test_a_failure_at_any_point_leaves_the_last_good_output(
    new_store: Callable[[], Store],
) -> None:
    old_table = table_of([london(DAY, count=3), unlocated(DAY)])
    new_table = table_of([london(DAY, count=9), sao_paulo(DAY)])
    old_files = {**attachments("old"), "spam_by_ip.csv": csv_bytes(old_table)}
    new_files = {**attachments("new", html=False), "spam_by_ip.csv": csv_bytes(new_table)}
    csv_path = daily_partition_path(PREFIX, DAY)

    def publish_new(store: Store) -> None:
        publish_day(
            store,
            PREFIX,
            DAY,
            new_table,
            attachments=attachments("new", html=False),
            manifest=run_manifest(rows_in=900),
        )

    counter = FailingStore(new_store())
    publish_day(
        counter, PREFIX, DAY, old_table, attachments=attachments("old"), manifest=run_manifest()
    )
    before = counter.changes
    publish_new(counter)
    changes_per_publish = counter.changes - before
    assert changes_per_publish >= 8  # stage 4, copy 4, delete the file the new run dropped

    for fail_at in range(1, changes_per_publish + 1):
        store = new_store()
        publish_day(
            store, PREFIX, DAY, old_table, attachments=attachments("old"), manifest=run_manifest()
        )
        failing = FailingStore(store, fail_at)
        # Changes 1-8 stage and commit and must fail loudly; later ones only clean up after
        # the commit, which is logged and does not fail the publish.
        commit_phase = fail_at <= 8
        with pytest.raises(InjectedError) if commit_phase else contextlib.suppress(InjectedError):
            publish_new(failing)

        # Power BI's view: the stable CSV is always one complete version.
        assert store.read(csv_path) in (old_files["spam_by_ip.csv"], new_files["spam_by_ip.csv"])
        # A consistent reader's view: every file from one run, never a mix.
        snapshot = read_published_day(store, PREFIX, DAY)
        assert snapshot is not None
        assert snapshot.files in (old_files, new_files), f"mixed runs after failure {fail_at}"
        assert snapshot.manifest["rows_in"] == (900 if snapshot.files == new_files else 100)

        publish_new(store)
        assert store.read(csv_path) == new_files["spam_by_ip.csv"]
        assert read_published_day(store, PREFIX, DAY).files == new_files


def test_a_corrupted_staged_file_replaces_nothing(new_store: Callable[[], Store]) -> None:
    store = new_store()
    old_table = table_of([london(DAY)])
    publish_day(store, PREFIX, DAY, old_table, attachments={}, manifest=run_manifest())
    old_csv = store.read(daily_partition_path(PREFIX, DAY))

    with pytest.raises(PublishError, match="does not match"):
        publish_day(
            CorruptingStore(store),
            PREFIX,
            DAY,
            table_of([sao_paulo(DAY)]),
            attachments={},
            manifest=run_manifest(),
        )

    assert store.read(daily_partition_path(PREFIX, DAY)) == old_csv
    assert read_published_day(store, PREFIX, DAY).files == {"spam_by_ip.csv": old_csv}


@pytest.mark.parametrize(
    ("daily", "message"),
    [
        pytest.param(table_of([london(DAY)]).drop_columns(["City"]), "missing", id="no-city"),
        pytest.param(table_of([london(DAY - timedelta(days=1))]), "Date", id="other-day"),
    ],
)
def test_publish_day_refuses_a_table_that_is_not_that_day(daily: pa.Table, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        publish_day(
            LocalStore(Path("/nonexistent")),
            PREFIX,
            DAY,
            daily,
            attachments={},
            manifest={},
        )


def test_publish_day_refuses_manifest_keys_it_computes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="files"):
        publish_day(
            LocalStore(tmp_path),
            PREFIX,
            DAY,
            table_of([]),
            attachments={},
            manifest={"files": []},
        )


# --- Rollup ----------------------------------------------------------------------------------


def expected_rollup(days: dict[date, list[dict]]) -> list[dict[str, object]]:
    """The rollup computed by hand: sums over days, geolocation of the latest day."""
    by_address: dict[tuple[str, str], dict[str, object]] = {}
    for day in sorted(days):
        for r in days[day]:
            key = (r["SenderIPv6"], r["SenderIPv4"])
            seen = by_address.get(key)
            if seen is None:
                seen = by_address[key] = {
                    "count_": 0,
                    "DistinctMessages": 0,
                    "DistinctMessageRecipients": 0,
                    "FirstSeen": day.isoformat(),
                    "DaysSeen": 0,
                }
            for name in ("count_", "DistinctMessages", "DistinctMessageRecipients"):
                seen[name] += r[name]
            seen["DaysSeen"] += 1
            seen["LastSeen"] = day.isoformat()
            for name in ["Latitude", "Longitude", *GEO]:
                seen[name] = r[name]
    return [
        {"SenderIPv6": key[0], "SenderIPv4": key[1], **values} for key, values in by_address.items()
    ]


def test_rollup_over_partitions_with_gaps(
    new_store: Callable[[], Store], caplog: pytest.LogCaptureFixture
) -> None:
    store = new_store()
    as_of = date(2026, 12, 10)
    moved = {**london(as_of), "City": None, "Latitude": None, "Longitude": None, "ASN": 1}
    days = {
        date(2026, 12, 4): [london(date(2026, 12, 4), 5), unlocated(date(2026, 12, 4), 1)],
        date(2026, 12, 5): [sao_paulo(date(2026, 12, 5), 2)],
        date(2026, 12, 9): [sao_paulo(date(2026, 12, 9), 4), unlocated(date(2026, 12, 9), 6)],
        as_of: [moved],
    }
    outside = date(2026, 12, 3)
    for day, rows in {**days, outside: [london(outside, 1000)]}.items():
        publish_day(store, PREFIX, day, table_of(rows), attachments={}, manifest=run_manifest(day))

    with caplog.at_level(logging.INFO, logger="spamgeo.publish"):
        rollup = build_rollup(store, PREFIX, as_of, days=7)

    gaps = [date(2026, 12, 6), date(2026, 12, 7), date(2026, 12, 8)]
    assert rollup.days_missing == gaps
    assert rollup.days_present == sorted(days)
    assert rollup.complete is False
    assert "backfill 2026-12-06..2026-12-08" in caplog.text
    assert rollup.paths["spam_by_ip_7d.csv"] == "spamgeo/latest/spam_by_ip_7d.csv"

    data = store.read("spamgeo/latest/spam_by_ip_7d.csv")
    records = parse_csv(data)
    assert list(records[0]) == [
        "SenderIPv6",
        "SenderIPv4",
        "Latitude",
        "Longitude",
        "count_",
        "DistinctMessages",
        "DistinctMessageRecipients",
        "FirstSeen",
        "LastSeen",
        "DaysSeen",
        *GEO,
    ]
    got = [typed(r) for r in records]
    want = expected_rollup(days)
    assert sorted(got, key=str) == sorted(want, key=str)
    assert [r["count_"] for r in got] == sorted((r["count_"] for r in want), reverse=True)
    assert rollup.rows == len(want) == 3

    manifest = json.loads(store.read("spamgeo/latest/manifest.json"))
    entry = manifest["rollups"]["spam_by_ip_7d.csv"]
    assert entry["complete"] is False
    assert entry["days_missing"] == [d.isoformat() for d in gaps]
    assert entry["missing_ranges"] == ["2026-12-06..2026-12-08"]
    assert entry["file"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_rollup_of_a_complete_window_and_of_two_lengths(new_store: Callable[[], Store]) -> None:
    store = new_store()
    days = {DAY + timedelta(days=n): [london(DAY + timedelta(days=n), n + 1)] for n in range(3)}
    for day, rows in days.items():
        publish_day(store, PREFIX, day, table_of(rows), attachments={}, manifest={"rows_in": 1})
    last = max(days)

    three = build_rollup(store, PREFIX, last, days=3)
    one = build_rollup(store, PREFIX, last, days=1)

    assert three.complete and three.days_missing == [] and three.days_present == sorted(days)
    record = typed(parse_csv(store.read("spamgeo/latest/spam_by_ip_3d.csv"))[0])
    assert record["count_"] == 1 + 2 + 3 and record["DaysSeen"] == 3
    assert record["FirstSeen"] == "2026-12-01" and record["LastSeen"] == "2026-12-03"
    assert one.complete and one.rows == 1
    manifest = json.loads(store.read("spamgeo/latest/manifest.json"))
    assert set(manifest["rollups"]) == {"spam_by_ip_3d.csv", "spam_by_ip_1d.csv"}


def test_rollup_reads_the_committed_run_when_a_later_one_is_half_done(
    new_store: Callable[[], Store],
) -> None:
    store = new_store()
    rows = [london(DAY, 4)]
    publish_day(store, PREFIX, DAY, table_of(rows), attachments={}, manifest=run_manifest())
    # A later run that copied its CSV but died before its manifest.
    half_done = csv_bytes(table_of([london(DAY, 999)]))
    store.write(daily_partition_path(PREFIX, DAY), half_done, content_type="text/csv")

    build_rollup(store, PREFIX, DAY, days=1)

    record = typed(parse_csv(store.read("spamgeo/latest/spam_by_ip_1d.csv"))[0])
    assert record["count_"] == 4


def test_rollup_with_no_partitions_is_empty_and_incomplete(tmp_path: Path) -> None:
    rollup = build_rollup(LocalStore(tmp_path), PREFIX, DAY, days=2)

    assert rollup.rows == 0 and rollup.complete is False
    assert rollup.days_missing == [DAY - timedelta(days=1), DAY]
    data = (tmp_path / "spamgeo" / "latest" / "spam_by_ip_2d.csv").read_bytes()
    assert data.count(b"\n") == 1


def test_rollup_folded_day_by_day_equals_the_rollup_folded_at_once(monkeypatch) -> None:
    first = date(2026, 12, 1)
    days = {}
    for n in range(6):
        day = first + timedelta(days=n)
        days[day] = [london(day, n + 1)] if n % 2 else [sao_paulo(day, n + 2)]
        if n in (1, 4):  # an address of its own on some days, first seen on day 1
            days[day].append(unlocated(day, 10 * n))
    days[day][0].update(City="Croydon", Latitude=51.37, AccuracyRadiusKm=None)  # moved last day
    # Oldest last: the latest day must win by its date, not by the order tables arrive in.
    tables = [table_of(days[day]) for day in sorted(days, reverse=True)]

    at_once = spam_rollup(tables)
    monkeypatch.setattr(RollupFold, "FOLD_MIN_ROWS", 1)  # fold after every table
    day_by_day = spam_rollup(tables)

    assert day_by_day.equals(at_once)
    got = [typed(r) for r in parse_csv(csv_bytes(day_by_day))]
    assert sorted(got, key=str) == sorted(expected_rollup(days), key=str)
    assert {r["SenderIPv4"] or r["SenderIPv6"]: r["DaysSeen"] for r in got} == {
        "2804:14c::1": 3,
        "81.2.69.160": 3,
        "10.1.2.3": 2,
    }
    assert [r["City"] for r in got if r["SenderIPv4"] == "81.2.69.160"] == ["Croydon"]


def test_day_ranges_joins_consecutive_days() -> None:
    days = [date(2026, 11, 1), date(2026, 11, 3), date(2026, 11, 2), date(2026, 11, 20)]
    assert day_ranges(days) == ["2026-11-01..2026-11-03", "2026-11-20"]


# --- Stores and helpers ----------------------------------------------------------------------


def test_blob_store_sets_content_type_and_md5(blob_container: ContainerClient) -> None:
    store = BlobStore(blob_container)
    data = "City\nSão Paulo\n".encode()

    store.write("a/b.csv", data, content_type="text/csv; charset=utf-8")

    properties = blob_container.get_blob_client("a/b.csv").get_blob_properties()
    assert properties.content_settings.content_type == "text/csv; charset=utf-8"
    assert bytes(properties.content_settings.content_md5) == hashlib.md5(data).digest()
    assert store.read("a/b.csv") == data
    assert store.read("a/missing.csv") is None
    assert store.list("a/") == ["a/b.csv"]
    store.copy("a/b.csv", "c/d.csv")
    assert store.read("c/d.csv") == data
    store.delete("a/b.csv")
    store.delete("a/b.csv")
    assert store.list("a/") == []
    assert "AccountKey" not in store.describe()


def test_blob_store_from_connection_string(azurite: Azurite) -> None:
    store = blob_store_from_connection_string(azurite.connection_string, "from-conn-str")
    store.write("x.json", b"{}", content_type="application/json")
    assert store.read("x.json") == b"{}"
    assert store.describe() == f"{azurite.blob_endpoint}/from-conn-str"


def test_a_malformed_connection_string_names_the_setting_without_the_key() -> None:
    with pytest.raises(PublishError, match="connection string") as caught:
        blob_store_from_connection_string("AccountKey=secret-key-value", "c")
    assert "secret-key-value" not in str(caught.value)


def test_local_store_refuses_paths_outside_its_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ValueError, match="relative"):
        store.write("../escape.csv", b"x", content_type="text/csv")


def test_code_version_survives_a_missing_git(monkeypatch: pytest.MonkeyPatch) -> None:
    code_version.cache_clear()
    monkeypatch.setenv("PATH", "")
    try:
        assert code_version() == {"package": "0.1.0", "git": None}
    finally:
        code_version.cache_clear()


# --- Azurite launcher ------------------------------------------------------------------------


def test_azurite_starts_answers_and_stops(tmp_path: Path) -> None:
    with Azurite(tmp_path / "blobs") as server:
        pid = server._process.pid
        assert server.port > 0
        assert server.blob_endpoint == f"http://127.0.0.1:{server.port}/devstoreaccount1"
        store = blob_store_from_connection_string(server.connection_string, "launcher")
        store.write("ok.txt", b"ok", content_type="text/plain")
        assert store.read("ok.txt") == b"ok"

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
        pass


def test_azurite_missing_binary_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(AzuriteError, match="npm ci"):
        Azurite(tmp_path, binary=tmp_path / "no-such-azurite").start()

    monkeypatch.setenv("SPAMGEO_AZURITE_BIN", str(tmp_path / "elsewhere"))
    with pytest.raises(AzuriteError, match="SPAMGEO_AZURITE_BIN"):
        Azurite(tmp_path).start()


def test_published_days_lists_only_committed_partitions(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    later, earlier = DAY + timedelta(days=3), DAY
    for day in (later, earlier):
        publish_day(
            store, "p", day, table_of([london(day)]), attachments={}, manifest=run_manifest(day)
        )
    # A CSV without its manifest is a partition whose first publish never finished.
    store.write(daily_partition_path("p", DAY + timedelta(days=1)), b"x\n", content_type="text/csv")
    assert published_days(store, "p") == [earlier, later]
