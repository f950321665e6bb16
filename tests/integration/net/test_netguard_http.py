"""The SSRF guard against real local HTTP(S) servers on 127.0.0.1.

Names other than IP literals are always answered by an injected resolver: nothing here asks
real DNS or contacts an address outside 127.0.0.0/8.
"""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tasklane.net.guard import NetGuardPolicy, UnsafeURLError, guarded_client

LOCAL_ONLY = NetGuardPolicy.from_strings(["127.0.0.1/32"])


@dataclass
class Seen:
    path: str
    host: str


@dataclass
class Server:
    """A GET server: ``/redirect?to=URL`` answers 302 to URL, ``/loop`` to itself, else 200."""

    port: int
    requests: list[Seen] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.requests.append(Seen(self.path, self.headers.get("Host", "")))
            parts = urlsplit(self.path)
            if parts.path == "/redirect":
                self._answer(302, parse_qs(parts.query)["to"][0])
            elif parts.path == "/loop":
                self._answer(302, "/loop")
            else:
                self._answer(200, None)

        def _answer(self, status: int, location: str | None) -> None:
            body = b"hello"
            self.send_response(status)
            if location is not None:
                self.send_header("Location", location)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    return Handler


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    state = Server(port=0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    if tls is not None:

        def record_sni(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            state.sni.append(name)

        tls.sni_callback = record_sni
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _serve()


def resolver_for(table: dict[str, str]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        return [table[host]]  # an unknown name is a test bug: KeyError, never real DNS

    return resolve


def test_loopback_is_refused_without_allow_list_and_fetched_with_it(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}/"
    with guarded_client(NetGuardPolicy(), timeout=5) as client:
        with pytest.raises(UnsafeURLError, match="is 127.0.0.1, a loopback address"):
            client.get(url)
    assert server.requests == []
    with guarded_client(LOCAL_ONLY, timeout=5) as client:
        response = client.get(url)
    assert (response.status_code, response.text) == (200, "hello")
    assert server.requests == [Seen("/", f"127.0.0.1:{server.port}")]


def test_server_sees_the_original_host_header(server: Server) -> None:
    resolver = resolver_for({"localhost": "127.0.0.1"})
    with guarded_client(LOCAL_ONLY, timeout=5, resolver=resolver) as client:
        response = client.get(f"http://localhost:{server.port}/page")
    assert response.status_code == 200
    assert server.requests == [Seen("/page", f"localhost:{server.port}")]


def test_redirect_to_a_loopback_address_outside_the_allow_list_is_refused(
    server: Server,
) -> None:
    target = f"http://127.0.0.2:{server.port}/secret"
    with guarded_client(LOCAL_ONLY, timeout=5) as client:
        with pytest.raises(UnsafeURLError) as info:
            client.get(f"http://127.0.0.1:{server.port}/redirect", params={"to": target})
    assert str(info.value) == (
        f"refusing http://127.0.0.2:{server.port}: is 127.0.0.2, a loopback address"
    )
    assert len(server.requests) == 1
    assert server.requests[0].path.startswith("/redirect?")


def test_redirect_to_a_name_resolving_to_a_private_address_is_refused(server: Server) -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return {"start.test": ["127.0.0.1"], "internal.test": ["10.0.0.1"]}[host]

    policy = NetGuardPolicy.from_strings(["127.0.0.1/32"])
    with guarded_client(policy, timeout=5, resolver=resolver) as client:
        with pytest.raises(UnsafeURLError, match="internal.test: resolves to 10.0.0.1, a private"):
            client.get(
                f"http://start.test:{server.port}/redirect",
                params={"to": "http://internal.test/"},
            )
    assert calls == ["start.test", "internal.test"]
    assert len(server.requests) == 1


def test_allowed_redirect_hops_are_followed(server: Server) -> None:
    target = f"http://127.0.0.1:{server.port}/final"
    with guarded_client(LOCAL_ONLY, timeout=5) as client:
        response = client.get(f"http://127.0.0.1:{server.port}/redirect", params={"to": target})
    assert response.status_code == 200
    assert response.url == target
    assert [seen.path for seen in server.requests][-1] == "/final"


def test_redirect_to_a_file_url_is_refused(server: Server) -> None:
    with guarded_client(LOCAL_ONLY, timeout=5) as client:
        with pytest.raises(UnsafeURLError, match="scheme 'file' is not allowed"):
            client.get(
                f"http://127.0.0.1:{server.port}/redirect", params={"to": "file:///etc/passwd"}
            )
    assert len(server.requests) == 1


def test_ipv6_loopback_literal_is_refused(server: Server) -> None:
    with guarded_client(LOCAL_ONLY, timeout=5) as client:
        with pytest.raises(UnsafeURLError, match=r"\[::1\].*is ::1, a loopback address"):
            client.get(f"http://[::1]:{server.port}/")
    assert server.requests == []


def test_redirect_loop_stops_at_max_redirects(server: Server) -> None:
    with guarded_client(LOCAL_ONLY, timeout=5, max_redirects=2) as client:
        with pytest.raises(httpx.TooManyRedirects):
            client.get(f"http://127.0.0.1:{server.port}/loop")
    assert len(server.requests) == 3


def test_dns_rebinding_cannot_switch_the_address_after_the_check(server: Server) -> None:
    # First answer allow-listed, later answers internal: the connection must use the first.
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    url = f"http://rebind.test:{server.port}/"
    with guarded_client(LOCAL_ONLY, timeout=5, resolver=rebinding) as client:
        response = client.get(url)
        assert response.status_code == 200
        assert calls == ["rebind.test"]
        assert server.requests == [Seen("/", f"rebind.test:{server.port}")]
        with pytest.raises(UnsafeURLError, match="resolves to 10.0.0.1, a private address"):
            client.get(url)
    assert calls == ["rebind.test", "rebind.test"]
    assert len(server.requests) == 1


# HTTPS: the connection goes to the IP, yet TLS must present and verify the name.


@dataclass
class Tls:
    server: Server
    client_context: ssl.SSLContext


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Tls]:
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secure.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("secure.test")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    for state in _serve(server_context):
        yield Tls(state, ssl.create_default_context(cafile=str(cert_file)))


def test_https_to_the_pinned_ip_verifies_the_certificate_for_the_name(tls_server: Tls) -> None:
    port = tls_server.server.port
    resolver = resolver_for({"secure.test": "127.0.0.1"})
    with guarded_client(
        LOCAL_ONLY, timeout=5, resolver=resolver, verify=tls_server.client_context
    ) as client:
        response = client.get(f"https://secure.test:{port}/tls")
    assert (response.status_code, response.text) == (200, "hello")
    assert tls_server.server.sni == ["secure.test"]
    assert tls_server.server.requests == [Seen("/tls", f"secure.test:{port}")]


def test_https_certificate_for_another_name_is_rejected(tls_server: Tls) -> None:
    port = tls_server.server.port
    resolver = resolver_for({"other.test": "127.0.0.1"})
    with guarded_client(
        LOCAL_ONLY, timeout=5, resolver=resolver, verify=tls_server.client_context
    ) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(f"https://other.test:{port}/")
    assert tls_server.server.requests == []
