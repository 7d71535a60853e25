"""Publishing for Power BI: daily partitions, the rolling N-day rollup and their manifests.

Every file of a run is first staged under `{prefix}/runs/...`, read back and verified, then
copied to its stable path with the manifest last, so a failure at any point leaves each
stable file either the previous good version or the new complete one. A reader that needs
the files of one run together reads the manifest and checks its checksums
(`read_published_day` does this and falls back to the manifest's immutable staged copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from spamgeo import __version__
from spamgeo.memory import release_freed_memory
from spamgeo.schema import DAILY_COLUMNS, DAILY_TYPES, LOCATION_COLUMNS, SEED_COLUMNS
from spamgeo.window import Window

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "spamgeo"
DAILY_CSV = "spam_by_ip.csv"
MANIFEST = "manifest.json"
MANIFEST_KIND_DAILY = "spamgeo.daily"
MANIFEST_KIND_ROLLUP = "spamgeo.rollup"
# Keys publish_day computes itself; a caller's manifest must not set them.
RESERVED_MANIFEST_KEYS = frozenset({"kind", "day", "files", "published"})

ADDRESS_KEYS = ["SenderIPv6", "SenderIPv4"]
# Geolocation columns the rollup takes from the latest day an address was seen.
LATEST_GEO_COLUMNS = ["IPVersion", *LOCATION_COLUMNS]
SUMMED_COLUMNS = ["count_", "DistinctMessages", "DistinctMessageRecipients"]
ROLLUP_COLUMNS: list[str] = [
    *SEED_COLUMNS,
    "DistinctMessages",
    "DistinctMessageRecipients",
    "FirstSeen",
    "LastSeen",
    "DaysSeen",
    *LATEST_GEO_COLUMNS,
]

_CONTENT_TYPES = {
    ".csv": "text/csv; charset=utf-8",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TEMP_MARK = ".spamgeo-tmp-"


class PublishError(RuntimeError):
    """Publishing failed or found published files that disagree with their manifest."""


# --- CSV -------------------------------------------------------------------------------------


def csv_bytes(table: pa.Table) -> bytes:
    """The table as CSV that Power BI reads without fuss.

    UTF-8 without BOM, one header row, comma separator, LF line ends (Power BI accepts LF as
    well as RFC 4180's CRLF, and LF keeps files diffable), `.` as decimal point, floats in
    their shortest exact form without exponent for ordinary values, dates `YYYY-MM-DD`,
    timestamps ISO-8601 UTC with `Z`, nulls as empty fields and columns in the table's order.
    pyarrow's "needed" quoting quotes string values (so an empty string `""` stays distinct
    from a null) and never numbers or dates; embedded quotes are doubled.
    """
    columns = [_csv_ready(column) for column in table.columns]
    ready = pa.Table.from_arrays(columns, names=table.column_names)
    header_quoting = (
        "none" if all(_SAFE_NAME.match(name) for name in table.column_names) else "needed"
    )
    # The system allocator: with Arrow's default (mimalloc) the fresh pages of the output
    # buffer cost 0.4-0.5 s of kernel time in most runs on our 2-core VMs, ten times the write.
    pool = pa.system_memory_pool()
    sink = pa.BufferOutputStream(memory_pool=pool)
    pacsv.write_csv(
        ready,
        sink,
        pacsv.WriteOptions(
            include_header=True,
            delimiter=",",
            eol="\n",
            null_string="",
            quoting_style="needed",
            quoting_header=header_quoting,
            batch_size=64 * 1024,
        ),
        memory_pool=pool,
    )
    return sink.getvalue().to_pybytes()


def _csv_ready(column: pa.ChunkedArray) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_timestamp(kind):
        # Naive timestamps are UTC throughout this pipeline, like every Log Analytics column.
        utc = column.cast(pa.timestamp(kind.unit, tz="UTC"))
        text = pc.strftime(utc, format="%Y-%m-%dT%H:%M:%S", locale="C")
        return pc.binary_join_element_wise(text, "Z", "")
    if pa.types.is_floating(kind):
        # NaN would print as "nan", which Power BI reads as text; it means "no value" here.
        return pc.if_else(pc.is_nan(column), pa.scalar(None, kind), column)
    return column


def read_daily_csv(data: bytes, *, source: str = "daily CSV") -> pa.Table:
    """Parse a published daily CSV back into a table typed as the pipeline wrote it."""
    return _read_typed_csv(data, DAILY_TYPES, source=source)


def _read_typed_csv(data: bytes, types: Mapping[str, pa.DataType], *, source: str) -> pa.Table:
    header = data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r").split(",")
    if header != list(types):
        raise PublishError(
            f"{source} has columns {header}, expected {list(types)}: republish that day"
        )
    return pacsv.read_csv(
        io.BytesIO(data),
        convert_options=pacsv.ConvertOptions(
            column_types=dict(types),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


# --- Layout ----------------------------------------------------------------------------------


def _join(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def daily_folder(prefix: str, day: date) -> str:
    """The folder holding one UTC day's published files."""
    return _join(prefix, "daily", f"date={day.isoformat()}")


def daily_partition_path(prefix: str, day: date, name: str = DAILY_CSV) -> str:
    """Stable path of one file of a day, e.g. `spamgeo/daily/date=2026-12-01/spam_by_ip.csv`."""
    return _join(daily_folder(prefix, day), name)


def rollup_csv_name(days: int) -> str:
    return f"spam_by_ip_{days}d.csv"


def latest_path(prefix: str, name: str) -> str:
    """Stable path of a rollup file or of the rollup manifest under `{prefix}/latest/`."""
    return _join(prefix, "latest", name)


def _daily_runs_folder(prefix: str, day: date) -> str:
    return _join(prefix, "runs", f"date={day.isoformat()}")


def _latest_runs_folder(prefix: str) -> str:
    return _join(prefix, "runs", "latest")


def _content_type(name: str) -> str:
    return _CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


# --- Storage ---------------------------------------------------------------------------------


class Store(Protocol):
    """Where published files go: a local folder or a blob container, addressed by `/` paths."""

    def write(self, path: str, data: bytes, *, content_type: str) -> None: ...

    def read(self, path: str) -> bytes | None: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, path: str) -> None: ...

    def copy(self, src: str, dst: str) -> None: ...

    def describe(self) -> str: ...


class LocalStore:
    """A folder on disk; each write lands whole through a temporary file and `os.replace`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _file(self, path: str) -> Path:
        parts = path.split("/")
        if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"store path {path!r} must be relative, without '.' or '..' parts")
        return self.root.joinpath(*parts)

    def write(self, path: str, data: bytes, *, content_type: str) -> None:
        # content_type only matters to blob readers; a file's type is its extension.
        target = self._file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_MARK)
        try:
            with os.fdopen(handle, "wb") as temp:
                temp.write(data)
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise

    def read(self, path: str) -> bytes | None:
        try:
            return self._file(path).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*folder.split("/")) if folder else self.root
        if not base.is_dir():
            return []
        found = []
        for file in base.rglob("*"):
            if file.is_file() and not file.name.startswith(_TEMP_MARK):
                relative = file.relative_to(self.root).as_posix()
                if relative.startswith(prefix):
                    found.append(relative)
        return sorted(found)

    def delete(self, path: str) -> None:
        target = self._file(path)
        target.unlink(missing_ok=True)
        # Empty folders left by pruned runs are removed like blob "folders" vanish.
        parent = target.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def copy(self, src: str, dst: str) -> None:
        data = self.read(src)
        if data is None:
            raise PublishError(f"cannot copy {self.describe()}/{src}: it does not exist")
        self.write(dst, data, content_type=_content_type(dst))

    def describe(self) -> str:
        return self.root.resolve().as_uri()


class BlobStore:
    """An Azure Blob container (or Azurite); a single-blob upload is atomic for readers."""

    def __init__(self, container_client: ContainerClient, *, copy_timeout: float = 120.0) -> None:
        from azure.core.exceptions import ResourceExistsError

        self.container = container_client
        self.copy_timeout = copy_timeout
        with self._errors("create container", ""):
            try:
                self.container.create_container()
                log.info("created blob container %s", self.describe())
            except ResourceExistsError:
                pass

    @contextlib.contextmanager
    def _errors(self, action: str, path: str) -> Iterator[None]:
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

        try:
            yield
        except ServiceRequestError as exc:
            raise PublishError(
                f"cannot reach blob storage at {self.describe()} to {action} {path}: check the "
                f"storage connection's endpoint ({type(exc).__name__})"
            ) from exc
        except ClientAuthenticationError as exc:
            raise PublishError(
                f"blob storage {self.describe()} refused the credentials to {action} {path}: "
                "check the storage connection's key, SAS or identity"
            ) from exc

    def write(self, path: str, data: bytes, *, content_type: str) -> None:
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(
            content_type=content_type, content_md5=bytearray(hashlib.md5(data).digest())
        )
        # Larger uploads go as staged blocks committed by one Put Block List, so readers still
        # see either the old blob or the new one; "md5" has the service check each request.
        with self._errors("write", path):
            self.container.upload_blob(
                path, data, overwrite=True, content_settings=settings, validate_content="md5"
            )

    def read(self, path: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors("read", path):
            try:
                return self.container.download_blob(path).readall()
            except ResourceNotFoundError:
                return None

    def list(self, prefix: str) -> list[str]:
        with self._errors("list", prefix):
            return sorted(self.container.list_blob_names(name_starts_with=prefix))

    def delete(self, path: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors("delete", path), contextlib.suppress(ResourceNotFoundError):
            self.container.delete_blob(path, delete_snapshots="include")

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy; within one account it completes at once, but pending is awaited."""
        target = self.container.get_blob_client(dst)
        source_url = self.container.get_blob_client(src).url
        with self._errors("copy to", dst):
            status = target.start_copy_from_url(source_url).get("copy_status")
            deadline = time.monotonic() + self.copy_timeout
            while status == "pending":
                if time.monotonic() > deadline:
                    raise PublishError(
                        f"copy {src} -> {dst} still pending after {self.copy_timeout:.0f} s"
                    )
                time.sleep(0.2)
                status = target.get_blob_properties().copy.status
        if status != "success":
            raise PublishError(f"copy {src} -> {dst} ended {status}")

    def describe(self) -> str:
        return self.container.url.split("?", 1)[0]


def blob_store_from_connection_string(conn_str: str, container: str) -> BlobStore:
    """A BlobStore on `container` from a storage connection string (Azurite's works too)."""
    from azure.storage.blob import ContainerClient

    try:
        client = ContainerClient.from_connection_string(conn_str, container_name=container)
    except ValueError:
        # The SDK's message may quote the string, and with it the account key.
        raise PublishError(
            "the blob storage connection string is malformed: check the storage connection "
            "setting (expected AccountName=...;AccountKey=...;BlobEndpoint=... or similar)"
        ) from None
    return BlobStore(client)


# --- Manifests -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def code_version() -> dict[str, str | None]:
    """The package version and, when this is a git checkout, `git describe` of it."""
    described = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if result.returncode == 0:
            described = result.stdout.strip() or None
    return {"package": __version__, "git": described}


def build_manifest(
    *,
    window: Window,
    run_id: str,
    rows_in: int,
    rows_out: int,
    geolocation_database: str,
    quality: Mapping[str, object] | None = None,
    **extra: object,
) -> dict[str, object]:
    """The run metadata publish_day stores in a day's manifest, under these keys.

    `rows_in` is the number of EmailEvents rows extracted for the day (the quality step's
    trailing-volume check reads it back), `rows_out` the number of addresses published,
    `geolocation_database` the database's describe() text with its build date, `quality` a
    summary of the validation. Extra keyword arguments are kept as given.
    """
    manifest: dict[str, object] = {
        "window": {"start": window.start, "end": window.end},
        "run_id": run_id,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "geolocation_database": geolocation_database,
        "quality": dict(quality or {}),
        "code_version": code_version(),
    }
    manifest.update(extra)
    return manifest


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        if value.tzinfo is not None and value.utcoffset() == timedelta(0):
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Window):
        return {"start": value.start, "end": value.end}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"manifest value of type {type(value).__name__} is not JSON-serialisable")


def _manifest_bytes(manifest: Mapping[str, object]) -> bytes:
    text = json.dumps(manifest, indent=2, ensure_ascii=False, default=_json_default)
    return (text + "\n").encode("utf-8")


def _parse_manifest(data: bytes | None, source: str) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        log.warning("ignoring unreadable manifest %s (%d bytes)", source, len(data))
        return None
    return parsed if isinstance(parsed, dict) else None


def read_daily_manifests(store: Store, prefix: str, days: Iterable[date]) -> dict[date, dict]:
    """The committed manifests of the given days; days never published are left out.

    Each holds the caller's run metadata (for instance `rows_in`, see build_manifest) plus
    `day`, `files` and `published`.
    """
    manifests = {}
    for day in days:
        path = daily_partition_path(prefix, day, MANIFEST)
        manifest = _parse_manifest(store.read(path), path)
        if manifest is not None:
            manifests[day] = manifest
    return manifests


# --- Atomic file sets ------------------------------------------------------------------------


def _file_entry(path: str, data: bytes, rows: int | None) -> dict[str, object]:
    return {
        "path": path,
        "bytes": len(data),
        "rows": rows,
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": _content_type(path),
    }


def _csv_rows(data: bytes) -> int | None:
    try:
        return pacsv.read_csv(io.BytesIO(data)).num_rows
    except (pa.ArrowInvalid, ValueError):
        return None


def _run_key(digests: Mapping[str, str], now: datetime) -> str:
    combined = hashlib.sha256()
    for name in sorted(digests):
        combined.update(f"{name}={digests[name]};".encode())
    return f"{now:%Y%m%dT%H%M%S%fZ}-{combined.hexdigest()[:12]}"


def _commit_file_set(
    store: Store,
    *,
    stable: Mapping[str, str],
    staging_folder: str,
    files: Mapping[str, bytes],
    manifest_name: str,
) -> None:
    """Stage every file, verify the staged bytes, then copy each to its stable path.

    The manifest is copied last, so it is only ever visible once every file it lists is in
    place.
    """
    for name, data in files.items():
        store.write(_join(staging_folder, name), data, content_type=_content_type(name))

    for name, data in files.items():
        staged = store.read(_join(staging_folder, name))
        if staged != data:
            raise PublishError(
                f"staged {store.describe()}/{_join(staging_folder, name)} does not match what "
                "was written; nothing was replaced"
            )

    for name in [*(name for name in files if name != manifest_name), manifest_name]:
        store.copy(_join(staging_folder, name), stable[name])


def _prune(store: Store, paths: Iterable[str], what: str) -> None:
    # The new output is committed by now: a failure here leaves clutter, never bad data.
    for path in paths:
        try:
            store.delete(path)
        except Exception:
            log.warning("could not delete %s %s/%s", what, store.describe(), path, exc_info=True)


def _prune_runs(store: Store, runs_folder: str, keep: set[str]) -> None:
    stale = [
        path
        for path in store.list(runs_folder + "/")
        if path[len(runs_folder) + 1 :].split("/", 1)[0] not in keep
    ]
    _prune(store, stale, "stale staged run file")


# --- Daily partitions ------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedDay:
    """What publish_day committed for one day."""

    day: date
    rows: int
    bytes: int
    run_key: str
    paths: dict[str, str]
    manifest_path: str
    manifest: dict[str, object] = field(repr=False)


def _daily_table(day: date, daily: pa.Table) -> pa.Table:
    missing = [name for name in DAILY_COLUMNS if name not in daily.column_names]
    extra = [name for name in daily.column_names if name not in DAILY_COLUMNS]
    if missing or extra:
        raise ValueError(
            f"daily table for {day} must have exactly schema.DAILY_COLUMNS: "
            f"missing {missing}, unexpected {extra}"
        )
    table = daily.select(DAILY_COLUMNS)
    if table.num_rows:
        dates = table["Date"].cast(pa.date32())
        low, high = pc.min_max(dates).values()
        if dates.null_count or low.as_py() != day or high.as_py() != day:
            raise ValueError(
                f"daily table for {day} holds Date values from {low} to {high} "
                f"({dates.null_count} null): a partition must hold exactly its own day"
            )
    # A fixed row order makes a re-run with the same input byte-identical, whatever order
    # the counting step emitted its groups in.
    return table.sort_by(
        [("count_", "descending"), ("SenderIPv4", "ascending"), ("SenderIPv6", "ascending")]
    )


def publish_day(
    store: Store,
    prefix: str,
    day: date,
    daily: pa.Table,
    *,
    attachments: Mapping[str, bytes],
    manifest: Mapping[str, object],
) -> PublishedDay:
    """Replace exactly one day's partition: the daily CSV, its attachments, then its manifest.

    `attachments` maps plain file names (quarantine.csv, validation.json, validation.html) to
    their bytes; `manifest` is the run's metadata (see build_manifest) and is stored as given
    beside what publish computes: `day`, `files` (path, bytes, rows, sha256 of each file) and
    `published` (run key, time, staging folder). Files of an earlier run that this run does
    not write are removed once the new manifest is in place.
    """
    started = time.monotonic()
    clashes = sorted(RESERVED_MANIFEST_KEYS & set(manifest))
    if clashes:
        raise ValueError(f"manifest keys {clashes} are set by publish_day; rename them")
    for name in attachments:
        if not _SAFE_NAME.match(name) or name in (DAILY_CSV, MANIFEST):
            raise ValueError(
                f"attachment name {name!r} must be a plain file name other than "
                f"{DAILY_CSV} and {MANIFEST}"
            )

    table = _daily_table(day, daily)
    files: dict[str, bytes] = {name: attachments[name] for name in sorted(attachments)}
    files[DAILY_CSV] = csv_bytes(table)
    stable = {name: daily_partition_path(prefix, day, name) for name in [*files, MANIFEST]}
    entries = {}
    for name, data in files.items():
        if name == DAILY_CSV:
            rows = table.num_rows
        else:
            rows = _csv_rows(data) if name.endswith(".csv") else None
        entries[name] = _file_entry(stable[name], data, rows)

    now = datetime.now(UTC)
    run_key = _run_key({name: str(entry["sha256"]) for name, entry in entries.items()}, now)
    staging_folder = _join(_daily_runs_folder(prefix, day), run_key)
    full_manifest: dict[str, object] = {
        "kind": MANIFEST_KIND_DAILY,
        "day": day,
        **manifest,
        "files": entries,
        "published": {"run_key": run_key, "at": now, "staging": staging_folder + "/"},
    }
    files[MANIFEST] = _manifest_bytes(full_manifest)
    previous = _parse_manifest(store.read(stable[MANIFEST]), stable[MANIFEST])

    _commit_file_set(
        store,
        stable=stable,
        staging_folder=staging_folder,
        files=files,
        manifest_name=MANIFEST,
    )

    leftovers = [
        path for path in store.list(daily_folder(prefix, day) + "/") if path not in stable.values()
    ]
    _prune(store, leftovers, "file of an earlier run")
    keep = {run_key}
    if previous is not None:
        # Kept so a reader holding the previous manifest can still finish a consistent read.
        keep.add(str(previous.get("published", {}).get("run_key", "")))
    _prune_runs(store, _daily_runs_folder(prefix, day), keep)

    total_bytes = sum(len(data) for data in files.values())
    log.info(
        "published %s: %s rows, %s to %s/%s in %.2f s",
        day,
        f"{table.num_rows:,}",
        _size(total_bytes),
        store.describe(),
        stable[DAILY_CSV],
        time.monotonic() - started,
    )
    return PublishedDay(
        day=day,
        rows=table.num_rows,
        bytes=total_bytes,
        run_key=run_key,
        paths={name: stable[name] for name in files if name != MANIFEST},
        manifest_path=stable[MANIFEST],
        manifest=full_manifest,
    )


@dataclass(frozen=True)
class PublishedSnapshot:
    """The files of one committed run, all matching its manifest's checksums."""

    manifest: dict[str, Any]
    files: dict[str, bytes]


def _read_listed(store: Store, manifest: Mapping[str, Any], name: str, source: str) -> bytes:
    entry = manifest["files"][name]
    data = store.read(entry["path"])
    if data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"]:
        return data
    # The stable file is newer (a later run is committing, or failed midway): the staged
    # copy named by the manifest is immutable and belongs to the manifest's own run.
    staged_path = _join(manifest["published"]["staging"], name)
    staged = store.read(staged_path)
    if staged is not None and hashlib.sha256(staged).hexdigest() == entry["sha256"]:
        return staged
    raise PublishError(
        f"{store.describe()}/{entry['path']} does not match {source} and its staged copy is "
        f"gone: republish that day"
    )


def read_published_day(
    store: Store, prefix: str, day: date, names: Iterable[str] | None = None
) -> PublishedSnapshot | None:
    """A consistent read of one day's committed files (all or `names`), or None if unpublished."""
    path = daily_partition_path(prefix, day, MANIFEST)
    manifest = _parse_manifest(store.read(path), path)
    if manifest is None:
        return None
    wanted = list(manifest["files"]) if names is None else list(names)
    files = {name: _read_listed(store, manifest, name, path) for name in wanted}
    return PublishedSnapshot(manifest=manifest, files=files)


# --- Rolling rollup --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollup:
    """The N-day rollup that build_rollup published."""

    as_of: date
    days: int
    rows: int
    days_present: list[date]
    days_missing: list[date]
    complete: bool
    paths: dict[str, str]


def day_ranges(days: Iterable[date]) -> list[str]:
    """Days as compact ranges, e.g. ["2026-11-01..2026-11-03", "2026-11-20"]."""
    ranges: list[list[date]] = []
    for day in sorted(days):
        if ranges and day - ranges[-1][1] == timedelta(days=1):
            ranges[-1][1] = day
        else:
            ranges.append([day, day])
    return [
        first.isoformat() if first == last else f"{first.isoformat()}..{last.isoformat()}"
        for first, last in ranges
    ]


def spam_rollup(daily_tables: Iterable[pa.Table]) -> pa.Table:
    """One row per address over the given days, columns in ROLLUP_COLUMNS order.

    Counts are summed over days; location and network columns come from the latest day the
    address was seen, taken whole from that day's row (nulls included) so days never mix.
    Each day must come in one table only, as a published partition does.
    """
    fold = RollupFold()
    for table in daily_tables:
        fold.add(table)
    return fold.result()


class RollupFold:
    """The rollup of the daily tables added so far, folded in as they come.

    Days are buffered and folded into the running rollup once they hold as many rows as it
    does (and at least FOLD_MIN_ROWS), so memory follows the distinct addresses, not the
    window's rows: ninety days of the same 100k senders are 9M daily rows but a 100k-row
    rollup. Each row is folded about twice at most, however long the window.
    """

    FOLD_MIN_ROWS = 250_000

    def __init__(self) -> None:
        self._rollup = _empty_rollup_state()
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def add(self, daily: pa.Table) -> None:
        self._pending.append(daily.select(DAILY_COLUMNS))
        self._pending_rows += daily.num_rows
        if self._pending_rows >= max(self.FOLD_MIN_ROWS, self._rollup.num_rows):
            self._fold()

    def result(self) -> pa.Table:
        """The rollup, most spam first, then by address; the fold is empty afterwards."""
        self._fold()
        rollup, self._rollup = self._rollup, _empty_rollup_state()
        order = pc.sort_indices(
            rollup,
            [("count_", "descending"), ("SenderIPv4", "ascending"), ("SenderIPv6", "ascending")],
        )
        # Column by column, each unsorted column dropped once taken: the whole rollup is never
        # held twice, which is most of the memory of a window of many distinct addresses.
        unsorted = {name: rollup[name] for name in ROLLUP_COLUMNS}
        del rollup
        return pa.table({name: unsorted.pop(name).take(order) for name in ROLLUP_COLUMNS})

    def _fold(self) -> None:
        if not self._pending:
            return
        days = pa.concat_tables(self._pending, promote_options="permissive")
        self._pending, self._pending_rows = [], 0
        state, self._rollup = self._rollup, _empty_rollup_state()
        dates = days["Date"]
        incoming = pa.table(
            {
                **{name: days[name] for name in [*ADDRESS_KEYS, *SUMMED_COLUMNS]},
                "FirstSeen": dates,
                "LastSeen": dates,
                "DaysSeen": pa.nulls(days.num_rows, pa.int64()),
                "NewDay": dates,
                **{name: days[name] for name in _LATEST_COLUMNS},
            }
        )
        earlier = state.append_column("NewDay", pa.nulls(state.num_rows, pa.date32()))
        # One contiguous chunk per column: grouping over the many small blocks read_csv yields
        # is several times slower. Its inputs are dropped at once, not held through the fold.
        combined = pa.concat_tables(
            [earlier, incoming.select(earlier.column_names)], promote_options="permissive"
        ).combine_chunks()
        del state, earlier, days, dates, incoming

        # Each row's last day and position packed into one integer: its maximum per address
        # points at the address's latest row without sorting. Rollup rows come first, so a
        # day's own row wins a tie, as a later table would.
        import numpy as np

        day_number = combined["LastSeen"].cast(pa.int32()).cast(pa.int64())
        position = pa.array(np.arange(combined.num_rows, dtype=np.int64))
        latest_key = pc.add(pc.multiply(day_number, 1 << 32), position)
        grouped = (
            combined.select(
                [*ADDRESS_KEYS, *SUMMED_COLUMNS, "FirstSeen", "LastSeen", "DaysSeen", "NewDay"]
            )
            .append_column("latest", latest_key)
            .group_by(ADDRESS_KEYS)
            .aggregate(
                [
                    *[(name, "sum") for name in SUMMED_COLUMNS],
                    ("FirstSeen", "min"),
                    ("LastSeen", "max"),
                    ("DaysSeen", "sum"),
                    ("NewDay", "count_distinct"),
                    ("latest", "max"),
                ]
            )
        )
        latest_rows = pc.bit_wise_and(grouped["latest_max"], (1 << 32) - 1)
        latest = combined.select(_LATEST_COLUMNS).take(latest_rows)
        columns = {name: grouped[name] for name in ADDRESS_KEYS}
        columns.update({name: grouped[f"{name}_sum"] for name in SUMMED_COLUMNS})
        columns.update(
            FirstSeen=grouped["FirstSeen_min"],
            LastSeen=grouped["LastSeen_max"],
            DaysSeen=pc.add(
                pc.fill_null(grouped["DaysSeen_sum"], 0), grouped["NewDay_count_distinct"]
            ),
        )
        columns.update({name: latest[name] for name in _LATEST_COLUMNS})
        self._rollup = pa.table({name: columns[name] for name in _ROLLUP_STATE_COLUMNS})
        del combined, grouped, latest, columns
        # The folded days' memory goes back to the kernel rather than waiting, fragmented
        # across the readers' malloc arenas, for days of other sizes.
        release_freed_memory()


_LATEST_COLUMNS = ["Latitude", "Longitude", *LATEST_GEO_COLUMNS]
_ROLLUP_STATE_COLUMNS = [
    *ADDRESS_KEYS,
    *SUMMED_COLUMNS,
    "FirstSeen",
    "LastSeen",
    "DaysSeen",
    *_LATEST_COLUMNS,
]


def _empty_rollup_state() -> pa.Table:
    types = {
        **DAILY_TYPES,
        "FirstSeen": DAILY_TYPES["Date"],
        "LastSeen": DAILY_TYPES["Date"],
        "DaysSeen": pa.int64(),
    }
    return pa.table({name: pa.array([], types[name]) for name in _ROLLUP_STATE_COLUMNS})


def published_days(store: Store, prefix: str) -> list[date]:
    """The days with a committed partition (one with a manifest), oldest first."""
    found = set()
    for path in store.list(_join(prefix, "daily") + "/"):
        folder, _, name = path.rpartition("/")
        _, _, partition = folder.rpartition("/")
        if name == MANIFEST and partition.startswith("date="):
            try:
                found.add(date.fromisoformat(partition.removeprefix("date=")))
            except ValueError:
                continue
    return sorted(found)


# Days downloaded and parsed at once while the rollup is built; no more are read ahead.
_ROLLUP_READERS = 4


def _read_ahead(
    load: Callable[[date], pa.Table | None], days: list[date], readers: int
) -> Iterator[tuple[date, pa.Table | None]]:
    """Each day with what `load` made of it, in order, `readers` loads in flight at most."""
    with ThreadPoolExecutor(max_workers=readers) as pool:
        queue: deque[tuple[date, Future[pa.Table | None]]] = deque()
        upcoming = iter(days)
        for day in itertools.islice(upcoming, readers):
            queue.append((day, pool.submit(load, day)))
        while queue:
            day, future = queue.popleft()
            later = next(upcoming, None)
            if later is not None:
                queue.append((later, pool.submit(load, later)))
            yield day, future.result()


def build_rollup(store: Store, prefix: str, as_of: date, *, days: int = 90) -> Rollup:
    """Build and publish the `days`-day rollup ending at `as_of` from the daily partitions.

    Only committed days (those with a manifest) count; their CSVs are read consistently and
    checked against the manifest. The rollup CSV and `{prefix}/latest/manifest.json` are
    committed like a day's files; the manifest keeps one entry per rollup length.
    """
    if days < 1:
        raise ValueError(f"rollup length must be at least 1 day, got {days}")
    started = time.monotonic()
    window_days = [as_of - timedelta(days=offset) for offset in range(days - 1, -1, -1)]
    listed = set(store.list(_join(prefix, "daily") + "/"))
    present = [d for d in window_days if daily_partition_path(prefix, d, MANIFEST) in listed]
    missing = [d for d in window_days if d not in set(present)]

    def load(day: date) -> pa.Table | None:
        snapshot = read_published_day(store, prefix, day, [DAILY_CSV])
        if snapshot is None:
            return None
        return read_daily_csv(snapshot.files[DAILY_CSV], source=f"daily CSV of {day}")

    fold, vanished, input_rows = RollupFold(), [], 0
    for day, table in _read_ahead(load, present, _ROLLUP_READERS):
        if table is None:
            vanished.append(day)
            continue
        input_rows += table.num_rows
        fold.add(table)
    rollup = fold.result()
    present = [day for day in present if day not in vanished]
    missing = sorted([*missing, *vanished])
    csv_name = rollup_csv_name(days)
    data = csv_bytes(rollup)
    complete = not missing
    stable = {csv_name: latest_path(prefix, csv_name), MANIFEST: latest_path(prefix, MANIFEST)}
    now = datetime.now(UTC)
    file_entry = _file_entry(stable[csv_name], data, rollup.num_rows)
    run_key = _run_key({csv_name: str(file_entry["sha256"])}, now)
    staging_folder = _join(_latest_runs_folder(prefix), run_key)

    previous = _parse_manifest(store.read(stable[MANIFEST]), stable[MANIFEST]) or {}
    rollups = dict(previous.get("rollups", {}))
    keep = {run_key}
    # Every rollup length's current run, and this length's previous one for readers mid-way.
    keep.update(str(entry["published"]["run_key"]) for entry in rollups.values())
    rollups[csv_name] = {
        "as_of": as_of,
        "days": days,
        "first_day": window_days[0],
        "last_day": window_days[-1],
        "complete": complete,
        "days_present": present,
        "days_missing": missing,
        "missing_ranges": day_ranges(missing),
        "input_rows": input_rows,
        "file": file_entry,
        "published": {"run_key": run_key, "at": now, "staging": staging_folder + "/"},
    }
    manifest = {
        "kind": MANIFEST_KIND_ROLLUP,
        "rollups": rollups,
        "code_version": code_version(),
    }
    _commit_file_set(
        store,
        stable=stable,
        staging_folder=staging_folder,
        files={csv_name: data, MANIFEST: _manifest_bytes(manifest)},
        manifest_name=MANIFEST,
    )
    _prune_runs(store, _latest_runs_folder(prefix), keep)

    if missing:
        log.warning(
            "rollup %dd to %s is incomplete: %d of %d days missing, backfill %s",
            days,
            as_of,
            len(missing),
            days,
            ", ".join(day_ranges(missing)),
        )
    log.info(
        "published rollup %dd to %s: %s rows from %d days (%s input rows), %s to %s/%s in %.2f s",
        days,
        as_of,
        f"{rollup.num_rows:,}",
        len(present),
        f"{input_rows:,}",
        _size(len(data)),
        store.describe(),
        stable[csv_name],
        time.monotonic() - started,
    )
    return Rollup(
        as_of=as_of,
        days=days,
        rows=rollup.num_rows,
        days_present=present,
        days_missing=missing,
        complete=complete,
        paths=dict(stable),
    )


def _size(count: int) -> str:
    if count < 10_000:
        return f"{count} B"
    if count < 10_000_000:
        return f"{count / 1000:.0f} kB"
    return f"{count / 1_000_000:.1f} MB"
