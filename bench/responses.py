"""Synthetic Log Analytics query API answers for the benchmark, built once and cached on disk.

Each answer is the API's own JSON shape for the spam rows of one time slice, projected to
schema.RAW_COLUMNS, so the project's client parses exactly what the service would send.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spamgeo.schema import RAW_COLUMNS
from spamgeo.window import Window

log = logging.getLogger(__name__)

# Bump when the bytes of an answer change, so stale caches are rebuilt rather than reused.
FORMAT_VERSION = 1
MAX_ROWS_PER_ANSWER = 500_000  # the query API's row limit per result
ROWS_PER_DAY = 1_000_000  # a large tenant's spam rows per day
SLICE_LENGTH = timedelta(hours=6)
FIRST_DAY = date(2026, 3, 2)
SENDERS_PER_DAY = 100_000
IPV6_SHARE = 0.2
MANIFEST = "manifest.json"


class ResponsesError(RuntimeError):
    """The cached answers cannot be used; the message says what to delete or change."""


@dataclass(frozen=True)
class ResponseSlice:
    """One prebuilt answer: the spam rows whose TimeGenerated lies in `window`."""

    window: Window
    rows: int
    path: Path
    bytes: int


@dataclass(frozen=True)
class ResponseSet:
    """Every answer for one benchmark size, in time order, with facts known at build time."""

    rows: int
    seed: int
    window: Window
    slice_length: timedelta
    folder: Path
    slices: list[ResponseSlice]
    distinct_addresses: int
    ipv6_rows: int
    build_seconds: float

    @property
    def bytes(self) -> int:
        return sum(answer.bytes for answer in self.slices)

    def slice_for(self, window: Window) -> ResponseSlice | None:
        """The answer prebuilt for exactly `window`, or None."""
        for answer in self.slices:
            if answer.window == window:
                return answer
        return None


def response_folder(results_dir: Path, rows: int, seed: int) -> Path:
    """The cache folder of one parameter set; its name carries every parameter."""
    hours = int(SLICE_LENGTH.total_seconds() // 3600)
    name = f"responses-v{FORMAT_VERSION}-rows{rows}-seed{seed}-slice{hours}h-day{ROWS_PER_DAY}"
    return Path(results_dir) / name


def build_responses(rows: int, results_dir: Path, *, seed: int = 7) -> ResponseSet:
    """The answers for `rows` spam rows, read from the cache or built and cached now."""
    folder = response_folder(results_dir, rows, seed)
    if (folder / MANIFEST).is_file():
        return load_responses(folder)

    from spamgeo.local.synthetic import generate_email_events, iso_utc_strings

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("slice-*.json"):
        stale.unlink()
    days = _rows_per_day(rows)
    window = Window.for_days(FIRST_DAY, FIRST_DAY + timedelta(days=len(days) - 1))
    slices: list[ResponseSlice] = []
    addresses: list[pa.Array] = []
    ipv6_rows = 0
    for index, day_rows in enumerate(days):
        day = Window.for_days(FIRST_DAY + timedelta(days=index))
        # Spam senders rotate from day to day: each day draws its own address pool.
        events = generate_email_events(
            day_rows,
            day,
            seed=seed + index,
            ipv6_share=IPV6_SHARE,
            senders=SENDERS_PER_DAY,
            spam_share=1.0,
        ).select(list(RAW_COLUMNS))
        for name in ("SenderIPv4", "SenderIPv6"):
            addresses.append(pc.unique(events[name]))
        ipv6_rows += pc.sum(pc.not_equal(events["SenderIPv6"], "")).as_py() or 0

        text = _as_json_text(events, iso_utc_strings)
        generated = events["TimeGenerated"].combine_chunks().cast(pa.int64()).to_numpy()
        for piece in day.split(SLICE_LENGTH):
            first, last = np.searchsorted(generated, [_micros(piece.start), _micros(piece.end)])
            part = text.slice(int(first), int(last - first))
            if part.num_rows > MAX_ROWS_PER_ANSWER:
                raise ResponsesError(
                    f"slice {piece} holds {part.num_rows} rows, over the API's "
                    f"{MAX_ROWS_PER_ANSWER}: shorten SLICE_LENGTH in bench/responses.py"
                )
            path = folder / f"slice-{len(slices):04d}.json"
            size = _write_answer(part, path)
            slices.append(ResponseSlice(piece, part.num_rows, path, size))
        log.info("built answers for %s: %d rows, %d slices so far", day, day_rows, len(slices))

    every = pc.unique(pa.chunked_array(addresses, pa.string()))
    distinct = len(every) - (1 if pc.any(pc.equal(every, "")).as_py() else 0)
    responses = ResponseSet(
        rows=rows,
        seed=seed,
        window=window,
        slice_length=SLICE_LENGTH,
        folder=folder,
        slices=slices,
        distinct_addresses=distinct,
        ipv6_rows=ipv6_rows,
        build_seconds=time.perf_counter() - started,
    )
    _write_manifest(responses)
    return responses


def load_responses(folder: Path) -> ResponseSet:
    """A cached answer set, checked against the files it lists."""
    manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    slices = []
    for entry in manifest["slices"]:
        path = Path(folder) / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            raise ResponsesError(f"{path} is missing or changed: delete {folder} to rebuild it")
        slices.append(
            ResponseSlice(
                Window.parse(entry["start"], entry["end"]), entry["rows"], path, entry["bytes"]
            )
        )
    return ResponseSet(
        rows=manifest["rows"],
        seed=manifest["seed"],
        window=Window.parse(manifest["start"], manifest["end"]),
        slice_length=timedelta(seconds=manifest["slice_seconds"]),
        folder=Path(folder),
        slices=slices,
        distinct_addresses=manifest["distinct_addresses"],
        ipv6_rows=manifest["ipv6_rows"],
        build_seconds=manifest["build_seconds"],
    )


def _rows_per_day(rows: int) -> list[int]:
    if rows < 1:
        raise ResponsesError(f"--rows must be at least 1, got {rows}")
    full, rest = divmod(rows, ROWS_PER_DAY)
    return [ROWS_PER_DAY] * full + ([rest] if rest else [])


def _micros(instant: datetime) -> int:
    return (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _as_json_text(events: pa.Table, iso_text: object) -> pa.Table:
    """Every cell as the text of a JSON string literal (without quotes), in column order."""
    columns = {}
    for name, kind in RAW_COLUMNS.items():
        column = events[name]
        if kind == "datetime":
            column = iso_text(column)  # type: ignore[operator]
        else:
            column = pc.replace_substring(column, "\\", "\\\\")
            column = pc.replace_substring(column, '"', '\\"')
        columns[name] = column.combine_chunks()
    return pa.table(columns)


def _write_answer(part: pa.Table, path: Path) -> int:
    """Write one answer as the API would send it; return its size in bytes."""
    head = json.dumps(
        {
            "tables": [
                {
                    "name": "PrimaryResult",
                    "columns": [{"name": n, "type": t} for n, t in RAW_COLUMNS.items()],
                    "rows": [],
                }
            ]
        },
        separators=(",", ":"),
    ).encode()
    opening, closing = head.split(b'"rows":[]')
    opening += b'"rows":['
    closing = b"]" + closing

    # Each row becomes one string `["a","b",...],` in C++; the array's value buffer is then
    # the whole row list, written without materialising a Python object per row.
    pieces: list[object] = ['["']
    for index, name in enumerate(part.column_names):
        pieces.append(part[name])
        pieces.append('"],' if index == part.num_columns - 1 else '","')
    rows = pc.binary_join_element_wise(*pieces, "")
    rows = rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows

    partial = path.with_name(f".{path.name}.tmp")
    with partial.open("wb") as sink:
        sink.write(opening)
        if len(rows):
            offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)
            begin, end = int(offsets[rows.offset]), int(offsets[rows.offset + len(rows)])
            values = memoryview(rows.buffers()[2])[begin : end - 1]  # drop the last comma
            sink.write(values)
        sink.write(closing)
    os.replace(partial, path)
    return path.stat().st_size


def _write_manifest(responses: ResponseSet) -> None:
    manifest = {
        "format_version": FORMAT_VERSION,
        "rows": responses.rows,
        "seed": responses.seed,
        "start": responses.window.start.isoformat(),
        "end": responses.window.end.isoformat(),
        "slice_seconds": responses.slice_length.total_seconds(),
        "distinct_addresses": responses.distinct_addresses,
        "ipv6_rows": responses.ipv6_rows,
        "build_seconds": round(responses.build_seconds, 3),
        "slices": [
            {
                "file": answer.path.name,
                "start": answer.window.start.isoformat(),
                "end": answer.window.end.isoformat(),
                "rows": answer.rows,
                "bytes": answer.bytes,
            }
            for answer in responses.slices
        ],
    }
    # The manifest is written last: its presence marks a complete cache.
    target = responses.folder / MANIFEST
    partial = target.with_name(f".{MANIFEST}.tmp")
    partial.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(partial, target)
