from __future__ import annotations

import subprocess
import sys

import pytest

from tasklane.contracts import SEND_EMAIL
from tasklane.errors import PayloadTooLargeError, PayloadValidationError, UnknownContractError
from tasklane.publish import Publisher
from tasklane.settings import Settings
from tasklane.wire.headers import DEAD_LETTER_HEADERS

# Validation happens before any connection is opened: no broker answers at this port.
UNREACHABLE = Settings(broker_url="redis://127.0.0.1:1/0")
EMAIL = {"to": ["ada@example.com"], "subject": "hi", "text": "hello"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**EMAIL, "to": ["not-an-address"]}, "to.0"),
        ({k: v for k, v in EMAIL.items() if k != "subject"}, "subject"),
        ({**EMAIL, "colour": "red"}, "colour"),
        ({**EMAIL, "template": "welcome"}, "exactly one of them"),
    ],
)
def test_invalid_email_is_refused_naming_the_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(PayloadValidationError, match=field):
        Publisher(UNREACHABLE).publish(SEND_EMAIL, payload)


@pytest.mark.parametrize("name", [*DEAD_LETTER_HEADERS, "x-tasklane-busy-waits", "id", "task"])
def test_headers_a_worker_owns_cannot_be_published(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Publisher(UNREACHABLE).publish(SEND_EMAIL, EMAIL, headers={name: "forged"})


def test_unknown_im_channel_is_refused() -> None:
    payload = {"channel": "fax", "url": "http://127.0.0.1/x", "text": "hi"}
    with pytest.raises(PayloadValidationError, match="channel"):
        Publisher(UNREACHABLE).publish("notifier.im.send", payload)


def test_unknown_task_name_is_refused() -> None:
    with pytest.raises(UnknownContractError, match="notifier.fax.send"):
        Publisher(UNREACHABLE).publish("notifier.fax.send", {})


def test_payload_over_the_size_limit_is_refused() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:1/0", max_payload_bytes=1024)
    with pytest.raises(PayloadTooLargeError, match="TASKLANE_MAX_PAYLOAD_BYTES"):
        Publisher(settings).publish(SEND_EMAIL, {**EMAIL, "text": "x" * 2000})


def test_bulk_publish_names_the_index_of_the_bad_payload() -> None:
    payloads = [EMAIL, EMAIL, {**EMAIL, "to": []}]
    with pytest.raises(PayloadValidationError, match=r"\[2\] to"):
        Publisher(UNREACHABLE).publish_many(SEND_EMAIL, payloads)


def test_an_upstream_imports_tasklane_without_any_service_package() -> None:
    code = (
        "import sys, tasklane, tasklane.publish, tasklane.contracts\n"
        "services = {'notifier', 'scraper', 'media'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in services)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_problems_carry_their_location_and_message_apart() -> None:
    with pytest.raises(PayloadValidationError) as caught:
        Publisher(UNREACHABLE).publish(SEND_EMAIL, {**EMAIL, "to": ["not-an-address"]})
    (problem,) = caught.value.problems
    assert problem.location == ("to", 0)
    assert problem.field == "to.0"
    assert "not a valid email address" in problem.message
    assert caught.value.errors == [f"to.0: {problem.message}"]


def test_a_bulk_publish_names_the_payload_of_each_problem_by_its_index() -> None:
    payloads = [EMAIL, {**EMAIL, "to": []}, {**EMAIL, "subject": ""}]
    with pytest.raises(PayloadValidationError) as caught:
        Publisher(UNREACHABLE).publish_many(SEND_EMAIL, payloads)
    assert [(p.item, p.location) for p in caught.value.problems] == [("[1]", ("to",))]
