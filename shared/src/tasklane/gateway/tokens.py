"""Publishers and their bearer tokens, stored as SHA-256 hashes in a YAML or JSON file.

The file is normally a mounted Kubernetes Secret; the tokens themselves are never stored.
Design: docs/gateway.md#tokens.
"""

from __future__ import annotations

import fnmatch
import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from tasklane.errors import SettingsError

#: A publisher's name: a metrics label and a Redis key part, so plain and short.
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class PublisherEntry(BaseModel):
    """One publisher of the tokens file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=_NAME_PATTERN)]
    token_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    contracts: list[Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)
    rate: float = Field(default=100.0, gt=0, description="Tasks per second (bucket refill).")
    burst: int = Field(default=200, ge=1, description="Bucket size.")


class TokensFile(BaseModel):
    """The whole file: ``publishers: [...]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    publishers: list[PublisherEntry] = Field(min_length=1)


@dataclass(frozen=True)
class Caller:
    """An authenticated publisher: its name, what it may publish and its rate limit."""

    name: str
    contracts: tuple[str, ...]
    rate: float
    burst: int
    _allowed: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def may_publish(self, task: str) -> bool:
        """Whether one of the publisher's patterns matches ``task`` (fnmatch, case-sensitive)."""
        allowed = self._allowed.get(task)
        if allowed is None:
            # Task names come from the registry (bounded), so the cache stays small.
            allowed = any(fnmatch.fnmatchcase(task, pattern) for pattern in self.contracts)
            self._allowed[task] = allowed
        return allowed


class Tokens:
    """The publishers by token hash: a lookup costs one SHA-256 of the presented token."""

    def __init__(self, entries: list[PublisherEntry]) -> None:
        self._by_hash = {
            entry.token_sha256: Caller(entry.name, tuple(entry.contracts), entry.rate, entry.burst)
            for entry in entries
        }

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, token: str) -> Caller | None:
        """The publisher holding ``token``, or None.

        Comparing hashes by dictionary lookup leaks nothing useful: an attacker would have to
        find a preimage of a stored hash.
        """
        return self._by_hash.get(token_hash(token))


def token_hash(token: str) -> str:
    """The hex SHA-256 of a token, as the tokens file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: Path) -> Tokens:
    """The publishers of a tokens file.

    Raises:
        SettingsError: the file is missing, not YAML/JSON, or an entry is invalid; the message
            names the publisher index and field (``publishers[1].rate: ...``).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"gateway tokens file {path}: {exc.strerror or exc}") from None
    try:
        # YAML 1.1 is a superset of JSON for what this file holds.
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise SettingsError(f"gateway tokens file {path}: not YAML or JSON{line}") from None
    return parse_tokens(data, str(path))


def parse_tokens(data: Any, source: str = "tokens") -> Tokens:
    """The publishers of already-parsed file content (see :func:`load_tokens`)."""
    try:
        parsed = TokensFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_location(err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise SettingsError(f"invalid gateway tokens file {source}: {problems}") from None
    seen: dict[str, int] = {}
    for index, entry in enumerate(parsed.publishers):
        for key in (f"name {entry.name!r}", f"token_sha256 {entry.token_sha256[:8]}…"):
            if key in seen:
                raise SettingsError(
                    f"invalid gateway tokens file {source}: publishers[{index}]: {key} "
                    f"already used by publishers[{seen[key]}]"
                )
            seen[key] = index
    return Tokens(list(parsed.publishers))


def _location(loc: tuple[int | str, ...]) -> str:
    """``("publishers", 1, "rate")`` -> ``publishers[1].rate``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "file"


def mint(name: str, contracts: list[str], rate: float, burst: int) -> tuple[str, str]:
    """A new random token and the tokens-file entry (YAML) that admits it.

    Raises:
        SettingsError: the entry would be invalid (bad name, no contracts, ...).
    """
    token = secrets.token_urlsafe(32)
    entry = {
        "name": name,
        "token_sha256": token_hash(token),
        "contracts": contracts,
        "rate": rate,
        "burst": burst,
    }
    parse_tokens({"publishers": [entry]}, "entry")  # the same checks as the server's
    text = yaml.safe_dump({"publishers": [entry]}, sort_keys=False, default_flow_style=False)
    return token, text
