"""Media payloads are refused at publish time with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from tasklane.contracts import THUMBNAIL_VIDEO, TRANSFORM_IMAGE
from tasklane.contracts.validation import validate_payload
from tasklane.errors import PayloadValidationError


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"source": "/etc/passwd"}, "source"),
        ({"source": "ftp://host/x.jpg"}, "source"),
        ({"source": "s3://b/x.jpg", "resize": {}}, "resize"),
        ({"source": "s3://b/x.jpg", "resize": {"width": 10, "fit": "fill"}}, "resize"),
        ({"source": "s3://b/x.jpg", "format": "gif"}, "format"),
        ({"source": "s3://b/x.jpg", "quality": 0}, "quality"),
    ],
)
def test_bad_image_payloads_name_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadValidationError, match=field):
        validate_payload(TRANSFORM_IMAGE, payload)


def test_a_video_thumbnail_is_an_offset_or_a_contact_sheet() -> None:
    with pytest.raises(PayloadValidationError, match="offset or contact_sheet"):
        validate_payload(
            THUMBNAIL_VIDEO, {"source": "https://x.test/v.mp4", "offset": 1, "contact_sheet": {}}
        )
    assert validate_payload(THUMBNAIL_VIDEO, {"source": "file:///data/v.mp4", "offset": 2.5})
