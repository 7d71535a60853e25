"""Command line for what users do outside Airflow: make data, serve the stand-in, run a window.

Every option can also come from the environment (`SPAMGEO_*`), so secrets need not appear on a
command line or in shell history.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from spamgeo.window import Window, WindowError

log = logging.getLogger("spamgeo")


class UsageError(Exception):
    """A command-line or environment setting that cannot be used; the message names it."""


def _run_failures() -> tuple[type[Exception], ...]:
    """Failures the pipeline raises with a complete explanation of their own."""
    from spamgeo.extract import ExtractError
    from spamgeo.publish import PublishError
    from spamgeo.quality import QualityGateError

    return (ExtractError, PublishError, QualityGateError)


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _window_from_args(args: argparse.Namespace) -> Window:
    try:
        if args.start is None:
            yesterday = datetime.now(UTC).date() - timedelta(days=1)
            return Window.for_days(yesterday)
        return Window.parse_days(args.start, args.end, settings=("--start", "--end"))
    except WindowError as exc:
        raise UsageError(str(exc)) from None


def _generate(args: argparse.Namespace) -> int:
    from spamgeo.local.synthetic import generate_email_events, write_events

    window = _window_from_args(args)
    table = generate_email_events(args.rows, window, seed=args.seed, senders=args.senders)
    write_events(table, Path(args.out))
    log.info("wrote %d EmailEvents rows for %s to %s", table.num_rows, window, args.out)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from spamgeo.local.standin import DEFAULT_TOKEN, DEFAULT_WORKSPACE_ID, serve_forever

    if args.events is None:
        from spamgeo.local.synthetic import generate_email_events

        yesterday = datetime.now(UTC).date() - timedelta(days=1)
        window = Window.for_days(yesterday - timedelta(days=args.days - 1), yesterday)
        events: Any = generate_email_events(args.rows, window, seed=args.seed)
        log.info("serving %d synthetic rows for %s", events.num_rows, window)
    else:
        events = Path(args.events)
    serve_forever(
        events,
        host=args.host,
        port=args.port,
        token=_env("SPAMGEO_TOKEN", DEFAULT_TOKEN),
        workspace_id=args.workspace_id or DEFAULT_WORKSPACE_ID,
        tls=not args.no_tls,
        state_dir=Path(args.state_dir),
        max_rows=args.max_rows,
        max_bytes=args.max_bytes,
    )
    return 0


def _log_analytics_client(args: argparse.Namespace) -> Any:
    from spamgeo.credentials import make_credential
    from spamgeo.extract import LogAnalyticsClient, LogAnalyticsSettings

    workspace_id = args.workspace_id or _env("SPAMGEO_WORKSPACE_ID")
    if not workspace_id:
        raise UsageError("--workspace-id (or SPAMGEO_WORKSPACE_ID) is required")
    settings = LogAnalyticsSettings(
        workspace_id=workspace_id,
        endpoint=args.endpoint or _env("SPAMGEO_ENDPOINT", "https://api.loganalytics.io"),
        ca_bundle=args.ca_bundle or _env("SPAMGEO_CA_BUNDLE"),
    )
    credential = make_credential(
        args.auth or _env("SPAMGEO_AUTH", "default"),
        tenant_id=_env("SPAMGEO_TENANT_ID"),
        client_id=_env("SPAMGEO_CLIENT_ID"),
        client_secret=_env("SPAMGEO_CLIENT_SECRET"),
        token=_env("SPAMGEO_TOKEN"),
    )
    return LogAnalyticsClient(settings, credential)


def _store(args: argparse.Namespace) -> Any:
    from spamgeo.publish import LocalStore, blob_store_from_connection_string

    connection_string = _env("SPAMGEO_BLOB_CONNECTION_STRING")
    if args.out:
        return LocalStore(Path(args.out))
    if connection_string:
        return blob_store_from_connection_string(connection_string, args.container)
    raise UsageError("give --out DIR, or set SPAMGEO_BLOB_CONNECTION_STRING to publish to Blob")


def _run(args: argparse.Namespace) -> int:
    from spamgeo.geolocate import GeoSettings, default_city_database
    from spamgeo.pipeline import (
        aggregate_step,
        extract_step,
        publish_step,
        run_folder_for,
        trailing_rows,
        validate_step,
    )
    from spamgeo.quality import QualityConfig

    window = _window_from_args(args)
    store = _store(args)
    client = _log_analytics_client(args)
    quality = (
        QualityConfig.from_json(Path(args.quality_config).read_text())
        if (args.quality_config)
        else QualityConfig()
    )
    city_db = args.city_db or _env("SPAMGEO_CITY_DB")
    asn_db = args.asn_db or _env("SPAMGEO_ASN_DB")
    geo = GeoSettings(
        city_db=Path(city_db) if city_db else default_city_database(),
        asn_db=Path(asn_db) if asn_db else None,
        max_age_days=args.geo_max_age_days,
    )
    run_id = f"cli__{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    folder = run_folder_for(Path(args.work_dir), run_id)

    extract_step(client, window, folder)
    validate_step(
        window,
        folder,
        quality_config=quality,
        trailing_rows=trailing_rows(store, args.prefix, window),
    )
    aggregate_step(folder, window, geo_settings=geo, quality_config=quality)
    summary = publish_step(
        window, folder, store, run_id=run_id, prefix=args.prefix, rollup_days=args.rollup_days
    )
    if not args.keep_run_folder:
        folder.remove()
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spamgeo",
        description="Geolocated spam intelligence from Microsoft Defender EmailEvents.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_window(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--start", help="first UTC day, YYYY-MM-DD (default: yesterday)")
        sub.add_argument("--end", help="last UTC day, inclusive (default: --start)")

    generate = commands.add_parser("generate", help="write synthetic EmailEvents rows to a file")
    add_window(generate)
    generate.add_argument("--rows", type=int, default=100_000)
    generate.add_argument("--senders", type=int, default=None, help="distinct sender addresses")
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--out", required=True, help="file: .parquet, .csv or .jsonl")
    generate.set_defaults(handler=_generate)

    serve = commands.add_parser("serve", help="serve the local Log Analytics query API stand-in")
    serve.add_argument("--events", help="EmailEvents file (.parquet/.csv/.jsonl); default: made up")
    serve.add_argument("--rows", type=int, default=100_000, help="synthetic rows when no --events")
    serve.add_argument("--days", type=int, default=3, help="synthetic days ending yesterday")
    serve.add_argument("--seed", type=int, default=7)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--workspace-id", default=None)
    serve.add_argument("--state-dir", default=".state/standin", help="TLS certificate folder")
    serve.add_argument("--no-tls", action="store_true", help="plain http (the SDK then refuses)")
    serve.add_argument("--max-rows", type=int, default=500_000, help="rows per result")
    serve.add_argument("--max-bytes", type=int, default=100 * 2**20, help="bytes per result")
    serve.set_defaults(handler=_serve)

    run = commands.add_parser("run", help="run the pipeline for whole UTC days, without Airflow")
    add_window(run)
    run.add_argument("--endpoint", help="query API endpoint (env SPAMGEO_ENDPOINT)")
    run.add_argument("--workspace-id", help="Log Analytics workspace id (SPAMGEO_WORKSPACE_ID)")
    run.add_argument(
        "--auth",
        choices=["service_principal", "managed_identity", "default", "static_token"],
        help="credential kind (SPAMGEO_AUTH; secrets only from SPAMGEO_CLIENT_SECRET etc.)",
    )
    run.add_argument("--ca-bundle", help="PEM file to trust, e.g. the stand-in's certificate")
    run.add_argument("--out", help="publish to this local folder instead of Blob Storage")
    run.add_argument("--container", default=_env("SPAMGEO_CONTAINER", "spamgeo"))
    run.add_argument("--prefix", default="spamgeo")
    run.add_argument("--city-db", help="GeoIP2/GeoLite2 City .mmdb (default: embedded 2019 build)")
    run.add_argument("--asn-db", help="GeoLite2 ASN .mmdb (optional)")
    run.add_argument("--geo-max-age-days", type=int, default=45)
    run.add_argument("--quality-config", help="JSON file of check severities and tolerances")
    run.add_argument("--rollup-days", type=int, default=90)
    run.add_argument("--work-dir", default=".work/runs", help="folder for intermediate files")
    run.add_argument("--keep-run-folder", action="store_true")
    run.set_defaults(handler=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m spamgeo`; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("azure", "urllib3", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except (UsageError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:
        if not isinstance(exc, _run_failures()):
            raise
        # A run stopped for a reason the pipeline explains (quality gate, API refusal,
        # storage error): its message is the whole story, a traceback would bury it.
        log.error("run failed: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
