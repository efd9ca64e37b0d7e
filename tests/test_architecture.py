"""The package's import structure (docs/architecture.md, "Layers"): no import cycles between
``workbench`` modules, and every import goes down the layers, never up.

Both rules read the source with ``ast`` (nothing is imported) and count every ``import`` and
``from ... import`` statement, at module level and inside functions alike: an import deferred
into a function (to keep ``import workbench`` cheap, say) still makes one module depend on the
other, and a cycle of deferred imports is the same knot, only tied later. Imports under
``if TYPE_CHECKING:`` never run and do not count.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "workbench"

# Layers, bottom first: a module may import modules of its own top-level package (the
# subpackage or module right below ``workbench``) and of packages of lower layers only.
LAYERS = (
    ("foundation", {"config", "stats"}),
    ("workers", {"workers"}),
    ("cache", {"cache"}),
    ("data", {"data"}),
    ("models", {"models"}),
    ("attacks", {"attacks"}),
    ("defences and safety", {"defenses", "safety"}),
    ("latent attacks and red teaming", {"lat", "redteam"}),
    ("experiments", {"experiments"}),
    ("defence experiment", {"defense_experiment"}),
    ("viz", {"viz"}),
    ("widgets", {"widgets"}),
    ("notebook building", {"notebooks"}),
    ("exercises", {"exercises"}),
    ("experiment table", {"experiment_table"}),
    ("command line", {"cli", "__init__"}),
)
RANK = {part: rank for rank, (_, parts) in enumerate(LAYERS) for part in parts}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(tree: ast.Module):
    """Every import statement of a module, with the function it sits in ("" at module level),
    skipping ``if TYPE_CHECKING:`` blocks."""
    found = []

    def visit(node, function: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit(ast.Module(body=[other], type_ignores=[]), function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, function))
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else function
            visit(child, inner)

    visit(tree, "")
    return found


def imported_modules(name: str, is_package: bool, node, modules) -> list[str]:
    """The ``workbench`` modules an import statement of module ``name`` loads: ``from
    workbench.x import y`` is ``workbench.x.y`` when that is a module, else ``workbench.x``."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's own package upwards
            package = name if is_package else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                   for alias in node.names]
    found = []
    for target in targets:
        while target and target not in modules:  # import workbench.x.Name -> workbench.x
            target = target.rpartition(".")[0]
        if target.startswith("workbench") and target != name:
            found.append(target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, str]]:
    """``{module: {imported module: where}}`` over the modules below ``root``; ``where`` is
    "module level" or "in <function>"."""
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, str]] = {}
    for name, path in paths.items():
        graph[name] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, function in import_statements(tree):
            where = f"in {function}()" if function else "module level"
            for target in imported_modules(name, path.name == "__init__.py", node, paths):
                if not function or target not in graph[name]:  # module level wins
                    graph[name][target] = where
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search, modules in sorted
    order, so the answer is the same every run)."""
    state: dict[str, int] = defaultdict(int)  # 0 unvisited, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(module):
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state[target] == 1:
                return stack[stack.index(target):] + [target]
            if state[target] == 0:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if state[module] == 0:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def describe_cycle(graph, cycle: list[str]) -> str:
    return "\n".join(f"  {a} imports {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(graph) -> list[str]:
    """Imports that go up the layers (or across one layer), as sentences."""
    found = []
    for module, targets in sorted(graph.items()):
        source = top_level(module)
        for target, where in sorted(targets.items()):
            destination = top_level(target)
            if destination == source:
                continue
            if RANK[destination] >= RANK[source]:
                found.append(f"{module} ({LAYERS[RANK[source]][0]}) imports {target} "
                             f"({LAYERS[RANK[destination]][0]}), {where}")
    return found


# ----------------------------------------------------------------------------- the tests


def test_every_top_level_module_has_a_layer():
    parts = {top_level(module) for module in import_graph()}
    missing = sorted(parts - set(RANK))
    assert not missing, (f"{missing} are in no layer: add them to LAYERS here and to "
                         f"docs/architecture.md")


def test_no_import_cycles():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n" + describe_cycle(graph, cycle)


def test_imports_go_down_the_layers():
    violations = layer_violations(import_graph())
    assert not violations, "imports against the layers:\n  " + "\n  ".join(violations)


def test_the_layers_of_the_document_are_the_layers_tested():
    """docs/architecture.md lists the same layers, in the same order."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    positions = [text.find(f"| {name} |") for name, _ in LAYERS]
    assert -1 not in positions, [name for (name, _), at in zip(LAYERS, positions) if at == -1]
    assert positions == sorted(positions)


# ------------------------------------------------------- the rules on a small made-up package


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, source in files.items():
        path = root / "workbench" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "workbench"


def test_a_cycle_through_a_deferred_import_is_found_and_printed(tmp_path):
    package = _write(tmp_path, {
        "__init__.py": "",
        "ex/__init__.py": "from workbench.ex.core import check\n",
        "ex/core.py": "def load():\n    from workbench.ex import nb01\n",
        "ex/nb01.py": "from workbench.ex.core import check\n",
    })
    graph = import_graph(package)
    cycle = find_cycle(graph)
    assert cycle == ["workbench.ex.core", "workbench.ex.nb01", "workbench.ex.core"]
    text = describe_cycle(graph, cycle)
    assert "workbench.ex.core imports workbench.ex.nb01 (in load())" in text
    assert "workbench.ex.nb01 imports workbench.ex.core (module level)" in text


def test_a_package_importing_its_submodules_is_no_cycle_but_importing_back_is(tmp_path):
    files = {"__init__.py": "", "s/__init__.py": "from workbench.s.a import f\n",
             "s/a.py": "import os\nfrom workbench.s import b\n", "s/b.py": "X = 1\n"}
    assert find_cycle(import_graph(_write(tmp_path / "fine", files))) is None
    files["s/b.py"] = "from workbench.s import f\n"  # b imports its package, which imports a
    assert find_cycle(import_graph(_write(tmp_path / "back", files))) == [
        "workbench.s", "workbench.s.a", "workbench.s.b", "workbench.s"]


def test_relative_and_type_checking_imports(tmp_path):
    package = _write(tmp_path, {
        "__init__.py": "", "a/__init__.py": "", "a/x.py": "from . import y\nfrom .y import Z\n",
        "a/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                  "    from workbench.a.x import W\nZ = 1\n"})
    graph = import_graph(package)
    assert graph["workbench.a.x"] == {"workbench.a.y": "module level"}
    assert graph["workbench.a.y"] == {}


@pytest.mark.parametrize("source, target, allowed", [
    ("attacks/pgd.py", "workbench.widgets.panel", False),
    ("viz/plots.py", "workbench.exercises.core", False),
    ("models/registry.py", "workbench.attacks", False),
    ("widgets/panel.py", "workbench.viz", True),
    ("cli.py", "workbench.exercises.grader", True),
])
def test_the_layer_rule(tmp_path, source, target, allowed):
    module = target.split(".")[1]
    files = {"__init__.py": "", source: f"def f():\n    import {target}\n",
             f"{module}/__init__.py": "", "widgets/panel.py": "", "exercises/core.py": "",
             "exercises/grader.py": ""}
    violations = layer_violations(import_graph(_write(tmp_path, files)))
    assert (violations == []) is allowed, violations
