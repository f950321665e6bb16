"""Email bodies rendered from Jinja2 templates: ``<name>.txt`` and/or ``<name>.html``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    select_autoescape,
)

from tasklane.errors import PermanentError

_EXTENSIONS = ("txt", "html")


@dataclass(frozen=True)
class RenderedBody:
    """The rendered plain-text and HTML parts; a part is ``None`` when it has no template."""

    text: str | None
    html: str | None


class TemplateRenderer:
    """Renders templates from one directory; HTML templates are autoescaped."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._env = Environment(
            loader=FileSystemLoader(directory),
            # A typo in a variable name must fail the task, not send an email with a hole in it.
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            keep_trailing_newline=True,
        )

    def render(self, name: str, context: Mapping[str, Any]) -> RenderedBody:
        """Render ``<name>.txt`` and ``<name>.html``, whichever exist, with ``context``."""
        parts: dict[str, str] = {}
        for extension in _EXTENSIONS:
            rendered = self._render_one(f"{name}.{extension}", context)
            if rendered is not None:
                parts[extension] = rendered
        if not parts:
            raise PermanentError(
                f"no template named {name!r} (looked for {name}.txt and {name}.html "
                f"in {self.directory})"
            )
        return RenderedBody(text=parts.get("txt"), html=parts.get("html"))

    def _render_one(self, filename: str, context: Mapping[str, Any]) -> str | None:
        try:
            template = self._env.get_template(filename)
        except TemplateNotFound:
            return None
        except TemplateSyntaxError as exc:
            raise PermanentError(f"template {filename!r} line {exc.lineno}: {exc.message}") from exc
        try:
            return template.render(context)
        except UndefinedError as exc:
            raise PermanentError(f"template {filename!r}: {exc.message}") from exc
        # Rendering is deterministic: whatever fails now (a broken include, a filter applied to
        # the wrong type) fails again on every retry.
        except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
            raise PermanentError(f"template {filename!r}: {exc}") from exc
