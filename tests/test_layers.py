"""The import contract of ``lib/hfray``: layers, no circles, no private names across modules (docs/design.md).

Read from the source with ``ast`` (nothing is imported), so every import counts, function-local ones included;
imports under ``if TYPE_CHECKING:`` are annotations, not imports, and are left out. Layers, lowest first: a
module may import its own package and lower layers, never a higher layer or a peer package of its own layer.
Inside ``hfray.train`` the lifecycle sits below the recipes, and ``hfray.train.run`` (the entry point) on top.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"

LAYERS: list[tuple[str, ...]] = [
    ("hfray", "hfray.errors", "hfray.timeline", "hfray.assets"),  # stdlib only
    ("hfray.config", "hfray.storage"),
    ("hfray.data", "hfray.model"),
    ("hfray.artifacts", "hfray.cluster"),
    ("hfray.train",),
    ("hfray.tune", "hfray.serving"),
    ("hfray.cli",),
    ("hfray.__main__",),
]
# Within hfray.train: the lifecycle (everything else) < the recipes < the entry point.
TRAIN_RECIPES, TRAIN_ENTRY = "hfray.train.recipes", "hfray.train.run"
RECIPE_PROTOCOL = ("hfray.train.recipes", "hfray.train.recipes.base")  # the table and the protocol: lifecycle-level


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    names: tuple[str, ...]  # names imported from the target (``from x import a, b``)


def module_files(root: Path = LIB) -> dict[str, Path]:
    found = {}
    for path in sorted((root / "hfray").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(modules: dict[str, Path]) -> list[Edge]:
    edges = []
    for source, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_lines(tree)
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                edges += [Edge(source, t, node.lineno, ()) for a in node.names if (t := _resolve(a.name, modules))]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}".rstrip(".")
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:  # ``from package import module``
                        edges.append(Edge(source, full, node.lineno, ()))
                    elif target := _resolve(base, modules):
                        edges.append(Edge(source, target, node.lineno, (alias.name,)))
    return [e for e in edges if e.source != e.target]


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the layer entry the module belongs to): the longest entry that is the module or its parent."""
    best = (-1, "")
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > len(best[1]):
                best = (i, entry)
    return best


def layer_problems(edges: list[Edge]) -> list[str]:
    problems = []
    for e in edges:
        (src_layer, src_pkg), (dst_layer, dst_pkg) = layer_of(e.source), layer_of(e.target)
        if src_layer < 0 or dst_layer < 0:
            problems.append(f"{e.source}:{e.line} imports {e.target}: a module outside the layers in LAYERS")
        elif dst_layer > src_layer:
            problems.append(f"{e.source}:{e.line} imports {e.target}: an upward import ({src_pkg} < {dst_pkg})")
        elif dst_layer == src_layer and dst_pkg != src_pkg and dst_pkg != "hfray":
            problems.append(f"{e.source}:{e.line} imports {e.target}: peer packages of one layer are independent")
        problems += _train_problem(e)
    return problems


def _train_problem(e: Edge) -> list[str]:
    def rank(module: str) -> int:
        if module == TRAIN_ENTRY:
            return 2
        if module.startswith(TRAIN_RECIPES) and module not in RECIPE_PROTOCOL:
            return 1
        return 0

    both_in_train = e.source.startswith("hfray.train.") and e.target.startswith("hfray.train")
    if both_in_train and rank(e.target) > rank(e.source):
        return [
            f"{e.source}:{e.line} imports {e.target}: the lifecycle must not import a recipe, nor a recipe the entry"
        ]
    recipe = [p for p in (e.source, e.target) if rank(p) == 1]
    if len(recipe) == 2 and e.source.split(".")[3] != e.target.split(".")[3]:
        return [f"{e.source}:{e.line} imports {e.target}: recipes are peers"]
    return []


def circles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports(edges: list[Edge], modules: dict[str, Path]) -> list[str]:
    """``from module import _name`` (not a module) across modules, and ``module._name`` on an imported hfray module."""
    problems = [
        f"{e.source}:{e.line} imports {e.target}.{n}"
        for e in edges
        for n in e.names
        if n.startswith("_") and not n.startswith("__")
    ]
    for source, path in modules.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hfray"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            on_module = (
                isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
            )
            if on_module and node.attr.startswith("_") and not node.attr.startswith("__"):
                problems.append(f"{source}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return problems


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = module_files()
    return modules, import_edges(modules)


def test_the_graph_is_read_from_the_whole_package(graph):
    modules, edges = graph
    assert {"hfray.cli", "hfray.train.driver", "hfray.serving.replica.ingress", "hfray.config.job"} <= set(modules)
    # A function-local import counts: the CLI imports the training entry point inside cmd_train.
    assert any(e.source == "hfray.cli.jobs" and e.target == "hfray.train.run" for e in edges)


def test_every_import_goes_down_the_layers(graph):
    assert layer_problems(graph[1]) == []


def test_no_import_circles(graph):
    assert circles(graph[1]) == []


def test_no_module_imports_another_modules_private_names(graph):
    assert private_imports(graph[1], graph[0]) == []


def test_the_contract_fails_on_an_upward_import_a_circle_and_a_private_name(tmp_path):
    """The checks can fail: a copy of the package with one of each mistake is caught by each check."""
    import shutil

    shutil.copytree(LIB / "hfray", tmp_path / "hfray")
    config = tmp_path / "hfray" / "config" / "model.py"
    config.write_text(config.read_text() + "\n\ndef _up():\n    from hfray.train.run import run_training\n")
    data = tmp_path / "hfray" / "data" / "lm.py"
    data.write_text(data.read_text() + "\n\nfrom hfray.data.splits import fingerprint as _fp\n")
    splits = tmp_path / "hfray" / "data" / "splits.py"
    splits.write_text(splits.read_text() + "\n\nfrom hfray.data.lm import _PROBE_TEXTS\n")
    modules = module_files(tmp_path)
    edges = import_edges(modules)
    assert any("hfray.config.model" in p and "upward" in p for p in layer_problems(edges))
    assert ["hfray.data.lm", "hfray.data.splits"] in circles(edges)
    assert any("_PROBE_TEXTS" in p for p in private_imports(edges, modules))
