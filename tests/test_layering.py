"""The tree's layering, read from the imports: every module imports only its own layer or those below, the
stage folders (and the two output packages) never import each other, and no two files import each other,
directly or round a longer cycle. A test feeds the checker a bad graph to show it would fail."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("builder", "curation", "cards", "evaluation")
LAYERS: list[tuple[str, int]] = [
    # (module prefix, layer); the longest matching prefix decides; same layer, different prefix = siblings
    ("builder.core", 0),
    ("builder.manifest", 1),
    ("builder.models", 2),
    ("curation.hashing", 2),
    ("curation.faces", 3),
    ("curation.identity", 4),
    ("builder.expand", 5),
    ("builder.synthesis", 5),
    ("builder.annotate", 5),
    ("curation.shard", 5),
    ("curation.labelling", 5),
    ("curation.whole_set", 5),
    ("cards", 6),
    ("evaluation", 6),
    ("builder", 7),  # the roof: pipeline, run, api, cli, plan, references, schema, examples
    ("curation", 7),  # the package's __init__ only
]
SIBLINGS_MAY_IMPORT = {2: True}  # the model layer's parts are independent services; stages and outputs are not


def layer_of(module: str) -> tuple[str, int]:
    best = max((p for p in LAYERS if module == p[0] or module.startswith(p[0] + ".")), key=lambda p: len(p[0]))
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Every project module ``path`` imports, anywhere in the file (lazy imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # 'from pkg import module'
    return {name for name in found if name.split(".")[0] in PACKAGES}


def project_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path, name):
            while imported and imported not in modules:  # 'pkg.module.attr' -> 'pkg.module'
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _package_of(module: str, target: str) -> bool:
    """True when ``module`` imports the package that contains it (its own __init__): not a cycle of files."""
    return module.startswith(target + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Upward imports, sibling stage imports, and import cycles in ``graph`` (module -> imported modules)."""
    out = []
    for module, targets in sorted(graph.items()):
        own, rank = layer_of(module)
        for target in sorted(targets):
            other, other_rank = layer_of(target)
            if other_rank > rank:
                out.append(f"upward: {module} (layer {rank}) imports {target} (layer {other_rank})")
            elif other_rank == rank and other != own and not SIBLINGS_MAY_IMPORT.get(rank):
                out.append(f"sideways: {module} imports {target}, a sibling at layer {rank}")
    out += [f"cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one file (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if _package_of(node, nxt):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    import sys

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_tree_keeps_its_layers():
    problems = violations(project_graph())
    assert not problems, "\n".join(problems)


def test_the_checker_catches_upward_sideways_and_cyclic_imports():
    bad = {
        "builder.core.stage": {"builder.pipeline"},  # the floor reaching for the roof
        "curation.shard.integrity": {"curation.whole_set.dedupe"},  # one stage folder importing another
        "cards.card": {"evaluation.report"},  # the card must read evaluation's JSON, not import it
        "builder.models.store": {"builder.models.registry"},
        "builder.models.registry": {"builder.models.store"},  # a cycle inside one layer
        "builder.pipeline": {"curation.shard.integrity"},  # the roof may import anything
    }
    problems = violations(bad)
    assert problems == [
        "upward: builder.core.stage (layer 0) imports builder.pipeline (layer 7)",
        "sideways: cards.card imports evaluation.report, a sibling at layer 6",
        "sideways: curation.shard.integrity imports curation.whole_set.dedupe, a sibling at layer 5",
        "cycle: builder.models.registry -> builder.models.store",
    ]


def test_the_core_imports_nothing_else_of_the_project():
    graph = project_graph()
    core = {m: t for m, t in graph.items() if m.startswith("builder.core")}
    assert core and all(t.startswith("builder.core") for targets in core.values() for t in targets)
