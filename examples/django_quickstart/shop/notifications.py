"""What the shop tells people about an order: its DingTalk group and the customer.

Payloads of the notifier's contracts (``tasklane.contracts``), validated when they are built.
"""

from django.conf import settings

from shop.models import Order
from tasklane.contracts import EmailPayload, IMPayload


def robot_message(order: Order) -> IMPayload:
    """A markdown message to the shop's DingTalk robot, signed by the notifier."""
    return IMPayload(
        channel="dingtalk",
        url=settings.DINGTALK_ROBOT_URL,
        secret_ref=settings.DINGTALK_SECRET_REF,
        title=f"New order {order.pk}",
        text=(
            f"#### New order {order.pk}\n"
            f"- {order.quantity} x {order.item}\n"
            f"- customer: {order.customer_email}"
        ),
        # One delivery per order, however often the message is sent: the worker runs a second
        # copy (a relay resending after a crash) as a no-op.
        idempotency_key=f"order-{order.pk}-robot",
    )


def confirmation_email(order: Order) -> EmailPayload:
    """The customer's order confirmation."""
    return EmailPayload(
        to=[order.customer_email],
        subject=f"Order {order.pk} confirmed",
        text=(
            f"Thank you for your order {order.pk}: {order.quantity} x {order.item}.\n"
            "We will let you know when it ships."
        ),
        idempotency_key=f"order-{order.pk}-confirmation",
    )
