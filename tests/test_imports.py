"""The core package's rooms: no import cycle between modules of ``pulse/`` or between its subpackages, imports that
only go down the layers, and nothing of the layers built on it (Dagster, FastAPI, the Feast repository).

The graph is read from the source with ``ast``: every import, at module level or inside a function (an import
moved into a function to dodge a cycle is still a dependency), ``from pulse.x import name`` counting as an import
of ``pulse.x.name`` when that is a module. Nothing is imported, so the check takes milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PULSE = Path(__file__).resolve().parent.parent / "pulse"

# Lowest first: a module may import its own layer and the ones below it. ``pulse.data.contract`` (the feature
# contract: names and the 15-minute grain) is its own bottom layer, below ``pulse.settings``, which re-exports
# its BUCKET_MINUTES; the rest of ``pulse.data`` (ingest, trips, simulator) sits with the stores.
LAYERS = (
    ("pulse.data.contract",),
    ("pulse.settings",),
    ("pulse.domain",),
    ("pulse.model",),
    ("pulse.data", "pulse.stores"),
    ("pulse.lifecycle",),
    ("pulse.forecasts",),
)
# Top-level packages of this repository built on pulse (and the frameworks they wrap): pulse imports none.
FORBIDDEN = (
    "feature_repo",
    "pulse_assets",
    "serving",
    "live",
    "intake",
    "decisions",
    "expectations",
    "bench",
    "ops",
    "dagster",
    "fastapi",
    "nats",
)


def module_name(path: Path, root: Path = PULSE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PULSE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported name, line) of every import statement in the file, wherever it stands. Relative imports
    are resolved against ``name``; ``from pkg import mod`` names ``pkg.mod`` when that is a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full if full in known else base, node.lineno))
    return out


def graph(root: Path = PULSE) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """Module → the pulse modules it imports, and module → every import (for the forbidden check)."""
    found = modules(root)
    known = set(found)
    edges: dict[str, set[str]] = {m: set() for m in found}
    everything: dict[str, list[tuple[str, int]]] = {}
    for name, path in found.items():
        everything[name] = imports_of(name, path, known)
        for target, _ in everything[name]:
            # importing pulse.a.b runs pulse.a's __init__ too, which imports nothing (checked below)
            if target in known and target != name:
                edges[name].add(target)
    return edges, everything


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def unit(module: str) -> str:
    """The room of a module: its subpackage (``pulse.model``), or itself for the two bottom ones."""
    for layer in LAYERS:
        for room in sorted(layer, key=len, reverse=True):
            if module == room or module.startswith(room + "."):
                return room
    return module  # pulse itself


def rank(module: str) -> int:
    room = unit(module)
    return next((i for i, layer in enumerate(LAYERS) if room in layer), -1)


def unit_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            if unit(source) != unit(target):
                out.setdefault(unit(source), set()).add(unit(target))
    return out


def test_every_module_parses_and_the_graph_is_not_empty():
    edges, _ = graph()
    assert "pulse.lifecycle.training" in edges and "pulse.model.forecaster" in edges["pulse.lifecycle.training"]


def test_no_import_cycle_between_modules():
    edges, _ = graph()
    assert find_cycle(edges) is None, " → ".join(find_cycle(edges))


def test_no_import_cycle_between_subpackages():
    rooms = unit_edges(graph()[0])
    assert find_cycle(rooms) is None, " → ".join(find_cycle(rooms))


def test_imports_only_go_down_the_layers():
    edges, _ = graph()
    upward = sorted(
        f"{source} imports {target}"
        for source, targets in edges.items()
        for target in targets
        if rank(target) > rank(source)
    )
    assert not upward, "\n".join(upward)


def test_every_module_has_a_room():
    loose = [m for m in modules() if rank(m) < 0 and m != "pulse"]
    assert not loose, f"modules outside the layers of this test: {loose}"


def test_pulse_imports_nothing_built_on_it():
    _, everything = graph()
    bad = sorted(
        f"{module}:{line} imports {target}"
        for module, found in everything.items()
        for target, line in found
        if target.split(".")[0] in FORBIDDEN
    )
    assert not bad, "\n".join(bad)


def test_package_inits_import_nothing():
    """A logged model ships a partial ``pulse`` (``pulse.model.pyfunc.CODE_MODULES``), and importing one module must
    not run a subpackage's worth of code: every ``__init__.py`` of pulse is a docstring."""
    _, everything = graph()
    busy = [m for m, p in modules().items() if p.name == "__init__.py" and everything[m]]
    assert not busy, busy


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.py": "from pulse import b\n", "b.py": "def f():\n    from pulse.a import x\n"}, "module cycle"),
        ({"r1/__init__.py": "", "r1/a.py": "from pulse.r2 import b\n", "r2/__init__.py": "", "r2/b.py": ""}, None),
        (
            {
                "r1/__init__.py": "",
                "r1/a.py": "from pulse.r2 import b\n",
                "r1/c.py": "",
                "r2/__init__.py": "",
                "r2/b.py": "def f():\n    from ..r1 import c\n",
            },
            "room cycle",
        ),
    ],
)
def test_the_check_finds_cycles(tmp_path, files, expected):
    """The checks themselves: a function-level import closing a cycle is found, between modules and between
    subpackages (here with a relative import), and an acyclic package passes."""
    root = tmp_path / "pulse"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    edges, _ = graph(root)
    rooms: dict[str, set[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            a, b = ".".join(source.split(".")[:2]), ".".join(target.split(".")[:2])
            if a != b:
                rooms.setdefault(a, set()).add(b)
    found = "module cycle" if find_cycle(edges) else "room cycle" if find_cycle(rooms) else None
    assert found == expected
