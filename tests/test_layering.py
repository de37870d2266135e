"""The ``custom`` package's layering (issue #14 item 4): imports flow down only, and no module imports cycle.

Every module of ``custom/`` is parsed with :mod:`ast` (nothing is imported), mapped to its layer, and every
``import custom...`` / ``from custom... import`` / relative import in it (at module level or inside a function,
a lazy import is still a dependency) is checked against the layer table below.
"""

from __future__ import annotations

import ast
import os
import unittest
from collections.abc import Mapping

from parameterized import parameterized

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "custom")

# module or package prefix -> layer (1 = bottom); the longest matching prefix wins
LAYERS: dict[str, int] = {
    "custom": 0,  # the package's own __init__ (version only)
    "custom.settings": 1,
    "custom.io": 1,
    "custom.data": 2,
    "custom.transforms": 3,
    "custom.networks": 4,
    "custom.losses": 4,
    "custom.engines": 5,
    "custom.handlers": 5,
    "custom.metrics": 5,
    "custom.inference": 6,
    "custom.evaluation": 6,
    "custom.export": 6,
    "custom.tools": 7,
}


def module_files(root: str = ROOT) -> dict[str, str]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (packages by their ``__init__``)."""
    found = {}
    base = os.path.dirname(root)
    for folder, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, f), base)[: -len(".py")].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found[".".join(rel)] = os.path.join(folder, f)
    return found


def layer_of(module: str) -> int | None:
    """The layer of a dotted ``custom`` module name (None: in no layer of the table)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS and (n > 1 or len(parts) == 1):
            return LAYERS[prefix]
    return None


def imported_modules(module: str, path: str, known: Mapping[str, str]) -> list[tuple[str, int]]:
    """The ``custom`` modules ``module`` imports (known modules only, deepest that exists) with line numbers."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import submodule` depends on the submodule; `from pkg import name` on the package
            subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known]
            targets = subs if subs and len(subs) == len(node.names) else [source] + subs
        for t in targets:
            if t != "custom" and not t.startswith("custom."):
                continue
            parts = t.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts:
                out.append((".".join(parts), node.lineno))
    return out


def import_graph(root: str = ROOT) -> dict[str, list[tuple[str, int]]]:
    files = module_files(root)
    return {m: imported_modules(m, p, files) for m, p in sorted(files.items())}


def layer_violations(graph: Mapping[str, list[tuple[str, int]]]) -> list[str]:
    """Messages for modules in no layer and imports from a layer above the importer's."""
    problems = []
    for module, imports in graph.items():
        own = layer_of(module)
        if own is None:
            problems.append(f"{module}: in no layer of tests/test_layering.py LAYERS (see /work/notes/layers.md)")
            continue
        for target, line in imports:
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                problems.append(f"{module} (layer {own}) line {line} imports {target} (layer {theirs}, above it)")
    return problems


def import_cycles(graph: Mapping[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (or a module importing itself), Tarjan's algorithm."""
    edges = {m: sorted({t for t, _ in imps if t in graph}) for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges[v]:
                cycles.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


def describe_cycle(group: list[str], graph: Mapping[str, list[tuple[str, int]]]) -> str:
    members = set(group)
    links = sorted({f"{m} line {line} -> {t}" for m in group for t, line in graph[m] if t in members})
    return "import cycle between " + ", ".join(group) + ": " + "; ".join(links)


def _write(root: str, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


class TestLayering(unittest.TestCase):
    maxDiff = None

    def test_every_module_imports_down_only(self):
        graph = import_graph()
        self.assertIn("custom.data.readers", graph)
        problems = layer_violations(graph)
        self.assertEqual(problems, [], "\n".join(problems))

    def test_no_import_cycles(self):
        graph = import_graph()
        cycles = [describe_cycle(g, graph) for g in import_cycles(graph)]
        self.assertEqual(cycles, [], "\n".join(cycles))


class TestLayeringChecker(unittest.TestCase):
    """The checker itself, on small synthetic packages (a checker that sees nothing would pass any tree)."""

    def _graph(self, files: Mapping[str, str]) -> dict[str, list[tuple[str, int]]]:
        import tempfile

        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        _write(tmp.name, files)
        return import_graph(os.path.join(tmp.name, "custom"))

    @parameterized.expand(
        [
            ("absolute", "from custom.inference.restore import load\n"),
            ("plain", "import custom.inference.restore\n"),
            ("lazy", "def f():\n    from custom.inference import restore\n"),
            ("package", "from custom.inference import load\n"),
        ]
    )
    def test_upward_import_is_named(self, _, source):
        graph = self._graph(
            {
                "custom/__init__.py": "",
                "custom/data/__init__.py": "",
                "custom/data/readers.py": source,
                "custom/inference/__init__.py": "",
                "custom/inference/restore.py": "from custom.data.readers import x\n",
            }
        )
        problems = layer_violations(graph)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("custom.data.readers (layer 2)", problems[0])
        self.assertIn("custom.inference", problems[0])

    def test_downward_and_same_layer_imports_pass(self):
        graph = self._graph(
            {
                "custom/__init__.py": "",
                "custom/io.py": "",
                "custom/handlers/__init__.py": "from .stats import a\n",
                "custom/handlers/stats.py": "from custom.io import w\nfrom custom.metrics.m import b\n",
                "custom/metrics/__init__.py": "",
                "custom/metrics/m.py": "import os\nfrom custom import io\n",
            }
        )
        self.assertEqual(layer_violations(graph), [])
        self.assertEqual(import_cycles(graph), [])

    def test_module_outside_the_layers_is_named(self):
        graph = self._graph({"custom/__init__.py": "", "custom/demo.py": "", "custom/io.py": ""})
        self.assertEqual(len(layer_violations(graph)), 1)
        self.assertIn("custom.demo", layer_violations(graph)[0])

    def test_cycle_is_found_with_its_lines(self):
        graph = self._graph(
            {
                "custom/__init__.py": "",
                "custom/data/__init__.py": "",
                "custom/data/readers.py": "import os\n\ndef f():\n    from custom.data.pickled import g\n",
                "custom/data/pickled.py": "from .readers import MAX\n",
                "custom/data/slicing.py": "from custom.data.readers import f\n",
            }
        )
        cycles = import_cycles(graph)
        self.assertEqual(cycles, [["custom.data.pickled", "custom.data.readers"]])
        text = describe_cycle(cycles[0], graph)
        self.assertIn("custom.data.readers line 4 -> custom.data.pickled", text)
        self.assertIn("custom.data.pickled line 1 -> custom.data.readers", text)


if __name__ == "__main__":
    unittest.main()
