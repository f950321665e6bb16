"""``POST /orders/`` and the admin (Tasklane → Outbox messages shows every outbox row)."""

from django.contrib import admin
from django.urls import path
from shop.views import create_order

urlpatterns = [
    path("admin/", admin.site.urls),
    path("orders/", create_order, name="create-order"),
]
