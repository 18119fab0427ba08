"""No import cycles: in ``src/kmq`` and among the quality benchmark's scripts.

Every import counts, at module level or inside a function (a lazy import still ties the two
modules together), except those under ``if TYPE_CHECKING:``, which never run. A package's
``__init__`` and its submodules are separate nodes, so a submodule that imports from its own
package while the package imports it is a cycle too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module under ``root`` by its dotted name (``package`` itself for its
    ``__init__``; ``package=""`` for a folder of scripts that import each other by name)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(p for p in [package, *parts] if p)] = path
    return names


def imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement asks for (``from a import b`` gives ``a.b``, which
    :func:`import_graph` cuts back to the module ``a`` when ``b`` is no module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" if base else alias.name for alias in node.names]


def drop_type_checking(tree: ast.Module) -> None:
    """Empty every ``if TYPE_CHECKING:`` block (its imports never run)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                node.body = []


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules of the same tree it imports."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        drop_type_checking(tree)
        for node in ast.walk(tree):
            for target in imported(node, name, path.name == "__init__.py"):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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


def describe(graph: dict[str, set[str]], cycles: list[list[str]]) -> str:
    return "\n".join(
        f"{member} imports {sorted(graph[member] & set(cycle))}"
        for cycle in cycles
        for member in cycle
    )


@pytest.mark.parametrize(
    ("folder", "package"), [("src/kmq", "kmq"), ("benchmarks/quality", "")], ids=["kmq", "quality"]
)
def test_no_import_cycles(folder: str, package: str) -> None:
    graph = import_graph(ROOT / folder, package)
    assert len(graph) > 3  # the tree was found
    cycles = find_cycles(graph)
    assert not cycles, describe(graph, cycles)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checker_finds_a_planted_lazy_cycle(tmp_path: Path) -> None:
    root = write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "a.py": "from pkg.b import thing\n",
            "b.py": "def thing():\n    from pkg import a\n    return a\n",
            "c.py": "import pkg.a\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_checker_resolves_relative_imports_and_packages(tmp_path: Path) -> None:
    root = write(
        tmp_path / "pkg",
        {
            "__init__.py": "from .sub import VALUE\n",
            "sub/__init__.py": "from .leaf import VALUE\n",
            "sub/leaf.py": "from .. import pkg_helper\nVALUE = 1\n",
            "pkg_helper.py": "",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg"] == {"pkg.sub"}
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg.pkg_helper"}
    assert find_cycles(graph) == []


def test_checker_finds_package_init_cycles_and_skips_type_checking(tmp_path: Path) -> None:
    root = write(
        tmp_path / "pkg",
        {
            "__init__.py": "def get():\n    from pkg.plugin import Plugin\n    return Plugin\n",
            "plugin.py": "from pkg import shared\n",
            "shared.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.plugin import P\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.shared"] == set()
    assert find_cycles(graph) == []
    write(root, {"plugin.py": "from pkg import get\n"})
    assert find_cycles(import_graph(root, "pkg")) == [["pkg", "pkg.plugin"]]


def test_checker_reads_a_folder_of_scripts(tmp_path: Path) -> None:
    root = write(
        tmp_path, {"harness.py": "import evaluate\n", "evaluate.py": "from harness import X\n"}
    )
    assert find_cycles(import_graph(root, "")) == [["evaluate", "harness"]]
