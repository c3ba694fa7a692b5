"""The package's layers, written once: a module may import from its own layer and the layers below
it, never from above, and no two modules may import each other in a circle (imports inside functions
count too). See the README's Layout section."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PKG = Path(__file__).resolve().parents[1] / "napari_medkd"

# bottom to top; each entry: the module paths (relative to the package) that form the layer
LAYERS: List[List[str]] = [
    ["__init__", "registry", "config", "card", "io"],
    ["metrics"],
    ["data"],
    ["models"],
    ["train", "distill", "teachers"],
    ["inference"],
    ["export"],
    ["analysis"],
    ["workflows"],
    ["cli", "cli_data", "cli_args", "cli_common", "cli_teacher", "cli_quick", "__main__"],
    ["_reader", "_reader_offer", "_writer", "_sample_data", "_widgets"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(mod: str) -> int:
    rel = mod.split(".")[1:] or ["__init__"]
    for i, names in enumerate(LAYERS):
        if rel[0] in names:
            return i
    raise AssertionError(f"module {mod} is in no layer; add its folder to LAYERS in {__file__}")


def import_graph() -> Dict[str, Set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        out: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            out.update(t for t in targets if t.split(".")[0] == "napari_medkd" and t != mod)
        graph[mod] = {t if t in files else t.rsplit(".", 1)[0] for t in out}
    return graph


def test_every_module_is_in_a_layer():
    for mod in import_graph():
        layer_of(mod)


def test_no_import_runs_up_the_layers():
    bad = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
           for m, ts in import_graph().items() for t in sorted(ts)
           if layer_of(t) > layer_of(m) and not m.startswith(t + ".")]  # a package may import its own modules
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), ignoring a package's
    ``__init__`` importing its own modules for re-export."""
    edges = {m: {t for t in ts if t in graph and not t.startswith(m + ".")} for m, ts in graph.items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert not _cycles(import_graph()), f"import circles: {_cycles(import_graph())}"


def test_the_checks_catch_an_upward_import_and_a_circle():
    graph = {"napari_medkd.io.a": {"napari_medkd.workflows.b"}, "napari_medkd.workflows.b": {"napari_medkd.io.a"}}
    assert layer_of("napari_medkd.workflows.b") > layer_of("napari_medkd.io.a")
    assert _cycles(graph) == [["napari_medkd.io.a", "napari_medkd.workflows.b"]]
