"""The house's layout: subpackages by what they do, on floors that only look down.

``core`` (the method's math, config plumbing, file writers) is the ground floor; ``data`` and
``models`` stand on it; the stages (``generation``, ``sampling``, ``selection``, ``training``,
``eval``) above them; ``methods`` above the stages; ``run`` (entry points, validation, the
orchestrator ``run.main`` and its stages) on top, imported by nothing; ``analysis`` reads finished
runs without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "lightreasoner"

ENTRY = "lightreasoner.__main__"
"""``python -m lightreasoner``: above every floor, it imports the command (``run.app``) alone."""

FLOORS = {
    "core": 1,
    "data": 2, "models": 2,
    "generation": 3, "selection": 3,
    "sampling": 4, "training": 4,
    "eval": 5, "demo": 5,
    "methods": 6, "analysis": 6,
    "run": 7,
}
"""The highest floor each subpackage may stand on: it imports only subpackages on lower floors
(or its own). Seven floors; a new subpackage must be placed here."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py") if "shipped" not in p.parts}


def _imports() -> dict[str, set[str]]:
    """Package modules each module imports (anywhere in the file, function bodies included)."""
    modules = _modules()
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


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rooms() -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = {}
    for name, deps in _imports().items():
        if name == ENTRY:
            continue
        r = _room(name)
        rooms.setdefault(r, set()).update(_room(d) for d in deps if _room(d) not in (r, ""))
    rooms.pop("", None)
    return rooms


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


def test_the_package_is_subpackages_only():
    top = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert top == [], f"modules at the package root: {top}; place each in a subpackage"
    assert set(_rooms()) <= set(FLOORS), sorted(set(_rooms()) - set(FLOORS))


def test_no_import_circle_among_modules_or_subpackages():
    graph = _imports()
    assert "lightreasoner.sampling.sampler" in graph and "lightreasoner.sampling.trace_cache" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle(_rooms()) is None, " -> ".join(_cycle(_rooms()))


def test_every_subpackage_imports_only_lower_floors():
    bad = [f"{r} (floor {FLOORS[r]}) imports {d} (floor {FLOORS[d]})"
           for r, deps in _rooms().items() for d in deps if FLOORS[d] >= FLOORS[r]]
    assert bad == [], bad


def test_math_and_data_sit_below_models_and_nothing_imports_run():
    rooms = _rooms()
    assert rooms.get("core", set()) == set()
    assert rooms.get("data", set()) <= {"core"}
    assert rooms.get("models", set()) <= {"core", "data"}
    assert not any("run" in deps for deps in rooms.values()), "a subpackage imports run/"


def test_stores_sit_below_their_producers_and_files_is_the_ground_floor():
    graph = _imports()
    store = graph["lightreasoner.sampling.trace_cache"]
    assert "lightreasoner.sampling.sampler" not in store and not any(d.startswith("lightreasoner.selection") for d in store)
    assert "lightreasoner.sampling.trace_cache" in graph["lightreasoner.sampling.sampler"]
    assert graph["lightreasoner.core.files"] == set()
    orchestrator = "lightreasoner.run.main"
    assert orchestrator in graph
    entry_points = {"lightreasoner.run.diagnose", "lightreasoner.run.app"}  # commands (app: train.py's): they stand above the orchestrator
    for name, deps in graph.items():  # nothing below the orchestrator imports it
        assert orchestrator not in deps or name in entry_points, name
    assert not any(e in deps for e in entry_points for name, deps in graph.items() if name != ENTRY), "an entry point is imported by a module"
    assert graph[ENTRY] == {"lightreasoner.run.app"}


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


def test_stats_tables_and_the_analysis_import_without_torch():
    code = (
        "import sys, pkgutil, importlib, lightreasoner.analysis as a; import lightreasoner.eval.stats, lightreasoner.eval.tables; "
        "[importlib.import_module(f'lightreasoner.analysis.{m.name}') for m in pkgutil.iter_modules(a.__path__)]; "
        "bad = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_command_line_and_validation_import_without_torch():
    """train.py's preflight (the ``lightreasoner`` command's) answers before any heavy import: its modules must not pull torch in."""
    code = (
        "import sys; import lightreasoner.run.cli, lightreasoner.run.validation, lightreasoner.run.app, lightreasoner.__main__; "
        "bad = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
