"""The schedule HTTP API, served by a real uvicorn over real Redis, spoken to over real HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis
import uvicorn

from tasklane.beat.api import TOKEN_ENV, create_api, serve
from tasklane.beat.client import Schedules
from tasklane.beat.models import IntervalSchedule, ScheduleEntry
from tasklane.beat.store import BeatStatus
from tasklane.contracts import SEND_IM
from tasklane.errors import SettingsError
from tasklane.settings import Settings
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.headers import SCHEDULE
from tasklane.wire.routing import queue_name
from tests.support import eventually
from tests.support.harness import BrokerEnv

TOKEN = "test-token-" + "x" * 24
PAYLOAD = {"channel": "webhook", "url": "https://hooks.example.org/x", "text": "hi"}
NO_KEYS = {"secret_ref": None, "idempotency_key": None}
PROTECTED = [
    ("GET", "/schedules"),
    ("POST", "/schedules"),
    ("GET", "/schedules/any"),
    ("POST", "/schedules/any/enable"),
    ("POST", "/schedules/any/disable"),
    ("DELETE", "/schedules/any"),
    ("POST", "/schedules/any/run"),
    ("PATCH", "/schedules/any"),
    ("GET", "/schedules/any/history"),
    ("GET", "/schedules/any/audit"),
    ("GET", "/audit"),
    ("GET", "/beat"),
    ("GET", "/openapi.json"),
]

Serve = Callable[[Schedules], httpx.Client]


@contextmanager
def running(schedules: Schedules) -> Iterator[str]:
    """A real uvicorn serving the API on a free port in a thread; yields its base URL."""
    # Bound here, so the port is known before the thread starts. IPPROTO_TCP, not 0: asyncio
    # sets TCP_NODELAY only on such sockets, and without it every answer waits ~40 ms (Nagle).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        create_api(schedules, TOKEN), log_level="warning", ws="none", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "uvicorn stopped"
        return bool(server.started)

    eventually(started, timeout=10, interval=0.01, message="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


@pytest.fixture
def serve_api() -> Iterator[Serve]:
    """Start a server per call; each gets an authenticated client, all stopped at the end."""
    with ExitStack() as stack:

        def start(schedules: Schedules) -> httpx.Client:
            base_url = stack.enter_context(running(schedules))
            headers = {"Authorization": f"Bearer {TOKEN}"}
            return stack.enter_context(httpx.Client(base_url=base_url, headers=headers, timeout=10))

        yield start


@pytest.fixture
def api(schedules: Schedules, serve_api: Serve) -> httpx.Client:
    return serve_api(schedules)


def body(name: str, schedule: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "task": SEND_IM.name, "payload": PAYLOAD, "schedule": schedule, **extra}


def fields(response: httpx.Response) -> list[str]:
    """The dotted fields a 422 answer names."""
    assert response.status_code == 422, response.text
    return [problem["field"] for problem in response.json()["detail"]]


def parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def test_healthz_is_open_and_everything_else_needs_the_token(api: httpx.Client) -> None:
    anonymous = httpx.Client(base_url=api.base_url, timeout=10)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    for headers in (
        {},
        {"Authorization": "Bearer " + "y" * len(TOKEN)},  # wrong token
        {"Authorization": f"Basic {TOKEN}"},  # wrong scheme
        {"Authorization": TOKEN},  # no scheme
        {"Authorization": f"Bearer {TOKEN}x"},  # a longer token with the right prefix
    ):
        for method, path in PROTECTED:
            response = anonymous.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json() == {"detail": "missing or invalid bearer token"}
    anonymous.close()
    assert api.get("/schedules").json() == []
    assert "/schedules/{name}/run" in api.get("/openapi.json").json()["paths"]


def test_healthz_answers_503_when_redis_is_down(serve_api: Serve) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    with Schedules(Settings(broker_url=dead)) as schedules:
        api = serve_api(schedules)
        response = api.get("/healthz")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable"}
        # A route needing Redis says so, without a traceback or the Redis address.
        listed = api.get("/schedules")
        assert listed.status_code == 503
        assert listed.json() == {"detail": "schedule store unreachable"}


def test_add_interval_crontab_and_clocked_then_list_and_show(api: httpx.Client) -> None:
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    before = datetime.now(UTC)
    entries = [
        body("every-minute", {"kind": "interval", "every": 60}, description="ping"),
        body(
            "nightly",
            {"kind": "crontab", "minute": "0", "hour": "3", "timezone": "Europe/Berlin"},
        ),
        body("once", {"kind": "clocked", "at": at.isoformat()}, enabled=True),
    ]
    for entry in entries:
        response = api.post("/schedules", json=entry)
        assert response.status_code == 201, response.text
        assert response.headers["location"] == f"/schedules/{entry['name']}"
        view = response.json()
        assert view["entry"]["source"] == "api"
        # Stored as the contract normalised it: its defaults filled in.
        assert view["entry"]["payload"] == {**PAYLOAD, "title": None, **NO_KEYS}
        assert view["state"]["total_run_count"] == 0
        assert view["problem"] is None

    listed = {view["entry"]["name"]: view for view in api.get("/schedules").json()}
    assert sorted(listed) == ["every-minute", "nightly", "once"]
    interval_next = parse(listed["every-minute"]["next_run_at"])
    minute = timedelta(seconds=60)
    assert before + minute <= interval_next <= datetime.now(UTC) + minute
    nightly_next = parse(listed["nightly"]["next_run_at"])
    berlin = nightly_next.astimezone(ZoneInfo("Europe/Berlin"))
    assert (berlin.hour, berlin.minute) == (3, 0)
    assert parse(listed["once"]["next_run_at"]) == at

    shown = api.get("/schedules/nightly").json()
    assert shown == listed["nightly"]
    assert shown["entry"]["schedule"]["day_of_week"] == "*"
    assert api.get("/schedules/missing").status_code == 404


def test_duplicate_name_is_409_and_replace_replaces(api: httpx.Client) -> None:
    first = body("report", {"kind": "interval", "every": 60})
    assert api.post("/schedules", json=first).status_code == 201

    duplicate = api.post("/schedules", json={**first, "description": "second"})
    assert duplicate.status_code == 409
    assert "exists already" in duplicate.json()["detail"]

    replaced = api.post(
        "/schedules",
        params={"replace": "true"},
        json={**first, "schedule": {"kind": "interval", "every": 300}, "description": "second"},
    )
    assert replaced.status_code == 201, replaced.text
    view = api.get("/schedules/report").json()
    assert view["entry"]["schedule"]["every"] == 300
    assert view["entry"]["description"] == "second"
    assert len(api.get("/schedules").json()) == 1


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"task": "billing.invoice.send"}, "task", "billing.invoice.send"),
        ({"payload": {"channel": "webhook", "text": "hi"}}, "payload.url", "Field required"),
        ({"payload": {**PAYLOAD, "url": "not a url"}}, "payload.url", "URL"),
        (
            {"schedule": {"kind": "crontab", "minute": "61"}},
            "schedule.minute",
            "minute: 61 is out of range 0-59",
        ),
        (
            {"schedule": {"kind": "crontab", "timezone": "Mars/Olympus"}},
            "schedule.timezone",
            "Mars/Olympus",
        ),
        (
            {"schedule": {"kind": "clocked", "at": "2030-01-01T09:00:00"}},
            "schedule.at",
            "time zone",
        ),
        ({"schedule": {"kind": "interval", "every": 0}}, "schedule.every", "greater"),
        ({"schedule": {"kind": "hourly"}}, "schedule", "interval"),
        ({"source": "file"}, "source", "set by the server"),
        ({"created_at": "2020-01-01T00:00:00Z"}, "created_at", "set by the server"),
        ({"name": "bad name!"}, "name", "pattern"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"start_at": "2030-01-01T00:00:00"}, "start_at", "time zone"),
        # Entries that could never fire: 422 like every invalid entry, not 409.
        (
            {"schedule": {"kind": "clocked", "at": "2020-01-01T09:00:00Z"}},
            "schedule.at",
            "in the past",
        ),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "in the past"),
        (
            {"start_at": "2031-01-01T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"},
            "expires_at",
            "not after start_at",
        ),
        ({"priority": 10}, "priority", "less than or equal to 9"),
        ({"expires_after": 0}, "expires_after", "greater than 0"),
    ],
)
def test_invalid_entries_are_422_naming_the_field(
    api: httpx.Client, change: dict[str, Any], field: str, message: str
) -> None:
    entry = {**body("bad", {"kind": "interval", "every": 60}), **change}

    response = api.post("/schedules", json=entry)

    problems = response.json()["detail"]
    assert response.status_code == 422, response.text
    assert any(p["field"] == field and message in p["msg"] for p in problems), problems
    assert api.get("/schedules").json() == []


def test_invalid_payload_names_every_field_in_one_answer(api: httpx.Client) -> None:
    response = api.post(
        "/schedules",
        json=body("bad", {"kind": "interval", "every": 60}, payload={"channel": "fax"}),
    )

    assert sorted(fields(response)) == ["payload.channel", "payload.text", "payload.url"]
    assert all(p["loc"][:2] == ["body", "payload"] for p in response.json()["detail"])


def test_enable_disable_remove_round_trip(api: httpx.Client) -> None:
    api.post("/schedules", json=body("toggle", {"kind": "interval", "every": 60}, enabled=False))
    assert api.get("/schedules/toggle").json()["next_run_at"] is None

    enabled = api.post("/schedules/toggle/enable")
    assert enabled.status_code == 200
    assert enabled.json()["entry"]["enabled"] is True
    assert enabled.json()["next_run_at"] is not None

    disabled = api.post("/schedules/toggle/disable").json()
    assert disabled["entry"]["enabled"] is False
    assert disabled["next_run_at"] is None

    removed = api.delete("/schedules/toggle")
    assert removed.status_code == 204
    assert removed.content == b""
    for method, path in PROTECTED[2:7]:
        response = api.request(method, path.replace("any", "toggle"))
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "no schedule 'toggle'"}


def test_run_now_publishes_to_the_contract_queue(
    api: httpx.Client, env: BrokerEnv, redis_url: str
) -> None:
    api.post("/schedules", json=body("ping", {"kind": "interval", "every": 3600}))

    response = api.post("/schedules/ping/run")

    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    client = redis.Redis.from_url(redis_url)
    try:
        keys = redis_queue_keys(queue_name(SEND_IM, env.namespace))
        messages = [raw for key in keys for raw in client.lrange(key, 0, -1)]
    finally:
        client.close()
    [raw] = messages
    headers = json.loads(raw)["headers"]
    assert headers["id"] == task_id
    assert headers["task"] == SEND_IM.name
    assert headers[SCHEDULE] == "ping"
    state = api.get("/schedules/ping").json()["state"]
    assert state["total_run_count"] == 1
    assert state["last_run_at"] is not None
    assert state["last_slot"] is None  # run-now owes nothing to the schedule


def test_run_now_answers_503_when_the_broker_is_down(serve_api: Serve, env: BrokerEnv) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"amqp://guest:secret@127.0.0.1:{probe.getsockname()[1]}//"
    settings = Settings(
        broker_url=dead,
        result_backend=env.result_backend,  # the schedule store answers
        namespace=env.namespace,
        publish_timeout=0.3,
    )
    with Schedules(settings) as schedules:
        api = serve_api(schedules)
        api.post("/schedules", json=body("ping", {"kind": "interval", "every": 3600}))
        response = api.post("/schedules/ping/run")
    # After the publish deadline: the broker's state, not a 500, and no password.
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "broker unreachable"}


def test_file_managed_entries_cannot_be_removed_or_replaced(
    api: httpx.Client, schedules: Schedules
) -> None:
    entry = ScheduleEntry(
        name="from-file", task=SEND_IM.name, payload=PAYLOAD, schedule=IntervalSchedule(every=60)
    )
    schedules.store.sync_source("file", [entry.validated()])

    assert api.get("/schedules/from-file").json()["entry"]["source"] == "file"
    removed = api.delete("/schedules/from-file")
    assert removed.status_code == 409
    assert removed.json() == {"detail": "schedule 'from-file' is managed by file; remove it there"}
    again = body("from-file", {"kind": "interval", "every": 5})
    replaced = api.post("/schedules", params={"replace": "true"}, json=again)
    assert replaced.status_code == 409
    assert "managed by file" in replaced.json()["detail"]
    # Disabling at run time is allowed whatever manages the entry.
    assert api.post("/schedules/from-file/disable").json()["entry"]["enabled"] is False


def test_beat_lists_live_beat_processes(api: httpx.Client, schedules: Schedules) -> None:
    assert api.get("/beat").json() == []
    tick = datetime.now(UTC)
    schedules.store.report(
        BeatStatus(process="host:1:abc", last_tick=tick, schedules=3, holds_lock=True), ttl=30
    )

    [status] = api.get("/beat").json()

    assert status["process"] == "host:1:abc"
    assert parse(status["last_tick"]) == tick
    assert status["schedules"] == 3
    assert status["holds_lock"] is True


@pytest.mark.parametrize("token", [None, "", "short-token"])
def test_serve_refuses_a_missing_or_short_token(
    monkeypatch: pytest.MonkeyPatch, env: BrokerEnv, token: str | None
) -> None:
    if token is not None:
        monkeypatch.setenv(TOKEN_ENV, token)

    with pytest.raises(SettingsError, match=TOKEN_ENV):
        serve(env.settings, host="127.0.0.1", port=0)


def test_tasklane_schedule_api_command_serves_with_the_env_token(
    env: BrokerEnv, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).with_name("tasklane")), "schedule-api"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "api.log").open("wb")
    process = subprocess.Popen(
        command,
        env={**os.environ, **env.env(), TOKEN_ENV: TOKEN},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            def healthy() -> bool:
                assert process.poll() is None, (tmp_path / "api.log").read_text()
                return client.get("/healthz").status_code == 200

            # A process importing FastAPI, uvicorn and Celery: seconds on a busy machine.
            eventually(
                healthy, timeout=60, message="the API to start", ignoring=(httpx.TransportError,)
            )
            assert client.get("/schedules").status_code == 401
            authorized = {"Authorization": f"Bearer {TOKEN}"}
            assert client.get("/schedules", headers=authorized).json() == []
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    assert "Traceback" not in (tmp_path / "api.log").read_text()


def test_patch_changes_only_the_fields_given_and_keeps_the_history(api: httpx.Client) -> None:
    assert api.post("/schedules", json=body("report", {"kind": "interval", "every": 60})).is_success
    task_id = api.post("/schedules/report/run").json()["task_id"]

    patched = api.patch(
        "/schedules/report",
        json={"schedule": {"kind": "crontab", "minute": "0", "hour": "7"}, "priority": 8},
        headers={"X-Tasklane-Actor": "ops@example.org"},
    )

    assert patched.status_code == 200, patched.text
    entry = patched.json()["entry"]
    assert entry["schedule"]["kind"] == "crontab" and entry["priority"] == 8
    assert {k: entry["payload"][k] for k in PAYLOAD} == PAYLOAD
    assert patched.json()["state"]["total_run_count"] == 1
    history = api.get("/schedules/report/history").json()
    assert [h["firing"]["task_id"] for h in history] == [task_id]
    assert history[0]["firing"]["manual"] is True
    trail = api.get("/schedules/report/audit").json()
    assert [(r["action"], r["actor"]["via"], r["actor"]["who"]) for r in trail] == [
        ("changed", "http", "ops@example.org"),
        ("ran", "http", "api-token"),
        ("created", "http", "api-token"),
    ]
    assert sorted(trail[0]["changes"]) == ["priority", "schedule"]
    assert api.get("/audit", params={"limit": 1}).json() == trail[:1]


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"payload": {"channel": "fax"}}, 422, "payload.channel"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, 422, "expires_at"),
        ({"name": "other"}, 422, "name"),
        ({"schedule": {"kind": "interval", "every": -1}}, 422, "schedule.every"),
        ({"priority": "high"}, 422, "priority"),
    ],
)
def test_patch_refuses_bad_changes_naming_the_field(
    api: httpx.Client, change: dict[str, Any], status: int, field: str
) -> None:
    assert api.post("/schedules", json=body("report", {"kind": "interval", "every": 60})).is_success
    response = api.patch("/schedules/report", json=change)
    assert response.status_code == status, response.text
    assert field in [p["field"] for p in response.json()["detail"]], response.text
    assert api.get("/schedules/report").json()["entry"]["schedule"]["every"] == 60
    assert api.patch("/schedules/missing", json={"description": "x"}).status_code == 404
