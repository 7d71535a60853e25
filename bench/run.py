"""Benchmark spamgeo's own steps on a large tenant's day against a naive pipeline, in one run.

Usage: .venv/bin/python bench/run.py [--rows 1000000 10000000] [--repeat 3] [--quick]
Every measurement runs in a fresh child process; figures are medians of the repeats. Results go
to bench/results/ as JSON and to stdout as Markdown. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path[:0] = [str(ROOT), str(ROOT / "include")]

from bench.responses import ResponseSet, build_responses  # noqa: E402
from bench.stages import ROLLUP_DAYS, Context, run_child  # noqa: E402

log = logging.getLogger("bench")

RESULTS_DIR = ROOT / "bench" / "results"
RESULT_MARK = "BENCH-RESULT "
CHILD_TIMEOUT_S = 3600
QUICK_ROWS = 200_000
TARGET_ROWS = 1_000_000
LARGE_ROWS = 10_000_000
# Slices the DAG's extract task queries at once (EXTRACT_PARALLEL_SLICES in dags/spamgeo_daily.py).
DAG_PARALLEL_SLICES = 2

# (stage, what a unit is, project stage, naive stage)
STAGES: list[tuple[str, str, str, str | None]] = [
    ("fetch+parse", "rows", "fetch", "naive_fetch"),
    ("validate", "rows", "validate", None),
    ("count", "rows", "count", "naive_count"),
    ("geolocate", "addresses", "geolocate", "naive_geolocate"),
    ("csv", "rows", "csv", "naive_csv"),
    ("upload", "rows", "upload", "naive_upload"),
]
PACKAGES = [
    "pyarrow",
    "duckdb",
    "msgspec",
    "pandas",
    "great-expectations",
    "geoip2",
    "maxminddb",
    "azure-core",
    "azure-monitor-query",
    "azure-storage-blob",
]


@dataclass(frozen=True)
class Target:
    """A figure the project must reach; `higher` says which direction is good."""

    name: str
    limit: float
    unit: str
    higher: bool

    def check(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        ok = value >= self.limit if self.higher else value <= self.limit
        return "PASS" if ok else "FAIL"


TARGETS = {
    "parse": Target("fetch+parse (1M rows, steady)", 500_000, "rows/s", True),
    "count": Target("count (1M rows, steady)", 5_000_000, "rows/s", True),
    "geolocate": Target("geolocate (1M rows, steady)", 120_000, "addresses/s", True),
    "csv": Target("CSV (1M rows, steady)", 1_000_000, "rows/s", True),
    "whole_seconds": Target("whole local processing of 1M rows", 5.0, "s", False),
    "whole_memory": Target("whole local processing of 1M rows, peak", 1000, "MB", False),
    "speedup": Target("overall speed-up over naive (1M rows)", 8.0, "x", True),
    "large_memory": Target("extraction of 10M rows, peak", 1500, "MB", False),
    "large_steps_memory": Target(
        "validate and count steps on 10M rows (10 days), peak", 1500, "MB", False
    ),
}


@dataclass
class Series:
    """The repeats of one measurement and their medians."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def median(self, key: str) -> float | None:
        values = [run[key] for run in self.runs if run.get(key) is not None]
        return statistics.median(values) if values else None

    @property
    def seconds(self) -> float | None:
        return self.median("seconds")

    @property
    def rate(self) -> float | None:
        rates = [run["units"] / run["seconds"] for run in self.runs if run["seconds"] > 0]
        return statistics.median(rates) if rates else None

    @property
    def steady(self) -> Series | None:
        """The second calls made in the same processes, when the stage has them."""
        runs = [run["steady"] for run in self.runs if "steady" in run]
        return Series(runs) if runs else None

    def summary(self) -> dict[str, Any]:
        steady = self.steady
        return {
            "seconds": self.seconds,
            "rate": self.rate,
            "steady_seconds": steady.seconds if steady else None,
            "steady_rate": steady.rate if steady else None,
            "steady_peak_mb": steady.median("stage_peak_mb") if steady else None,
            "process_peak_mb": self.median("process_peak_mb"),
            "stage_peak_mb": self.median("stage_peak_mb"),
            "rss_before_mb": self.median("rss_before_mb"),
            "error": self.error,
            "runs": self.runs,
        }


# --- child processes ---------------------------------------------------------------------------


def run_stage(stage: str, ctx: Context, repeat: int) -> Series:
    """Measure `stage` `repeat` times, each in a fresh process; only the first one saves."""
    series = Series()
    for attempt in range(repeat):
        child_ctx = replace(ctx, save=attempt == 0)
        command = [sys.executable, str(Path(__file__).resolve()), "--child", stage]
        command += ["--context", child_ctx.to_json()]
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
        )
        lines = [x for x in completed.stdout.splitlines() if x.startswith(RESULT_MARK)]
        if completed.returncode != 0 or not lines:
            tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
            series.error = f"exit {completed.returncode}: {tail}"
            log.error("stage %s failed (exit %d):\n%s", stage, completed.returncode, tail)
            return series
        result = json.loads(lines[-1][len(RESULT_MARK) :])
        series.runs.append(result)
        log.info(
            "stage %s run %d/%d: %.3f s (steady %s), %d units, peak %.0f MB",
            stage,
            attempt + 1,
            repeat,
            result["seconds"],
            f"{result['steady']['seconds']:.3f} s" if "steady" in result else "not measured",
            result["units"],
            result["process_peak_mb"],
        )
    return series


class StandIn:
    """bench/server.py in its own process, so its CPU and memory stay out of the measurements."""

    def __init__(self, responses: ResponseSet, tls_dir: Path) -> None:
        command = [sys.executable, str(ROOT / "bench" / "server.py")]
        command += ["--responses", str(responses.folder), "--tls-dir", str(tls_dir)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the API stand-in did not start: {line!r}")
        _, _, url, _, cert = line.split()
        self.endpoint = url
        self.cert = Path(cert)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- one size ----------------------------------------------------------------------------------


def bench_size(rows: int, args: argparse.Namespace, azurite: str) -> dict[str, Any]:
    started = time.perf_counter()
    responses = build_responses(rows, args.results, seed=args.seed)
    log.info(
        "answers for %d rows: %d slices, %.0f MB, %d distinct addresses, %d IPv6 rows "
        "(built in %.1f s, cached in %s)",
        responses.rows,
        len(responses.slices),
        responses.bytes / 1e6,
        responses.distinct_addresses,
        responses.ipv6_rows,
        responses.build_seconds,
        responses.folder,
    )
    work = args.results / "work" / f"rows{rows}"
    work.mkdir(parents=True, exist_ok=True)
    run_naive = rows <= args.naive_max_rows
    run_whole = rows <= args.naive_max_rows

    with tempfile.TemporaryDirectory(prefix="spamgeo-bench-tls-") as tls_dir:
        stand_in = StandIn(responses, Path(tls_dir))
        try:
            ctx = Context(
                responses=responses.folder,
                work=work,
                endpoint=stand_in.endpoint,
                cert=stand_in.cert,
                azurite=azurite,
                parallel_slices=args.parallel_slices,
                save=True,
            )
            project: dict[str, Series] = {"fetch": run_stage("fetch", ctx, args.repeat)}
            prepared = run_stage("prepare", ctx, 1)
            if prepared.error:
                project["prepare"] = prepared
            else:
                for name in ("parse", "validate", "count", "geolocate", "csv", "upload"):
                    project[name] = run_stage(name, ctx, args.repeat)
            if run_whole:
                project["whole"] = run_stage("whole", ctx, args.repeat)
            if run_whole and not prepared.error:
                # The publish task's rollup: this day's table published as 90 days, then read.
                published = run_stage("rollup_prepare", ctx, 1)
                project["rollup"] = published if published.error else run_stage("rollup", ctx, 1)
            if not prepared.error:
                # The validate and count tasks' own steps, each in a fresh process, once.
                for name in ("validate_step", "aggregate_step"):
                    project[name] = run_stage(name, ctx, 1)
            naive: dict[str, Series] = {}
            if run_naive:
                for _, _, _, naive_stage in STAGES:
                    if naive_stage is None:
                        continue
                    naive[naive_stage] = run_stage(naive_stage, ctx, args.repeat)
                    if naive[naive_stage].error:
                        break
        finally:
            stand_in.stop()

    return {
        "rows": rows,
        "slices": len(responses.slices),
        "slice_length": str(responses.slice_length),
        "response_bytes": responses.bytes,
        "distinct_addresses": responses.distinct_addresses,
        "ipv6_rows": responses.ipv6_rows,
        "naive_ran": run_naive,
        "seconds": time.perf_counter() - started,
        "project": {name: series.summary() for name, series in project.items()},
        "naive": {name: series.summary() for name, series in naive.items()},
    }


# --- reporting ---------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:.{digits}f}"


def _overall(result: dict[str, Any], with_validate: bool) -> tuple[float | None, float | None]:
    """Summed median seconds of the stages both pipelines have (plus validate, if asked)."""
    project = result["project"]
    naive = result["naive"]
    project_total = naive_total = 0.0
    for _, _, project_stage, naive_stage in STAGES:
        mine = project.get(project_stage, {}).get("seconds")
        if naive_stage is None:
            if with_validate and mine is not None:
                project_total += mine
            continue
        theirs = naive.get(naive_stage, {}).get("seconds")
        if mine is None or theirs is None:
            return None, None
        project_total += mine
        naive_total += theirs
    return project_total, naive_total


def size_table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"### {result['rows']:,} spam rows ({result['slices']} answers of {result['slice_length']}"
        f", {result['response_bytes'] / 1e6:.0f} MB JSON, {result['distinct_addresses']:,} "
        f"distinct addresses, {result['ipv6_rows'] / result['rows']:.0%} IPv6 rows)",
        "",
        "| stage | unit | project s | project rate/s | project peak MB | steady s "
        "| steady rate/s | naive s | naive rate/s | naive peak MB | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    project, naive = result["project"], result["naive"]
    for label, unit, project_stage, naive_stage in STAGES:
        mine = project.get(project_stage, {})
        theirs = naive.get(naive_stage, {}) if naive_stage else {}
        speedup = None
        if mine.get("seconds") and theirs.get("seconds"):
            speedup = theirs["seconds"] / mine["seconds"]
        naive_note = "–" if naive_stage else "(none)"
        if naive_stage and not result["naive_ran"]:
            naive_note = "(not run)"
        lines.append(
            f"| {label} | {unit} | {_fmt(mine.get('seconds'), 3)} | {_fmt(mine.get('rate'))} "
            f"| {_fmt(mine.get('process_peak_mb'), 0)} "
            f"| {_fmt(mine.get('steady_seconds'), 3)} | {_fmt(mine.get('steady_rate'))} "
            f"| {_fmt(theirs.get('seconds'), 3) if theirs else naive_note} "
            f"| {_fmt(theirs.get('rate')) if theirs else naive_note} "
            f"| {_fmt(theirs.get('process_peak_mb'), 0) if theirs else naive_note} "
            f"| {f'{speedup:.1f}x' if speedup else '–'} |"
        )
    for with_validate in (False, True):
        mine_total, naive_total = _overall(result, with_validate)
        if mine_total and naive_total:
            label = "overall, validate included" if with_validate else "overall, common stages"
            lines.append(
                f"| **{label}** | | {mine_total:.3f} | | | | | {naive_total:.3f} | | "
                f"| **{naive_total / mine_total:.1f}x** |"
            )
    # Paragraphs after the table, each set off by a blank line.
    paragraphs: list[str] = []
    parse = project.get("parse", {})
    if parse.get("seconds"):
        paragraphs.append(
            f"Parsing alone (answers read from disk, no HTTP/TLS/Parquet): "
            f"{parse['seconds']:.3f} s, {_fmt(parse['rate'])} rows/s, "
            f"peak {_fmt(parse['process_peak_mb'], 0)} MB."
        )
    whole = project.get("whole", {})
    if whole.get("seconds"):
        first = whole["runs"][0]
        laps = ", ".join(f"{k} {v:.2f} s" for k, v in first.get("laps", {}).items())
        paragraphs.append(
            f"Whole local processing in one process (parse -> validate -> count -> geolocate -> "
            f"check -> CSV): {whole['seconds']:.2f} s, peak {whole['process_peak_mb']:.0f} MB "
            f"(imports before the clock: {first.get('import_seconds', 0):.2f} s). "
            f"First run's split: {laps}."
        )
    steps = [project.get(name, {}) for name in ("validate_step", "aggregate_step")]
    if all(step.get("seconds") for step in steps):
        days = steps[0]["runs"][0].get("days")
        paragraphs.append(
            f"The validate and count tasks' own steps over the {days} day(s), each in a fresh "
            f"process (`pipeline.validate_step`, then `pipeline.aggregate_step`, one day at a "
            f"time): {steps[0]['seconds']:.2f} s, peak {steps[0]['process_peak_mb']:.0f} MB; "
            f"{steps[1]['seconds']:.2f} s, peak {steps[1]['process_peak_mb']:.0f} MB."
        )
    rollup = project.get("rollup", {})
    if rollup.get("seconds"):
        paragraphs.append(
            f"The publish task's {ROLLUP_DAYS}-day rollup (`publish.build_rollup` reading this "
            f"day's CSV published as {ROLLUP_DAYS} days in Azurite, the same senders every "
            f"day), in a fresh process: {rollup['seconds']:.2f} s, "
            f"{rollup['runs'][0]['units']:,} addresses, peak {rollup['process_peak_mb']:.0f} MB."
        )
    validate = project.get("validate", {})
    if validate.get("runs"):
        paragraphs.append(
            f"Validate excludes importing Great Expectations "
            f"({validate['runs'][0].get('gx_import_seconds', 0):.2f} s, paid once per worker)."
        )
    if not result["naive_ran"]:
        paragraphs.append(
            "The naive pipeline was not run at this size: one geoip2 lookup per row and the "
            "SDK's per-row model objects would take minutes and gigabytes."
        )
    for paragraph in paragraphs:
        lines += ["", paragraph]
    errors = [
        f"- {side} {name}: {series['error']}"
        for side in ("project", "naive")
        for name, series in result[side].items()
        if series.get("error")
    ]
    if errors:
        lines += ["", "Failures:", *errors]
    return lines


def targets_table(results: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    by_rows = {result["rows"]: result for result in results}
    # The 1M targets are judged on 1M rows, or on a smaller smoke run, never on a larger size.
    smaller = [result for result in results if result["rows"] < TARGET_ROWS]
    target_size = by_rows.get(TARGET_ROWS) or (smaller[0] if smaller else None)
    large = by_rows.get(LARGE_ROWS)
    measured: dict[str, float | None] = dict.fromkeys(TARGETS)
    if target_size:
        project = target_size["project"]
        # Rates are the steady ones: the same code's second call in the same process, so what
        # is judged is the code, not how fast this VM hands a fresh process its first pages.
        # The whole-pipeline and speed-up targets stay on first calls in fresh processes.
        for key, stage in (
            ("parse", "fetch"),
            ("count", "count"),
            ("geolocate", "geolocate"),
            ("csv", "csv"),
        ):
            figures = project.get(stage, {})
            measured[key] = figures.get("steady_rate") or figures.get("rate")
        measured["whole_seconds"] = project.get("whole", {}).get("seconds")
        measured["whole_memory"] = project.get("whole", {}).get("process_peak_mb")
        mine_total, naive_total = _overall(target_size, with_validate=True)
        measured["speedup"] = naive_total / mine_total if mine_total and naive_total else None
    if large:
        measured["large_memory"] = large["project"].get("fetch", {}).get("process_peak_mb")
        step_peaks = [
            large["project"].get(name, {}).get("process_peak_mb")
            for name in ("validate_step", "aggregate_step")
        ]
        if None not in step_peaks:
            measured["large_steps_memory"] = max(step_peaks)

    note = ""
    if target_size and target_size["rows"] != TARGET_ROWS:
        note = f" (measured on {target_size['rows']:,} rows, not the target size)"
    lines = [
        f"### Targets{note}",
        "",
        "| target | limit | measured | result |",
        "|---|---:|---:|---|",
    ]
    verdicts = {}
    for key, target in TARGETS.items():
        verdict = target.check(measured[key])
        verdicts[key] = verdict
        sign = ">=" if target.higher else "<="
        value = measured[key]
        shown = "–" if value is None else f"{_fmt(value)} {target.unit}"
        lines.append(
            f"| {target.name} | {sign} {_fmt(target.limit)} {target.unit} | {shown} | {verdict} |"
        )
    return lines, verdicts


def machine() -> dict[str, Any]:
    model = "unknown"
    memory_kb = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    # The project changes under the benchmark: record exactly which module texts were measured.
    modules = {
        str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in sorted((ROOT / "include" / "spamgeo").rglob("*.py"))
    }
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "ram_gb": round(memory_kb / 1e6, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "modules_sha256": modules,
    }


# --- command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark spamgeo against a naive pipeline on synthetic Log Analytics answers."
    )
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[TARGET_ROWS, LARGE_ROWS], help="spam rows per run"
    )
    parser.add_argument("--repeat", type=int, default=3, help="measurements per stage (median)")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_ROWS:,} rows, one repeat"
    )
    parser.add_argument(
        "--naive-max-rows",
        type=int,
        default=TARGET_ROWS,
        help="largest size the naive pipeline and the whole-process run are measured on",
    )
    parser.add_argument(
        "--parallel-slices",
        type=int,
        default=DAG_PARALLEL_SLICES,
        help="the extraction's max_parallel_slices (default: as the DAG runs it)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--context", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = [QUICK_ROWS]
        args.repeat = 1
        args.naive_max_rows = max(args.naive_max_rows, QUICK_ROWS)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.ERROR, format="%(name)s %(levelname)s %(message)s")
        result = run_child(args.child, args.context)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    from spamgeo.local.azurite import Azurite

    args.results.mkdir(parents=True, exist_ok=True)
    host = machine()
    log.info("machine: %s", host)
    started = datetime.now(UTC)
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="spamgeo-bench-azurite-") as blob_dir,
        Azurite(Path(blob_dir)) as azurite,
    ):
        for rows in args.rows:
            results.append(bench_size(rows, args, azurite.connection_string))

    lines = [f"## spamgeo benchmark, {started:%Y-%m-%d %H:%M} UTC", ""]
    lines.append(
        f"{host['nproc']} CPUs ({host['cpu']}), {host['ram_gb']} GB RAM, load average at start "
        f"{host['load_average'][0]}, Python {host['python']}; medians of {args.repeat} run(s), "
        "each in a fresh process: its first call, then (steady) a second call in the same "
        "process; peak = the process's RSS high-water mark up to the end of its first call."
    )
    for result in results:
        lines += ["", *size_table(result)]
    target_lines, verdicts = targets_table(results)
    lines += ["", *target_lines]
    print("\n".join(lines))

    report = {
        "started": started.isoformat(),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": host,
        "results": results,
        "targets": {
            key: {"limit": t.limit, "unit": t.unit, "verdict": verdicts[key]}
            for key, t in TARGETS.items()
        },
    }
    out = args.results / f"bench-{started:%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    (args.results / "latest.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    log.info("results written to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
