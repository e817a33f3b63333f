"""The package's import graph has no circles, the stores sit below their producers, and the
report and statistics stay importable without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "lightreasoner"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Package modules each module imports (anywhere in the file, function bodies included)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for c in candidates:
                while c and c not in modules:
                    c = c.rsplit(".", 1)[0] if "." in c else ""
                if c and c != name and not name.startswith(c + "."):
                    deps.add(c)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_circle():
    graph = _imports()
    assert "lightreasoner.sampling" in graph and "lightreasoner.trace_cache" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_stores_sit_below_their_producers_and_files_is_the_ground_floor():
    graph = _imports()
    assert "lightreasoner.sampling" not in graph["lightreasoner.trace_cache"]
    assert "lightreasoner.selection" not in graph["lightreasoner.trace_cache"]
    assert "lightreasoner.trace_cache" in graph["lightreasoner.sampling"]
    assert graph["lightreasoner.files"] == set()
    entry_points = {"lightreasoner.diagnose"}  # a command of its own beside train.py: it stands above the pipeline
    for name, deps in graph.items():  # nothing below the orchestrator imports it
        assert "lightreasoner.pipeline" not in deps or name in entry_points, name
    assert not any(e in deps for e in entry_points for deps in graph.values()), "an entry point is imported by a module"


def test_one_generation_loop():
    """Only the generation engines call a model's ``generate``."""
    callers = sorted(
        _module_name(p)
        for p in PKG.rglob("*.py")
        if ".generate(" in p.read_text() and "generation" not in p.parts
        and any(isinstance(n, ast.Attribute) and n.attr == "generate" and isinstance(n.value, ast.Attribute) and n.value.attr in ("model", "expert_model")
                for n in ast.walk(ast.parse(p.read_text())))
    )
    assert callers == [], callers
    sources = [p for p in PKG.rglob("*.py") if "generation" not in p.parts]
    direct = [str(p.relative_to(PKG)) for p in sources if "model.generate(" in p.read_text() or "expert.generate(" in p.read_text()]
    assert direct == [], direct


def test_stats_tables_and_report_import_without_torch():
    code = (
        "import sys; import lightreasoner.eval.stats, lightreasoner.eval.tables, lightreasoner.report; "
        "bad = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_command_line_and_validation_import_without_torch():
    """train.py's preflight answers before any heavy import: its modules must not pull torch in."""
    code = (
        "import sys; import lightreasoner.cli, lightreasoner.validation; "
        "bad = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
