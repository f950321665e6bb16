"""The schedule HTTP API: what ``tasklane schedule`` does, for services that cannot shell out.

Every route goes through :class:`~tasklane.beat.client.Schedules`; every route except
``GET /healthz`` needs the bearer token from ``TASKLANE_SCHEDULE_API_TOKEN``.
Design: docs/beat.md#the-http-api.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, NoReturn

import redis
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema

from tasklane.beat.client import Schedules
from tasklane.beat.errors import ScheduleError, ScheduleInvalidError, ScheduleNotFoundError
from tasklane.beat.models import (
    Actor,
    AuditRecord,
    CrontabSchedule,
    EntryView,
    FiringOutcome,
    Schedule,
    ScheduleEntry,
    Source,
)
from tasklane.beat.store import BeatStatus
from tasklane.errors import (
    BrokerUnavailableError,
    PayloadValidationError,
    SettingsError,
    UnknownContractError,
)
from tasklane.settings import Settings
from tasklane.wire.broker import redis_client

#: The environment variable holding the bearer token.
TOKEN_ENV = "TASKLANE_SCHEDULE_API_TOKEN"
#: The header naming who calls (a person or a service), kept in the audit trail.
ACTOR_HEADER = "X-Tasklane-Actor"
#: The audit trail's name for a caller that sends no actor header.
DEFAULT_HTTP_ACTOR = "api-token"
#: Shorter tokens are refused: they can be guessed.
MIN_TOKEN_CHARS = 16
#: Seconds /healthz waits for Redis: a load balancer's probe must not hang.
HEALTH_TIMEOUT = 2.0

# Shared, stateless: it only parses the Authorization header (the token lives in _TokenGuard).
_BEARER = HTTPBearer(auto_error=False, description=f"The token set in {TOKEN_ENV}.")

_SCHEDULE_KINDS = frozenset({"interval", "crontab", "clocked"})

ErrorHandler = Callable[[Request, Exception], Awaitable[JSONResponse]]


class NewEntry(ScheduleEntry):
    """A schedule entry as a client sends it: ``source`` and ``created_at`` are the server's."""

    source: SkipJsonSchema[Source] = "api"
    created_at: SkipJsonSchema[datetime | None] = None

    @field_validator("source", "created_at", mode="before")
    @classmethod
    def _server_owned(cls, value: object) -> NoReturn:
        # Runs only for a field the client sent: defaults are not validated.
        raise ValueError("set by the server; do not send it")


class EntryChanges(BaseModel):
    """The fields of an entry to change (PATCH); the others keep their values.

    ``schedule`` is replaced whole; ``name`` and ``source`` cannot change. A field set to
    ``null`` is cleared (``start_at``, ``expires_at``, ``priority``, ``expires_after``).
    """

    model_config = ConfigDict(extra="forbid")

    task: str | None = None
    payload: dict[str, Any] | None = None
    schedule: Schedule | None = None
    enabled: bool | None = None
    start_at: datetime | None = None
    expires_at: datetime | None = None
    description: str | None = None
    priority: int | None = None
    expires_after: float | None = None

    def given(self) -> dict[str, Any]:
        """The fields the client sent, as the entry takes them."""
        return self.model_dump(mode="json", exclude_unset=True)


class TaskAccepted(BaseModel):
    """The task a run-now published."""

    task_id: str


class _TokenGuard:
    """A dependency refusing requests without the API token, compared in constant time."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    async def __call__(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, self._expected):
            raise HTTPException(
                status_code=401,
                detail="missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )


def create_api(schedules: Schedules, token: str) -> FastAPI:
    """The API over ``schedules`` (the caller owns and closes it), guarded by ``token``.

    Raises:
        SettingsError: the token is shorter than :data:`MIN_TOKEN_CHARS`.
    """
    _check_token(token)
    probe = redis_client(
        schedules.settings.require_state(),
        schedules.settings,
        socket_connect_timeout=HEALTH_TIMEOUT,
        socket_timeout=HEALTH_TIMEOUT,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Made before any request: Schedules creates it lazily, and two concurrent first
        # run-now calls in the threadpool would each make one, leaking a connection.
        _ = schedules.publisher
        yield
        probe.close()

    # No open docs: every route but /healthz needs the token, the schema included.
    app = FastAPI(
        title="Tasklane schedules",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    _install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """Open to probes: 503 when the schedule store (Redis) does not answer."""
        try:
            probe.ping()
        except redis.RedisError:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    router = APIRouter(dependencies=[Depends(_TokenGuard(token))])
    _add_schedule_routes(router, schedules)

    @router.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.include_router(router)
    return app


def _add_schedule_routes(router: APIRouter, schedules: Schedules) -> None:
    """The routes; sync on purpose: FastAPI runs Schedules' blocking calls in its threadpool."""

    @router.get("/schedules", tags=["schedules"])
    def list_schedules() -> list[EntryView]:
        return schedules.list()

    @router.post("/schedules", status_code=201, tags=["schedules"])
    def add_schedule(
        entry: NewEntry,
        response: Response,
        actor: Annotated[Actor, Depends(_actor)],
        replace: Annotated[bool, Query(description="Replace an entry of that name.")] = False,
    ) -> EntryView:
        view = schedules.add(entry, replace=replace, actor=actor)
        response.headers["Location"] = f"/schedules/{view.entry.name}"
        return view

    @router.get("/schedules/{name}", tags=["schedules"])
    def show_schedule(name: str) -> EntryView:
        return schedules.show(name)

    @router.patch("/schedules/{name}", tags=["schedules"])
    def edit_schedule(
        name: str, changes: EntryChanges, actor: Annotated[Actor, Depends(_actor)]
    ) -> EntryView:
        return schedules.edit(name, changes.given(), actor=actor)

    @router.post("/schedules/{name}/enable", tags=["schedules"])
    def enable_schedule(name: str, actor: Annotated[Actor, Depends(_actor)]) -> EntryView:
        return schedules.enable(name, actor=actor)

    @router.post("/schedules/{name}/disable", tags=["schedules"])
    def disable_schedule(name: str, actor: Annotated[Actor, Depends(_actor)]) -> EntryView:
        return schedules.disable(name, actor=actor)

    @router.delete("/schedules/{name}", status_code=204, tags=["schedules"])
    def remove_schedule(name: str, actor: Annotated[Actor, Depends(_actor)]) -> None:
        schedules.remove(name, actor=actor)

    @router.post("/schedules/{name}/run", status_code=202, tags=["schedules"])
    def run_schedule(name: str, actor: Annotated[Actor, Depends(_actor)]) -> TaskAccepted:
        return TaskAccepted(task_id=schedules.run_now(name, actor=actor))

    @router.get("/schedules/{name}/history", tags=["schedules"])
    def schedule_history(
        name: str, limit: Annotated[int, Query(ge=1, le=50)] = 20
    ) -> list[FiringOutcome]:
        return schedules.history(name, limit)

    @router.get("/schedules/{name}/audit", tags=["audit"])
    def schedule_audit(
        name: str, limit: Annotated[int, Query(ge=1, le=200)] = 100
    ) -> list[AuditRecord]:
        return schedules.audit(name, limit)

    @router.get("/audit", tags=["audit"])
    def audit_trail(limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[AuditRecord]:
        return schedules.audit(None, limit)

    @router.get("/beat", tags=["beat"])
    def beat_statuses() -> list[BeatStatus]:
        return schedules.beats()


def _actor(
    caller: Annotated[
        str | None,
        Header(
            alias=ACTOR_HEADER,
            max_length=200,
            description="Who calls, for the audit trail (a person or a service).",
        ),
    ] = None,
) -> Actor:
    return Actor(via="http", who=(caller or "").strip() or DEFAULT_HTTP_ACTOR)


def _install_error_handlers(app: FastAPI) -> None:
    """Map Tasklane's errors to status codes; unexpected ones become a bare JSON 500."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(UnknownContractError, _invalid_entry)
    app.add_exception_handler(PayloadValidationError, _invalid_entry)
    app.add_exception_handler(ValidationError, _invalid_model)
    app.add_exception_handler(ScheduleInvalidError, _invalid_schedule)
    app.add_exception_handler(ScheduleNotFoundError, _message(404))
    app.add_exception_handler(ScheduleError, _message(409))
    app.add_exception_handler(redis.ConnectionError, _message(503, "schedule store unreachable"))
    app.add_exception_handler(redis.TimeoutError, _message(503, "schedule store unreachable"))
    app.add_exception_handler(OperationalError, _message(503, "broker unreachable"))
    app.add_exception_handler(BrokerUnavailableError, _message(503, "broker unreachable"))
    app.add_exception_handler(Exception, _message(500, "internal server error"))


def _message(status: int, detail: str | None = None) -> ErrorHandler:
    """A handler answering ``status`` with ``detail`` (or the error's own message)."""

    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": detail or str(exc)}, status_code=status)

    return handle


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # registered for it alone
    problems = [
        _problem(err["loc"], err["msg"], err["type"]) for err in jsonable_encoder(exc.errors())
    ]
    return JSONResponse({"detail": problems}, status_code=422)


async def _invalid_model(_: Request, exc: Exception) -> JSONResponse:
    # An edit's merged entry failed the model: its errors, located as the request body's.
    assert isinstance(exc, ValidationError)
    problems = [
        _problem(["body", *err["loc"]], err["msg"], err["type"])
        for err in jsonable_encoder(exc.errors(include_url=False, include_input=False))
    ]
    return JSONResponse({"detail": problems}, status_code=422)


async def _invalid_schedule(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ScheduleInvalidError)
    problem = {"type": "schedule_invalid", "loc": ["body", *exc.field.split(".")]}
    problem.update(field=exc.field, msg=exc.reason)
    return JSONResponse({"detail": [problem]}, status_code=422)


async def _invalid_entry(_: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, PayloadValidationError):
        problems = [
            _problem(["body", "payload", *problem.location], problem.message, "payload_invalid")
            for problem in exc.problems
        ]
    else:
        problems = [_problem(["body", "task"], str(exc), "unknown_task")]
    return JSONResponse({"detail": problems}, status_code=422)


def _problem(loc: Sequence[str | int], message: str, kind: str) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "field": _field(loc, message), "msg": message}


def _field(loc: Sequence[str | int], message: str) -> str:
    """The field as a client names it: ``schedule.minute``, not ``body.schedule.crontab``."""
    parts = [str(part) for part in loc]
    if parts[:1] == ["body"]:
        parts = parts[1:]
    if len(parts) < 2 or parts[0] != "schedule" or parts[1] not in _SCHEDULE_KINDS:
        return ".".join(parts)
    parts = ["schedule", *parts[2:]]  # drop pydantic's union tag
    # The crontab parser reports a bad field on the whole schedule, as "minute: ...".
    named = message.removeprefix("Value error, ").partition(":")[0]
    if len(parts) == 1 and named in CrontabSchedule.model_fields:
        parts.append(named)
    return ".".join(parts)


def _check_token(token: str) -> None:
    if not token:
        raise SettingsError(
            f"no schedule API token: set {TOKEN_ENV} (at least {MIN_TOKEN_CHARS} characters)"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise SettingsError(
            f"{TOKEN_ENV} is too short: use at least {MIN_TOKEN_CHARS} characters "
            "(e.g. the output of `openssl rand -hex 32`)"
        )


def serve(settings: Settings | None = None, host: str = "0.0.0.0", port: int = 8080) -> None:
    """Run the API under uvicorn until interrupted.

    Raises:
        SettingsError: ``TASKLANE_SCHEDULE_API_TOKEN`` is unset or too short, or no Redis is
            configured for the schedule store.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    _check_token(token)  # before connecting anything: a misconfiguration fails fast
    with Schedules(settings) as schedules:
        uvicorn.run(create_api(schedules, token), host=host, port=port)
