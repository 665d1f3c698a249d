"""Everything is wired in the factory: no component assigns a callable or a field onto another after construction."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
# What a route carries. Each changes only through its own methods (the flag's probe_started, the lease's
# hold...), so a field written from outside them is a second writer the owner does not know about.
COLLABORATORS = frozenset({"flag", "breaker", "prober", "lease", "client", "events", "metrics"})


def _targets(tree: ast.AST) -> list[tuple[int, ast.Attribute, ast.expr | None]]:
    """Every attribute assigned in ``tree``: (line, target, the value assigned, when there is one)."""
    found: list[tuple[int, ast.Attribute, ast.expr | None]] = []
    for node in ast.walk(tree):
        value: ast.expr | None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            parts = target.elts if isinstance(target, ast.Tuple) else [target]
            found.extend((node.lineno, part, value) for part in parts if isinstance(part, ast.Attribute))
    return found


def _owner(target: ast.Attribute) -> str | None:
    """The name of the object whose attribute is assigned (``x`` in ``a.x.y = ...``), without leading underscores."""
    value = target.value
    if isinstance(value, ast.Name):
        return value.id.lstrip("_")
    if isinstance(value, ast.Attribute):
        return value.attr.lstrip("_")
    return None


def _is_callable(value: ast.expr | None) -> bool:
    """A lambda or a functools.partial: the shape of a callable wired in after construction."""
    if isinstance(value, ast.Lambda):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        return name == "partial"
    return False


def violations(root: Path) -> list[str]:
    """Every assignment under ``root`` that wires one component into another after construction."""
    found = []
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root.parent).as_posix()
        for line, target, value in _targets(ast.parse(path.read_text(), filename=str(path))):
            owner = _owner(target)
            if owner == "self":
                continue  # an object setting its own fields
            if target.attr == "may_probe":
                found.append(f"{where}:{line}: assigns may_probe (the probe lease is passed to the Prober)")
            elif owner in COLLABORATORS:
                found.append(f"{where}:{line}: assigns {owner}.{target.attr} from outside its class")
            elif _is_callable(value):
                found.append(f"{where}:{line}: assigns a callable to {ast.unparse(target)}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
                obj, name = node.args[0], node.args[1]
                named = obj.id if isinstance(obj, ast.Name) else obj.attr if isinstance(obj, ast.Attribute) else ""
                if named.lstrip("_") in COLLABORATORS or (isinstance(name, ast.Constant) and name.value == "may_probe"):
                    found.append(f"{where}:{node.lineno}: setattr on {ast.unparse(obj)}")
    return found


def test_nothing_is_wired_after_construction() -> None:
    """No module assigns may_probe, a route collaborator's field or a lambda/partial onto another object."""
    assert violations(GATEWAY) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("share.route.prober.may_probe = functools.partial(f, share)", "assigns may_probe"),
        ("self._flag.next_probe_at = self._clock() + delay", "assigns flag.next_probe_at"),
        ("self._flag.probing = True", "assigns flag.probing"),
        ("route.lease.held = True", "assigns lease.held"),
        ("other.on_done = lambda: None", "assigns a callable to other.on_done"),
        ("setattr(route.prober, 'may_probe', f)", "setattr on route.prober"),
        ("setattr(stats, counter, 1)", ""),
        ("a.b, self.c = 1, 2", ""),
        ("self._probing = True", ""),
    ],
)
def test_the_check_finds_the_old_wiring(tmp_path: Path, source: str, expected: str) -> None:
    """The check names each kind of outside assignment (the shapes main had) and lets an object set its own fields."""
    package = tmp_path / "gateway"
    package.mkdir()
    (package / "module.py").write_text(source + "\n")
    found = violations(package)
    assert len(found) == (1 if expected else 0), found
    assert all(expected in violation for violation in found)
