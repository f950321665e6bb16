"""A small client of a real Prometheus server's HTTP API, for the tests that start one."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


class PrometheusApi:
    """Prometheus' HTTP API; every answer is checked for ``status: success``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:  # 400 and 422 carry the error as JSON
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.get(
            f"/api/v1/label/{label}/values",
            **{"match[]": match, "start": str(time.time() - 600)},
        )
        return values

    def ready(self) -> bool:
        """Whether the server is up and its storage started (``/-/ready``).

        Not the query API: while its storage starts, Prometheus answers that with a 503 whose
        body is not JSON.
        """
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:  # refused, or an HTTPError such as that 503
            return False


PROMETHEUS = Path("/usr/bin/prometheus")


def prometheus_binary() -> Path:
    """The Debian ``prometheus`` server; skips the test without it (fails where CI requires it)."""
    import pytest

    if not PROMETHEUS.exists():
        if os.environ.get("TASKLANE_REQUIRE_PROMTOOL"):
            pytest.fail(f"{PROMETHEUS} is required (Debian package prometheus)")
        pytest.skip(f"{PROMETHEUS} not installed: apt-get install prometheus")
    return PROMETHEUS
