"""Turn a crawl's page records into figures and the CSV, JSON and HTML files people download.

Everything here is pure: records in, bytes out. The crawl task decides where the files go, so
the figures can be tested on hand-made records without Celery, Redis or an artifact store.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urldefrag

import jinja2
from pydantic import BaseModel

from scraper.records import PageRecord
from tasklane.contracts.scraper import LinkCount

PERCENTILES = (50, 90, 95, 99)
CSV_COLUMNS = (
    "url",
    "depth",
    "status",
    "content_type",
    "bytes",
    "elapsed_ms",
    "title",
    "error_type",
    "error",
    "inlinks",
)
LIST_SEPARATOR = " | "
# Spreadsheets run a cell starting with one of these as a formula (OWASP "CSV Injection").
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_TEMPLATES = Path(__file__).parent / "templates"
# Chart geometry, in SVG user units.
_LABEL_WIDTH = 110
_BAR_SPACE = 360
_VALUE_SPACE = 90
_ROW_HEIGHT = 24
_BAR_HEIGHT = 16


class ValueCount(BaseModel):
    """How often one field value was extracted."""

    value: str
    count: int


class NumericSummary(BaseModel):
    """Figures for a field whose every value is a number (prices, ratings, counts)."""

    count: int
    min: float
    max: float
    mean: float
    sum: float


class FieldSummary(BaseModel):
    """How well one selector did: on how many fetched pages it matched, and what it found."""

    name: str
    present: int
    missing: int
    distinct: int
    top_values: list[ValueCount]
    numeric: NumericSummary | None


class Analysis(BaseModel):
    """The figures of one crawl: what the JSON report holds and the HTML report shows."""

    crawl_id: str
    pages: int
    fetched: int
    failed: int
    bytes: int
    by_status: dict[str, int]
    by_content_type: dict[str, int]
    by_error: dict[str, int]
    by_depth: dict[str, int]
    response_ms: dict[str, float]
    most_linked: list[LinkCount]
    fields: list[FieldSummary]
    started_at: str | None
    finished_at: str | None


def analyse(
    pages: Sequence[PageRecord],
    *,
    crawl_id: str,
    started_at: str | None = None,
    finished_at: str | None = None,
    top: int = 10,
) -> Analysis:
    """Compute every figure of the reports once, so the three formats cannot disagree."""
    fetched = [page for page in pages if page.ok]
    failed = [page for page in pages if not page.ok]
    return Analysis(
        crawl_id=crawl_id,
        pages=len(pages),
        fetched=len(fetched),
        failed=len(failed),
        bytes=sum(page.bytes for page in pages),
        by_status=_by_number(_status_key(page.status) for page in fetched),
        by_content_type=_most_common(page.content_type or "(none)" for page in fetched),
        by_error=_most_common(page.error_type or "error" for page in failed),
        by_depth=_by_number(str(page.depth) for page in pages),
        response_ms=_timings([page.elapsed_ms for page in fetched if page.elapsed_ms is not None]),
        most_linked=_most_linked(inlinks(pages), top),
        fields=[_field_summary(name, fetched, top) for name in _field_names(pages)],
        started_at=started_at,
        finished_at=finished_at,
    )


def inlinks(pages: Sequence[PageRecord]) -> dict[str, int]:
    """In-degree of each crawled page (keyed by its ``url``) from the other crawled pages.

    A link reaches a page when it names the page's ``url`` or ``final_url`` (after a redirect),
    fragments ignored. Each page counts once per target however often it links there, and a
    page linking to itself is not counted: only links between pages say what is central.
    """
    aliases = _aliases(pages)
    counts: Counter[str] = Counter()
    for page in pages:
        own = {_defrag(page.url)} | ({_defrag(page.final_url)} if page.final_url else set())
        targets = {aliases.get(_defrag(link)) for link in page.links if _defrag(link) not in own}
        counts.update(target for target in targets if target is not None and target != page.url)
    return dict(counts)


def render_csv(pages: Sequence[PageRecord], analysis: Analysis) -> bytes:
    """One row per page, for spreadsheets: text cells are defused so none runs as a formula."""
    names = [summary.name for summary in analysis.fields]
    degrees = inlinks(pages)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([*CSV_COLUMNS, *(_cell(name) for name in names)])
    for page in sorted(pages, key=lambda page: page.url):
        writer.writerow(_csv_row(page, degrees.get(page.url, 0), names))
    return buffer.getvalue().encode("utf-8")


def render_json(analysis: Analysis) -> bytes:
    """The figures for programs; ``Analysis.model_validate_json`` reads them back."""
    return analysis.model_dump_json(indent=2).encode("utf-8")


def render_html(analysis: Analysis) -> bytes:
    """A single self-contained page (inline CSS and SVG charts) that opens anywhere, offline."""
    template = _environment().get_template("report.html.j2")
    html = template.render(
        analysis=analysis,
        status_chart=_chart(analysis.by_status, _pages, _status_class),
        response_chart=_chart(analysis.response_ms, _milliseconds, lambda _: "timing"),
    )
    return html.encode("utf-8")


def build_report(
    pages: Sequence[PageRecord],
    *,
    crawl_id: str,
    started_at: str | None = None,
    finished_at: str | None = None,
    top: int = 10,
) -> tuple[Analysis, dict[str, bytes]]:
    """The analysis and every report file, keyed by format (``csv``, ``json``, ``html``)."""
    analysis = analyse(
        pages, crawl_id=crawl_id, started_at=started_at, finished_at=finished_at, top=top
    )
    files = {
        "csv": render_csv(pages, analysis),
        "json": render_json(analysis),
        "html": render_html(analysis),
    }
    return analysis, files


# --- figures -------------------------------------------------------------------------------


def _status_key(status: int | None) -> str:
    return "(none)" if status is None else str(status)


def _by_number(keys: Iterable[str]) -> dict[str, int]:
    """Counts in numeric key order (so 404 follows 200, and 10 follows 9); others last."""
    counts = Counter(keys)
    order = sorted(counts, key=lambda key: (0, int(key), key) if key.isdigit() else (1, 0, key))
    return {key: counts[key] for key in order}


def _most_common(keys: Iterable[str]) -> dict[str, int]:
    """Counts, most common first, ties by name so the output is stable."""
    counts = Counter(keys)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _timings(values: Sequence[float]) -> dict[str, float]:
    """Nearest-rank percentiles: every figure is a time some page really took."""
    if not values:
        return {}
    ordered = sorted(values)
    figures = {f"p{p}": ordered[_rank(p, len(ordered)) - 1] for p in PERCENTILES}
    figures["max"] = ordered[-1]
    figures["mean"] = sum(ordered) / len(ordered)
    return figures


def _rank(percent: int, count: int) -> int:
    """ceil(percent / 100 * count) in integer arithmetic, at least 1."""
    return max(1, -(-percent * count // 100))


def _defrag(url: str) -> str:
    return urldefrag(url).url


def _aliases(pages: Sequence[PageRecord]) -> dict[str, str]:
    """Every URL naming a crawled page, mapped to that page's ``url``.

    A page's own ``url`` wins over another page's ``final_url``; when several pages were
    redirected to the same place, the first ``url`` in order owns it.
    """
    aliases: dict[str, str] = {}
    for page in sorted(pages, key=lambda page: page.url):
        if page.final_url:
            aliases.setdefault(_defrag(page.final_url), page.url)
    for page in pages:
        aliases[_defrag(page.url)] = page.url
    return aliases


def _most_linked(degrees: Mapping[str, int], top: int) -> list[LinkCount]:
    ranked = sorted(degrees.items(), key=lambda item: (-item[1], item[0]))
    return [LinkCount(url=url, inlinks=count) for url, count in ranked[:top]]


def _field_names(pages: Iterable[PageRecord]) -> list[str]:
    return sorted({name for page in pages for name in page.fields})


def _values(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _field_summary(name: str, fetched: Sequence[PageRecord], top: int) -> FieldSummary:
    """Present means the selector matched on a fetched page (None and [] are missing)."""
    found = [_values(page.fields.get(name)) for page in fetched]
    values = [value for page_values in found for value in page_values]
    counts = Counter(values)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    present = sum(1 for page_values in found if page_values)
    return FieldSummary(
        name=name,
        present=present,
        missing=len(fetched) - present,
        distinct=len(counts),
        top_values=[ValueCount(value=value, count=count) for value, count in ranked[:top]],
        numeric=_numeric(values),
    )


def _numeric(values: Sequence[str]) -> NumericSummary | None:
    """Figures when every value is a finite number; NaN and infinities would not survive JSON."""
    numbers: list[float] = []
    for value in values:
        try:
            number = float(value.strip())
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        numbers.append(number)
    if not numbers:
        return None
    total = math.fsum(numbers)
    return NumericSummary(
        count=len(numbers),
        min=min(numbers),
        max=max(numbers),
        mean=total / len(numbers),
        sum=total,
    )


# --- CSV -----------------------------------------------------------------------------------


def _cell(text: str | None) -> str:
    """Text as a cell no spreadsheet evaluates: a quote before a formula's first character."""
    if text is None:
        return ""
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def _number(value: float | None) -> str:
    return "" if value is None else str(value)


def _csv_row(page: PageRecord, inlink_count: int, names: Sequence[str]) -> list[str]:
    fields = [_cell(LIST_SEPARATOR.join(_values(page.fields.get(name)))) for name in names]
    return [
        _cell(page.url),
        str(page.depth),
        _number(page.status),
        _cell(page.content_type),
        str(page.bytes),
        _number(page.elapsed_ms),
        _cell(page.title),
        _cell(page.error_type),
        _cell(page.error),
        str(inlink_count),
        *fields,
    ]


# --- HTML ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bar:
    """One row of a horizontal bar chart, laid out so the template only draws it."""

    label: str
    value: str
    css: str
    y: int
    width: float


@dataclass(frozen=True)
class _Chart:
    bars: list[_Bar]
    label_width: int
    bar_height: int
    row_height: int
    width: int
    height: int


def _chart(
    figures: Mapping[str, float], describe: Callable[[float], str], css: Callable[[str], str]
) -> _Chart:
    """Bars as wide as their share of the largest figure, so the chart reads at a glance."""
    largest = max(figures.values(), default=0.0)
    bars = [
        _Bar(
            label=label,
            value=describe(value),
            css=css(label),
            y=index * _ROW_HEIGHT,
            width=round(value / largest * _BAR_SPACE, 1) if largest > 0 else 0.0,
        )
        for index, (label, value) in enumerate(figures.items())
    ]
    return _Chart(
        bars=bars,
        label_width=_LABEL_WIDTH,
        bar_height=_BAR_HEIGHT,
        row_height=_ROW_HEIGHT,
        width=_LABEL_WIDTH + _BAR_SPACE + _VALUE_SPACE,
        height=max(1, len(bars)) * _ROW_HEIGHT,
    )


def _format(value: float) -> str:
    """Whole numbers with thousands separators, others to two places (or three figures)."""
    if float(value).is_integer():
        return f"{value:,.0f}"
    text = f"{value:,.2f}".rstrip("0").rstrip(".")
    return text if text not in ("0", "-0") else f"{value:.3g}"


def _pages(count: float) -> str:
    return f"{_format(count)} page" if count == 1 else f"{_format(count)} pages"


def _milliseconds(value: float) -> str:
    return f"{_format(value)} ms"


def _status_class(label: str) -> str:
    return f"s{label[0]}xx" if label.isdigit() and len(label) == 3 else "sother"


@functools.cache
def _environment() -> jinja2.Environment:
    """Autoescaped, and strict: a misspelt name in the template fails instead of vanishing."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = _format
    return environment
