"""The tokens file, minted tokens and the gateway's settings errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tasklane.cli.main import app
from tasklane.errors import SettingsError
from tasklane.gateway.idempotency import fingerprint, valid_key
from tasklane.gateway.problems import pointer
from tasklane.gateway.settings import GatewaySettings
from tasklane.gateway.tokens import load_tokens, mint, parse_tokens, token_hash

GOOD = {"name": "shop", "token_sha256": "a" * 64, "contracts": ["notifier.*"]}


def test_a_token_authenticates_its_publisher_with_its_patterns() -> None:
    token, entry = mint("shop", ["notifier.*", "media.image.*"], rate=5, burst=10)
    tokens = parse_tokens(yaml.safe_load(entry))
    caller = tokens.authenticate(token)
    assert caller is not None
    assert (caller.name, caller.rate, caller.burst) == ("shop", 5, 10)
    assert caller.may_publish("notifier.email.send")
    assert caller.may_publish("media.image.transform")
    assert not caller.may_publish("scraper.page.fetch")
    assert tokens.authenticate(token + "x") is None
    assert token not in entry and token_hash(token) in entry


@pytest.mark.parametrize(
    ("publishers", "message"),
    [
        ([{**GOOD, "token_sha256": "xyz"}], "publishers[0].token_sha256"),
        ([GOOD, {**GOOD, "name": "b", "rate": 0}], "publishers[1].rate"),
        ([GOOD, {**GOOD, "name": "b", "contracts": []}], "publishers[1].contracts"),
        ([GOOD, {**GOOD, "name": "b", "colour": "red"}], "publishers[1].colour"),
        ([GOOD, {**GOOD, "token_sha256": "b" * 64}], "publishers[1]: name 'shop' already used"),
        ([], "publishers"),
    ],
)
def test_an_invalid_tokens_file_is_one_line_naming_index_and_field(
    tmp_path: Path, publishers: list[dict[str, object]], message: str
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"publishers": publishers}))
    with pytest.raises(SettingsError, match=r"tokens file") as caught:
        load_tokens(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_or_unparsable_tokens_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="No such file"):
        load_tokens(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("publishers: [\n")
    with pytest.raises(SettingsError, match="not YAML or JSON"):
        load_tokens(tmp_path / "bad.yaml")
    with pytest.raises(SettingsError, match="TASKLANE_GATEWAY_TOKENS_FILE"):
        GatewaySettings().require_tokens_file()


def test_gateway_token_prints_the_token_once_and_the_entry(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["gateway", "token", "--name", "shop", "--contracts", "notifier.*", "--rate", "5"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    token = lines[1].removeprefix("# ")
    entry = yaml.safe_load(result.output)
    assert entry["publishers"][0]["token_sha256"] == token_hash(token)
    path = tmp_path / "tokens.yaml"
    path.write_text(result.output)
    assert load_tokens(path).authenticate(token) is not None


def test_gateway_without_a_tokens_file_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKLANE_BROKER_URL", "redis://127.0.0.1:1/0")
    result = CliRunner().invoke(app, ["gateway"])
    assert result.exit_code == 2
    assert "TASKLANE_GATEWAY_TOKENS_FILE" in result.output


def test_idempotency_keys_and_fingerprints() -> None:
    assert valid_key("abc") == "abc"
    assert valid_key('"abc"') == "abc"
    assert valid_key("") is None
    assert valid_key("k" * 256) is None
    assert valid_key("caf\u00e9") is None
    assert fingerprint("t", "one", {"a": 1, "b": [1, 2]}) == fingerprint(
        "t", "one", {"b": [1, 2], "a": 1}
    )
    assert fingerprint("t", "one", {"a": 1}) != fingerprint("t", "batch", {"a": 1})


def test_pointers_escape_per_rfc_6901() -> None:
    assert pointer(("to", 0)) == "/to/0"
    assert pointer(("a/b", "c~d"), "/payloads/3") == "/payloads/3/a~1b/c~0d"
    assert pointer(()) == ""
