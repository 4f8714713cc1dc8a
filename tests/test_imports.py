"""Imports flow one way (DESIGN.md): no module of the package imports, directly or through others, a module that
imports it back. Imports inside functions count, since a deferred import is still a dependency; only imports under
`if TYPE_CHECKING:` do not, as they never run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from gpt2tui_testkit import child_env

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (setup.py's package_dir).
FOLDERS = {"gpt2tui": "gpt2tui", "kernels": "gpt2tui.kernels", "training": "gpt2tui.training"}
# The `__init__.py` setup.py writes for gpt2tui.kernels re-exports ops.py: importing the package imports ops.
REEXPORTS = {"gpt2tui.kernels": "gpt2tui.kernels.ops"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """{module name: (file, is a package __init__)} for every module the package installs."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            is_init = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return found


def _runtime_imports(tree: ast.AST):
    """Every Import/ImportFrom node, but those inside `if TYPE_CHECKING:` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in skip]


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_init) in modules.items():
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = name.split(".") if is_init else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module
                # `from pkg import sub` imports the submodule `pkg.sub` (pkg's own __init__ counts only when a name
                # is not a submodule: what an importer inside pkg needs from it, pkg has already run).
                subs = [f"{module}.{alias.name}" for alias in node.names]
                targets = [t for t in subs if t in modules]
                if len(targets) < len(subs):
                    targets.append(module)
            targets = [REEXPORTS.get(t, t) for t in targets]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

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


def test_the_walk_sees_the_whole_package():
    graph = import_graph()
    assert {"gpt2tui.cli", "gpt2tui.kernels.ops", "gpt2tui.training.loop", "gpt2tui.tui.app"} <= set(graph)
    assert "gpt2tui.kernels.ops" in graph["gpt2tui.model"]  # through the package's re-export
    assert "gpt2tui.kernels.attention" in graph["gpt2tui.kernels.library"]  # a deferred import counts


def test_the_walk_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_the_package():
    assert cycles(import_graph()) == []


def test_loading_a_model_pulls_in_neither_triton_nor_dynamo():
    """Importing the model (as every load does) must not import torch._dynamo or Triton: the first costs seconds and
    memory on every `gpt2tui` run, and the second, once imported, fixes whether kernels run in the interpreter before
    a test can choose (kernels/conftest.py). A fresh process, so nothing imported by other tests counts."""
    code = ("import sys, gpt2tui.model, gpt2tui.weights, gpt2tui.generate; "
            "print(sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True)
    assert run.stdout.strip() == "[]"
