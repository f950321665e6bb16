"""``POST /orders/``: create an order and, when it commits, tell the shop and the customer."""

import json

from django.db import transaction
from django.forms import ModelForm
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from shop.models import Order
from shop.notifications import confirmation_email, robot_message
from tasklane.contracts import SEND_EMAIL, SEND_IM
from tasklane.contrib.django import publish_on_commit


class OrderForm(ModelForm):
    class Meta:
        model = Order
        fields = ["customer_email", "item", "quantity"]


@csrf_exempt  # an API for other programs, which hold no CSRF cookie (the admin keeps CSRF)
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """Create an order from a JSON body; 201 with the order and the ids of its two tasks."""
    try:
        form = OrderForm(json.loads(request.body))
    except ValueError:
        return JsonResponse({"error": "the body is not JSON"}, status=400)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors}, status=400)
    with transaction.atomic():
        order = form.save()
        # With Celery this was send_dingtalk_message.delay(message): sent at once, so also for
        # an order whose transaction then rolled back, and an error 500 while the broker was
        # down. publish_on_commit validates the payload now and, with TASKLANE["OUTBOX"],
        # writes the task to the outbox in this transaction: it leaves with the order's commit
        # or not at all, and waits out a broker outage in the database.
        robot_task = publish_on_commit(SEND_IM, robot_message(order))
        email_task = publish_on_commit(SEND_EMAIL, confirmation_email(order))
    return JsonResponse(
        {"order": order.pk, "tasks": {SEND_IM.name: robot_task, SEND_EMAIL.name: email_task}},
        status=201,
    )
