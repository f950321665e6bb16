"""SSRF guard for fetching user-given URLs: only http(s) to public addresses, pinned per request.

:func:`check_url` resolves a URL's host once and refuses it unless every address is a public
unicast one (or allow-listed). :class:`GuardedTransport` does the same for each request an
``httpx.Client`` sends, redirect hops included, and connects to the very address it checked, so a
DNS answer that changes between the check and the connect (DNS rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import httpx

from tasklane.errors import PermanentError, SettingsError

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver: TypeAlias = Callable[[str, int], list[str]]
"""``(host, port) -> addresses`` as strings, most preferred first."""

ALLOWED_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
# httpx.Client silently ignores these when given a transport, so guarded_client hands them on.
_TRANSPORT_OPTIONS = frozenset(
    {
        "verify",
        "cert",
        "trust_env",
        "http1",
        "http2",
        "limits",
        "retries",
        "local_address",
        "socket_options",
    }
)
# Each of these would send requests past the guard (another transport, a proxy, a Unix socket).
_BYPASS_OPTIONS = frozenset({"transport", "mounts", "proxy", "uds"})


class UnsafeURLError(PermanentError):
    """The URL must not be fetched: its scheme, or an address its host resolves to, is refused.

    ``url`` keeps scheme, host and port only; path and query may carry secrets.
    """

    def __init__(self, url: str, host: str, reason: str) -> None:
        # The message is the only argument: result backends store and show an error's args.
        super().__init__(f"refusing {url}: {reason}")
        self.url = url
        self.host = host
        self.reason = reason

    def __reduce__(self) -> tuple[type[UnsafeURLError], tuple[str, str, str]]:
        return type(self), (self.url, self.host, self.reason)


def _refuse(url: httpx.URL, reason: str) -> UnsafeURLError:
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port is not None else ""
    return UnsafeURLError(f"{url.scheme}://{host}{port}", url.host, reason)


def _normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True)
class NetGuardPolicy:
    """What may be fetched beyond public addresses.

    Args:
        allow_networks: addresses in these networks are allowed even if private or loopback.
        allow_hosts: exact host names (ASCII/punycode, no subdomains) whose addresses are all
            allowed, whatever they are.
    """

    allow_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_hosts", frozenset(map(_normalize_host, self.allow_hosts)))

    @classmethod
    def from_strings(cls, entries: Iterable[str]) -> NetGuardPolicy:
        """Build a policy from settings: IP networks (``10.0.0.0/8``, ``::1``) and host names.

        Raises:
            SettingsError: an entry is neither a valid network nor a host name. Networks with
                host bits set (``10.0.0.1/8``) are refused rather than widened silently.
        """
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = _normalize_host(raw)
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry))
                continue
            except ValueError as exc:
                if "/" in entry or ":" in entry:
                    raise SettingsError(f"netguard allow-list entry {raw!r}: {exc}") from None
            # A numeric last label means a mistyped address, never a name (as in WHATWG URLs).
            if not _HOSTNAME.fullmatch(entry) or entry.rsplit(".", 1)[-1].isdigit():
                raise SettingsError(
                    f"netguard allow-list entry {raw!r} is neither an IP network nor a host name"
                )
            hosts.add(entry)
        return cls(tuple(networks), frozenset(hosts))

    @classmethod
    def from_setting(cls, value: str) -> NetGuardPolicy:
        """Build a policy from one comma-separated setting (``"10.20.0.0/16,hooks.internal"``)."""
        return cls.from_strings(entry.strip() for entry in value.split(","))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why ``address`` (one address of ``host``) must not be contacted; None if it may."""
        if _normalize_host(host) in self.allow_hosts:
            return None
        embedded = _embedded_ipv4(address)
        for candidate in (address, embedded):
            if candidate is not None and any(candidate in net for net in self.allow_networks):
                return None
        return classify(address)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    # Traffic to these IPv6 forms ends at the embedded IPv4 address (dual-stack socket, NAT64
    # gateway, 6to4 relay), so that address is what must be judged.
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def classify(address: IPAddress) -> str | None:
    """Describe why ``address`` is not a public unicast address (``"a loopback address"``).

    Returns:
        None for a public address. IPv4-mapped, NAT64 and 6to4 IPv6 addresses are judged by
        the IPv4 address they embed.
    """
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        problem = classify(embedded)
        return None if problem is None else f"an IPv6 form of {embedded}, {problem}"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    # ipaddress calls most multicast and the IPv6 site-local range global; neither is public.
    if address.is_multicast:
        return "a multicast address"
    if address == _BROADCAST:
        return "the broadcast address"
    if any(address in net for net in _PRIVATE):
        return "a private address"
    if address in _SHARED:
        return "a shared (CGNAT) address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_reserved or not address.is_global:
        return "a reserved or special-purpose address"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every TCP address ``socket.getaddrinfo`` gives for ``host``, in its preference order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _check(url: httpx.URL, policy: NetGuardPolicy, resolver: Resolver) -> list[IPAddress]:
    if url.scheme not in ALLOWED_SCHEMES:
        raise _refuse(url, f"scheme {url.scheme!r} is not allowed (only http and https)")
    host = url.raw_host.decode("ascii")
    if not host:
        raise _refuse(url, "the URL has no host")
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        verb = "is"
    except ValueError:
        port = url.port or _DEFAULT_PORTS[url.scheme]
        addresses = [ipaddress.ip_address(a) for a in resolver(host, port)]
        verb = "resolves to"
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    for address in addresses:
        problem = policy.refusal(host, address)
        if problem is not None:
            among = f" (of {', '.join(map(str, addresses))})" if len(addresses) > 1 else ""
            raise _refuse(url, f"{verb} {address}{among}, {problem}")
    return addresses


def check_url(
    url: str, policy: NetGuardPolicy, *, resolver: Resolver = system_resolver
) -> list[IPAddress]:
    """Resolve ``url``'s host once and return its addresses if every one of them may be fetched.

    One forbidden address refuses the whole URL rather than being skipped: a name that mixes
    public and internal addresses is either misconfigured or an attack, and skipping would leave
    which address gets used up to the caller. Callers must connect to a returned address (not
    resolve the name again), or DNS rebinding can swap it; :class:`GuardedTransport` does that.

    Raises:
        UnsafeURLError: the scheme is not http(s), or an address is refused by ``policy``.
        OSError: the host name cannot be resolved.
    """
    return _check(httpx.URL(url), policy, resolver)


class GuardedTransport(httpx.BaseTransport):
    """An ``httpx.HTTPTransport`` that checks every request's URL and connects to the checked IP.

    Each request resolves its host once; the URL host is replaced by the first checked address
    while the ``Host`` header keeps the name and, for https, the ``sni_hostname`` extension makes
    TLS present and verify the certificate for the name. With ``follow_redirects`` every hop is
    a new request, so every hop is checked. Resolution failures raise ``httpx.ConnectError``.

    Args:
        policy: what is allowed beyond public addresses.
        resolver: ``(host, port) -> addresses``; tests inject one instead of real DNS.
        **transport_kwargs: handed to ``httpx.HTTPTransport`` (``verify``, ``limits``, ...).
            ``proxy`` and ``uds`` are refused as they would connect somewhere unchecked.
    """

    def __init__(
        self,
        policy: NetGuardPolicy,
        *,
        resolver: Resolver = system_resolver,
        **transport_kwargs: Any,
    ) -> None:
        bypass = _BYPASS_OPTIONS & transport_kwargs.keys()
        if bypass:
            raise TypeError(f"GuardedTransport does not support {', '.join(sorted(bypass))}")
        self._policy = policy
        self._resolver = resolver
        verify = transport_kwargs.pop("verify", True)
        if not isinstance(verify, ssl.SSLContext):
            # One context for all the pools below: building one loads the CA bundle (~30 ms).
            verify = httpx.create_ssl_context(
                verify=verify, trust_env=transport_kwargs.get("trust_env", True)
            )
        self._kwargs = {**transport_kwargs, "verify": verify}
        self._plain = httpx.HTTPTransport(**self._kwargs)
        # Pools are keyed by URL origin, here the IP. Two https names on one IP sharing a pool
        # would reuse a TLS connection verified for the other name, so each name gets its own.
        self._tls: dict[str, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Check ``request.url`` and send the request to the checked address."""
        url = request.url
        try:
            addresses = _check(url, self._policy, self._resolver)
        except OSError as exc:
            raise httpx.ConnectError(
                f"cannot resolve {url.host!r}: {exc}", request=request
            ) from exc
        host = url.raw_host.decode("ascii")
        headers = request.headers.copy()
        if "Host" not in headers:
            headers["Host"] = url.netloc.decode("ascii")
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions["sni_hostname"] = host.rstrip(".")
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=str(addresses[0])),
            headers=headers,
            stream=request.stream,
            extensions=extensions,
        )
        return self._transport_for(url.scheme, host).handle_request(pinned)

    def _transport_for(self, scheme: str, host: str) -> httpx.HTTPTransport:
        if scheme != "https":
            return self._plain
        with self._lock:
            transport = self._tls.get(host)
            if transport is None:
                transport = self._tls[host] = httpx.HTTPTransport(**self._kwargs)
            return transport

    def close(self) -> None:
        """Close every connection pool."""
        with self._lock:
            transports = [self._plain, *self._tls.values()]
            self._tls.clear()
        for transport in transports:
            transport.close()


def guarded_client(
    policy: NetGuardPolicy,
    *,
    timeout: float | httpx.Timeout,
    max_redirects: int = 5,
    follow_redirects: bool = True,
    resolver: Resolver = system_resolver,
    **kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` whose every request and redirect hop goes through the guard.

    Transport options (``verify``, ``limits``, ``http2``, ...) go to :class:`GuardedTransport`,
    the rest to ``httpx.Client``; ``transport``, ``mounts``, ``proxy`` and ``uds`` are refused.
    """
    bypass = _BYPASS_OPTIONS & kwargs.keys()
    if bypass:
        raise TypeError(f"guarded_client does not support {', '.join(sorted(bypass))}")
    transport_kwargs = {k: kwargs.pop(k) for k in _TRANSPORT_OPTIONS & kwargs.keys()}
    transport = GuardedTransport(policy, resolver=resolver, **transport_kwargs)
    return httpx.Client(
        transport=transport,
        timeout=timeout,
        max_redirects=max_redirects,
        follow_redirects=follow_redirects,
        **kwargs,
    )
