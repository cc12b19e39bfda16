"""The package's modules import each other without cycles.

A cycle makes import order matter (a half-initialised module is seen by the other side) and ties two
modules into one unit that can only be understood and changed together; it usually means a shared helper
lives in the wrong module. The graph is read statically with ``ast`` from every module under
``src/distillguard``: module-level and function-level imports both count, because a lazy import inside a
function is still a dependency. Only imports under ``if TYPE_CHECKING:`` are left out, since they never run.
Importing ``a.b`` also runs ``a/__init__.py``; that implicit edge is not counted, or every package that
re-exports its own submodules would be a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "distillguard"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_files(root: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (packages by their ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree`` at any depth, except those guarded by ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in (``a.b.func`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from a import b`` points at ``a.b`` when that is one)."""
    modules = module_files() if modules is None else modules
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_pkg else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            for target in targets:
                if target != PACKAGE and not target.startswith(PACKAGE + "."):
                    continue
                dep = _resolve(target, modules)
                if dep and dep != mod:
                    graph[mod].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None; depth-first search with an explicit stack."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        iters = [iter(sorted(graph[start]))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_graph_sees_the_package() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.cli" in graph
    assert f"{PACKAGE}.errors" in graph[f"{PACKAGE}.cli"]
    # function-level imports count: the CLI mounts its sub-apps inside a function
    assert f"{PACKAGE}.audit.cli" in graph[f"{PACKAGE}.cli"]


def test_find_cycle_reports_the_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_relative_and_from_imports_resolve(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from distillguard import top\n"
        "def f():\n    from ..top import thing\n"
    )
    (pkg / "top.py").write_text("import distillguard.sub.leaf\n")
    graph = import_graph(module_files(pkg))
    assert graph[f"{PACKAGE}.sub"] == {f"{PACKAGE}.sub.leaf"}
    assert graph[f"{PACKAGE}.sub.leaf"] == {f"{PACKAGE}.top"}
    assert graph[f"{PACKAGE}.top"] == {f"{PACKAGE}.sub.leaf"}
    assert find_cycle(graph) == [f"{PACKAGE}.sub.leaf", f"{PACKAGE}.top", f"{PACKAGE}.sub.leaf"]


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def is_cli(module: str) -> bool:
    """The command-line layer: ``distillguard.cli`` and every ``cli`` / ``*_cli`` module of a package."""
    leaf = module.rpartition(".")[2]
    return leaf == "cli" or leaf.endswith("_cli")


def test_only_the_command_line_layer_imports_command_line_modules() -> None:
    """Workflows and shared printers live in library modules (``*.jobs``, ``audit.runner``, ``present``);
    a command calls them, and so does the demo, never another command's module."""
    graph = import_graph()
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() if not is_cli(m) for d in deps if is_cli(d))
    assert not wrong, "a library module imports the command line: " + ", ".join(wrong)
    assert is_cli(f"{PACKAGE}.monitor.sim_cli") and not is_cli(f"{PACKAGE}.client")
    assert f"{PACKAGE}.present" in graph[f"{PACKAGE}.demo"]
