"""The package's import graph, read from the source (ast): no loops, the engine imports no app and not the
trainer, the apps do not import each other, and the run vocabulary loads without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "app_gui", "app_tui", "trainer")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports anywhere in its file (lazy imports in functions count:
    a loop through one is still a loop), except under `if TYPE_CHECKING:`."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                ast.unparse(node.test) for n in ast.walk(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                # the longest known module the import names (a name imported from a module counts as the module)
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def crossings(graph: dict[str, set[str]], source: str, forbidden: tuple[str, ...]) -> list[str]:
    """'a -> b' for every import from package `source` into one of the `forbidden` packages."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if a.split(".")[0] == source
                  for b in targets if b.split(".")[0] in forbidden)


def test_the_graph_is_read_whole():
    graph = import_graph()
    # a few edges every reader knows are there, so an empty graph cannot pass the tests below
    assert "engine.run" in graph["engine.pipeline"] and "engine.device" in graph["engine.pipeline"]
    assert "engine.backends.step_dit" in graph["engine.backends.export"]  # `from engine.backends import ...`
    assert "engine.pipeline" in graph["app_tui.worker"]


def test_no_import_loops():
    assert loops(import_graph()) == []


def test_the_loop_finder_finds_a_loop():
    assert loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_engine_imports_no_app_and_not_the_trainer():
    assert crossings(import_graph(), "engine", ("app_gui", "app_tui", "trainer")) == []


def test_the_apps_and_the_trainer_do_not_import_each_other():
    graph = import_graph()
    assert crossings(graph, "app_gui", ("app_tui", "trainer")) == []
    assert crossings(graph, "app_tui", ("app_gui", "trainer")) == []
    assert crossings(graph, "trainer", ("app_gui", "app_tui")) == []


def test_the_run_vocabulary_loads_without_torch():
    """The CLI's --help and the apps' forms read engine.run before torch loads (seconds on a cold start)."""
    code = "import sys, engine.run; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_every_module_opens_with_a_docstring():
    missing = [name for name, path in modules().items()
               if path.stat().st_size and ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) is None]
    assert missing == []
