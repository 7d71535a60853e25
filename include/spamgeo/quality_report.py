"""Renders a quality report as one self-contained HTML page an operator can read in one look.

Failed checks come first, each with what was observed, what was expected and what to fix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spamgeo.quality import CheckResult, ValidationReport

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1b1b1b; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
.verdict { font-size: 1.1em; font-weight: 600; padding: 0.4em 0.8em; display: inline-block; }
.ok { background: #e3f4e1; } .failed { background: #fbe1e1; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
tr.error td.status { background: #f6c4c4; font-weight: 600; }
tr.warning td.status { background: #fbe8b5; font-weight: 600; }
tr.pass td.status { background: #e3f4e1; }
tr.skipped td.status, tr.off td.status { background: #eee; color: #666; }
code, pre { font: 12px ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
details { margin-top: 1.5em; }
"""


def _status(check: CheckResult) -> str:
    if check.severity == "off":
        return "off"
    if check.skipped:
        return "skipped"
    if check.success:
        return "pass"
    return check.severity


def _value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return escape(value)
    from spamgeo.quality import _json_safe

    text = json.dumps(_json_safe(value), indent=1)
    return f"<code>{escape(text if len(text) <= 1200 else text[:1200] + ' ...')}</code>"


def render_html(report: ValidationReport) -> str:
    """The report as a complete HTML document (no external assets)."""
    return render_page([render_section(report)], title=_title(report))


def render_page(sections: Sequence[str], *, title: str) -> str:
    """One self-contained HTML document holding report sections, e.g. every stage of a run."""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"{''.join(sections)}"
        "</body></html>\n"
    )


def _title(report: ValidationReport) -> str:
    return f"spamgeo quality report: {report.stage}" + (
        f" {report.window}" if report.window else ""
    )


def render_section(report: ValidationReport) -> str:
    """One report as a section of a page: verdict, checks with what to fix, counts, GX result."""
    from spamgeo.quality import REMEDIES

    order = {"error": 0, "warning": 1, "pass": 2, "skipped": 3, "off": 4}
    checks = sorted(report.checks, key=lambda c: order[_status(c)])
    verdict = (
        "OK: nothing blocks publishing"
        if report.ok
        else f"FAILED: {len(report.errors)} error-level check(s) block publishing"
    )
    if report.warnings:
        verdict += f"; {len(report.warnings)} warning(s)"

    rows = []
    for check in checks:
        status = _status(check)
        fix = REMEDIES.get(check.name, "") if status in ("error", "warning") else ""
        rows.append(
            f'<tr class="{status}"><td class="status">{escape(status.upper())}</td>'
            f"<td><b>{escape(check.name)}</b><br>{escape(check.detail)}</td>"
            f"<td>{escape(check.severity)}</td><td>{_value(check.observed)}</td>"
            f"<td>{_value(check.expected)}</td><td>{escape(fix)}</td></tr>"
        )
    counts = "".join(
        f"<tr><th>{escape(key)}</th><td>{_value(value)}</td></tr>"
        for key, value in report.counts.items()
    )
    gx_json = json.dumps(report.gx_result, indent=1, default=str) if report.gx_result else "none"
    return (
        f"<section><h1>{escape(_title(report))}</h1>"
        f'<p class="verdict {"ok" if report.ok else "failed"}">{escape(verdict)}</p>'
        "<table><tr><th>status</th><th>check</th><th>severity</th><th>observed</th>"
        f"<th>expected</th><th>what to fix</th></tr>{''.join(rows)}</table>"
        f"<h2>Counts</h2><table>{counts}</table>"
        "<details><summary>Great Expectations validation result</summary>"
        f"<pre>{escape(gx_json)}</pre></details></section>"
    )
