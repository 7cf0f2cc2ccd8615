"""The import rules of docs/architecture.md, checked on the source with `ast` (nothing is
imported): which package may import which, no import cycles between files, no saelab import
inside a function, and small modules."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "saelab"

#: the floors, bottom up; a package may import its own floor's allowed neighbours and every
#: floor below it
BASE = {"saelab", "errors", "units", "atomic", "progress", "nospace", "damage"}
LIBRARY = {"data", "stats", "hub", "store", "models", "budget", "sae", "patch"}
RUN = {"run"}
ANALYSIS = {"inspect", "report", "exports", "verify"}  # read what stages wrote
PIPELINE = {"pipeline"}
CLI = {"cli", "cli_params", "__main__"}
#: imports allowed between library packages (everything else there is base only)
LIBRARY_NEIGHBOURS = {
    "budget": {"models"},
    "sae": {"models", "hub", "data"},
    "patch": {"models", "sae"},
}


def allowed(src: str, dst: str) -> bool:
    if src == dst or dst in BASE:
        return True
    if src in BASE:
        return dst in BASE
    if src in LIBRARY:
        return dst in LIBRARY_NEIGHBOURS.get(src, set())
    if src in RUN:
        return False
    if src in ANALYSIS:
        return dst in LIBRARY | RUN | ANALYSIS
    if src in PIPELINE:
        return dst in LIBRARY | RUN | ANALYSIS
    return src in CLI  # the command line may use anything


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "saelab"


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(SRC.rglob("*.py"))}


def target(node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """The saelab modules an import statement reads (the longest known prefix of each)."""
    names = []
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("saelab") and name not in out:
            out.append(name)
    return out


def function_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def file_level_graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> saelab modules it imports when it is loaded (not under TYPE_CHECKING)."""
    known = set(trees)
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, tree in trees.items():
        for node in tree.body:
            body = [node]
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                body = list(ast.walk(node))
            for n in body:
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    graph[mod] |= {t for t in target(n, known) if t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_each_package_imports_only_what_its_floor_allows():
    trees = modules()
    known = set(trees)
    bad = []
    for mod, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in target(node, known):
                    if not allowed(package(mod), package(t)):
                        bad.append(f"{mod}:{node.lineno} imports {t}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_files():
    assert cycles(file_level_graph(modules())) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: the one deferred import: `saelab.store.TraceDataset` needs torch, the numpy readers of the
#: store must not pay for it (a module `__getattr__`, PEP 562)
DEFERRED = {("saelab.store", "saelab.store.trace_dataset")}


def test_no_saelab_import_inside_a_function():
    trees = modules()
    known = set(trees)
    bad = [
        f"{mod}:{node.lineno} imports {t} inside a function"
        for mod, tree in trees.items()
        for node in function_imports(tree)
        for t in target(node, known)
        if (mod, t) not in DEFERRED
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: module_name(p))
def test_modules_stay_small(path: Path):
    assert len(path.read_text().splitlines()) <= 400, f"{path.name}: split it by job"
