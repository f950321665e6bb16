"""notifier.templates with the shipped templates and with templates written per test."""

from __future__ import annotations

from pathlib import Path

import pytest

import notifier.templates
from notifier.templates import RenderedBody, TemplateRenderer
from tasklane.errors import PermanentError

SHIPPED = Path(notifier.templates.__file__).parent / "templates"


def write(directory: Path, files: dict[str, str]) -> TemplateRenderer:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return TemplateRenderer(directory)


def test_shipped_welcome_renders_both_parts() -> None:
    body = TemplateRenderer(SHIPPED).render("welcome", {"name": "Ada", "product": "Tasklane"})

    assert body.text is not None and body.html is not None
    assert body.text.startswith("Hello Ada,\n")
    assert "welcome to Tasklane!" in body.text
    assert "<p>Hello Ada,</p>" in body.html
    assert "<strong>Tasklane</strong>" in body.html


def test_html_is_autoescaped_but_text_is_not() -> None:
    name = "<script>alert('x')</script> & co"

    body = TemplateRenderer(SHIPPED).render("welcome", {"name": name, "product": "Tasklane"})

    assert body.html is not None and body.text is not None
    assert "<script>" not in body.html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co" in body.html
    assert f"Hello {name}," in body.text


def test_missing_variable_names_it(tmp_path: Path) -> None:
    renderer = write(tmp_path, {"welcome.html": "<p>Hello {{ name }}</p>"})

    with pytest.raises(PermanentError) as caught:
        renderer.render("welcome", {"product": "Tasklane"})

    assert str(caught.value) == "template 'welcome.html': 'name' is undefined"


def test_missing_variable_in_shipped_text_part() -> None:
    with pytest.raises(PermanentError, match="'welcome.txt': 'product' is undefined"):
        TemplateRenderer(SHIPPED).render("welcome", {"name": "Ada"})


def test_missing_attribute_is_permanent(tmp_path: Path) -> None:
    renderer = write(tmp_path, {"invoice.txt": "Due {{ invoice.due }}"})

    with pytest.raises(PermanentError, match="has no attribute 'due'"):
        renderer.render("invoice", {"invoice": {}})


def test_unknown_template(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="no template named 'nope'"):
        TemplateRenderer(tmp_path).render("nope", {})


def test_only_existing_parts_are_rendered(tmp_path: Path) -> None:
    renderer = write(tmp_path, {"alerts/disk.txt": "{{ host }} is {{ percent }}% full\n"})

    body = renderer.render("alerts/disk", {"host": "db1", "percent": 93})

    assert body == RenderedBody(text="db1 is 93% full\n", html=None)


def test_syntax_error_is_permanent(tmp_path: Path) -> None:
    renderer = write(tmp_path, {"broken.txt": "line one\n{% if name %}unclosed\n"})

    with pytest.raises(PermanentError, match="'broken.txt' line"):
        renderer.render("broken", {"name": "Ada"})


def test_runtime_type_error_is_permanent(tmp_path: Path) -> None:
    renderer = write(tmp_path, {"count.txt": "{{ count + 1 }}"})

    with pytest.raises(PermanentError, match="'count.txt'"):
        renderer.render("count", {"count": "three"})


def test_names_cannot_escape_the_directory(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("top secret", encoding="utf-8")
    renderer = write(tmp_path / "templates", {"welcome.txt": "hi"})

    with pytest.raises(PermanentError, match="no template named"):
        renderer.render("../secret", {})
