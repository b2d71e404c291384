"""The package layout: stages import only the stages below them, and no module imports itself in a circle.

Every import counts, those inside functions too (they are still a dependency, only a later one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lmfix"
FLOOR = {"lmfix", "lmfix.errors", "lmfix.atomic", "lmfix.heap"}
# What each stage may import besides itself and the floor (errors, atomic, heap, the version).
BELOW = {
    "ops": set(),
    "data": set(),
    "embeddings": {"data", "ops"},
    "model": {"data", "embeddings", "ops"},
    "training": {"data", "embeddings", "ops", "model"},
    "analysis": {"data", "embeddings", "ops", "model", "training"},
    "bench": {"data", "embeddings", "ops", "model", "training"},
    "recipes": {"data", "embeddings", "ops", "model", "training", "analysis"},
    "cli": {"data", "embeddings", "ops", "model", "training", "analysis", "bench", "recipes"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    if module in FLOOR:
        return "floor"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in BELOW else "top"


def lmfix_imports() -> dict[str, set[str]]:
    """{module: lmfix modules it imports}; ``from pkg import name`` counts as pkg.name when that is a module."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "lmfix"}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lmfix":
                assert node.level == 0, f"{name}: relative import of {node.module}; use absolute imports"
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t != name}
    return graph


def test_stages_import_only_the_stages_below_them():
    wrong = []
    for module, targets in lmfix_imports().items():
        mine = stage(module)
        if mine == "floor":
            wrong += [f"{module} -> {t}" for t in targets if t not in FLOOR]
        elif mine in BELOW:
            allowed = BELOW[mine] | {mine, "floor"}
            wrong += [f"{module} -> {t}" for t in targets if stage(t) not in allowed]
    assert not wrong, "imports against the stage order:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = lmfix_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_every_package_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"{init} needs a docstring saying what the package holds"
