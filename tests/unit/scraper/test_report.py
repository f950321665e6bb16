"""scraper.report: crawl figures and the CSV, JSON and HTML reports built from page records."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest

from scraper.records import PageRecord
from scraper.report import (
    CSV_COLUMNS,
    Analysis,
    FieldSummary,
    LinkCount,
    NumericSummary,
    ValueCount,
    analyse,
    build_report,
    inlinks,
    render_csv,
    render_html,
    render_json,
)

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def page(url: str, **values: Any) -> PageRecord:
    """A fetched page (status 200) unless ``error`` is given."""
    values.setdefault("depth", 0)
    values.setdefault("fetched_at", "2025-01-01T00:00:00Z")
    if "error" not in values:
        values.setdefault("status", 200)
    return PageRecord(url=url, **values)


def failed(url: str, error_type: str | None = "retries-exhausted", **values: Any) -> PageRecord:
    return page(url, error="boom", error_type=error_type, **values)


def site() -> list[PageRecord]:
    """a links to b and c, b to c, c to a; d (failed) links nowhere; x is outside the crawl."""
    return [
        page("https://e.com/a", links=["https://e.com/b", "https://e.com/c", "https://x.org/"]),
        page("https://e.com/b", depth=1, links=["https://e.com/c"]),
        page("https://e.com/c", depth=1, links=["https://e.com/a"]),
        failed("https://e.com/d", depth=2),
    ]


# --- totals and breakdowns -----------------------------------------------------------------


def test_totals_split_fetched_from_failed() -> None:
    pages = [
        page("https://e.com/1", bytes=100),
        page("https://e.com/2", status=404, bytes=50),
        failed("https://e.com/3", bytes=7),
    ]
    analysis = analyse(pages, crawl_id="c1", started_at="s", finished_at="f")
    assert (analysis.pages, analysis.fetched, analysis.failed) == (3, 2, 1)
    assert analysis.bytes == 157
    assert (analysis.crawl_id, analysis.started_at, analysis.finished_at) == ("c1", "s", "f")


def test_by_status_counts_fetched_pages_in_numeric_order() -> None:
    statuses = [500, 200, 404, 200, 301, 200]
    pages = [page(f"https://e.com/{i}", status=s) for i, s in enumerate(statuses)]
    pages.append(failed("https://e.com/failed"))
    by_status = analyse(pages, crawl_id="c").by_status
    assert by_status == {"200": 3, "301": 1, "404": 1, "500": 1}
    assert list(by_status) == ["200", "301", "404", "500"]


def test_by_content_type_most_common_first_then_name() -> None:
    types = ["text/html", "application/json", None, "text/html", "application/json", "text/csv"]
    pages = [page(f"https://e.com/{i}", content_type=t) for i, t in enumerate(types)]
    pages.append(failed("https://e.com/failed", content_type="image/png"))
    by_type = analyse(pages, crawl_id="c").by_content_type
    assert list(by_type.items()) == [
        ("application/json", 2),
        ("text/html", 2),
        ("(none)", 1),
        ("text/csv", 1),
    ]


def test_by_error_counts_failed_pages_with_a_fallback_name() -> None:
    pages = [
        failed("https://e.com/1", "robots-disallowed"),
        failed("https://e.com/2", "too-large"),
        failed("https://e.com/3", "robots-disallowed"),
        failed("https://e.com/4", None),
        page("https://e.com/5", status=500),
    ]
    by_error = analyse(pages, crawl_id="c").by_error
    assert list(by_error.items()) == [("robots-disallowed", 2), ("error", 1), ("too-large", 1)]


def test_by_depth_counts_every_page_in_numeric_order() -> None:
    depths = [10, 0, 2, 2, 1]
    pages = [page(f"https://e.com/{i}", depth=d) for i, d in enumerate(depths)]
    pages.append(failed("https://e.com/failed", depth=2))
    assert list(analyse(pages, crawl_id="c").by_depth.items()) == [
        ("0", 1),
        ("1", 1),
        ("2", 3),
        ("10", 1),
    ]


# --- response times ------------------------------------------------------------------------


def test_response_percentiles_are_nearest_rank() -> None:
    pages = [page(f"https://e.com/{ms}", elapsed_ms=float(ms)) for ms in range(100, 0, -1)]
    pages.append(failed("https://e.com/slow-failure", elapsed_ms=99_999.0))
    assert analyse(pages, crawl_id="c").response_ms == {
        "p50": 50.0,
        "p90": 90.0,
        "p95": 95.0,
        "p99": 99.0,
        "max": 100.0,
        "mean": 50.5,
    }


def test_response_percentiles_of_a_short_list() -> None:
    pages = [page(f"https://e.com/{ms}", elapsed_ms=ms) for ms in (30.0, 10.0, 20.0)]
    pages.append(page("https://e.com/untimed"))
    response = analyse(pages, crawl_id="c").response_ms
    assert (response["p50"], response["p90"], response["p99"]) == (20.0, 30.0, 30.0)
    assert (response["max"], response["mean"]) == (30.0, 20.0)


def test_response_ms_is_empty_without_timings() -> None:
    pages = [page("https://e.com/a"), failed("https://e.com/b", elapsed_ms=5.0)]
    assert analyse(pages, crawl_id="c").response_ms == {}


# --- links ---------------------------------------------------------------------------------


def test_most_linked_counts_only_pages_in_the_crawl() -> None:
    most_linked = analyse(site(), crawl_id="c").most_linked
    assert most_linked == [
        LinkCount(url="https://e.com/c", inlinks=2),
        LinkCount(url="https://e.com/a", inlinks=1),
        LinkCount(url="https://e.com/b", inlinks=1),
    ]


def test_most_linked_is_cut_to_top() -> None:
    most_linked = analyse(site(), crawl_id="c", top=2).most_linked
    assert [link.url for link in most_linked] == ["https://e.com/c", "https://e.com/a"]


def test_self_links_fragments_and_duplicates_count_once_or_not_at_all() -> None:
    pages = [
        page(
            "https://e.com/a",
            links=[
                "https://e.com/a",
                "https://e.com/a#top",
                "https://e.com/b",
                "https://e.com/b#part",
                "https://e.com/b?x=1",
            ],
        ),
        page("https://e.com/b", links=["https://e.com/b#self"]),
    ]
    assert inlinks(pages) == {"https://e.com/b": 1}


def test_links_to_a_final_url_count_for_the_redirected_page() -> None:
    pages = [
        page("https://e.com/old", final_url="https://e.com/new", links=["https://e.com/new"]),
        page("https://e.com/p", links=["https://e.com/new", "https://e.com/old"]),
        page("https://e.com/q", links=["https://e.com/new#x"]),
    ]
    assert inlinks(pages) == {"https://e.com/old": 2}


# --- fields --------------------------------------------------------------------------------


def test_field_numeric_summary_flattens_lists() -> None:
    pages = [
        page("https://e.com/1", fields={"price": "1.5"}),
        page("https://e.com/2", fields={"price": [" 2 ", "4"]}),
        page("https://e.com/3", fields={"price": "3"}),
        page("https://e.com/4", fields={"price": None}),
        page("https://e.com/5", fields={"price": []}),
        page("https://e.com/6"),
        failed("https://e.com/7", fields={"price": "1000"}),
    ]
    [summary] = analyse(pages, crawl_id="c").fields
    assert (summary.name, summary.present, summary.missing, summary.distinct) == (
        "price",
        3,
        3,
        4,
    )
    assert summary.numeric == NumericSummary(count=4, min=1.5, max=4.0, mean=2.625, sum=10.5)


def test_field_with_any_non_number_has_no_numeric_summary() -> None:
    pages = [
        page("https://e.com/1", fields={"tag": ["b", "a", "c"], "n": "1", "x": "1"}),
        page("https://e.com/2", fields={"tag": ["b", "a"], "n": "n/a", "x": "nan"}),
        page("https://e.com/3", fields={"tag": "b", "n": "2", "x": "inf"}),
    ]
    number, tag, non_finite = analyse(pages, crawl_id="c", top=2).fields
    assert tag == FieldSummary(
        name="tag",
        present=3,
        missing=0,
        distinct=3,
        top_values=[ValueCount(value="b", count=3), ValueCount(value="a", count=2)],
        numeric=None,
    )
    assert (number.name, number.numeric) == ("n", None)
    assert (non_finite.name, non_finite.numeric) == ("x", None)


def test_fields_are_sorted_by_name_and_include_names_seen_only_once() -> None:
    pages = [page("https://e.com/1", fields={"zeta": "z"}), page("https://e.com/2", fields={})]
    pages.append(page("https://e.com/3", fields={"alpha": None}))
    fields = analyse(pages, crawl_id="c").fields
    assert [(f.name, f.present, f.missing) for f in fields] == [("alpha", 0, 3), ("zeta", 1, 2)]
    assert fields[0].numeric is None


# --- CSV -----------------------------------------------------------------------------------


def read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_csv_has_a_row_per_page_sorted_by_url_with_inlinks_and_fields() -> None:
    pages = site()
    pages[1] = pages[1].model_copy(
        update={"fields": {"tags": ["x", "y"], "price": "9.5"}, "title": "Bee", "bytes": 12}
    )
    pages[2] = pages[2].model_copy(update={"fields": {"tags": None, "price": None}})
    analysis = analyse(pages, crawl_id="c")
    header, *rows = read_csv(render_csv(pages, analysis))
    assert header == [*CSV_COLUMNS, "price", "tags"]
    assert [row[0] for row in rows] == [f"https://e.com/{name}" for name in "abcd"]
    columns = [dict(zip(header, row, strict=True)) for row in rows]
    assert [row["inlinks"] for row in columns] == ["1", "1", "2", "0"]
    assert columns[1] == {
        "url": "https://e.com/b",
        "depth": "1",
        "status": "200",
        "content_type": "",
        "bytes": "12",
        "elapsed_ms": "",
        "title": "Bee",
        "error_type": "",
        "error": "",
        "inlinks": "1",
        "price": "9.5",
        "tags": "x | y",
    }
    assert (columns[2]["price"], columns[2]["tags"]) == ("", "")
    assert (columns[3]["status"], columns[3]["error_type"]) == ("", "retries-exhausted")


@pytest.mark.parametrize("text", ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"])
def test_csv_defuses_formulas_in_text_cells(text: str) -> None:
    pages = [page("https://e.com/a", title=text, fields={"f": [text, "plain"]}, error=None)]
    header, row = read_csv(render_csv(pages, analyse(pages, crawl_id="c")))
    cells = dict(zip(header, row, strict=True))
    assert cells["title"] == "'" + text
    assert cells["f"] == "'" + text + " | plain"


def test_csv_leaves_numbers_and_safe_text_alone() -> None:
    pages = [page("https://e.com/a", depth=3, bytes=5, elapsed_ms=1.25, title="a=b")]
    header, row = read_csv(render_csv(pages, analyse(pages, crawl_id="c")))
    cells = dict(zip(header, row, strict=True))
    assert (cells["depth"], cells["bytes"], cells["elapsed_ms"]) == ("3", "5", "1.25")
    assert cells["title"] == "a=b"


# --- JSON and the whole report -------------------------------------------------------------


def test_json_round_trips_into_analysis() -> None:
    pages = [*site(), page("https://e.com/e", elapsed_ms=3.5, fields={"n": ["1", "2"]})]
    analysis = analyse(pages, crawl_id="c", started_at="2025-01-01T00:00:00Z")
    assert Analysis.model_validate_json(render_json(analysis)) == analysis


def test_build_report_returns_the_analysis_and_every_format() -> None:
    analysis, files = build_report(site(), crawl_id="c", started_at=None, finished_at=None, top=5)
    assert analysis == analyse(site(), crawl_id="c", top=5)
    assert sorted(files) == ["csv", "html", "json"]
    assert files["json"] == render_json(analysis)
    assert files["html"] == render_html(analysis)
    assert read_csv(files["csv"])[0][0] == "url"


# --- HTML ----------------------------------------------------------------------------------


def svg(html: str, name: str) -> str:
    match = re.search(rf'<svg id="chart-{name}".*?</svg>', html, re.S)
    assert match is not None, f"no {name} chart"
    return match.group(0)


def test_html_status_chart_has_one_proportional_bar_per_status() -> None:
    statuses = [200, 200, 200, 404, 301, 200]
    pages = [
        page(f"https://e.com/{i}", status=s, elapsed_ms=10.0 * i) for i, s in enumerate(statuses)
    ]
    analysis = analyse(pages, crawl_id="c")
    chart = svg(render_html(analysis).decode("utf-8"), "status")
    bars = re.findall(
        r'<rect class="bar[^"]*"[^>]*width="([0-9.]+)"[^>]*><title>([^<]*)</title>', chart
    )
    assert [title for _, title in bars] == ["200: 4 pages", "301: 1 page", "404: 1 page"]
    widths = [float(width) for width, _ in bars]
    assert widths[0] == pytest.approx(4 * widths[1])
    assert widths[1] == widths[2] > 0
    assert ">4 pages</text>" in chart


def test_html_has_the_headline_tables_and_a_response_chart() -> None:
    pages = [*site(), page("https://e.com/e", elapsed_ms=7.0, fields={"n": "1"})]
    html = render_html(analyse(pages, crawl_id="crawl-42")).decode("utf-8")
    assert "<h1>Crawl report: crawl-42</h1>" in html
    assert "<b>5</b> pages" in html and "<b>1</b> failed" in html
    assert svg(html, "response").count("<rect") == 6
    for heading in ("By HTTP status", "By content type", "Failures", "Most linked pages", "Fields"):
        assert f"<h2>{heading}</h2>" in html
    assert "retries-exhausted" in html


def test_html_is_self_contained() -> None:
    pages = [
        *site(),
        page("https://e.com/img", links=["https://e.com/a"], title="https://cdn.example/x.js"),
    ]
    html = render_html(analyse(pages, crawl_id="c")).decode("utf-8")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<script" not in html and "<link" not in html and "<a " not in html
    assert "<style>" in html and "https://e.com/a" in html


def test_html_escapes_hostile_text() -> None:
    url = f"https://e.com/{HOSTILE}"
    pages = [
        page(url, title=HOSTILE, content_type=HOSTILE, fields={HOSTILE: HOSTILE}),
        page("https://e.com/b", links=[url]),
        failed("https://e.com/c", error_type=HOSTILE),
    ]
    html = render_html(analyse(pages, crawl_id=HOSTILE)).decode("utf-8")
    assert HOSTILE not in html
    assert html.count(ESCAPED) >= 6


def test_html_of_an_empty_crawl() -> None:
    html = render_html(analyse([], crawl_id="empty")).decode("utf-8")
    assert "<svg" not in html
    assert "No page was fetched." in html and "No fields were extracted." in html
