"""The TypeScript client's generated files match the contracts, and the client type-checks.

``make clients`` regenerates them; these tests fail when someone forgot to.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from tasklane.cli.main import app
from tests.support.node import BIN, require_client

REGENERATE = "run `make clients` and commit the result"


def test_openapi_json_is_the_document_of_the_contracts(tmp_path: Path) -> None:
    client = require_client()
    fresh = tmp_path / "openapi.json"
    result = CliRunner().invoke(app, ["contracts", "export", "--openapi", str(fresh)])
    assert result.exit_code == 0, result.output
    checked_in = (client / "openapi.json").read_text(encoding="utf-8")
    assert checked_in == fresh.read_text(encoding="utf-8"), f"openapi.json is stale: {REGENERATE}"


def test_schema_d_ts_is_what_openapi_typescript_makes_of_openapi_json() -> None:
    client = require_client()
    # The arguments of `npm run generate`, writing to stdout instead of src/schema.d.ts.
    script = json.loads((client / "package.json").read_text(encoding="utf-8"))["scripts"]
    command = script["generate"].split()
    at = command.index("--output")
    del command[at : at + 2]
    assert command[0] == "openapi-typescript"
    generated = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=client,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    checked_in = (client / "src" / "schema.d.ts").read_text(encoding="utf-8")
    assert generated == checked_in, f"src/schema.d.ts is stale: {REGENERATE}"


def test_the_client_and_its_tests_type_check() -> None:
    client = require_client()
    checked = subprocess.run(
        [str(BIN / "tsc"), "-p", "tsconfig.json", "--noEmit"],
        cwd=client,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
