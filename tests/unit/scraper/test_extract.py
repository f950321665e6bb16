"""scraper.extract: title, visible text, links and selector fields."""

from __future__ import annotations

import pytest

from scraper.extract import EXCERPT_CHARS, MAX_LINKS, Extracted, extract
from tasklane.contracts.scraper import FieldSelector
from tasklane.errors import PermanentError

PAGE_URL = "https://example.com/dir/page.html?q=1#top"

PAGE = b"""<!DOCTYPE html>
<html><head>
  <title>  The   Title </title>
  <style>body { color: red }</style>
  <script>var hidden = "script text";</script>
</head><body>
  <h1 id="main" data-id="h-1"> Heading </h1>
  <p>First   paragraph
     spans lines.</p>
  <script>document.write("more script")</script>
  <noscript>Enable JS</noscript>
  <ul>
    <li class="item" data-sku="a1"> Apple </li>
    <li class="item"> Banana </li>
    <li class="item" data-sku="c3"> Cherry </li>
  </ul>
  <svg><title>icon tooltip</title></svg>
</body></html>
"""


def run(
    body: bytes,
    content_type: str = "text/html",
    base_url: str = PAGE_URL,
    encoding: str | None = "utf-8",
    **selectors: FieldSelector,
) -> Extracted:
    return extract(
        body, encoding=encoding, content_type=content_type, base_url=base_url, selectors=selectors
    )


def links_of(anchors: str, head: str = "") -> list[str]:
    body = f"<html><head>{head}</head><body>{anchors}</body></html>".encode()
    return run(body).links


def test_title_is_the_head_title_with_whitespace_collapsed() -> None:
    assert run(PAGE).title == "The Title"


def test_missing_or_empty_title_is_none() -> None:
    assert run(b"<html><body><p>x</p></body></html>").title is None
    assert run(b"<html><head><title>  </title></head></html>").title is None


def test_excerpt_is_visible_text_without_script_and_style() -> None:
    excerpt = run(PAGE).text_excerpt
    # noscript is shown to clients without JavaScript, like us; an SVG <title> is a tooltip.
    assert excerpt == "Heading First paragraph spans lines. Enable JS Apple Banana Cherry"
    for hidden in ("script text", "more script", "color: red", "The Title", "tooltip"):
        assert hidden not in excerpt


def test_excerpt_is_cut_at_500_characters() -> None:
    body = b"<html><body><p>" + b"word " * 1000 + b"</p></body></html>"
    excerpt = run(body).text_excerpt
    assert len(excerpt) == EXCERPT_CHARS
    assert excerpt.startswith("word word")


def test_links_are_resolved_against_the_final_url() -> None:
    links = links_of(
        '<a href="other.html">r</a><a href="/root">a</a><a href="../up">u</a>'
        '<a href="//cdn.example.net/x">p</a><a href="http://plain.example/">h</a>'
        '<a href="?page=2">q</a>'
    )
    assert links == [
        "https://example.com/dir/other.html",
        "https://example.com/root",
        "https://example.com/up",
        "https://cdn.example.net/x",
        "http://plain.example/",
        "https://example.com/dir/page.html?page=2",
    ]


def test_base_href_changes_the_resolution_base() -> None:
    links = links_of(
        '<a href="a.html">a</a><a href="/b">b</a>', head='<base href="https://mirror.example/m/">'
    )
    assert links == ["https://mirror.example/m/a.html", "https://mirror.example/b"]


def test_relative_base_href_is_resolved_against_the_page() -> None:
    assert links_of('<a href="a.html">a</a>', head='<base href="/sub/">') == [
        "https://example.com/sub/a.html"
    ]


def test_fragments_are_removed_and_duplicates_dropped_in_order() -> None:
    links = links_of(
        '<a href="b.html#one">1</a><a href="a.html">2</a><a href="b.html#two">3</a>'
        '<a href="a.html">4</a><a href="#top">5</a>'
    )
    assert links == [
        "https://example.com/dir/b.html",
        "https://example.com/dir/a.html",
        "https://example.com/dir/page.html?q=1",
    ]


def test_non_http_and_malformed_links_are_dropped() -> None:
    links = links_of(
        '<a href="mailto:a@example.com">m</a><a href="javascript:void(0)">j</a>'
        '<a href="tel:+123">t</a><a href="ftp://files.example/x">f</a>'
        '<a href="data:text/html,hi">d</a><a href="http://[::1">v6</a>'
        '<a href="http://host:99999/">port</a><a>no href</a><a href="  ok.html ">ok</a>'
    )
    assert links == ["https://example.com/dir/ok.html"]


def test_links_are_capped() -> None:
    anchors = "".join(f'<a href="/p{i}">{i}</a>' for i in range(MAX_LINKS + 50))
    links = links_of(anchors)
    assert len(links) == MAX_LINKS
    assert links[-1] == f"https://example.com/p{MAX_LINKS - 1}"


def test_css_and_xpath_fields() -> None:
    fields = run(
        PAGE,
        heading=FieldSelector(css="h1"),
        heading_id=FieldSelector(css="h1", attribute="data-id"),
        items=FieldSelector(css="li.item", many=True),
        first_item=FieldSelector(xpath="//li[@class='item']"),
        skus=FieldSelector(xpath="//li", attribute="data-sku", many=True),
        css_text=FieldSelector(css="li::text", many=True),
        xpath_attr=FieldSelector(xpath="//h1/@id"),
        count=FieldSelector(xpath="count(//li)"),
    ).fields
    assert fields == {
        "heading": "Heading",
        "heading_id": "h-1",
        "items": ["Apple", "Banana", "Cherry"],
        "first_item": "Apple",
        "skus": ["a1", "c3"],  # the match without the attribute is skipped
        "css_text": ["Apple", "Banana", "Cherry"],
        "xpath_attr": "main",
        "count": "3.0",
    }


def test_string_value_includes_descendant_text() -> None:
    body = b"<html><body><div id='d'> Hello <b>big</b>  world </div></body></html>"
    assert run(body, d=FieldSelector(css="#d")).fields == {"d": "Hello big  world"}


def test_missing_fields_are_none_or_empty() -> None:
    fields = run(
        PAGE,
        one=FieldSelector(css="table"),
        many=FieldSelector(xpath="//table", many=True),
        attr=FieldSelector(css="h1", attribute="href"),
    ).fields
    assert fields == {"one": None, "many": [], "attr": None}


@pytest.mark.parametrize(
    "selector",
    [
        FieldSelector(css="li["),
        FieldSelector(css="li::nope"),
        FieldSelector(xpath="//li["),
        FieldSelector(xpath="//x:li"),
    ],
)
@pytest.mark.parametrize("content_type", ["text/html", "application/xml", "text/plain"])
def test_bad_selector_is_a_permanent_error_naming_the_field(
    selector: FieldSelector, content_type: str
) -> None:
    body = PAGE if content_type != "application/xml" else b"<r/>"
    with pytest.raises(PermanentError, match="'price'"):
        run(body, content_type, ok=FieldSelector(css="h1"), price=selector)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "text/csv"])
def test_non_html_content_is_text_only(content_type: str) -> None:
    body = b'<title>not a title</title>\n  {"a":   [1, 2]}\n<a href="/x">x</a> ' + b"z" * 600
    result = run(body, f"{content_type}; charset=utf-8", title=FieldSelector(css="title"))
    assert result.title is None
    assert result.links == []
    assert result.fields == {"title": None}
    assert result.text_excerpt.startswith('<title>not a title</title> {"a": [1, 2]} <a href=')
    assert len(result.text_excerpt) == EXCERPT_CHARS


def test_xml_supports_selectors_but_has_no_title_or_links() -> None:
    body = b"""<?xml version="1.0"?>
    <feed><title>Feed</title><entry id="1"><link href="https://a.example/"/>One</entry>
    <entry id="2">Two</entry></feed>"""
    result = run(
        body,
        "application/atom+xml",
        ids=FieldSelector(xpath="//entry/@id", many=True),
        first=FieldSelector(css="entry"),
    )
    assert result.title is None
    assert result.links == []
    assert result.text_excerpt == "FeedOne Two"
    assert result.fields == {"ids": ["1", "2"], "first": "One"}


def test_encoding_from_meta_charset_when_the_server_declared_none() -> None:
    body = '<html><head><meta charset="iso-8859-1"></head><body>Café</body></html>'
    result = run(body.encode("latin-1"), encoding=None)
    assert result.text_excerpt == "Café"


def test_declared_encoding_wins_over_meta_and_bom_wins_over_both() -> None:
    body = '<html><head><meta charset="utf-8"></head><body>Grüße</body></html>'
    assert run(body.encode("cp1252"), encoding="windows-1252").text_excerpt == "Grüße"
    bom = b"\xef\xbb\xbf" + body.encode("utf-8")
    assert run(bom, encoding="iso-8859-1").text_excerpt == "Grüße"


def test_undecodable_bytes_and_unknown_charset_do_not_fail() -> None:
    body = b"<html><body>ok \xff\xfe end</body></html>"
    result = run(body, encoding="no-such-charset")
    assert result.text_excerpt == "ok \ufffd\ufffd end"


def test_empty_html_body() -> None:
    assert run(b"") == Extracted(None, "", [], {})
