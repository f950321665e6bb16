"""Extract a title, a text excerpt, links and named fields from a fetched body.

HTML (``text/html``, ``application/xhtml+xml``) gets everything. XML (``application/xml``,
``text/xml``, ``*+xml``) is parsed as XML: CSS and XPath selectors work on it, but it has no
title and no links. Anything else (plain text, JSON, CSV) is text: the excerpt only, every field
None. Selectors are checked in every case, so a bad selector fails the same way whatever the
page turned out to be.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urldefrag, urljoin, urlsplit

from parsel import Selector, SelectorList

from tasklane.contracts.scraper import FieldSelector
from tasklane.errors import PermanentError

EXCERPT_CHARS = 500
MAX_LINKS = 1000
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
XML_TYPES = frozenset({"application/xml", "text/xml"})

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""")
# Browsers (WHATWG Encoding) read these labels as windows-1252, and so do authors' pages.
_AS_CP1252 = frozenset({"latin_1", "iso8859-1", "ascii"})
_INVISIBLE = "ancestor::script or ancestor::style or ancestor::template or ancestor::title"
_VISIBLE_TEXT = f".//text()[not({_INVISIBLE})]"
# Empty, so that checking selectors costs nothing for bodies that are not parsed.
_EMPTY = Selector(text="<html></html>", type="html")
# cssselect raises SelectorSyntaxError (a SyntaxError) and ExpressionError (a RuntimeError),
# parsel raises ValueError for XPath errors.
_SELECTOR_ERRORS = (ValueError, SyntaxError, RuntimeError)


@dataclass(frozen=True)
class Extracted:
    """What was extracted from one page."""

    title: str | None
    text_excerpt: str
    links: list[str]
    fields: dict[str, str | list[str] | None]


def extract(
    body: bytes,
    *,
    encoding: str | None,
    content_type: str,
    base_url: str,
    selectors: Mapping[str, FieldSelector],
) -> Extracted:
    """Extract from ``body`` (decoded content-encoding) of type ``content_type``.

    Args:
        body: the page bytes.
        encoding: the charset the server declared, if any; a BOM wins over it, and without
            either the page's own ``<meta charset>`` or XML declaration is used, then UTF-8.
        content_type: the media type (parameters are ignored).
        base_url: the final URL of the page, against which links are resolved.
        selectors: named fields. A text value is the element's string value, an
            ``attribute`` value that attribute; selectors that already pick text or attributes
            (``::text``, ``::attr(x)``, ``text()``, ``@x``) give those. Values are stripped;
            matches without the attribute are skipped. ``many`` gives every value, else the
            first one or None.

    Raises:
        PermanentError: a selector is invalid; the message names the field.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    text = _decode(body, encoding, media_type)
    if media_type in HTML_TYPES:
        kind = "html"
    elif media_type in XML_TYPES or media_type.endswith("+xml"):
        kind = "xml"
    else:
        _select_all(_EMPTY, selectors)
        return Extracted(None, _collapse(text)[:EXCERPT_CHARS], [], dict.fromkeys(selectors))
    try:
        document = Selector(text=text, type=kind)
    except SyntaxError:  # lxml's XMLSyntaxError: an XML body too broken to recover
        _select_all(_EMPTY, selectors)
        return Extracted(None, _collapse(text)[:EXCERPT_CHARS], [], dict.fromkeys(selectors))
    fields = _select_all(document, selectors)
    if kind == "xml":
        excerpt = _collapse(document.xpath("string()").get(""))[:EXCERPT_CHARS]
        return Extracted(None, excerpt, [], fields)
    return Extracted(_title(document), _excerpt(document), _links(document, base_url), fields)


def _decode(body: bytes, encoding: str | None, media_type: str) -> str:
    for bom, name in _BOMS:
        if body.startswith(bom):
            return body.decode(name, errors="replace")
    candidates: list[str | None] = [encoding]
    if media_type in HTML_TYPES:
        candidates.append(_sniff(_META_CHARSET, body[:2048]))
    elif media_type in XML_TYPES or media_type.endswith("+xml"):
        candidates.append(_sniff(_XML_ENCODING, body[:1024]))
    for candidate in candidates:
        codec = _codec(candidate)
        if codec is not None:
            return body.decode(codec, errors="replace")
    return body.decode("utf-8", errors="replace")


def _sniff(pattern: re.Pattern[bytes], head: bytes) -> str | None:
    match = pattern.search(head)
    return match.group(1).decode("ascii") if match else None


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip()).name
    except LookupError:
        return None
    return "cp1252" if name in _AS_CP1252 else name


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _title(document: Selector) -> str | None:
    # The head's title first: an <svg><title> in the body is a tooltip, not the page title.
    node = document.xpath("/html/head/title") or document.xpath("//title")
    title = _collapse(node[0].xpath("string()").get("")) if node else ""
    return title or None


def _excerpt(document: Selector) -> str:
    scope = document.xpath("//body") or document.xpath("/*")
    # Text nodes are joined with spaces: inline tags then add a stray space ("a <b>b</b> !"),
    # which reads better than block elements' words glued together.
    return _collapse(" ".join(scope.xpath(_VISIBLE_TEXT).getall()))[:EXCERPT_CHARS]


def _links(document: Selector, page_url: str) -> list[str]:
    base = page_url
    base_href = document.xpath("//base/@href").get()
    if base_href is not None:
        resolved = _absolute(page_url, base_href)
        base = resolved if resolved is not None else page_url
    links: dict[str, None] = {}
    for href in document.xpath("//a/@href").getall():
        link = _absolute(base, href)
        if link is not None:
            links[link] = None
            if len(links) >= MAX_LINKS:
                break
    return list(links)


def _absolute(base: str, href: str) -> str | None:
    # Browsers strip surrounding whitespace and drop tabs and newlines inside URLs.
    href = re.sub(r"[\t\n\r]", "", href.strip())
    try:
        url = urldefrag(urljoin(base, href)).url
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url


def _select_all(
    document: Selector, selectors: Mapping[str, FieldSelector]
) -> dict[str, str | list[str] | None]:
    fields: dict[str, str | list[str] | None] = {}
    for name, spec in selectors.items():
        try:
            if spec.css is not None:
                matches = document.css(spec.css)
            else:
                matches = document.xpath(spec.xpath or "")
        except _SELECTOR_ERRORS as exc:
            raise PermanentError(f"invalid selector for field {name!r}: {exc}") from None
        values = _values(matches, spec.attribute)
        fields[name] = values if spec.many else (values[0] if values else None)
    return fields


def _values(matches: SelectorList[Selector], attribute: str | None) -> list[str]:
    values: list[str] = []
    for match in matches:
        # Selectors for text, attributes or XPath numbers have a plain value, not an element.
        scalar = isinstance(match.root, str | int | float)
        if attribute is not None:
            value = None if scalar else match.attrib.get(attribute)
        else:
            value = str(match.get()) if scalar else match.xpath("string()").get("")
        if value is not None:
            values.append(value.strip())
    return values
