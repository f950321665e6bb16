from __future__ import annotations

import pytest

from tasklane.net.retry_after import retry_after_seconds

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "value, expected",
    [
        ("3", 3.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),  # NOW + 30 s
        ("Tue, 14 Nov 2023 22:12:00 GMT", 0.0),  # in the past
        ("Tue, 14 Nov 2023 22:13:50", None),  # no zone: not an HTTP-date
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value, now=NOW) == expected
