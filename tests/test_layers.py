"""The package's layering: no import cycle between its modules, and no import from a lower layer to a
higher one. Imports are read from the source (ast), function-level ones included, so a lazy import
counts like a top-level one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "resnet_pipeline"

# Bottom to top (STYLE.md): models and shared utilities; data; the training loop; Ray orchestration
# (Train wiring, the Tune sweep, the cluster) with tracking at the side; evaluation and report; bench
# (resnet_pipeline/bench/) and the CLI. The longest matching prefix decides a module's layer.
LAYERS = {
    "models": 0, "config": 0, "files": 0, "storage": 0, "environment": 0, "paper": 0, "stats": 0,
    "data": 1,
    "training": 2,
    "training.ray_launch": 3, "training.driver": 3, "training.worker": 3, "sweep": 3, "cluster": 3, "tracking": 3,
    "evaluation": 4, "report": 4,
    "console": 5, "bench": 5, "cli": 5,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports, as names relative to the package."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [[a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(["resnet_pipeline", *package, *([node.module] if node.module else [])])
            # `from A import X` runs A (a package's __init__ included) and reads X from it, so it
            # imports A, and the module A.X where there is one
            candidates = [[base]] + [[f"{base}.{a.name}"] for a in node.names]
        else:
            continue
        for options in candidates:
            for full in options:
                rel = full.removeprefix("resnet_pipeline")
                if rel and not rel.startswith("."):
                    break  # another package
                rel = rel.lstrip(".")
                if rel in modules:
                    if rel and rel != name:
                        targets.add(rel)
                    break
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _layer(name: str) -> int | None:
    while name:
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0]
    return None


def test_every_module_has_a_layer():
    assert [m for m in _modules() if m and _layer(m) is None] == []


def test_the_graph_sees_lazy_and_relative_imports():
    graph = _graph()
    assert "data.torch_loader" in graph["data.loader"]  # imported inside make_loader
    assert "data.spec" in graph["data.dali"]


def test_no_upward_import():
    upward = sorted((m, t) for m, targets in _graph().items() for t in targets
                    if _layer(m) < _layer(t))
    assert upward == [], "imports from a lower layer to a higher one: " + ", ".join(f"{m} -> {t}" for m, t in upward)


def test_no_import_cycle():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_the_cli_imports_the_benchmarks():
    importers = sorted(m for m, targets in _graph().items()
                       if any(t == "bench" or t.startswith("bench.") for t in targets)
                       and not (m == "bench" or m.startswith("bench.") or m == "cli"))
    assert importers == [], f"the library imports the benchmarks: {importers}"
