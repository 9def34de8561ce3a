"""The one-way layering, read from the source with ``ast`` (imports inside functions too).

qvl (the kernel) ← storage ← bots, worker ← cli: bots and worker never import each other.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("qvl", "storage", "bots", "worker", "cli")
MAY_IMPORT = {
    "qvl": set(),
    "storage": {"qvl"},
    "bots": {"qvl", "storage"},
    "worker": {"qvl", "storage"},
    "cli": {"qvl", "storage", "bots", "worker"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, with_typing: bool = True) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones resolved; without
    ``with_typing``, those under ``if TYPE_CHECKING:`` (never run) are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    skip = set()
    if not with_typing:
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names if a.name != "*"]
    return found


def our_files():
    for top in PACKAGES:
        yield from sorted((ROOT / top).rglob("*.py"))


def test_each_layer_imports_only_the_layers_below_it():
    bad = []
    for path in our_files():
        top = path.relative_to(ROOT).parts[0]
        for line, module in imports(path):
            target = module.split(".")[0]
            if target in PACKAGES and target != top and target not in MAY_IMPORT[top]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert not bad, "layering broken:\n" + "\n".join(sorted(set(bad)))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {top: set() for top in PACKAGES}
    where: dict[tuple[str, str], str] = {}
    for path in our_files():
        top = path.relative_to(ROOT).parts[0]
        for line, module in imports(path):
            target = module.split(".")[0]
            if target in PACKAGES and target != top:
                graph[top].add(target)
                where.setdefault((top, target), f"{path.relative_to(ROOT)}:{line}: imports {module}")
    found = cycles(graph)
    detail = [f"{a} -> {b}: {where[a, b]}" for group in found for a in group for b in graph[a] if b in group]
    assert not found, f"import cycles {found}:\n" + "\n".join(detail)


def test_no_import_cycle_inside_the_kernel():
    files = {module_name(p): p for p in sorted((ROOT / "qvl").rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    where: dict[tuple[str, str], str] = {}
    for name, path in files.items():
        for line, module in imports(path, with_typing=False):
            if module in files and module not in (name, "qvl"):
                graph[name].add(module)
                where.setdefault((name, module), f"{path.relative_to(ROOT)}:{line}")
    found = cycles(graph)
    detail = [f"{a} -> {b} ({where[a, b]})" for group in found for a in group for b in graph[a] if b in group]
    assert not found, f"import cycles among qvl modules {found}:\n" + "\n".join(detail)
