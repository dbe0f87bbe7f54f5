"""The packages depend on each other one way: no import loops, and engine/ knows nothing of the rest.

Every import counts, also those inside functions: an import moved into a function to dodge a
loop at start-up is still a loop in the design. Imports for type hints only (under
`if TYPE_CHECKING:`) do not.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "fastcodellama", "api")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules `path` imports (for `from a.b import c`: a.b.c when that is a module, else a.b)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            node.body = []  # type-only imports: ast.walk still visits them, so empty the block
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    graph = {}
    for name, path in known.items():
        # A package's __init__ re-exporting its own modules is not a dependency of those modules on it.
        graph[name] = {m for m in _imports(path, known) if not name.startswith(m + ".") and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_loops():
    assert _cycles(_graph()) == []


def test_engine_imports_nothing_of_fastcodellama_or_api():
    bad = {(m, d) for m, deps in _graph().items() if m.split(".")[0] == "engine"
           for d in deps if d.split(".")[0] != "engine"}
    assert not bad


def test_the_loop_finder_finds_loops():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
