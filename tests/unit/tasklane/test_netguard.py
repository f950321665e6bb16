"""The SSRF guard without servers: address table, schemes, allow-list, resolver, transport."""

from __future__ import annotations

import ipaddress
import pickle
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from tasklane.errors import PermanentError, SettingsError
from tasklane.net.guard import (
    GuardedTransport,
    NetGuardPolicy,
    UnsafeURLError,
    check_url,
    classify,
    guarded_client,
)

NO_ALLOW = NetGuardPolicy()
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def resolving(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A resolver answering from ``table``; unknown names fail like NXDOMAIN."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"unexpected resolution of {host}:{port}")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        # Public unicast, including the boundaries just outside forbidden ranges.
        ("8.8.8.8", None),
        (PUBLIC_V4, None),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("11.0.0.1", None),
        (PUBLIC_V6, None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
        ("2002:808:808::1", None),
        # IPv4
        ("127.0.0.1", "a loopback address"),
        ("127.255.255.254", "a loopback address"),
        ("10.0.0.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("172.31.255.255", "a private address"),
        ("192.168.1.1", "a private address"),
        ("100.64.0.1", "a shared (CGNAT) address"),
        ("100.127.255.254", "a shared (CGNAT) address"),
        ("169.254.169.254", "a link-local address"),
        ("169.254.0.1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("224.0.1.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("0.1.2.3", "a reserved or special-purpose address"),
        ("240.0.0.1", "a reserved or special-purpose address"),
        ("255.255.255.255", "the broadcast address"),
        ("192.0.2.1", "a reserved or special-purpose address"),
        ("198.18.0.1", "a reserved or special-purpose address"),
        # IPv6
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fc00::1", "a private address"),
        ("fd12:3456::1", "a private address"),
        ("fe80::1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("ff02::1", "a multicast address"),
        ("ff0e::1", "a multicast address"),
        ("fec0::1", "a site-local address"),
        ("2001:db8::1", "a reserved or special-purpose address"),
        ("::7f00:1", "a reserved or special-purpose address"),
        # IPv6 forms that reach an IPv4 address are judged by that address.
        ("::ffff:127.0.0.1", "an IPv6 form of 127.0.0.1, a loopback address"),
        ("::ffff:169.254.169.254", "an IPv6 form of 169.254.169.254, a link-local address"),
        ("::ffff:10.0.0.1", "an IPv6 form of 10.0.0.1, a private address"),
        ("64:ff9b::7f00:1", "an IPv6 form of 127.0.0.1, a loopback address"),
        ("64:ff9b::a9fe:a9fe", "an IPv6 form of 169.254.169.254, a link-local address"),
        ("2002:a00:1::", "an IPv6 form of 10.0.0.1, a private address"),
        ("2002:7f00:1::1", "an IPv6 form of 127.0.0.1, a loopback address"),
    ],
)
def test_address_classification(address: str, expected: str | None) -> None:
    assert classify(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://files.example/x",
        "gopher://example.test/_x",
        "dict://127.0.0.1:6379/info",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "ws://example.test/",
    ],
)
def test_only_http_and_https_schemes(url: str) -> None:
    scheme = url.split(":", 1)[0]
    with pytest.raises(UnsafeURLError, match=f"scheme '{scheme}' is not allowed"):
        check_url(url, NO_ALLOW, resolver=no_dns)


def test_scheme_is_refused_even_for_an_allow_listed_host() -> None:
    policy = NetGuardPolicy.from_strings(["files.internal"])
    with pytest.raises(UnsafeURLError, match="scheme 'ftp'"):
        check_url("ftp://files.internal/x", policy, resolver=resolving({}))


def test_http_and_https_to_public_addresses_pass_and_scheme_case_is_ignored() -> None:
    resolver = resolving({"example.test": [PUBLIC_V4, PUBLIC_V6]})
    expected = [ipaddress.ip_address(PUBLIC_V4), ipaddress.ip_address(PUBLIC_V6)]
    assert check_url("http://example.test/", NO_ALLOW, resolver=resolver) == expected
    assert check_url("HTTPS://Example.Test/", NO_ALLOW, resolver=resolver) == expected


def test_ip_literals_are_checked_without_resolving() -> None:
    assert check_url("http://8.8.8.8/", NO_ALLOW, resolver=no_dns) == [
        ipaddress.ip_address("8.8.8.8")
    ]
    with pytest.raises(UnsafeURLError) as info:
        check_url("http://127.0.0.1:8080/", NO_ALLOW, resolver=no_dns)
    assert str(info.value) == "refusing http://127.0.0.1:8080: is 127.0.0.1, a loopback address"
    with pytest.raises(UnsafeURLError, match=r"refusing http://\[::1\]: is ::1, a loopback"):
        check_url("http://[::1]/", NO_ALLOW, resolver=no_dns)
    with pytest.raises(UnsafeURLError, match="IPv6 form of 127.0.0.1"):
        check_url("http://[::ffff:127.0.0.1]/", NO_ALLOW, resolver=no_dns)


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.1", "017700000001"])
def test_odd_ipv4_spellings_are_judged_by_what_they_resolve_to(host: str) -> None:
    # getaddrinfo parses these numerically (inet_aton); no DNS query leaves the machine.
    with pytest.raises(UnsafeURLError, match="resolves to 127.0.0.1, a loopback address"):
        check_url(f"http://{host}/", NO_ALLOW)


def test_cloud_metadata_name_is_refused_with_host_and_reason() -> None:
    resolver = resolving({"metadata.test": ["169.254.169.254"]})
    with pytest.raises(UnsafeURLError) as info:
        check_url("http://metadata.test/latest/meta-data/", NO_ALLOW, resolver=resolver)
    error = info.value
    assert str(error) == (
        "refusing http://metadata.test: resolves to 169.254.169.254, a link-local address"
    )
    assert error.host == "metadata.test"
    assert error.reason == "resolves to 169.254.169.254, a link-local address"


def test_name_resolving_to_ipv6_loopback_is_refused() -> None:
    resolver = resolving({"six.test": ["::1"]})
    with pytest.raises(UnsafeURLError, match="resolves to ::1, a loopback address"):
        check_url("https://six.test/", NO_ALLOW, resolver=resolver)


def test_one_forbidden_address_among_public_ones_refuses_the_url() -> None:
    resolver = resolving({"mixed.test": [PUBLIC_V4, "10.0.0.1", PUBLIC_V6]})
    with pytest.raises(UnsafeURLError) as info:
        check_url("http://mixed.test/", NO_ALLOW, resolver=resolver)
    assert info.value.reason == (
        f"resolves to 10.0.0.1 (of {PUBLIC_V4}, 10.0.0.1, {PUBLIC_V6}), a private address"
    )


def test_resolver_gets_the_ascii_host_and_the_effective_port() -> None:
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return [PUBLIC_V4]

    check_url("https://example.test/", NO_ALLOW, resolver=resolver)
    check_url("http://example.test/", NO_ALLOW, resolver=resolver)
    check_url("http://example.test:8080/", NO_ALLOW, resolver=resolver)
    check_url("http://bücher.test/", NO_ALLOW, resolver=resolver)
    assert calls == [
        ("example.test", 443),
        ("example.test", 80),
        ("example.test", 8080),
        ("xn--bcher-kva.test", 80),
    ]


def test_unresolvable_or_empty_answers_raise_oserror() -> None:
    with pytest.raises(socket.gaierror):
        check_url("http://nowhere.test/", NO_ALLOW, resolver=resolving({}))
    with pytest.raises(OSError, match="resolves to no address"):
        check_url("http://empty.test/", NO_ALLOW, resolver=resolving({"empty.test": []}))


def test_error_message_leaves_out_credentials_path_and_query() -> None:
    resolver = resolving({"hook.test": ["10.1.2.3"]})
    url = "https://user:pa55@hook.test:8443/hooks/x?token=s3cret"
    with pytest.raises(UnsafeURLError) as info:
        check_url(url, NO_ALLOW, resolver=resolver)
    message = str(info.value)
    assert message == "refusing https://hook.test:8443: resolves to 10.1.2.3, a private address"
    assert "s3cret" not in message
    assert "pa55" not in message


def test_unsafe_url_error_is_permanent_and_pickles() -> None:
    error = UnsafeURLError("http://x.test", "x.test", "resolves to 10.0.0.1, a private address")
    assert isinstance(error, PermanentError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.url, copy.host, copy.reason, str(copy)) == (
        error.url,
        error.host,
        error.reason,
        str(error),
    )


# Allow-list


def test_allow_network_admits_exactly_its_addresses() -> None:
    policy = NetGuardPolicy.from_strings(["127.0.0.1/32"])
    assert check_url("http://127.0.0.1:9/", policy) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(UnsafeURLError, match="127.0.0.2, a loopback"):
        check_url("http://127.0.0.2:9/", policy)
    with pytest.raises(UnsafeURLError, match="::1, a loopback"):
        check_url("http://[::1]:9/", policy)


def test_allow_network_admits_the_ipv4_mapped_form_of_its_addresses() -> None:
    policy = NetGuardPolicy.from_strings(["127.0.0.0/8"])
    assert check_url("http://[::ffff:127.0.0.1]/", policy) == [
        ipaddress.ip_address("::ffff:127.0.0.1")
    ]


def test_allow_network_applies_to_resolved_names() -> None:
    policy = NetGuardPolicy.from_strings(["10.20.0.0/16"])
    resolver = resolving({"svc.test": ["10.20.1.1"], "other.test": ["10.21.1.1"]})
    assert check_url("http://svc.test/", policy, resolver=resolver) == [
        ipaddress.ip_address("10.20.1.1")
    ]
    with pytest.raises(UnsafeURLError, match="10.21.1.1, a private address"):
        check_url("http://other.test/", policy, resolver=resolver)


def test_allow_host_admits_any_address_of_that_exact_name_only() -> None:
    policy = NetGuardPolicy(allow_hosts=frozenset({"Example.Internal."}))
    resolver = resolving(
        {"example.internal.": ["10.0.0.5", "127.0.0.1"], "api.example.internal": ["10.0.0.6"]}
    )
    assert check_url("http://EXAMPLE.internal./", policy, resolver=resolver) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    with pytest.raises(UnsafeURLError, match="10.0.0.6, a private address"):
        check_url("http://api.example.internal/", policy, resolver=resolver)


def test_from_strings_parses_networks_and_hosts_and_skips_blanks() -> None:
    policy = NetGuardPolicy.from_strings(
        [" 127.0.0.1/32", "example.internal", "", "fd00::/8", "10.0.0.7", " Hooks.Local. "]
    )
    assert policy.allow_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("10.0.0.7/32"),
    )
    assert policy.allow_hosts == frozenset({"example.internal", "hooks.local"})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("10.0.0.1/8", "has host bits set"),
        ("127.0.0.1/33", "127.0.0.1/33"),
        ("fd00::zz", "fd00::zz"),
        ("10.0.0.300", "neither an IP network nor a host name"),
        ("bad host", "neither an IP network nor a host name"),
        ("http://example.internal", "http://example.internal"),
    ],
)
def test_from_strings_refuses_malformed_entries(entry: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        NetGuardPolicy.from_strings([entry])


# Transport, with the inner httpx.HTTPTransport replaced so nothing leaves the process.

Sent = list[tuple[httpx.HTTPTransport, httpx.Request]]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sent]:
    """Requests the guarded transport hands to its inner transports; each answers 200."""
    record: Sent = []

    def handle_request(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        record.append((self, request))
        if request.url.path == "/loop":
            return httpx.Response(302, headers={"Location": "/loop"})
        if request.url.path == "/to-metadata":
            return httpx.Response(302, headers={"Location": "http://metadata.test/"})
        return httpx.Response(200, text="ok")

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    yield record


def test_http_request_goes_to_the_checked_ip_with_the_original_host_header(sent: Sent) -> None:
    resolver = resolving({"example.test": [PUBLIC_V4]})
    with httpx.Client(transport=GuardedTransport(NO_ALLOW, resolver=resolver)) as client:
        response = client.get("http://example.test:8080/a?b=1", headers={"X-Trace": "t"})
    assert response.status_code == 200
    assert response.request.url == "http://example.test:8080/a?b=1"
    [(_, request)] = sent
    assert request.url == f"http://{PUBLIC_V4}:8080/a?b=1"
    assert request.headers["Host"] == "example.test:8080"
    assert request.headers["X-Trace"] == "t"
    assert "sni_hostname" not in request.extensions


def test_https_request_sets_sni_to_the_name_so_tls_verifies_the_name(sent: Sent) -> None:
    resolver = resolving({"secure.test.": [PUBLIC_V6]})
    with httpx.Client(transport=GuardedTransport(NO_ALLOW, resolver=resolver)) as client:
        client.post("https://secure.test./hook", json={"a": 1})
    [(_, request)] = sent
    assert request.url == f"https://[{PUBLIC_V6}]/hook"
    assert request.headers["Host"] == "secure.test."
    assert request.extensions["sni_hostname"] == "secure.test"
    assert request.read() == b'{"a":1}'


def test_each_request_resolves_once_and_uses_that_answer(sent: Sent) -> None:
    answers = iter([[PUBLIC_V4], ["10.0.0.1"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    with httpx.Client(transport=GuardedTransport(NO_ALLOW, resolver=rebinding)) as client:
        assert client.get("http://rebind.test/").status_code == 200
        assert calls == ["rebind.test"]
        with pytest.raises(UnsafeURLError, match="10.0.0.1, a private address"):
            client.get("http://rebind.test/")
    assert calls == ["rebind.test", "rebind.test"]
    assert [request.url.host for _, request in sent] == [PUBLIC_V4]


def test_redirect_hops_are_checked(sent: Sent) -> None:
    resolver = resolving({"example.test": [PUBLIC_V4], "metadata.test": ["169.254.169.254"]})
    with guarded_client(NO_ALLOW, timeout=1, resolver=resolver) as client:
        with pytest.raises(UnsafeURLError, match="metadata.test: resolves to 169.254.169.254"):
            client.get("http://example.test/to-metadata")
    assert [request.url.path for _, request in sent] == ["/to-metadata"]


def test_max_redirects_is_enforced(sent: Sent) -> None:
    resolver = resolving({"example.test": [PUBLIC_V4]})
    with guarded_client(NO_ALLOW, timeout=1, max_redirects=3, resolver=resolver) as client:
        with pytest.raises(httpx.TooManyRedirects):
            client.get("http://example.test/loop")
    assert len(sent) == 4


def test_redirects_are_not_followed_when_disabled(sent: Sent) -> None:
    resolver = resolving({"example.test": [PUBLIC_V4]})
    with guarded_client(NO_ALLOW, timeout=1, follow_redirects=False, resolver=resolver) as client:
        assert client.get("http://example.test/to-metadata").status_code == 302
    assert len(sent) == 1


def test_https_names_sharing_an_ip_do_not_share_connection_pools(sent: Sent) -> None:
    resolver = resolving({name: [PUBLIC_V4] for name in ("a.test", "b.test")})
    with httpx.Client(transport=GuardedTransport(NO_ALLOW, resolver=resolver)) as client:
        for url in ("https://a.test/", "https://b.test/", "https://a.test/x"):
            client.get(url)
        for url in ("http://a.test/", "http://b.test/"):
            client.get(url)
    pools = [inner for inner, _ in sent]
    assert pools[0] is pools[2]
    assert pools[0] is not pools[1]
    assert pools[3] is pools[4]
    assert pools[3] not in pools[:3]


def test_resolution_failure_is_a_connect_error(sent: Sent) -> None:
    with httpx.Client(transport=GuardedTransport(NO_ALLOW, resolver=resolving({}))) as client:
        with pytest.raises(httpx.ConnectError, match="cannot resolve 'nowhere.test'"):
            client.get("http://nowhere.test/")
    assert sent == []


@pytest.mark.parametrize(
    "option",
    [
        {"transport": httpx.MockTransport(lambda r: httpx.Response(200))},
        {"mounts": {}},
        {"proxy": "http://127.0.0.1:3128"},
        {"uds": "/tmp/x.sock"},
    ],
)
def test_options_that_bypass_the_guard_are_refused(option: dict[str, object]) -> None:
    name = next(iter(option))
    with pytest.raises(TypeError, match=f"does not support {name}"):
        guarded_client(NO_ALLOW, timeout=1, **option)


def test_guarded_transport_refuses_proxy_and_uds() -> None:
    with pytest.raises(TypeError, match="does not support proxy, uds"):
        GuardedTransport(NO_ALLOW, proxy="http://127.0.0.1:3128", uds="/tmp/x.sock")


def test_policy_from_a_comma_separated_setting() -> None:
    policy = NetGuardPolicy.from_setting(" 127.0.0.1/32, hooks.internal ,,")
    assert policy == NetGuardPolicy.from_strings(["127.0.0.1/32", "hooks.internal"])
    assert NetGuardPolicy.from_setting("") == NetGuardPolicy()
