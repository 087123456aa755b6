"""The report as one self-contained HTML file: the data as JSON in a script element, and the
page's own script and style inlined, so it opens from a disk or a Hub repository's files with no
network. The views are drawn as SVG by `report.js` (a few hundred lines, no plotting library):
hover text and view switching need script, and a vendored charting library would be most of
the file."""

from __future__ import annotations

import html
import json
from importlib import resources

GENERATOR = "moe-compress routing report"


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _script_json(data: dict) -> str:
    """JSON that cannot end its script element early (``</script>`` inside a prompt, say)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_page(data: dict) -> str:
    title = html.escape(data["title"])
    inputs = len(data["statistics"]) + len(data["derived"]) + len(data["frontiers"])
    subtitle = html.escape(f"{inputs} inputs · {len(data['traces'])} prompts · written {data['generated']} by moe-compress "
                           f"{data['tool_version']}")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{GENERATOR}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
{_asset("report.css")}</style>
</head>
<body>
<header><h1>{title}</h1><p>{subtitle}</p></header>
<nav id="nav"></nav>
<main id="views"><noscript><p>This report draws its views with JavaScript: open it in a browser with scripts allowed.</p></noscript></main>
<script type="application/json" id="report-data">{_script_json(data)}</script>
<script>
{_asset("report.js")}</script>
</body>
</html>
"""


def is_report_file(path) -> bool:
    """Whether `path` is a report written by `compress report` (read from its first kilobyte)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return f'content="{GENERATOR}"' in handle.read(1024)
    except OSError:
        return False
