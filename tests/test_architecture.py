"""The layout keeps its promises (docs/ARCHITECTURE.md section 3): no import cycles, no private
helper imported across rooms, no oversized module, every doc reference resolves, and the op
table of the design document is the registry's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from convformer_fast.ops import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "convformer_fast"
MAX_MODULE_LINES = 600
# The package's rooms: a module's room is its first folder under convformer_fast/; the
# modules at the top (reference, fold, functional, backends, fast, ...) and ops/, triton/
# are the core.
CORE_FOLDERS = {"ops", "triton"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    parts = module.split(".")
    return "core" if len(parts) < 3 or parts[1] in CORE_FOLDERS else parts[1]


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import of the package in
    ``module``, at any depth (a function-level import is still a dependency)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("convformer_fast")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("convformer_fast"):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.append((sub, None, node.lineno) if sub in MODULES else (target, alias.name, node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules its import statements load (a submodule's import also
    runs its parent packages' __init__)."""
    graph = {}
    for module in MODULES:
        targets = set()
        for target, _name, _line in imports(module):
            parts = target.split(".")
            targets.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        graph[module] = {t for t in targets if t in MODULES and t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_the_package_imports_in_a_cycle():
    assert cycles(import_graph()) == []


def test_no_private_helper_is_imported_across_rooms():
    crossings = []
    for module in MODULES:
        for target, name, line in imports(module):
            if room(target) == room(module):
                continue
            private_module = any(part.startswith("_") and not part.startswith("__") for part in target.split("."))
            if private_module or ((name or "").startswith("_") and not (name or "").startswith("__")):
                crossings.append(f"{module}:{line} imports {target}{'.' + name if name else ''}")
    assert crossings == []


def test_no_module_is_oversized():
    sizes = {module: len(path.read_text().splitlines()) for module, path in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES} == {}


# "ARCHITECTURE.md section 2", "docs/pose.md", "(ARCHITECTURE.md sections 1-2)"
DOC_REFERENCE = re.compile(r"(?:docs/)?([A-Za-z][\w-]*\.md)(?: sections? (\d+)(?:-(\d+))?)?")
SOURCE_GLOBS = ("convformer_fast/**/*.py", "csrc/**/*.h", "csrc/**/*.cpp", "csrc/**/*.cu", "kernels/*.cuh",
                "kernels/*.h", "tests/**/*.py", "benchmarks/*.py", "benchmarks/*.sh", "tools/*", "README.md",
                "docs/*.md", "convformer_fast/**/*.md", "setup.py", "CMakeLists.txt", "Makefile")


def doc_references() -> list[tuple[str, str, list[int]]]:
    """(where, document, sections) of every reference to a document of docs/."""
    found = []
    for pattern in SOURCE_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            if not path.is_file() or "hypothesis-db" in path.parts:
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                for match in DOC_REFERENCE.finditer(line):
                    document, first, last = match.groups()
                    if not (ROOT / "docs" / document).exists() and "docs/" not in match.group(0) \
                            and "ARCHITECTURE" not in document:
                        continue  # another folder's README.md and the like
                    sections = list(range(int(first), int(last or first) + 1)) if first else []
                    found.append((f"{path.relative_to(ROOT)}:{number}", document, sections))
    return found


def test_every_doc_reference_resolves():
    problems = []
    references = doc_references()
    assert any(doc == "ARCHITECTURE.md" and sections for _w, doc, sections in references)  # the scan finds them
    for where, document, sections in references:
        path = ROOT / "docs" / document
        if not path.exists():
            problems.append(f"{where}: docs/{document} does not exist")
            continue
        headings = {int(n) for n in re.findall(r"^## (\d+)\.", path.read_text(), flags=re.M)}
        problems += [f"{where}: docs/{document} has no section {n}" for n in sections if n not in headings]
    assert problems == []


MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_markdown_link_resolves():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [f"{doc.relative_to(ROOT)}: {target}" for doc in documents
              for target in MARKDOWN_LINK.findall(doc.read_text())
              if "://" not in target and not (doc.parent / target).exists()]
    assert broken == []


def test_the_design_document_holds_the_registrys_op_table():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert registry.markdown_table() in text, "regenerate the table: python -c 'from convformer_fast.ops " \
                                              "import registry; print(registry.markdown_table())'"


@pytest.mark.skipif(not registry.extension_loaded(), reason=str(registry.EXTENSION_ERROR))
def test_every_layer_agrees_about_the_ops():
    assert registry.consistency_problems() == []
