"""The house rules of the code: packages import only the layers below them, and no modules import each other in a
circle. Both are read from the source (every import, including those inside functions), so a new module is covered
without editing this test."""

import ast

from tests.conftest import REPO

# Which engine packages each engine package may import (besides itself and the `engine` package root).
ENGINE_LAYERS = {
    "engine.errors": set(),
    "engine.library_output": set(),
    "engine.config": {"engine.errors"},
    "engine.run": {"engine.errors", "engine.config"},
    "engine.data": {"engine.errors", "engine.config", "engine.run"},
    "engine.models": {"engine.errors", "engine.config", "engine.run"},
    "engine.chat": {"engine.errors", "engine.config", "engine.run", "engine.data", "engine.models"},
    "engine.eval": {"engine.errors", "engine.config", "engine.run", "engine.data", "engine.models", "engine.chat"},
    "engine.train": {"engine.errors", "engine.config", "engine.run", "engine.data", "engine.models", "engine.chat",
                     "engine.eval"},
    "engine.export": {"engine.errors", "engine.config", "engine.run", "engine.data", "engine.models"},
}
for _package in ("engine.run", "engine.data", "engine.models", "engine.chat", "engine.eval", "engine.train",
                 "engine.export"):
    ENGINE_LAYERS[_package].add("engine.library_output")  # process-wide output routing, used at entry points


def module_name(path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def project_modules() -> dict[str, object]:
    return {module_name(path): path for top in ("engine", "tui") for path in sorted((REPO / top).rglob("*.py"))
            if path.name != "__main__.py"}


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path, modules: dict[str, object]) -> set[str]:
    """Project modules a file imports anywhere in its code (not under `if TYPE_CHECKING:`, which never runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(inner) for node in ast.walk(tree) if _is_type_checking_block(node) for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `from a.b import c`: the module a.b.c if it exists, else a.b
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules) - {name} for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def engine_package(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "engine" and len(parts) > 1 else None


def test_find_cycles_sees_a_circle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_count_and_type_checking_ones_do_not(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from engine.train.run import TrainingRun\n"
                      "def f():\n    from engine.run.paths import RunPaths\n    import engine.config\n")
    modules = {"engine.train.run": None, "engine.run.paths": None, "engine.config": None, "engine.run": None,
               "engine": None}
    assert imported_modules(source, modules) == {"engine.run.paths", "engine.config"}


def test_no_module_of_engine_or_tui_imports_itself_in_a_circle():
    assert find_cycles(import_graph()) == []


def test_every_engine_module_belongs_to_a_known_package():
    unplaced = [m for m in project_modules() if m.startswith("engine.") and engine_package(m) not in ENGINE_LAYERS]
    assert unplaced == [], f"add these to a package and to ENGINE_LAYERS: {unplaced}"


def test_engine_packages_import_only_the_layers_below_them():
    breaches = []
    for module, imports in import_graph().items():
        package = engine_package(module)
        if package is None:
            continue
        for target in imports:
            if target.startswith("tui"):
                breaches.append(f"{module} -> {target} (the engine never imports the TUI)")
                continue
            other = engine_package(target)
            if other is not None and other != package and other not in ENGINE_LAYERS[package]:
                breaches.append(f"{module} -> {target}")
    assert breaches == []


def test_every_engine_package_says_what_it_owns():
    packages = {p for p in ENGINE_LAYERS if (REPO / p.replace(".", "/")).is_dir()}
    assert packages >= {"engine.run", "engine.data", "engine.models", "engine.chat", "engine.train"}
    for package in packages:
        docstring = ast.get_docstring(ast.parse((REPO / package.replace(".", "/") / "__init__.py").read_text()))
        assert docstring and len(docstring.split()) >= 30, f"{package}/__init__.py needs a docstring paragraph"
