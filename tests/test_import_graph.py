"""The import graph of zeroseg's own modules, read from the source with ``ast``.

Every ``import`` / ``from ... import`` is counted, at module level and inside functions alike:
an import deferred into a function is still an edge a reader (and the interpreter, at the first
call) follows. Edges go to the module actually named: ``from zeroseg.platform.store import
schema`` is an edge to ``zeroseg.platform.store.schema`` when that is a module, else to the
package's ``__init__``; importing a submodule does not add an edge to its parent packages'
``__init__`` (Python runs them first, but they are not what the importer depends on).

Checked: (a) no cycle among zeroseg modules; (b) no method imports the training platform, the
store, Ray or DeepSpeed; (c) no library package imports the command layer
``zeroseg.platform.commands``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"platform": "zeroseg.platform", "methods": "zeroseg.methods",
         "dashboards": "zeroseg.dashboards"}
COMMANDS = "zeroseg.platform.commands"
#: Entry points: they may import the command layer (and the command layer may import them).
ENTRY_POINTS = {"zeroseg.platform.cli"}

def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO)
    parts = [ROOTS[rel.parts[0]], *rel.with_suffix("").parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for folder in ROOTS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported name, line) of every import statement in the module, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # a submodule, else a name defined by ``target``
                submodule = f"{target}.{alias.name}"
                yield (submodule if submodule in modules() else target), node.lineno


def _resolve(target: str) -> str | None:
    """The zeroseg module ``target`` names (itself, or the module it is an attribute of)."""
    known = modules()
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


@cache
def graph() -> dict[str, dict[str, int]]:
    """module -> {imported zeroseg module: first line}."""
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules().items():
        out: dict[str, int] = {}
        for target, line in _imports(name, path):
            resolved = _resolve(target) if target.startswith("zeroseg.") else None
            if resolved is not None and resolved != name:
                out.setdefault(resolved, line)
        edges[name] = out
    return edges


def external_imports(name: str) -> set[str]:
    return {target for target, _ in _imports(name, modules()[name])
            if not target.startswith("zeroseg")}


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def describe(component: list[str]) -> str:
    edges = graph()
    members = set(component)
    return "; ".join(f"{a} -> {b} (line {line})" for a in component
                     for b, line in sorted(edges[a].items()) if b in members)


def test_every_module_parses_and_the_graph_is_not_empty() -> None:
    assert "zeroseg.platform.cli" in modules()
    assert graph()["zeroseg.platform.cli"], "the entry point imports nothing of zeroseg?"


def test_no_import_cycle() -> None:
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(describe(c) for c in found)


FORBIDDEN_IN_METHODS = ("zeroseg.platform.training", "zeroseg.platform.store", "ray", "deepspeed")


def _forbidden_method_imports() -> list[str]:
    bad = []
    for name in modules():
        if not name.startswith("zeroseg.methods"):
            continue
        imported = set(graph()[name]) | external_imports(name)
        for target in sorted(imported):
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN_IN_METHODS):
                bad.append(f"{name} imports {target}")
    return bad


def test_methods_do_not_import_training_store_ray_or_deepspeed() -> None:
    assert not _forbidden_method_imports()


def test_library_packages_do_not_import_the_command_layer() -> None:
    bad = [f"{name} imports {target}" for name, targets in graph().items()
           if not name.startswith(COMMANDS) and name not in ENTRY_POINTS
           for target in targets if target.startswith(COMMANDS)]
    assert not bad, "\n".join(bad)


def test_the_command_layer_exists() -> None:
    assert any(name.startswith(COMMANDS + ".") for name in modules())


if __name__ == "__main__":  # a quick report: python tests/test_import_graph.py
    for component in cycles():
        print(len(component), describe(component))
    print("\n".join(_forbidden_method_imports()))


#: zeroseg imports that stay inside functions, each for a reason: ``platform.features`` stays
#: free of torch for the dashboard (the segmenter loads only when a cache is built), and
#: ``platform.training``'s package attributes load Ray Train's modules only when asked for.
LAZY_OWN_IMPORTS = {
    ("zeroseg.platform.features.extract", "zeroseg.methods.segmenter.checkpoint"),
    ("zeroseg.platform.features.extract", "zeroseg.methods.segmenter.data"),
    ("zeroseg.platform.training", "zeroseg.platform.training.ray_runner"),
    ("zeroseg.platform.training", "zeroseg.platform.training.loop"),
    # torchvision's detection models load only when a ZSI model is built, not when the method
    # registry discovers methods/zsi.
    ("zeroseg.methods.zsi.train", "zeroseg.methods.zsi.model"),
}


def test_own_imports_are_at_module_top() -> None:
    """So that the graph a reader greps at the top of each file is the real one."""
    late = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and not node.level:
                    targets = [node.module or ""]
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                late += [f"{name} line {node.lineno}: {t}" for t in targets
                         if t.startswith("zeroseg") and (name, t) not in LAZY_OWN_IMPORTS]
    assert not late, "zeroseg imports inside functions:\n" + "\n".join(late)


def test_the_dashboard_does_not_import_torch_or_ray() -> None:
    """The dashboard starts in under a second: torch and Ray stay out of its import closure."""
    heavy = {"torch", "ray", "deepspeed"}
    seen, todo, bad = set(), ["zeroseg.dashboards.ui", "zeroseg.dashboards.app"], []
    while todo:
        name = todo.pop()
        if name in seen or name not in modules():
            continue
        seen.add(name)
        tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
        for node in tree.body:  # module level only: what importing it runs
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in heavy:
                    bad.append(f"{name} imports {target}")
                resolved = _resolve(target) if target.startswith("zeroseg.") else None
                if resolved:
                    todo.append(resolved)
                    parts = resolved.split(".")  # importing a.b.c runs a.b's __init__ too
                    todo += [".".join(parts[:i]) for i in range(2, len(parts))]
    assert not bad, "\n".join(sorted(set(bad)))
