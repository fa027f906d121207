"""The package's layers, held by its imports: engines above tasks above parts
above config above the base, and no circle at file or package level, counting
imports inside functions too. (import-linter's layers contract says the same;
an AST walk needs no extra tool.)"""

import ast
import os

import pytest

from tests.conftest import ROOT

PACKAGE = os.path.join(ROOT, "mnv3")

# Bottom to top: a module may import its own layer (without a circle) or lower.
LAYERS = [
    ("base", {"errors", "files", "console", "native_output", "tf_internals", "published"}),
    ("config", {"config"}),
    ("parts", {"model", "data", "metrics", "coco", "results", "tflite", "run_dir"}),
    ("tasks", {"tasks"}),
    ("engines", {"training", "export", "budget"}),
    ("cli", {"cli", "summary", "predict", "predict_boxes"}),
]
# Where an mnv3 import may sit inside a function: the cli defers each
# command's stack until that command runs.
DEFERRED_IMPORTS_ALLOWED = {"mnv3.cli"}


def _modules() -> dict[str, str]:
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(module: str, path: str):
    """(imported mnv3 module, line, inside a function) for each import in `path`.
    `from pkg import sub` imports the submodule, as import-linter counts it."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef,
                                                              ast.AsyncFunctionDef))]
    deferred = {id(n) for f in functions for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("mnv3") and name != module:
                yield name, node.lineno, id(node) in deferred


GRAPH = {m: list(_imports(m, p)) for m, p in MODULES.items()}


def _unit(module: str) -> str:
    """The top-level module or package a module belongs to: mnv3.data.masks -> data."""
    if module.endswith(".__main__"):  # `python -m mnv3.x` is a command line
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
    unit = _unit(module)
    if not unit:
        return -1  # the package's own __init__: empty
    levels = [i for i, (_, units) in enumerate(LAYERS) if unit in units]
    assert levels, f"{module}: in no layer; add {unit!r} to LAYERS"
    return levels[0]


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_package():
    assert len(MODULES) > 40 and "mnv3.tasks.classification" in MODULES
    assert ("mnv3.tasks.base", False) in {
        (target, inside) for target, _, inside in GRAPH["mnv3.tasks.classification"]}
    assert ("mnv3.training", True) in {  # the cli's deferred import of an engine
        (target, inside) for target, _, inside in GRAPH["mnv3.cli"]}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_upward(module):
    mine = _layer(module)
    upward = [f"{target} (line {line}, layer {LAYERS[_layer(target)][0]})"
              for target, line, _ in GRAPH[module] if _layer(target) > mine]
    assert not upward, f"{module} (layer {LAYERS[mine][0]}) imports upward: {upward}"


def test_mnv3_imports_sit_at_the_top_of_the_module():
    deferred = [f"{m}:{line} imports {target}" for m, imports in GRAPH.items()
                if m not in DEFERRED_IMPORTS_ALLOWED
                for target, line, inside in imports if inside]
    assert not deferred, deferred


def test_no_import_circle_between_files():
    edges = {m: {t for t, _, _ in imports} for m, imports in GRAPH.items()}
    assert not _circles(edges)


def test_no_import_circle_between_packages():
    edges = {}
    for module, imports in GRAPH.items():
        edges.setdefault(_unit(module), set()).update(
            _unit(t) for t, _, _ in imports if _unit(t) != _unit(module))
    assert not _circles(edges)


def test_only_engines_and_the_cli_look_a_task_up():
    """Parts and tasks are handed the task; `tasks.get` is called above them."""
    callers = set()
    for module, path in MODULES.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "get" and \
                    isinstance(node.value, ast.Name) and node.value.id == "tasks":
                callers.add(_unit(module))
    assert callers and callers <= {"training", "export", "budget", "cli", "summary"}, callers


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
