"""The outbox in Django's admin, used as a person would: logged in, reading and acting."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tasklane.contrib.django.models import OutboxMessage

pytestmark = pytest.mark.integration

CHANGELIST = "/admin/tasklane/outboxmessage/"
REASON = "contract 'billing.invoice.send' is not in the registry"


@pytest.fixture
def admin_client(django_project: str) -> Iterator[Client]:
    user = User.objects.create_superuser(f"admin-{uuid.uuid4().hex[:8]}", "a@example.com", "pw")
    client = Client()
    client.force_login(user)
    yield client
    user.delete()


def row(task_id: str, state: str, **fields: Any) -> OutboxMessage:
    fields.setdefault("contract", "notifier.email.send")
    return OutboxMessage.objects.create(task_id=task_id, message={}, state=state, **fields)


def test_a_parked_row_shows_its_reason_and_send_again_makes_it_pending(
    admin_client: Client,
) -> None:
    parked = row("parked-1", "parked", attempts=3, last_error=REASON)
    sent = row("sent-1", "sent")
    row("pending-1", "pending")

    page = admin_client.get(CHANGELIST, {"state__exact": "parked"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "parked-1" in html and "billing.invoice.send" in html
    assert "pending-1" not in html  # the filter

    found = admin_client.get(CHANGELIST, {"q": "pending-1"}).content.decode()
    assert "pending-1" in found and "parked-1" not in found  # the search by task id

    row("im-1", "pending", contract="notifier.im.send")
    of_im = admin_client.get(CHANGELIST, {"contract": "notifier.im.send"}).content.decode()
    assert "im-1" in of_im and "pending-1" not in of_im  # the contract filter

    done = admin_client.post(
        CHANGELIST,
        {"action": "send_again", "_selected_action": [parked.pk, sent.pk]},
        follow=True,
    )
    assert "1 parked message(s) set back to pending." in done.content.decode()
    parked.refresh_from_db()
    sent.refresh_from_db()
    assert (parked.state, parked.attempts, parked.last_error) == ("pending", 0, "")
    assert sent.state == "sent"  # only parked rows are sent again


def test_rows_are_read_only_and_cannot_be_added(admin_client: Client) -> None:
    parked = row("parked-2", "parked", last_error=REASON)
    page = admin_client.get(f"{CHANGELIST}{parked.pk}/change/")
    assert page.status_code == 200
    assert REASON.replace("'", "&#x27;") in page.content.decode()
    assert 'name="last_error"' not in page.content.decode()  # shown, not editable
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
