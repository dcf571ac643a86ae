"""The package's import graph has no cycles: every `import` of a `ccpo_pl` module, at module level or inside a
function, relative or absolute, read with `ast` (so imports deferred into functions cannot hide a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import ccpo_pl

PACKAGE_DIR = Path(ccpo_pl.__file__).parent
PACKAGE = "ccpo_pl"



def module_name(path: Path) -> str:
    parts = (PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules of `known` that module `name` (file `path`) imports anywhere in its body, at module level or in
    a function (a package counts as its `__init__`; the packages the module is inside of are left out)."""
    package = name if is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import name`: the submodule pkg.name where it is one, else pkg itself
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith(PACKAGE):
                continue
            while target not in known and "." in target:  # `import a.b.c` of an attribute path: its module
                target = target.rpartition(".")[0]
            # importing a.b.c also runs the packages a.b on the way, except those the importer is inside of
            parts = target.split(".")
            parents = {".".join(parts[:i]) for i in range(2, len(parts))} - {package, *ancestors(package)}
            found |= ({target} | parents) & known
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, module_name(f), known) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [m0, m1, ..., m0], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_walk_sees_function_level_and_relative_imports_and_names_a_cycle(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    pkg = tmp_path / "ccpo_pl" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from . import y\n    import ccpo_pl.other\n")
    (pkg / "z.py").write_text("from ..other.deep import f\nfrom ccpo_pl.sub import x\n")
    known = {"ccpo_pl", "ccpo_pl.sub", "ccpo_pl.sub.x", "ccpo_pl.sub.y", "ccpo_pl.sub.z", "ccpo_pl.other",
             "ccpo_pl.other.deep"}
    assert imported_modules(pkg / "x.py", "ccpo_pl.sub.x", known) == {"ccpo_pl.sub.y", "ccpo_pl.other"}
    assert imported_modules(pkg / "z.py", "ccpo_pl.sub.z", known) == {"ccpo_pl.other", "ccpo_pl.other.deep",
                                                                       "ccpo_pl.sub.x"}


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "ccpo_pl.algos.registry" in graph and graph["ccpo_pl.algos.registry"]  # the walk sees the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
