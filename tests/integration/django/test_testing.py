"""The test helper: capture_publishes(), the pytest fixture and the TestCase mixin record what
code publishes, how, and when, and send nothing to a broker."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import unittest
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import transaction
from django.test import TestCase

from tasklane.contracts import SEND_EMAIL
from tasklane.contrib.django import publish, publish_on_commit
from tasklane.contrib.django.models import OutboxMessage
from tasklane.contrib.django.testing import TasklanePublishesMixin, capture_publishes
from tasklane.errors import BrokerUnavailableError
from tasklane_dev.sinks import free_port

pytestmark = pytest.mark.integration

EMAIL = {"to": ["ada@example.com"], "subject": "Order 12", "text": "captured"}


@pytest.fixture
def dead_broker(tasklane_setting: Callable[..., None]) -> Callable[..., None]:
    """TASKLANE with a broker URL on a port nothing listens on: any send would fail."""
    url = f"redis://127.0.0.1:{free_port()}/0"

    def configure(**keys: object) -> None:
        tasklane_setting(BROKER_URL=url, PUBLISH_TIMEOUT=0.2, **keys)

    configure()
    return configure


def test_capture_records_every_way_of_publishing_and_sends_nothing(
    dead_broker: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(BrokerUnavailableError):  # the broker is really unreachable
        publish(SEND_EMAIL, EMAIL)

    with caplog.at_level(logging.ERROR), capture_publishes() as published:
        handle = publish(SEND_EMAIL, EMAIL, task_id="now-1")
        with transaction.atomic():
            committed = publish_on_commit(SEND_EMAIL, {**EMAIL, "subject": "committed"})
            assert [p.via for p in published] == ["now"]  # not before the commit
        with transaction.atomic():
            publish_on_commit(SEND_EMAIL, {**EMAIL, "subject": "rolled back"})
            transaction.set_rollback(True)
        at_once = publish_on_commit(SEND_EMAIL, {**EMAIL, "subject": "no transaction"})

        dead_broker(OUTBOX=True)
        with transaction.atomic():
            stored = publish_on_commit(SEND_EMAIL, {**EMAIL, "subject": "stored"})
            assert published[-1].via == "outbox"  # as the row is written
            transaction.set_rollback(True)

    assert [(p.task_id, p.via, p.payload["subject"]) for p in published] == [
        ("now-1", "now", "Order 12"),
        (committed, "on_commit", "committed"),
        (at_once, "on_commit", "no transaction"),
        (stored, "outbox", "stored"),
    ]
    assert all(p.contract == SEND_EMAIL.name for p in published)
    assert published[0].payload["to"] == ["ada@example.com"] and handle.id == "now-1"
    assert caplog.records == []  # no send was tried after a commit (it would have failed)


def test_an_outbox_publish_still_writes_its_row(dead_broker: Callable[..., None]) -> None:
    dead_broker(OUTBOX=True)
    with capture_publishes() as published:
        task_id = publish_on_commit(SEND_EMAIL, EMAIL)
    assert [p.task_id for p in published] == [task_id]
    assert published[0].payload["idempotency_key"] == task_id
    assert OutboxMessage.objects.filter(task_id=task_id, state="pending").exists()


def test_the_pytest_fixture(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import django
            from django.conf import settings

            settings.configure(
                INSTALLED_APPS=["tasklane.contrib.django"],
                DATABASES={{
                    "default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
                }},
                TASKLANE={{"BROKER_URL": "redis://127.0.0.1:{free_port()}/0"}},
            )
            django.setup()

            pytest_plugins = ["tasklane.contrib.django.pytest_plugin"]
            """
        )
    )
    (tmp_path / "test_signup.py").write_text(
        textwrap.dedent(
            """
            from tasklane.contrib.django import publish, publish_on_commit

            EMAIL = {"to": ["ada@example.com"], "subject": "Welcome", "text": "Hello"}

            def test_signup_sends_a_welcome(tasklane_published):
                publish("notifier.email.send", EMAIL, task_id="t-1")
                publish_on_commit("notifier.email.send", EMAIL, task_id="t-2")
                assert [(p.task_id, p.via) for p in tasklane_published] == [
                    ("t-1", "now"),
                    ("t-2", "on_commit"),
                ]
                assert tasklane_published[0].payload["subject"] == "Welcome"
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_the_testcase_mixin(dead_broker: Callable[..., None]) -> None:
    class SignupTests(TasklanePublishesMixin, TestCase):
        def test_committed(self) -> None:
            with self.captureOnCommitCallbacks(execute=True):
                publish_on_commit(SEND_EMAIL, EMAIL)
            found = self.assertPublished(SEND_EMAIL, subject="Order 12", to=["ada@example.com"])
            assert found.via == "on_commit"
            self.assertPublished("notifier.email.send")

        def test_never_committed(self) -> None:
            publish_on_commit(SEND_EMAIL, EMAIL)  # TestCase's transaction is rolled back
            self.assertPublished(SEND_EMAIL)

        def test_another_payload(self) -> None:
            publish(SEND_EMAIL, EMAIL)
            self.assertPublished(SEND_EMAIL, subject="Another")

    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(SignupTests).run(result)

    assert result.testsRun == 3 and result.errors == []
    failed = {test.id().rpartition(".")[2]: text for test, text in result.failures}
    assert sorted(failed) == ["test_another_payload", "test_never_committed"]
    assert "no notifier.email.send published with {}" in failed["test_never_committed"]
    assert "published:\n  nothing" in failed["test_never_committed"]
    assert "'subject': 'Order 12'" in failed["test_another_payload"]
