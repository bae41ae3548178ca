"""The package's import graph: no cycle among its modules, and each floor imports only from the floors below it.

Floors (low to high): physics < data < model < refine < app; ``jaxed.errors`` and ``jaxed.runtime`` may be imported
from anywhere, and the package's ``__init__`` (the public API) from nowhere inside the package (``from jaxed import
__version__``, the version string, is not an import of the API and is left out). Every import statement counts,
including those inside functions and under ``if TYPE_CHECKING`` (a lazy import hides a cycle, it does not remove it). The graph is read with ``ast`` from the source files: nothing is imported to build it.
"""
import ast
from pathlib import Path

import jaxed

ROOT = Path(jaxed.__file__).resolve().parent
FLOORS = {"physics": 0, "data": 1, "model": 2, "refine": 3, "app": 4}
ANYWHERE = {"jaxed.errors", "jaxed.runtime"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """{module: the jaxed modules it imports} over every .py file of the package."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.module == "jaxed" and not node.level and [a.name for a in node.names] == ["__version__"]:
                    continue
                base = node.module or ""
                if node.level:  # relative import
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                # `from jaxed.refine import objective` imports the module jaxed.refine.objective
                found = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for target in found:
                while target and target not in modules:  # `import jaxed.refine.lsq.x` → the module that exists
                    target = target.rpartition(".")[0]
                if target.startswith("jaxed") and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def test_the_graph_is_read():
    # the reader finds the imports it must (a test that cannot fail is a defect): optimize imports objective and
    # checkpoints, the CLI imports the workflow
    graph = _graph()
    assert {"jaxed.refine.objective", "jaxed.refine.checkpoints"} <= graph["jaxed.refine.optimize"]
    assert "jaxed.app.workflow" in graph["jaxed.app.cli"]
    assert len(graph) > 30


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_floors_import_only_downwards():
    bad = []
    for module, targets in _graph().items():
        floor = _floor(module)
        for target in targets:
            if target in ANYWHERE:
                continue
            if target == "jaxed":  # the public API is for users, not for the package itself
                bad.append(f"{module} imports the package's __init__")
                continue
            target_floor = _floor(target)
            if floor is not None and target_floor is not None and target_floor > floor:
                bad.append(f"{module} (floor {floor}) imports {target} (floor {target_floor})")
    assert not bad, "\n".join(sorted(bad))
