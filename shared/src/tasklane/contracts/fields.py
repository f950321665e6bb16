"""Field types whose exported JSON Schema says exactly what the model accepts.

Payloads arrive as JSON from publishers in any language, which validate them against the exported
schemas. Pydantic's lax mode would turn ``"1000"`` into ``1000`` and ``"off"`` into ``False``, and
``EmailStr`` or ``HttpUrl`` accept or refuse values that their schema's ``format`` does not say. The
types here keep both sides equal:

- :data:`Integer`, :data:`Number` and :data:`Boolean` refuse strings, and booleans as numbers.
  ``Integer`` takes an integral float such as ``3.0``, since JSON Schema counts it as an integer.
- :class:`Matches` checks a string against a regular expression, and the schema carries the same
  ``pattern``. The check uses Python's ``re`` with ``search``, as the ``jsonschema`` package does.
  Patterns end with ``(?!\\n)$``: Python's ``$`` also matches before a final newline and
  ECMA-262's does not, so this way both engines read the pattern the same.
- :data:`EmailAddress`, :data:`WebUrl` and :data:`SourceUri` are strings checked by such patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    HttpUrl,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

#: The end of a pattern, read the same by Python's ``re`` and by ECMA-262 (see the module doc).
END = r"(?!\n)$"


def _no_case(word: str) -> str:
    """``word`` as a case-insensitive pattern without flags (``(?i)`` is not ECMA-262)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


def _integral(value: Any) -> Any:
    # JSON Schema's "integer" includes 3.0; strict int alone would refuse it.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer from the wire: ``"1000"`` and ``true`` are refused.
Integer = Annotated[int, BeforeValidator(_integral), Strict()]
#: A number from the wire: integers pass, ``"15"`` and ``true`` are refused.
Number = Annotated[float, Strict()]
#: A boolean from the wire: only ``true`` and ``false``.
Boolean = Annotated[bool, Strict()]


@dataclass(frozen=True)
class Matches:
    """A string constraint checked with ``re.search`` and exported as the schema's ``pattern``."""

    pattern: str
    message: str
    _compiled: list[re.Pattern[str]] = field(default_factory=list, compare=False, repr=False)

    def _regex(self) -> re.Pattern[str]:
        # Compiled on first use: contracts are imported by upstreams that validate little.
        if not self._compiled:
            self._compiled.append(re.compile(self.pattern))
        return self._compiled[0]

    def check(self, value: str) -> str:
        """``value`` when the pattern matches, else a validation error saying :attr:`message`.

        A custom error, not ``ValueError``: pydantic would prefix "Value error, " to the
        message every caller shows (the CLI, the admin's fields, dead letters).
        """
        if self._regex().search(value) is None:
            raise PydanticCustomError("string_pattern_mismatch", self.message)
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["pattern"] = self.pattern
        return json_schema


# --- Email addresses ---------------------------------------------------------------------------
# ASCII dot-atom local part (no quoted strings, no consecutive dots), a domain of at least two
# LDH labels whose last is 2-63 letters and not a special-use name (RFC 6761, 6762, 7686, arpa):
# the addresses an SMTP relay delivers. No IP literals, no internationalised addresses.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
SPECIAL_USE_TLDS = ("arpa", "invalid", "local", "localhost", "onion", "test")
_SPECIAL = "|".join(_no_case(name) for name in SPECIAL_USE_TLDS)
EMAIL_PATTERN = (
    rf"^{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_DOMAIN_LABEL}\.)+"
    rf"(?!(?:{_SPECIAL}){END})[A-Za-z]{{2,63}}{END}"
)
EMAIL_MAX_LENGTH = 254
_EMAIL = Matches(EMAIL_PATTERN, "value is not a valid email address")


def _email(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    _EMAIL.check(value)
    # Domains are case-insensitive; one spelling keeps idempotency keys and logs stable.
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}"


#: An email address as :data:`EMAIL_PATTERN` describes it; the domain is lower-cased.
EmailAddress = Annotated[
    str,
    StringConstraints(max_length=EMAIL_MAX_LENGTH),
    BeforeValidator(_email),
    WithJsonSchema({"type": "string", "maxLength": EMAIL_MAX_LENGTH, "pattern": EMAIL_PATTERN}),
]


# --- http(s) URLs ------------------------------------------------------------------------------
# scheme http or https (any case); a host that is a dotted-quad IPv4 address or LDH labels whose
# last starts with a letter (a numeric last label would be parsed as IPv4), no "xn--" labels
# (their punycode may be invalid); a port 0-65535; path, query and fragment of RFC 3986 characters
# with %XX escapes. No user info, no IPv6 literals. The value stays a pydantic ``HttpUrl``.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LABEL_TAIL = r"(?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NOT_ACE = r"(?![Xx][Nn]--)"
_HOST = (
    rf"(?:{_OCTET}(?:\.{_OCTET}){{3}}"
    rf"|(?:{_NOT_ACE}[A-Za-z0-9]{_LABEL_TAIL}\.)*{_NOT_ACE}[A-Za-z]{_LABEL_TAIL})"
)
_PORT = (
    r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"
)
_PCHAR = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
WEB_URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://{_HOST}(?::{_PORT})?"
    rf"(?:/{_PCHAR}*)*(?:\?(?:{_PCHAR}|[/?])*)?(?:#(?:{_PCHAR}|[/?])*)?{END}"
)
WEB_URL_MAX_LENGTH = 2083
_WEB_URL = Matches(WEB_URL_PATTERN, "value is not a valid http(s) URL")


def _web_url(value: Any) -> Any:
    if isinstance(value, str):
        _WEB_URL.check(value)
    return value


#: An http(s) URL as :data:`WEB_URL_PATTERN` describes it, parsed into ``HttpUrl``.
WebUrl = Annotated[
    HttpUrl,
    BeforeValidator(_web_url),
    # Replaces HttpUrl's "format: uri", which allows any scheme.
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": WEB_URL_MAX_LENGTH,
            "pattern": WEB_URL_PATTERN,
        }
    ),
]


# --- Media sources -----------------------------------------------------------------------------
SOURCE_SCHEMES = ("file", "s3", "http", "https")
#: A ``file:``, ``s3:``, ``http:`` or ``https:`` URI (scheme in any case); the rest is the store's
#: or the fetcher's to judge.
SOURCE_PATTERN = rf"^(?:{'|'.join(_no_case(s) for s in SOURCE_SCHEMES)}):"
SourceUri = Annotated[
    str,
    Matches(SOURCE_PATTERN, f"must be a {', '.join(SOURCE_SCHEMES)} URI"),
]
