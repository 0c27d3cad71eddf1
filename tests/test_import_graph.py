"""The package's import graph: no cycles anywhere, and the library core never imports the experiments app.

The graph is read from the source with ``ast`` (module-level and function-level imports alike, so an import
moved into a function to dodge a cycle still counts), over every ``.py`` file of ``sigreg_hf``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "sigreg_hf"
APP = "sigreg_hf.experiments"

#: Edges allowed although they break the rules below: none.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path) -> set[str]:
    """Every ``sigreg_hf`` name ``module`` imports, wherever the import statement sits."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {n for n in names if n == "sigreg_hf" or n.startswith("sigreg_hf.")}


def import_graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """``module -> imported modules`` and the edges to ``sigreg_hf`` names that do not exist."""
    modules = package_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    missing: set[tuple[str, str]] = set()
    for module, path in modules.items():
        for name in imports_of(module, path):
            target = resolve(name, modules)
            if target is None:
                missing.add((module, name))
            elif target != module:
                graph[module].add(target)
                graph[module].update(entered_packages(module, target, modules))
    return graph, missing


def entered_packages(importer: str, target: str, modules: dict[str, Path]) -> set[str]:
    """The packages whose ``__init__`` runs first when ``importer`` imports ``target``: ``a.b`` for ``a.b.c``,
    unless ``importer`` lives inside ``a.b`` (then ``a.b`` is already being imported). The root ``sigreg_hf``
    is left out: every module is inside it."""
    parts = target.split(".")
    packages = {".".join(parts[:end]) for end in range(2, len(parts))}
    return {p for p in packages if p in modules and p != importer and not importer.startswith(p + ".")}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def is_app(module: str) -> bool:
    return module == APP or module.startswith(APP + ".")


def test_the_graph_sees_the_package():
    graph, _ = import_graph()
    assert {"sigreg_hf.trainer", "sigreg_hf.losses", "sigreg_hf.experiments.cli"} <= set(graph)
    assert "sigreg_hf.losses" in graph["sigreg_hf.trainer"] or "sigreg_hf.taps" in graph["sigreg_hf.trainer"]
    assert "sigreg_hf.trainer" in graph["sigreg_hf.experiments.cli_train"]


def test_no_import_cycles():
    graph, _ = import_graph()
    assert find_cycles(graph) == []


def test_every_sigreg_hf_import_names_a_module_that_exists():
    _, missing = import_graph()
    assert missing - KNOWN_EXCEPTIONS == set(), "stale import paths (a module moved?)"


def test_core_never_imports_the_app():
    graph, _ = import_graph()
    edges = {(m, t) for m, targets in graph.items() if not is_app(m) for t in targets if is_app(t)}
    assert edges == set()


def test_a_package_init_is_an_edge_for_importers_outside_the_package():
    modules = dict.fromkeys(["sigreg_hf", "sigreg_hf.a", "sigreg_hf.a.b", "sigreg_hf.a.b.c", "sigreg_hf.x"], Path())
    assert entered_packages("sigreg_hf.x", "sigreg_hf.a.b.c", modules) == {"sigreg_hf.a", "sigreg_hf.a.b"}
    assert entered_packages("sigreg_hf.a.b.d", "sigreg_hf.a.b.c", modules) == set()


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("from . import losses", "sigreg_hf.trainer", {"sigreg_hf", "sigreg_hf.losses"}),
        ("def f():\n    from ..config import X", "sigreg_hf.experiments.cli",
         {"sigreg_hf.config", "sigreg_hf.config.X"}),
        ("import sigreg_hf.models as m", "sigreg_hf.taps", {"sigreg_hf.models"}),
    ],
)
def test_imports_of_reads_relative_and_function_level_imports(tmp_path, source, module, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports_of(module, path) == expected


def test_importing_the_core_loads_no_app_module():
    """At run time too (the root package's lazy attributes go through importlib, which ast cannot see)."""
    code = (
        "import sys, sigreg_hf\n"
        "from sigreg_hf import SIGRegConfig, SIGRegTrainer, SIGRegulariser, SIGRegMonitorCallback\n"
        "import sigreg_hf.models, sigreg_hf.reference\n"
        "print(sorted(m for m in sys.modules if m.startswith('sigreg_hf.experiments')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert proc.stdout.strip() == "[]"
