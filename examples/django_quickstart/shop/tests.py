"""The order view's tests (``python manage.py test shop``): what it publishes, captured by
Tasklane's test helper; nothing reaches a broker."""

from django.test import TestCase

from shop.models import Order
from tasklane.contracts import SEND_EMAIL, SEND_IM
from tasklane.contrib.django.testing import TasklanePublishesMixin

ORDER = {"customer_email": "ada@example.com", "item": "Blue kettle", "quantity": 2}


class CreateOrderTests(TasklanePublishesMixin, TestCase):
    def test_an_order_tells_the_robot_and_emails_the_customer(self) -> None:
        response = self.client.post("/orders/", ORDER, content_type="application/json")

        self.assertEqual(response.status_code, 201)
        order = Order.objects.get()
        robot = self.assertPublished(
            SEND_IM, channel="dingtalk", idempotency_key=f"order-{order.pk}-robot"
        )
        email = self.assertPublished(
            SEND_EMAIL, to=["ada@example.com"], subject=f"Order {order.pk} confirmed"
        )
        self.assertEqual({robot.via, email.via}, {"outbox"})
        self.assertEqual(
            response.json()["tasks"],
            {SEND_IM.name: robot.task_id, SEND_EMAIL.name: email.task_id},
        )

    def test_an_invalid_order_is_refused_and_publishes_nothing(self) -> None:
        response = self.client.post(
            "/orders/", {**ORDER, "customer_email": "nobody"}, content_type="application/json"
        )

        self.assertEqual(response.status_code, 400)
        self.assertIn("customer_email", response.json()["errors"])
        self.assertEqual(self.tasklane_published, [])
        self.assertFalse(Order.objects.exists())
