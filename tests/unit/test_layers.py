"""The house's layout (README, "Layout"): ``shared/`` is a few packages by bounded context, each
importing only from the packages below it, and no module imports one that imports it back, be it
at the top of a file or inside a function."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Bottom to top: a package may import from its own and those before it, never after.
LAYERS = ("core", "ops", "jobs", "delivery", "engine", "api", "transcribe", "realtime", "cli")
#: Only the command line reaches outside ``shared`` (``whisper-api dev`` runs the dev stack).
OUTSIDE = ("functions", "devtools")


def _modules() -> dict[str, Path]:
    found = {}
    for base in ("shared", *OUTSIDE):
        for path in (ROOT / base).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Every project module ``path`` imports, anywhere in it, with the line."""
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name not in ("shared", *OUTSIDE):
                yield name, node.lineno


GRAPH = {module: dict(_imports(path)) for module, path in MODULES.items()}


def _package(module: str) -> str:
    return module.split(".")[1]


def test_shared_holds_packages_only():
    flat = sorted(p.name for p in (ROOT / "shared").glob("*.py") if p.name != "__init__.py")
    packages = sorted(p.name for p in (ROOT / "shared").iterdir() if (p / "__init__.py").exists())
    assert flat == []
    assert packages == sorted(LAYERS)


def _upward(graph: dict[str, dict[str, int]]) -> list[str]:
    return [
        f"{module}:{line} imports {target}"
        for module, targets in graph.items()
        if module.startswith("shared.")
        for target, line in targets.items()
        if (target.startswith("shared.") and LAYERS.index(_package(target)) > LAYERS.index(_package(module)))
        or (target.split(".")[0] in OUTSIDE and _package(module) != "cli")
    ]


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Modules that import each other, directly or round about (Tarjan's strongly connected
    components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, {}):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = [stack.pop()]
            while component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_package_imports_one_above_it():
    assert _upward(GRAPH) == []


def test_no_module_imports_one_that_imports_it_back():
    assert _cycles(GRAPH) == []


def test_the_checks_find_an_upward_import_and_a_cycle():
    # Given the real graph with the job record importing the HTTP parsing (a function-local
    # import counts the same), and the parsing's own import of it
    graph = {module: dict(targets) for module, targets in GRAPH.items()}
    graph["shared.jobs.models"]["shared.api.parsing"] = 7
    assert "shared.jobs.models" in graph["shared.api.parsing"]
    # Then both checks name it
    assert _upward(graph) == ["shared.jobs.models:7 imports shared.api.parsing"]
    (cycle,) = _cycles(graph)
    assert {"shared.api.parsing", "shared.jobs.models"} <= set(cycle)
