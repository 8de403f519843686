"""The package's own import graph: imports hidden inside functions, cycles, and the number of layers.

    uv run python tools/import_layers.py            # counts, cycles, the longest chain
    uv run python tools/import_layers.py --list     # and every in-function import, file:line

Reads the source (ast), imports nothing. An edge A -> B is an import of kvcompress module B by module A: at module
level, or inside a function (`--list` names those). Imports under `if TYPE_CHECKING:` are for annotations only and
are left out. The layers are the longest chain of imports inside the package (a module that imports nothing of the
package is layer 1), once of module-level imports and once with the in-function ones; a cycle is reported instead of
being counted. The scripts at the repository root count only towards the in-function imports (they sit on top).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "kvcompress"


def module_files() -> dict[str, Path]:
    """Module name -> file, for the package and the scripts at the root."""
    files = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    for path in sorted(ROOT.glob("*.py")):
        files[path.stem] = path
    return files


def _targets(node: ast.AST, current: str, modules: set[str]) -> list[str]:
    """The package modules an import statement loads (a `from pkg import sub` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:  # relative: resolve against the importing module's package
            base = current.split(".")[: -node.level] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        names = [f"{name}.{a.name}" if f"{name}.{a.name}" in modules else name for a in node.names]
    found = []
    for name in names:
        while name and name not in modules:  # `import kvcompress.a.b.c` where c is an attribute
            name = name.rpartition(".")[0]
        if name and (name == PACKAGE or name.startswith(PACKAGE + ".")) and name != current:
            found.append(name)
    return list(dict.fromkeys(found))


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def scan(files: dict[str, Path]):
    """(module-level edges, in-function imports as (module, line, target))."""
    modules = set(files)
    top: dict[str, set[str]] = {m: set() for m in files}
    inner: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, module: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, modules):
                    if in_function:
                        inner.append((module, child.lineno, target))
                    else:
                        top[module].add(target)
            else:
                visit(child, module, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                        ast.Lambda)))

    for module, path in files.items():
        visit(ast.parse(path.read_text(), str(path)), module, False)
    return top, inner


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    sys.setrecursionlimit(10_000)

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
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
            connect(v)
    return found


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest import chain (module first, what it finally rests on last); edges inside a cycle are skipped."""
    best: dict[str, list[str]] = {}
    visiting: set[str] = set()

    def chain(v: str) -> list[str]:
        if v in best:
            return best[v]
        visiting.add(v)
        longest: list[str] = []
        for w in sorted(graph.get(v, ())):
            if w not in visiting:
                candidate = chain(w)
                if len(candidate) > len(longest):
                    longest = candidate
        visiting.discard(v)
        best[v] = [v] + longest
        return best[v]

    return max((chain(v) for v in sorted(graph)), key=len, default=[])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list every in-function import of the package")
    args = parser.parse_args(argv)
    files = module_files()
    top, inner = scan(files)
    package_only = {m: e for m, e in top.items() if m.startswith(PACKAGE)}
    every = {m: set(e) for m, e in package_only.items()}
    for module, _, target in inner:
        if module in every:
            every[module].add(target)
    in_package = [i for i in inner if i[0].startswith(PACKAGE)]
    print(f"in-function imports of the package: {len(inner)} ({len(in_package)} inside {PACKAGE}/, "
          f"{len(inner) - len(in_package)} in the scripts)")
    if args.list:
        for module, line, target in inner:
            print(f"  {files[module].relative_to(ROOT)}:{line}  {target}")
    for name, graph in (("module-level imports", package_only), ("all imports, in-function included", every)):
        loops = cycles(graph)
        chain = longest_chain(graph)
        print(f"{name}: {len(chain)} layers ({' -> '.join(chain)}); "
              f"{'no cycles' if not loops else f'{len(loops)} cycle(s): ' + '; '.join(' <-> '.join(c) for c in loops)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
