"""gateway/, bench/ and monitoring/ import one another without cycles.

Every import counts, also one inside a function, except those under ``if TYPE_CHECKING:``
(never run) and ``if __name__ == "__main__":`` (run as ``__main__``, a module of its own).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

from tests.tool_support import REPO_ROOT

PACKAGES: Final = ("gateway", "bench", "monitoring")


def module_name(path: Path) -> str:
    """``gateway/fleet/probes.py`` -> ``gateway.fleet.probes``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def never_runs_on_import(node: ast.If) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``), or ``if __name__ == "__main__":``."""
    test = node.test
    if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__":
        return [ast.dump(c) for c in test.comparators] == [ast.dump(ast.Constant("__main__"))]
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.Module, module: str, *, is_package: bool, known: set[str]) -> set[str]:
    """The ``known`` modules this one imports at run time (at any depth)."""
    names: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and never_runs_on_import(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from pkg import name`` imports pkg.name when that is a module, else pkg.
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return (names & known) - {module}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at run time."""
    files = {module_name(path): path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py")}
    known = set(files)
    return {
        module: imported_modules(
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path)),
            module,
            is_package=path.name == "__init__.py",
            known=known,
        )
        for module, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        if start in done:
            continue
        path.append(start)
        on_path.add(start)
        while stack:
            node, targets = stack[-1]
            if not targets:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            target = targets.pop()
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                stack.append((target, sorted(graph[target])))
                path.append(target)
                on_path.add(target)
    return None


def test_graph_sees_the_packages_imports() -> None:
    """The walker finds known edges (else a passing cycle check would mean nothing)."""
    graph = import_graph()
    assert "monitoring.processes" in graph["monitoring.stack"]
    assert "bench.harness" in graph["bench.run"]
    assert graph["gateway.app"]


def test_walker_finds_a_cycle_and_skips_type_checking() -> None:
    """A loop of imports is a cycle; imports under ``if TYPE_CHECKING:`` or the ``__main__`` guard are not edges."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import b\n"
        "def f():\n    from . import c\n"
        "if __name__ == '__main__':\n    import pkg.b\n"
    )
    tree = ast.parse(source)
    assert imported_modules(tree, "pkg.a", is_package=False, known={"pkg", "pkg.a", "pkg.b", "pkg.c"}) == {"pkg.c"}


def test_no_import_cycles() -> None:
    """No module of gateway/, bench/ or monitoring/ imports itself through others at run time."""
    assert find_cycle(import_graph()) is None
