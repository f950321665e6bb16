"""The package's shape: the public names, no import cycles, layers that only point down, and an
upstream's ``import tasklane.publish`` that loads no worker code and no HTTP server."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tasklane

SRC = Path(tasklane.__file__).parent
SERVICES = ("notifier", "scraper", "media")

#: The layers, bottom first: a module may import its own layer and those below, never above.
#: ``publish`` sits above ``wire`` and below ``beat``: Beat fires through the publisher, so each
#: firing is validated, routed and declared exactly as an upstream's publish is.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "settings"}),
    frozenset({"contracts", "artifacts", "net"}),
    frozenset({"wire", "schema"}),
    frozenset({"observability"}),
    frozenset({"publish", "worker"}),
    frozenset({"beat", "gateway"}),
    frozenset({"contrib"}),
    frozenset({"cli"}),
)
#: Top-level parts that import nothing of the worker side, ever.
WORKER_FREE = ("publish", "beat", "contracts", "wire", "schema", "contrib")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth of its code (function-level ones included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def graph() -> dict[str, set[str]]:
    """tasklane's own modules and the tasklane modules each imports."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {m for m in imports_of(path) if m in modules and m != name}
    return edges


def part(module: str) -> str:
    """``tasklane.wire.routing`` -> ``wire``; ``tasklane.publish`` -> ``publish``."""
    return module.split(".")[1] if "." in module else ""


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if part(module) in names)


def test_the_public_names_are_exactly_these() -> None:
    assert tasklane.__all__ == [
        "BrokerUnavailableError",
        "ContractRegistry",
        "Payload",
        "PayloadTooLargeError",
        "PayloadValidationError",
        "PermanentError",
        "PublishedTasks",
        "Publisher",
        "REGISTRY",
        "Result",
        "RetryPolicy",
        "Settings",
        "SettingsError",
        "TaskContract",
        "TaskFailedError",
        "TaskHandle",
        "TasklaneApp",
        "TasklaneError",
        "TransientError",
        "UnknownContractError",
        "create_app",
        "load_settings",
        "publish",
    ]
    assert tasklane.__all__ == sorted(tasklane.__all__)
    for name in tasklane.__all__:
        assert getattr(tasklane, name) is not None
    with pytest.raises(AttributeError):
        _ = tasklane.implement  # type: ignore[attr-defined]


def test_every_module_belongs_to_a_layer() -> None:
    for module in graph():
        if module != "tasklane":
            layer(module)  # StopIteration names a module no layer holds


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` (``a -> b -> a``), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(edges.get(module, ())):
            if cycle := visit(target, [*path, module]):
                return cycle
        done.add(module)
        return None

    for module in sorted(edges):
        if cycle := visit(module, []):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycle(graph()) is None


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        if source != "tasklane"
        for target in targets
        if target != "tasklane" and layer(target) > layer(source)
    ]
    assert upward == []


def test_the_worker_imports_no_publisher() -> None:
    offenders = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        if part(source) == "worker"
        for target in targets
        if part(target) == "publish"
    ]
    assert offenders == []


def test_the_worker_free_parts_import_no_worker_code() -> None:
    offenders = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        if part(source) in WORKER_FREE
        for target in targets
        if part(target) == "worker"
    ]
    assert offenders == []


def test_tasklane_imports_neither_the_dev_kit_nor_a_service() -> None:
    foreign = {"tasklane_dev", *SERVICES}
    found = sorted(
        f"{module_name(path)} -> {imported}"
        for path in SRC.rglob("*.py")
        for imported in imports_of(path)
        if imported.split(".")[0] in foreign
    )
    assert found == []


def fresh_modules(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_tasklane_publish_loads_no_worker_code_and_no_http_server() -> None:
    loaded = fresh_modules("import tasklane.publish")
    heavy = sorted(
        m
        for m in loaded
        if m.startswith(("celery.worker", "celery.app", "celery.result", "tasklane.worker"))
        or m in {"http.server", "socketserver", "uvicorn", "fastapi", "starlette", "flower"}
        or m.split(".")[0]
        in {"tasklane_dev", *SERVICES, "redis", "prometheus_client", "pydantic_settings"}
    )
    assert heavy == []


def test_create_app_is_loaded_on_first_use() -> None:
    loaded = fresh_modules("import tasklane")
    assert "tasklane.worker.app" not in loaded
    loaded = fresh_modules("import tasklane\ntasklane.create_app")
    assert "tasklane.worker.app" in loaded
