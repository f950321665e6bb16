"""Broker connections with the transport options every Tasklane process must share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, unquote, urlsplit

from kombu.connection import Connection

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from tasklane.settings import Settings

#: Sentinel's default port, and how long a Sentinel may take to answer.
SENTINEL_PORT = 26379
SENTINEL_SOCKET_TIMEOUT = 5.0

#: Redis has no native priorities; Kombu emulates them with one list per step ("queue:5").
PRIORITY_STEPS = list(range(10))
PRIORITY_SEPARATOR = ":"


def transport_options(
    settings: Settings, visibility_timeout: float | None = None
) -> dict[str, Any]:
    """Transport options for the configured broker.

    Args:
        settings: platform settings.
        visibility_timeout: Redis only; seconds before an unacknowledged message is redelivered.
    """
    if settings.broker_is_redis:
        options: dict[str, Any] = {
            "queue_order_strategy": "priority",
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEPARATOR,
            # Kombu scans for messages held past the visibility timeout on every 10th 10 s sweep
            # by default (about 100 s); one indexed ZRANGE every 10 s brings a crashed worker's
            # messages back within 10 s of the timeout instead.
            "unacked_restore_throttle": 1,
            # A scan holds a Redis mutex for milliseconds; a worker killed inside one would leave
            # it held, and every worker's sweep skipped, for Kombu's default 300 s.
            "unacked_mutex_expire": 60,
        }
        if visibility_timeout is not None:
            options["visibility_timeout"] = visibility_timeout
        if settings.broker_url is not None and is_sentinel_url(settings.broker_url):
            options.update(sentinel_options(settings))
        return options
    # RabbitMQ: confirms make a publish return only once the broker has the message.
    return {"confirm_publish": True}


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names Redis Sentinels (``sentinel://``) rather than a server."""
    return urlsplit(url).scheme.lower() == "sentinel"


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """Kombu's and Celery's transport options for Redis behind Sentinel."""
    password = settings.redis_sentinel_password
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_SOCKET_TIMEOUT}
    if password is not None:
        sentinel_kwargs["password"] = password.get_secret_value()
    return {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": sentinel_kwargs}


def redis_client(url: str, settings: Settings, **options: Any) -> redis.Redis:
    """A redis-py client of ``url``: of the current master when ``url`` names Sentinels.

    The master client asks the Sentinels again after a failover (redis-py's
    ``SentinelConnectionPool``), so a long-lived client follows the promoted replica.
    """
    import redis
    from redis.sentinel import Sentinel

    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    sentinels, master = _sentinel_arguments(url, settings, options)
    sentinel = Sentinel(sentinels, **options)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, **master
    )
    return client


def async_redis_client(url: str, settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """:func:`redis_client` for asyncio code."""
    import redis.asyncio
    from redis.asyncio.sentinel import Sentinel

    if not is_sentinel_url(url):
        return redis.asyncio.Redis.from_url(url, **options)
    sentinels, master = _sentinel_arguments(url, settings, options)
    sentinel = Sentinel(sentinels, **options)  # type: ignore[no-untyped-call]
    client: redis.asyncio.Redis = sentinel.master_for(settings.redis_sentinel_master, **master)
    return client


def _sentinel_arguments(
    url: str, settings: Settings, options: dict[str, Any]
) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The Sentinels' addresses (their own options added to ``options``), and the master's
    connection arguments: database and credentials from the first URL, as Kombu reads them."""
    nodes = [urlsplit(part) for part in broker_urls(url)]
    options["sentinel_kwargs"] = sentinel_options(settings)["sentinel_kwargs"]
    sentinels = [(node.hostname or "127.0.0.1", node.port or SENTINEL_PORT) for node in nodes]
    first = nodes[0]
    master = {"db": _db(first), **_credentials(first)}
    master.update({k: v for k, v in options.items() if k != "sentinel_kwargs"})
    return sentinels, master


def _db(node: SplitResult) -> int:
    return int((node.path or "/0").strip("/") or 0)


def _credentials(node: SplitResult) -> dict[str, str]:
    credentials = {"password": unquote(node.password)} if node.password else {}
    if node.username:
        credentials["username"] = unquote(node.username)
    return credentials


def redis_queue_keys(queue: str) -> list[str]:
    """Every Redis list that holds messages of ``queue`` (its priority sub-lists included)."""
    return [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS[1:]]


#: Separates the nodes of a broker URL that names several (``amqp://a//;amqp://b//``).
URL_SEPARATOR = ";"


def broker_urls(url: str) -> list[str]:
    """Each node's URL of a broker URL, in the order given."""
    return [part for part in url.split(URL_SEPARATOR) if part.strip()]


def redacted(url: str) -> str:
    """``url`` with every node's password replaced by ``**``, for logs, errors and terminals."""
    from kombu.utils.url import maybe_sanitize_url

    return URL_SEPARATOR.join(str(maybe_sanitize_url(part)) for part in broker_urls(url))


def connect(
    settings: Settings,
    visibility_timeout: float | None = None,
    *,
    socket_timeout: float | None = None,
    first_node: int = 0,
) -> Connection:
    """A lazy Kombu connection to the configured broker.

    Args:
        settings: platform settings.
        visibility_timeout: Redis only; seconds before an unacknowledged message is redelivered.
        socket_timeout: seconds a connect or a socket read may block. For connections that never
            wait for messages (publishers): a consumer's blocking read must not time out.
        first_node: with a URL naming several nodes, the one to try first (counted round, so a
            caller that failed on node ``i`` asks for ``i + 1``); with a ``socket_timeout``,
            only that node is tried by each use of the connection.
    """
    options = transport_options(settings, visibility_timeout)
    if socket_timeout is None:
        return Connection(settings.require_broker(), transport_options=options)
    # One connect try per use: the caller retries on its own deadline (Kombu's default would
    # keep trying for the whole connect timeout inside the first call).
    options["max_retries"] = 0
    if settings.broker_is_redis:
        options.update(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
    nodes = broker_urls(settings.require_broker())
    start = first_node % len(nodes)
    # Kombu tries the first node of the list, and with one try per use never reaches the rest.
    url = URL_SEPARATOR.join(nodes[start:] + nodes[:start])
    return Connection(url, transport_options=options, connect_timeout=socket_timeout)
