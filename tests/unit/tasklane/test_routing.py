from __future__ import annotations

import pytest

from tasklane.contracts import REGISTRY
from tasklane.wire.routing import dead_letter_queues, queues_for_service, task_routes


def test_every_contract_routes_to_its_contract_queue() -> None:
    routes = task_routes(REGISTRY, "prod.")
    assert routes["notifier.email.send"] == {
        "queue": "prod.notifier.email",
        "routing_key": "prod.notifier.email",
    }
    assert routes["notifier.im.send"] == {
        "queue": "prod.notifier.im",
        "routing_key": "prod.notifier.im",
    }
    assert {
        name: route["queue"] for name, route in routes.items() if name.startswith("scraper.")
    } == {
        "scraper.page.fetch": "prod.scraper.fetch",
        "scraper.crawl.fetch": "prod.scraper.fetch",
        "scraper.site.crawl": "prod.scraper.crawl",
        "scraper.crawl.status": "prod.scraper.crawl",
        "scraper.crawl.advance": "prod.scraper.crawl",
        "scraper.report.build": "prod.scraper.reports",
        "scraper.crawl.ping": "prod.scraper.crawl",
        "scraper.fetch.ping": "prod.scraper.fetch",
        "scraper.reports.ping": "prod.scraper.reports",
    }
    assert set(routes) == {contract.name for contract in REGISTRY}


def test_contracts_sharing_a_queue_declare_it_once() -> None:
    queues = queues_for_service(REGISTRY, "scraper")
    assert [q.name for q in queues] == ["scraper.crawl", "scraper.fetch", "scraper.reports"]


def test_service_consumes_exactly_its_queues_with_rabbitmq_dead_lettering() -> None:
    queues = queues_for_service(REGISTRY, "notifier")
    assert [q.name for q in queues] == ["notifier.email", "notifier.im"]
    email = queues[0]
    assert email.queue_arguments == {
        "x-dead-letter-exchange": "tasklane.dlx",
        "x-dead-letter-routing-key": "notifier.email.dlq",
    }
    assert email.max_priority == 9
    assert email.durable


def test_dead_letter_queues_are_bound_to_the_dead_letter_exchange() -> None:
    dlqs = dead_letter_queues(REGISTRY, "staging.")
    assert [(q.name, q.exchange.name, q.routing_key) for q in dlqs] == [
        ("staging.media.image.dlq", "staging.tasklane.dlx", "staging.media.image.dlq"),
        ("staging.media.video.dlq", "staging.tasklane.dlx", "staging.media.video.dlq"),
        ("staging.notifier.email.dlq", "staging.tasklane.dlx", "staging.notifier.email.dlq"),
        ("staging.notifier.im.dlq", "staging.tasklane.dlx", "staging.notifier.im.dlq"),
        ("staging.scraper.crawl.dlq", "staging.tasklane.dlx", "staging.scraper.crawl.dlq"),
        ("staging.scraper.fetch.dlq", "staging.tasklane.dlx", "staging.scraper.fetch.dlq"),
        ("staging.scraper.reports.dlq", "staging.tasklane.dlx", "staging.scraper.reports.dlq"),
    ]


def test_unknown_service_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="services: media, notifier, scraper"):
        queues_for_service(REGISTRY, "fax")


def test_quorum_queues_take_no_priorities_and_a_topic_exchange() -> None:
    from tasklane.wire.routing import QueueOptions

    options = QueueOptions("quorum", delivery_limit=5)
    (email, _) = queues_for_service(REGISTRY, "notifier", "prod.", options)
    assert email.max_priority is None
    assert email.exchange.type == "topic"  # Celery's native delayed delivery routes through it
    assert email.queue_arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "prod.tasklane.dlx",
        "x-dead-letter-routing-key": "prod.notifier.email.dlq",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 5,
    }
    dlq = dead_letter_queues(REGISTRY, "prod.", options)[0]
    assert dlq.queue_arguments == {"x-queue-type": "quorum"}
