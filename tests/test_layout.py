"""The package's layout holds: every module imports, says its job, and no two modules import each other
(directly or around a longer loop), read from the sources with the standard library alone."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import labeler

PACKAGE = Path(labeler.__file__).parent


def module_names() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages([str(PACKAGE)], prefix="labeler."))


def module_path(name: str) -> Path:
    relative = Path(*name.split(".")[1:])
    package = PACKAGE / relative / "__init__.py"
    return package if package.exists() else (PACKAGE / relative).with_suffix(".py")


def imported_modules(name: str, known: set[str]) -> set[str]:
    """The labeler modules ``name`` imports, at module level or inside functions (lazy imports count too:
    a loop through one fails as soon as that function runs first)."""
    tree = ast.parse(module_path(name).read_text())
    package = name if module_path(name).name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name``, pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def package_graph() -> dict[str, set[str]]:
    """Module -> labeler modules it imports, a package's ``__init__`` standing for the package."""
    known = set(module_names()) | {"labeler"}
    return {name: imported_modules(name, known) for name in known}


def test_the_cycle_finder_finds_a_loop_and_only_loops():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_around_a_loop():
    assert import_cycles(package_graph()) == []


@pytest.mark.parametrize("name", module_names())
def test_every_module_imports_and_says_its_job(name):
    module = importlib.import_module(name)
    assert module.__doc__ and len(module.__doc__.strip()) >= 20, f"{name} has no docstring saying its job"


def test_the_readme_layout_lists_every_folder_of_the_package():
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    folders = sorted(p.parent.relative_to(PACKAGE.parent).as_posix() + "/" for p in PACKAGE.rglob("__init__.py"))
    missing = [folder for folder in folders if folder not in layout]
    assert not missing, f"README's layout does not list {missing}"
