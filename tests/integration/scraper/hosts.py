"""Local sites on two hosts, and the spacing of the requests each host's server recorded.

127.0.0.1 and 127.0.0.2 are two host names to the scraper (two keys of the per-host gate, two
robots.txt origins) while both stay on loopback.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tasklane_dev.sinks import Reply, SiteServer

SECOND_HOST = "127.0.0.2"


class SecondHostSite(SiteServer):
    """A :class:`SiteServer` answering on 127.0.0.2 instead of 127.0.0.1."""

    def _serve(self, handler: type[BaseHTTPRequestHandler], *, join_handlers: bool) -> None:
        self._server = ThreadingHTTPServer((SECOND_HOST, 0), handler)
        self._server.daemon_threads = not join_handlers
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{SECOND_HOST}:{self._server.server_address[1]}"


def robots(text: str) -> Reply:
    return Reply(body=text.encode(), headers={"Content-Type": "text/plain"})


def redirect(location: str, status: int = 302) -> Reply:
    return Reply(status=status, headers={"Location": location}, body=b"")


def html(title: str, links: tuple[str, ...] = ()) -> Reply:
    anchors = "".join(f'<a href="{link}">{link}</a>' for link in links)
    return Reply(body=f"<html><title>{title}</title><body>{anchors}</body></html>".encode())


def paths(site: SiteServer) -> list[str]:
    """Every request's path, in the order the server received them."""
    return [request.path for request in site.requests]


def gaps(site: SiteServer) -> list[tuple[str, str, float]]:
    """(path, next path, seconds between their arrivals) for each consecutive pair of requests
    the server received, robots.txt and redirect hops included, as the server's clock saw them."""
    received = sorted((request.received_at, request.path) for request in site.requests)
    return [
        (path, following, round(later - earlier, 4))
        for (earlier, path), (later, following) in zip(received, received[1:], strict=False)
    ]


def too_close(site: SiteServer, delay: float) -> list[tuple[str, str, float]]:
    """The consecutive pairs of requests that reached the server less than ``delay`` apart.

    Not a timing hope but a consequence of the gate, when requests to a host do not overlap: a
    request arrives after its turn was granted, which is at least ``delay`` after the previous
    request's turn ended (the next start the gate recorded then, counted up to the millisecond),
    which was after the previous request had arrived. Redis's clock and the server's run at one
    rate on this one machine.
    """
    return [gap for gap in gaps(site) if gap[2] < delay]
