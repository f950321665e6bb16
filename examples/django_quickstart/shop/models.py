"""An order of the quick start's shop."""

from django.db import models


class Order(models.Model):
    """One order; creating it notifies the shop's DingTalk group and emails the customer."""

    customer_email = models.EmailField()
    item = models.CharField(max_length=200)
    quantity = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.pk}: {self.quantity} x {self.item} for {self.customer_email}"
