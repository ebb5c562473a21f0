"""The package's shape: no import circles, no family branching outside the family package,
one home for renames-into-place, file hashes and file keys."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.paths import REPO

PACKAGE = REPO / "src" / "vernacular"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the `vernacular` modules it imports at module level (imports inside functions too)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            found = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            targets |= {f for f in found if f in modules and f != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 40 and graph["vernacular.data.features"] >= {"vernacular.models.families"}
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _source_outside(folder: Path):
    for path in PACKAGE.rglob("*.py"):
        if folder not in path.parents:
            yield path, path.read_text()


def test_no_code_outside_the_family_package_branches_on_a_family():
    families = PACKAGE / "models" / "families"
    pattern = re.compile(r"""(family|\.name)\s*[!=]=\s*["'](whisper|ctc|rnnt)["']|isinstance\([^)]*Whisper""")
    offenders = [f"{p.relative_to(REPO)}:{n}" for p, text in _source_outside(families)
                 for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


def test_renames_hashes_and_file_keys_have_one_home():
    home = PACKAGE / "common" / "fileio.py"
    for needle in ("os.replace(", "hashlib.sha256(", "st_mtime"):
        places = [str(p.relative_to(REPO)) for p, text in ((p, p.read_text()) for p in PACKAGE.rglob("*.py"))
                  if needle in text]
        assert places == [str(home.relative_to(REPO))], (needle, places)
