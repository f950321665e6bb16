"""The TypeScript client in clients/typescript and the Node.js tools its tests run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CLIENT = Path(__file__).parents[2] / "clients" / "typescript"
BIN = CLIENT / "node_modules" / ".bin"


def require_client() -> Path:
    """The client's directory once node, npm and its packages (``npm ci``) are installed.

    Missing ones skip the test, or fail it under CI, which sets TASKLANE_REQUIRE_NODE=1 after
    installing them.
    """
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        problem = f"{' and '.join(missing)} not on PATH"
    elif not (BIN / "tsc").exists() or not (BIN / "openapi-typescript").exists():
        problem = f"the client's packages are not installed: run `npm ci` in {CLIENT}"
    else:
        return CLIENT
    if os.environ.get("TASKLANE_REQUIRE_NODE"):
        pytest.fail(problem)
    pytest.skip(f"{problem} (with TASKLANE_REQUIRE_NODE=1 this fails)")
