"""No import circles inside ``src/leanformer``: the layers (schema -> models -> config -> train -> eval -> cli) only
import downwards, so each module can be read, tested and replaced without the ones above it.

How imports are counted (by reading the source with ``ast``, nothing is imported):

- every ``import x`` / ``from x import y`` statement anywhere in a module: at the top, inside functions and methods
  (lazy imports count: a lazy import that closes a circle still ties the two modules together), inside
  ``if TYPE_CHECKING:``; relative imports are resolved;
- ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``;
- importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` and ``a``: those count too, except the packages that
  contain the importing module (Python has started them before the module runs);
- names passed to ``importlib.import_module`` (the model registry's family table) are not imports of the module.

A circle is a strongly connected component of more than one module (Tarjan's algorithm). Run this file as a script
(``python tests/test_import_cycles.py [SRC_DIR]``) to print the components of any tree.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "leanformer"


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every ``.py`` file under package directory ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports, counted as the module docstring says."""
    mods = modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, (path, is_pkg) in mods.items():
        package = m if is_pkg else m.rpartition(".")[0]
        own = set(_ancestors(m))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                mod = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r is None:
                    continue
                if r != m:
                    graph[m].add(r)
                graph[m].update(a for a in _ancestors(r) if a in mods and a not in own and a != m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, each sorted (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "pkg"


def test_counts_lazy_relative_and_package_init_imports(tmp_path):
    """The counting rules find each kind of circle they claim to (so a clean result below means something)."""
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        # a lazy import closing a circle with a top-level one
        "pkg/config.py": "def f():\n    from pkg.models.registry import x\n",
        "pkg/models/__init__.py": "",
        "pkg/models/registry.py": "from pkg.config import y\n",
        # a package __init__ that lazily loads a submodule which imports the package back
        "pkg/tasks/__init__.py": "def load():\n    from pkg.tasks.one import f\n",
        "pkg/tasks/one.py": "from pkg.tasks import Example\n",
        # relative imports, one level up
        "pkg/a.py": "from .b import z\n",
        "pkg/b.py": "def g():\n    from . import a\n",
        # a submodule importing a sibling only touches its own package's __init__: no circle
        "pkg/train/__init__.py": "from pkg.train.loop import run\n",
        "pkg/train/loop.py": "from pkg.train.hooks import Hook\n",
        "pkg/train/hooks.py": "",
    })
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"], ["pkg.config", "pkg.models.registry"],
                                         ["pkg.tasks", "pkg.tasks.one"]]


def test_leanformer_has_no_import_circles():
    """Among them the ones once found here: config <-> models.registry, models.t5 <-> models.t5_convert,
    train.{budgets, rst, trainer, optim, distributed}, and the fine-tuning tasks' package <-> its task modules."""
    found = cycles(import_graph(SRC))
    assert not found, "import circles (strongly connected components): " + "; ".join(" <-> ".join(c) for c in found)


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else SRC
    for comp in cycles(import_graph(root)):
        print(" <-> ".join(comp))
