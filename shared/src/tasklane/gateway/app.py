"""The gateway's ASGI app: authenticate, check, rate-limit, validate, then publish off the loop.

Every check that needs no I/O runs first; Redis is reached through ``redis.asyncio`` (one script
call for the rate limit, one more for an ``Idempotency-Key``); the broker only from the
publisher's threads. Design: docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from opentelemetry import context as otel_context
from opentelemetry.propagate import extract
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tasklane.contracts import REGISTRY as CONTRACTS
from tasklane.contracts import ContractRegistry, TaskContract
from tasklane.contracts.validation import validate_payload
from tasklane.errors import (
    BrokerUnavailableError,
    PayloadTooLargeError,
    PayloadValidationError,
    Problem,
)
from tasklane.gateway.idempotency import Claim, IdempotencyStore, fingerprint, valid_key
from tasklane.gateway.metrics import gateway_metrics
from tasklane.gateway.problems import field_errors, problem
from tasklane.gateway.ratelimit import RateLimiter
from tasklane.gateway.readiness import Readiness, ReadinessChecker
from tasklane.gateway.results import TaskStates
from tasklane.gateway.sender import QueuedTooLongError, Sender
from tasklane.gateway.settings import GatewaySettings
from tasklane.gateway.tokens import Caller, Tokens
from tasklane.publish import Publisher, ResultReader
from tasklane.settings import Settings
from tasklane.wire.broker import async_redis_client
from tasklane.wire.protocol import TaskMessage

JSON = "application/json"
#: Threads reading the result backend for ``GET /v1/tasks/{id}``.
RESULT_THREADS = 4
#: Longer task ids cannot be ours (Celery's are UUIDs).
MAX_TASK_ID_CHARS = 255


@dataclass(frozen=True)
class _Publication:
    """What one accepted request publishes: its models under the ids recorded for them."""

    contract: TaskContract[Any, Any]
    models: list[Any]
    ids: list[str]
    batch: bool
    caller: Caller


@dataclass
class _Labels:
    """The metric labels of one request, filled in as the request is understood."""

    task: str = ""
    publisher: str = ""


class Gateway:
    """The gateway's state and request handlers; :func:`create_gateway` makes the app."""

    def __init__(
        self,
        settings: Settings,
        gateway: GatewaySettings,
        tokens: Tokens,
        registry: ContractRegistry,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.tokens = tokens
        self.registry = registry
        self.readiness = Readiness()
        self.metrics = gateway_metrics()
        self._state_url = settings.require_state()
        settings.require_broker()
        self._openapi = b""
        # Made in the lifespan, on the server's loop.
        self.redis: Redis
        self.publisher: Publisher
        self._sender: Sender
        self._checker: ReadinessChecker
        self._limiter: RateLimiter
        self._idempotency: IdempotencyStore
        self._states: TaskStates
        self._reader: ResultReader
        self._result_pool = ThreadPoolExecutor(RESULT_THREADS, "gateway-results")
        self._retry_broker = str(max(1, math.ceil(settings.publish_timeout)))

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        """Connect Redis, make the publisher and the result reader, check readiness once."""
        from tasklane.gateway.openapi import openapi_document

        self._openapi = json.dumps(
            openapi_document(self.registry, max_batch=self.gateway.max_batch)
        ).encode()
        self.redis = async_redis_client(
            self._state_url,
            self.settings,
            decode_responses=True,
            socket_timeout=self.settings.publish_timeout,
            socket_connect_timeout=self.settings.publish_timeout,
        )
        # A broker connection is made on the first publish, on a publisher thread.
        self.publisher = Publisher(self.settings, registry=self.registry)
        self._sender = Sender(self.publisher)
        self._reader = ResultReader(self.settings)
        self._states = TaskStates(self._reader, self.registry)
        self._limiter = RateLimiter(
            self.redis, self.settings.namespace, task_ttl=int(self.settings.result_expires)
        )
        self._idempotency = IdempotencyStore(
            self.redis,
            self.settings.namespace,
            self.gateway.idempotency_window,
            claim_ttl=math.ceil(2 * self.settings.publish_timeout) + 30,
        )
        self._checker = ReadinessChecker(self.settings, self.redis, self.readiness)
        await self._checker.check()
        self._checker.start()
        try:
            yield
        finally:
            await self._checker.stop()
            loop = asyncio.get_running_loop()
            # What was handed over is sent (or given up at its deadline) before the close.
            await loop.run_in_executor(
                self._result_pool, self._sender.close, self.settings.publish_timeout + 5
            )
            await loop.run_in_executor(self._result_pool, self.publisher.close)
            await loop.run_in_executor(self._result_pool, self._reader.close)
            self._result_pool.shutdown(wait=False, cancel_futures=True)
            await self.redis.aclose()

    # ------------------------------------------------------------------ open endpoints

    async def livez(self) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    async def readyz(self) -> Response:
        readiness = self.readiness
        body = json.dumps(readiness.describe()).encode()
        return Response(body, status_code=200 if readiness.ready else 503, media_type=JSON)

    async def metrics_endpoint(self) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self) -> Response:
        return Response(self._openapi, media_type=JSON)

    # ------------------------------------------------------------------ /v1

    async def publish_one(self, request: Request, task: str) -> Response:
        """``POST /v1/tasks/{task}``."""
        return await self._measured(request, task, batch=False)

    async def publish_batch(self, request: Request, task: str) -> Response:
        """``POST /v1/tasks/{task}/batch``."""
        return await self._measured(request, task, batch=True)

    async def _measured(self, request: Request, task: str, *, batch: bool) -> Response:
        labels = _Labels()
        started = time.perf_counter()
        response = await self._publish(request, task, batch, labels)
        self._record(labels, response.status_code, started)
        return response

    def _record(self, labels: _Labels, status: int, started: float) -> None:
        self.metrics.requests.labels(labels.task, labels.publisher, str(status)).inc()
        self.metrics.duration.labels(labels.task).observe(time.perf_counter() - started)

    async def _publish(self, request: Request, task: str, batch: bool, labels: _Labels) -> Response:
        caller = self._authenticate(request)
        if isinstance(caller, Response):
            return caller
        labels.publisher = caller.name
        if task not in self.registry:
            return problem("unknown-task", f"no task contract is named {task!r}")
        labels.task = task
        if not caller.may_publish(task):
            return problem("forbidden", f"publisher {caller.name!r} may not publish {task}")
        key: str | None = None
        if (header := request.headers.get("idempotency-key")) is not None:
            key = valid_key(header)
            if key is None:
                return problem(
                    "invalid-idempotency-key",
                    "Idempotency-Key must be 1 to 255 printable ASCII characters",
                )
        body = await self._json_object(request)
        if isinstance(body, Response):
            return body
        contract = self.registry[task]
        payloads = self._payloads(body, batch)
        if isinstance(payloads, Response):
            return payloads
        models = self._validated(contract, payloads, batch)
        if isinstance(models, Response):
            return models
        # The ids are chosen now: the rate limit's script records them (one round trip).
        ids = [str(uuid.uuid4()) for _ in models]
        try:
            decision = await self._limiter.take(
                caller.name, caller.rate, caller.burst, contract.name, ids
            )
        except (RedisError, OSError) as exc:
            return _state_unavailable(exc)
        if not decision.allowed:
            return problem(
                "rate-limited",
                f"publisher {caller.name!r} may publish {caller.rate:g} tasks/s "
                f"(burst {caller.burst}); retry after {decision.retry_after} s",
                headers={"Retry-After": str(decision.retry_after)},
            )
        publication = _Publication(contract, models, ids, batch, caller)
        if key is None:
            return await self._send(request, publication)
        return await self._send_once(request, publication, key, body)

    def _authenticate(self, request: Request) -> Caller | Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        caller = None
        if scheme.lower() == "bearer" and token.strip():
            caller = self.tokens.authenticate(token.strip())
        if caller is None:
            detail = "unknown bearer token" if header else "no bearer token"
            return problem(
                "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="tasklane"'}
            )
        return caller

    async def _json_object(self, request: Request) -> dict[str, Any] | Response:
        """The body as a JSON object, or the 415/413/400 answer saying why not."""
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != JSON:
            return problem(
                "unsupported-media-type", f"send Content-Type: {JSON}, not {media or 'none'}"
            )
        limit = self.gateway.max_body_bytes
        too_large = problem("payload-too-large", f"the body is over {limit} bytes")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
        try:
            value = json.loads(b"".join(chunks))
        except ValueError as exc:
            return problem("invalid-json", f"the body is not JSON: {exc}")
        if not isinstance(value, dict):
            return problem("invalid-json", f"the body must be a JSON object, not {_kind(value)}")
        return value

    def _payloads(self, body: dict[str, Any], batch: bool) -> list[Any] | Response:
        """The payloads a body carries; a batch body must be ``{"payloads": [...]}``."""
        if not batch:
            return [body]
        problems = [Problem((name,), "unknown field") for name in body if name != "payloads"]
        payloads = body.get("payloads")
        limit = self.gateway.max_batch
        if not isinstance(payloads, list):
            problems.append(Problem(("payloads",), "must be an array of payload objects"))
        elif not 1 <= len(payloads) <= limit:
            problems.append(
                Problem(("payloads",), f"must hold 1 to {limit} payloads, not {len(payloads)}")
            )
        if problems:
            return problem(
                "validation-failed", "the batch body is invalid", errors=field_errors(problems)
            )
        assert isinstance(payloads, list)
        return payloads

    def _validated(
        self, contract: TaskContract[Any, Any], payloads: list[Any], batch: bool
    ) -> list[Any] | Response:
        """Every payload as the contract's model, or one 422 naming every problem."""
        models = []
        errors: list[dict[str, str]] = []
        for index, payload in enumerate(payloads):
            prefix = f"/payloads/{index}" if batch else ""
            if not isinstance(payload, dict):
                errors.append({"pointer": prefix, "detail": "must be a JSON object"})
                continue
            try:
                models.append(validate_payload(contract, payload))
            except PayloadValidationError as exc:
                errors.extend(field_errors(exc.problems, prefix))
        if errors:
            what = f"{len(errors)} problem(s)"
            return problem(
                "validation-failed", f"{what} with the payload of {contract.name}", errors=errors
            )
        return models

    async def _send_once(
        self, request: Request, publication: _Publication, key: str, body: dict[str, Any]
    ) -> Response:
        """Publish under an ``Idempotency-Key``: at most once per key and body in the window."""
        route = "batch" if publication.batch else "one"
        print_ = fingerprint(publication.contract.name, route, body)
        try:
            claim = await self._idempotency.claim(publication.caller.name, key, print_)
        except (RedisError, OSError) as exc:
            return _state_unavailable(exc)
        if claim.outcome == "reused":
            return problem(
                "idempotency-key-reused",
                "this Idempotency-Key was used with a different request body",
            )
        if claim.outcome == "in-flight":
            return problem(
                "idempotency-key-in-flight",
                "the first request with this Idempotency-Key is still being processed",
                headers={"Retry-After": "1"},
            )
        if claim.outcome == "replay":
            assert claim.answer is not None
            return _answer(claim.answer, replayed=True)
        return await self._send(request, publication, claim, print_)

    async def _send(
        self,
        request: Request,
        publication: _Publication,
        claim: Claim | None = None,
        print_: str = "",
    ) -> Response:
        """Publish through the sender under the ids recorded, answer 202."""
        contract, models, ids = publication.contract, publication.models, publication.ids
        trace_context = extract(request.headers) if "traceparent" in request.headers else None
        deadline = time.monotonic() + self.settings.publish_timeout
        try:
            if len(models) == 1:
                message = self._encode(contract, models[0], ids[0], trace_context)
                await self._sender.send(contract, message, deadline)
            else:
                batch_send = functools.partial(
                    self._publish_many, contract, models, ids, trace_context
                )
                await self._sender.call(contract, batch_send, deadline)
        except (BrokerUnavailableError, QueuedTooLongError) as exc:
            await self._release(claim, ids)
            return problem(
                "broker-unavailable",
                f"the broker did not take the task within {self.settings.publish_timeout:g} s"
                + (f": {exc}" if isinstance(exc, BrokerUnavailableError) else ""),
                headers={"Retry-After": self._retry_broker},
            )
        except PayloadTooLargeError as exc:
            await self._release(claim, ids)
            return problem("payload-too-large", str(exc))
        except BaseException:
            await self._release(claim, ids)
            raise
        self.metrics.published.labels(contract.name, publication.caller.name).inc(len(ids))
        answer = _accepted(contract.name, ids, publication.batch)
        if claim is not None:
            try:
                await self._idempotency.complete(claim, print_, answer)
            except (RedisError, OSError):
                pass  # published: the answer must say so; the claim lapses on its own
        return _answer(answer, replayed=False)

    def _encode(
        self,
        contract: TaskContract[Any, Any],
        model: Any,
        task_id: str,
        trace_context: otel_context.Context | None,
    ) -> TaskMessage:
        """One message, its PRODUCER span a child of the caller's ``traceparent`` if sent."""
        token = otel_context.attach(trace_context) if trace_context is not None else None
        try:
            return self.publisher.encode(contract, model, task_id=task_id)
        finally:
            if token is not None:
                otel_context.detach(token)

    def _publish_many(
        self,
        contract: TaskContract[Any, Any],
        models: list[Any],
        ids: list[str],
        trace_context: otel_context.Context | None,
    ) -> None:
        """A batch, on the sender's thread: one PRODUCER span for all of it."""
        token = otel_context.attach(trace_context) if trace_context is not None else None
        try:
            self.publisher.publish_many(contract, models, task_ids=ids)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _release(self, claim: Claim | None, ids: list[str]) -> None:
        """Undo what a request that published nothing recorded: its claim and its ids."""
        try:
            await self.redis.delete(*map(self._limiter.task_key, ids))
            if claim is not None:
                await self._idempotency.release(claim)
        except (RedisError, OSError):
            pass  # both lapse on their own

    async def task_status(self, request: Request, task_id: str) -> Response:
        """``GET /v1/tasks/{task_id}``."""
        labels = _Labels()
        started = time.perf_counter()
        response = await self._status(request, task_id, labels)
        self._record(labels, response.status_code, started)
        return response

    async def _status(self, request: Request, task_id: str, labels: _Labels) -> Response:
        caller = self._authenticate(request)
        if isinstance(caller, Response):
            return caller
        labels.publisher = caller.name
        missing = problem("not-found", f"no task {task_id!r} is known")
        if len(task_id) > MAX_TASK_ID_CHARS:
            return missing
        loop = asyncio.get_running_loop()
        try:
            task = await self.redis.get(self._limiter.task_key(task_id))
            meta = await loop.run_in_executor(self._result_pool, self._states.read, task_id)
        except (RedisError, OSError) as exc:
            return _state_unavailable(exc)
        if task is None:
            # Published elsewhere: the backend names the task when workers extend results.
            task = meta.get("name") if meta.get("status") != "PENDING" else None
        if not isinstance(task, str) or task not in self.registry:
            return missing
        labels.task = task
        if not caller.may_publish(task):
            return problem("forbidden", f"publisher {caller.name!r} may not read {task} tasks")
        view = await loop.run_in_executor(self._result_pool, self._states.view, task_id, task, meta)
        return Response(json.dumps(view).encode(), media_type=JSON)


def _accepted(task: str, ids: list[str], batch: bool) -> dict[str, Any]:
    if batch:
        return {"status": 202, "body": {"task": task, "task_ids": ids}, "headers": {}}
    url = f"/v1/tasks/{ids[0]}"
    body = {"task_id": ids[0], "task": task, "status_url": url}
    return {"status": 202, "body": body, "headers": {"Location": url}}


def _answer(answer: dict[str, Any], *, replayed: bool) -> Response:
    headers = dict(answer.get("headers", {}))
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        json.dumps(answer["body"]).encode(),
        status_code=int(answer["status"]),
        media_type=JSON,
        headers=headers,
    )


def _state_unavailable(exc: BaseException) -> Response:
    return problem(
        "state-unavailable",
        f"the gateway's Redis did not answer: {type(exc).__name__}",
        headers={"Retry-After": "1"},
    )


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # registered for it alone
    if exc.status_code == 405:
        return problem(
            "method-not-allowed", "this path does not take that method", headers=exc.headers
        )
    return problem("not-found", "no such endpoint")


async def _internal_error(_: Request, exc: Exception) -> Response:
    return problem("internal-error", "the gateway failed unexpectedly; see its log")


def _without_request(
    handler: Callable[[], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(_: Request) -> Response:
        return await handler()

    return endpoint


def _with_path(
    handler: Callable[[Request, str], Awaitable[Response]], name: str
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(request, request.path_params[name])

    return endpoint


def create_gateway(
    settings: Settings,
    gateway: GatewaySettings,
    tokens: Tokens,
    *,
    registry: ContractRegistry = CONTRACTS,
) -> FastAPI:
    """The gateway app; its lifespan connects Redis and makes the publisher.

    Raises:
        SettingsError: no broker, or no Redis for state (``Settings.require_state``).
    """
    state = Gateway(settings, gateway, tokens, registry)
    # The OpenAPI document is built from the contracts (tasklane.gateway.openapi), not by FastAPI.
    app = FastAPI(
        title="Tasklane gateway",
        lifespan=state.lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.gateway = state
    # Plain Starlette routes: FastAPI's parameter solving would cost a tenth of a request, and
    # every handler reads its request itself.
    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("/livez", _without_request(state.livez), "GET"),
        ("/readyz", _without_request(state.readyz), "GET"),
        ("/metrics", _without_request(state.metrics_endpoint), "GET"),
        ("/openapi.json", _without_request(state.openapi), "GET"),
        ("/v1/tasks/{task}/batch", _with_path(state.publish_batch, "task"), "POST"),
        ("/v1/tasks/{task}", _with_path(state.publish_one, "task"), "POST"),
        ("/v1/tasks/{task_id}", _with_path(state.task_status, "task_id"), "GET"),
    ]
    for path, endpoint, method in routes:
        app.router.add_route(path, endpoint, methods=[method], include_in_schema=False)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    return app
