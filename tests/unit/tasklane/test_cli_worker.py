"""``tasklane worker``: the celery command line it builds, queue subsets included (no broker)."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from tasklane.cli.errors import CliError
from tasklane.cli.main import app, worker_command
from tasklane.settings import Settings


def _queues(argv: list[str]) -> list[str]:
    return argv[argv.index("-Q") + 1].split(",")


def test_every_queue_of_the_service_by_default() -> None:
    argv = worker_command("scraper", Settings())
    assert _queues(argv) == ["scraper.crawl", "scraper.fetch", "scraper.reports"]


@pytest.mark.parametrize(
    "wanted",
    [
        ["scraper.fetch,scraper.crawl"],
        ["scraper.fetch", "scraper.crawl"],
        [" scraper.fetch , scraper.crawl ,"],
        ["scraper.fetch", "scraper.crawl,scraper.fetch"],
    ],
)
def test_a_subset_comma_separated_or_repeated_in_service_order(wanted: list[str]) -> None:
    argv = worker_command("scraper", Settings(), queues=wanted)
    # Queue-name order whatever the order given: the order Redis polls them in is documented.
    assert _queues(argv) == ["scraper.crawl", "scraper.fetch"]


def test_subset_names_take_the_namespace_with_or_without_it() -> None:
    settings = Settings(namespace="staging.")
    plain = worker_command("media", settings, queues=["media.video"])
    full = worker_command("media", settings, queues=["staging.media.video"])
    assert _queues(plain) == _queues(full) == ["staging.media.video"]


@pytest.mark.parametrize("queue", ["scraper.email", "notifier.email", "media.video.dlq"])
def test_a_queue_of_another_service_is_refused_naming_it_and_the_known_ones(queue: str) -> None:
    service = "media" if queue.startswith("media") else "scraper"
    with pytest.raises(CliError) as caught:
        worker_command(service, Settings(), queues=[queue])
    message = str(caught.value)
    assert f"queue {queue!r} is not a queue of the {service} service" in message
    known = "media.image, media.video" if service == "media" else "scraper.crawl"
    assert known in message


def test_an_empty_subset_is_refused() -> None:
    with pytest.raises(CliError, match="--queues names no queue"):
        worker_command("notifier", Settings(), queues=[" , "])


def test_cli_passes_queues_pool_concurrency_and_extra_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKLANE_NAMESPACE", "prod.")
    result = CliRunner().invoke(
        app,
        [
            "worker", "scraper", "--print", "-Q", "scraper.reports", "-c", "2", "-P", "threads",
            "--", "--max-tasks-per-child=50", "--max-memory-per-child=512000",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    argv = shlex.split(result.output)
    assert argv[1:6] == ["-m", "celery", "-A", "scraper.app", "worker"]
    assert _queues(argv) == ["prod.scraper.reports"]
    assert argv[argv.index("--concurrency") + 1] == "2"
    assert argv[argv.index("--pool") + 1] == "threads"
    assert argv[-2:] == ["--max-tasks-per-child=50", "--max-memory-per-child=512000"]


def test_cli_refuses_a_foreign_queue_with_exit_2() -> None:
    result = CliRunner().invoke(app, ["worker", "notifier", "--print", "--queues", "media.image"])
    assert result.exit_code == 2
    assert "queue 'media.image' is not a queue of the notifier service" in result.output
    assert "notifier.email, notifier.im" in result.output


def test_a_new_command_gets_the_error_boundary_without_asking() -> None:
    from typer.testing import CliRunner

    from tasklane.cli.errors import Commands
    from tasklane.errors import SettingsError

    commands = Commands()

    @commands.command()
    def broken() -> None:
        raise SettingsError("TASKLANE_NAMESPACE: 'Bad.' is not a namespace")

    @commands.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(commands, ["broken"])
    assert result.exit_code == 2
    assert "error: TASKLANE_NAMESPACE: 'Bad.' is not a namespace" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
