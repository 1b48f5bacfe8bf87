"""The layers of DESIGN.md, enforced: every import of the plugin's own modules goes downwards,
nothing imports in a circle, and the pure engine stays free of QGIS and (at import) of torch.

    models (torch only) → core (GDAL, numpy; may use models) → adapter (QGIS layers → GDAL
    sources, styling) → algorithms | ui (use adapter, core, models; never each other) → plugin.py

Every module of the plugin is parsed with `ast` (nothing is imported). All imports count:
top level, inside functions ("lazy": they run later, but they run) and under
`if TYPE_CHECKING:`. Choice for TYPE_CHECKING imports: they count for the layering (a type
named from a higher layer is still a dependency on it) but not for the cycle check, because they
never execute and cannot cause an import-order failure; the graph of real imports must be acyclic.
"""

from __future__ import annotations

import ast
import os
import shutil
from dataclasses import dataclass

import pytest

from tests.support.helpers import REPO

pytestmark = pytest.mark.core

# The layer of each part of the package, and the layers each may import (its own included).
LAYER_OF = {
    "models": "models",
    "core": "core",
    "adapter": "adapter",
    "algorithms": "algorithms",
    "ui": "ui",
    "plugin.py": "plugin",
    "__init__.py": "plugin",
}
ALLOWED = {
    "models": {"models"},
    "core": {"core", "models"},
    "adapter": {"adapter", "core", "models"},
    "algorithms": {"algorithms", "adapter", "core", "models"},
    "ui": {"ui", "adapter", "core", "models"},
    "plugin": {"plugin", "ui", "algorithms", "adapter", "core", "models"},
}
# Third-party packages a layer must never import, anywhere (not even lazily).
BANNED = {"models": {"qgis", "PyQt5", "processing", "osgeo"}, "core": {"qgis", "PyQt5", "processing"}}
# torch and friends at module level only here: everything else imports them when work starts,
# so QGIS starts and the plugin loads without them.
HEAVY = {"torch", "onnx", "onnxruntime", "torchvision", "timm"}
HEAVY_AT_IMPORT_OK = {
    "models/layers.py",
    "models/deeplab.py",
    "models/export.py",
    "models/unet.py",
    "models/unetpp.py",
    "models/receptive.py",
    "models/fcn.py",
    "models/resnet.py",
    "core/losses.py",
}
NOT_PLUGIN = {"tests", "scripts", "benchmarks", "docs", "icons", "dist"}  # folders outside the package


@dataclass(frozen=True)
class Edge:
    src: str  # file, relative to the package root: core/grid.py
    dst: str  # the imported module's file, or a third-party top-level name
    line: int
    kind: str  # "top" (runs at import), "lazy" (inside a function), "typing" (under TYPE_CHECKING)
    ours: bool


def package_files(root: str) -> list[str]:
    files = []
    for folder, dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and not d.startswith("__") and not (rel == "." and d in NOT_PLUGIN)
        ]
        files += [
            os.path.normpath(os.path.join(rel, n)).replace(os.sep, "/")
            for n in names
            if n.endswith(".py") and not (rel == "." and n == "resources.py")
        ]  # generated
    return sorted(files)


def module_name(path: str) -> str:
    """core/grid.py → core.grid; core/__init__.py → core; __init__.py → '' (the package itself)."""
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """(node, kind) for every import statement, with where it sits."""

    def walk(node, kind):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, kind
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, "typing" if kind == "typing" else "lazy")
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), "typing")
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), kind)
            else:
                yield from walk(child, kind)

    yield from walk(tree, "top")


# Complexity kept: one AST walk that sorts every import form (absolute, relative, from-import, typing-only,
# lazy).
def import_edges(root: str) -> tuple[list[Edge], list[str]]:  # noqa: C901
    """Every import of every package module; and the imports of ours that name no module."""
    files = package_files(root)
    by_module = {module_name(f): f for f in files}
    edges, unresolved = [], []

    def ours(target: str, names: list[str], src: str, line: int, kind: str) -> None:
        for name in names or [None]:
            sub = f"{target}.{name}".lstrip(".") if name else None
            if sub is not None and sub in by_module:
                edges.append(Edge(src, by_module[sub], line, kind, True))
            elif target in by_module:
                edges.append(Edge(src, by_module[target], line, kind, True))
            else:
                unresolved.append(f"{src}:{line}: {target or '(package)'}{'.' + name if name else ''}")

    for path in files:
        tree = ast.parse(open(os.path.join(root, path), encoding="utf-8").read(), path)
        module = module_name(path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        for node, kind in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "geoseg" or alias.name.startswith("geoseg."):
                        ours(alias.name[len("geoseg.") :] if "." in alias.name else "", [], path, node.lineno, kind)
                    else:
                        edges.append(Edge(path, alias.name.split(".")[0], node.lineno, kind, False))
            elif node.level == 0:
                if node.module == "geoseg" or node.module.startswith("geoseg."):
                    target = node.module[len("geoseg.") :] if "." in node.module else ""
                    ours(target, [a.name for a in node.names], path, node.lineno, kind)
                else:
                    edges.append(Edge(path, node.module.split(".")[0], node.lineno, kind, False))
            else:
                base = package.split(".") if package else []
                if node.level - 1 > len(base):
                    unresolved.append(f"{path}:{node.lineno}: relative import beyond the package")
                    continue
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                ours(target, [a.name for a in node.names], path, node.lineno, kind)
    return edges, unresolved


def layer(path: str) -> str | None:
    return LAYER_OF.get(path.split("/")[0])


# Complexity kept: Tarjan's strongly connected components, kept as the textbook iteration.
def cycles(edges: list[Edge]) -> list[list[str]]:  # noqa: C901
    """Strongly connected components of more than one module (or a module importing itself) in
    the graph of imports that execute (Tarjan), each as a sorted list of files."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.ours and e.kind != "typing":
            graph.setdefault(e.src, set()).add(e.dst)
            graph.setdefault(e.dst, set())
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(found)


def violations(root: str, extra: list[Edge] = ()) -> list[str]:
    """Every breach of the layering, as one line each (empty when the package is in order)."""
    edges, unresolved = import_edges(root)
    edges += list(extra)
    problems = [f"unresolved import {u}" for u in unresolved]
    files = package_files(root)
    problems += [f"{f}: not in any layer (add its folder to LAYER_OF)" for f in files if layer(f) is None]
    for e in edges:
        src = layer(e.src)
        if src is None:
            continue
        if e.ours:
            dst = layer(e.dst)
            if dst not in ALLOWED[src]:
                problems.append(f"{e.src}:{e.line}: {src} may not import {dst} ({e.dst}, {e.kind} import)")
        elif e.dst in BANNED.get(src, ()):
            problems.append(f"{e.src}:{e.line}: {src} may not import {e.dst} ({e.kind} import)")
    # torch only when work starts: a module importing torch at its top, or a module that does
    # at its own top, is heavy; only the network modules and the losses may be.
    heavy = {e.src for e in edges if not e.ours and e.kind == "top" and e.dst in HEAVY}
    grew = True
    while grew:
        more = {e.src for e in edges if e.ours and e.kind == "top" and e.dst in heavy} - heavy
        heavy |= more
        grew = bool(more)
    problems += [
        f"{f}: imports torch/onnx/onnxruntime at module level (directly or through another "
        "module); import it inside the function that needs it"
        for f in sorted(heavy - HEAVY_AT_IMPORT_OK)
    ]
    problems += ["import cycle: " + " ↔ ".join(c) for c in cycles(edges)]
    return problems


# ---------------------------------------------------------------- the package as it is
def test_layers_are_respected_and_acyclic():
    problems = violations(REPO)
    assert problems == [], "\n".join(problems)


def test_every_package_module_is_checked():
    files = package_files(REPO)
    edges, _ = import_edges(REPO)
    assert {
        "plugin.py",
        "__init__.py",
        "core/train.py",
        "models/registry.py",
        "adapter/layers.py",
        "adapter/style.py",
        "algorithms/segment.py",
        "ui/segment_dialog.py",
    } <= set(files)
    assert not [f for f in files if f.split("/")[0] in NOT_PLUGIN]
    kinds = {e.kind for e in edges if e.ours}
    assert kinds == {"top", "lazy", "typing"}  # all three kinds are seen (and so are checked)


def test_core_and_models_import_no_qgis():
    """Kept from the former test in test_core_style.py: the engine runs in a plain Python."""
    edges, _ = import_edges(REPO)
    offenders = [
        f"{e.src}:{e.line}: {e.dst}"
        for e in edges
        if not e.ours and layer(e.src) in ("core", "models") and e.dst in ("qgis", "processing", "PyQt5")
    ]
    assert offenders == []


def test_models_import_nothing_of_core():
    edges, _ = import_edges(REPO)
    assert [e for e in edges if e.ours and layer(e.src) == "models" and layer(e.dst) != "models"] == []


# ---------------------------------------------------------------- the checker catches breaches
def new_violations(root: str) -> list[str]:
    """What the edit made to the copy at `root` added to the package's own report (so these
    tests prove the checker whatever state the rest of the package is in)."""
    before = violations(REPO)
    return [p for p in violations(root) if p not in before]


def _copy_package(tmp_path) -> str:
    root = str(tmp_path / "geoseg")
    for f in package_files(REPO):
        os.makedirs(os.path.join(root, os.path.dirname(f)), exist_ok=True)
        shutil.copy(os.path.join(REPO, f), os.path.join(root, f))
    return root


def test_a_back_edge_is_reported_with_its_cycle(tmp_path):
    """core/errors.py importing algorithms/base.py (which imports core/errors.py): a layering
    breach and a cycle, even though the import sits inside a function."""
    root = _copy_package(tmp_path)
    with open(os.path.join(root, "core", "errors.py"), "a", encoding="utf-8") as f:
        f.write(
            "\n\ndef _back_edge():\n    from ..algorithms.base import GeoSegAlgorithm\n" "    return GeoSegAlgorithm\n"
        )
    problems = new_violations(root)
    print("\n".join(problems))  # quoted in the review: what a breach looks like
    assert any(
        p.startswith("core/errors.py:") and "core may not import algorithms (algorithms/base.py, lazy import)" in p
        for p in problems
    ), problems
    assert any(
        p.startswith("import cycle: ") and "algorithms/base.py" in p and "core/errors.py" in p for p in problems
    ), problems


def test_a_synthetic_edge_is_reported():
    """core/grid.py → algorithms/base.py fed to the checker directly."""
    problems = [
        p
        for p in violations(REPO, [Edge("core/grid.py", "algorithms/base.py", 1, "top", True)])
        if p not in violations(REPO)
    ]
    assert problems == ["core/grid.py:1: core may not import algorithms (algorithms/base.py, top import)"]


def test_type_checking_imports_count_for_layers_not_cycles(tmp_path):
    root = _copy_package(tmp_path)
    with open(os.path.join(root, "core", "errors.py"), "a", encoding="utf-8") as f:
        f.write(
            "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
            "    from ..algorithms.base import GeoSegAlgorithm\n"
        )
    problems = new_violations(root)
    assert len(problems) == 1 and "core may not import algorithms (algorithms/base.py, typing import)" in problems[0]


def test_ui_and_algorithms_do_not_import_each_other(tmp_path):
    root = _copy_package(tmp_path)
    with open(os.path.join(root, "ui", "tasks.py"), "a", encoding="utf-8") as f:
        f.write("\nfrom geoseg.algorithms.provider import GeoSegProvider\n")
    assert any("ui may not import algorithms (algorithms/provider.py, top import)" in p for p in new_violations(root))


def test_torch_at_module_level_is_reported(tmp_path):
    root = _copy_package(tmp_path)
    with open(os.path.join(root, "core", "grid.py"), "a", encoding="utf-8") as f:
        f.write("\nfrom .losses import build_loss\n")
    problems = new_violations(root)
    assert any(p.startswith("core/grid.py: imports torch") for p in problems), problems


def test_stale_imports_are_reported(tmp_path):
    root = _copy_package(tmp_path)
    with open(os.path.join(root, "ui", "tasks.py"), "a", encoding="utf-8") as f:
        f.write("\nfrom .sources import raster_source\n")
    assert any(p.startswith("unresolved import ui/tasks.py:") and "ui.sources" in p for p in new_violations(root))
