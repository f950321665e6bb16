"""Which links a crawl may follow."""

from __future__ import annotations

import pytest

from scraper.crawl import in_scope, normalise_domains


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.org/a", True),
        ("https://shop.example.org/a?b=1", True),
        ("http://EXAMPLE.org./a", True),
        ("http://notexample.org/a", False),
        ("http://example.org.evil.test/a", False),
        ("ftp://example.org/a", False),
        ("mailto:someone@example.org", False),
        ("http:///nohost", False),
    ],
)
def test_links_are_in_scope_on_allowed_domains_and_their_subdomains(
    url: str, expected: bool
) -> None:
    assert in_scope(url, ["example.org"]) is expected


def test_domains_are_normalised() -> None:
    assert normalise_domains(["Example.ORG.", " shop.example.org", "", "example.org"]) == [
        "example.org",
        "shop.example.org",
    ]
