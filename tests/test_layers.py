"""The architecture, as import-linter checks it (pyproject's [tool.importlinter]): the core in layers, apps
independent of each other, the core importing no app. Every core module has a place in the layers, so a new
one cannot slip past the check."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    p = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "4 kept, 0 broken" in p.stdout


def test_training_modules_stay_small():
    """The trainer split by concern (core/training/): no module of it over about 300 lines."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "core" / "training").glob("*.py")}
    assert sizes and max(sizes.values()) <= 300, sizes


def test_every_core_module_has_a_layer():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    placed = {m.strip() for layer in cfg["layers"] for m in re.split(r"[|:]", layer)}
    packages = {p.parent.name for p in (ROOT / "core").glob("*/__init__.py")}
    modules = {p.stem for p in (ROOT / "core").glob("*.py") if p.stem != "__init__"} | packages
    assert modules == placed, (sorted(modules - placed), sorted(placed - modules))


def test_no_import_circles_deferred_and_type_checking_imports_included():
    """grimp's graph of every import in the package, those inside functions and under TYPE_CHECKING included:
    no module reaches itself again. The one allowed exception: the registry's discovery of the apps (which
    import the core)."""
    import grimp

    graph = grimp.build_graph("peft_apps", include_external_packages=False, exclude_type_checking_imports=False)
    deferred = [i for i in graph.find_matching_direct_imports(import_expression="peft_apps.core.** -> peft_apps.core.**")]
    assert deferred, "grimp found no imports inside the core"
    edges = {m: {t for t in graph.find_modules_directly_imported_by(m)
                 if not (m == "peft_apps.core.registry" and t.startswith("peft_apps.apps"))}
             for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for m in sorted(edges):
        if m not in index:
            visit(m)
    assert not circles, circles


def test_no_core_module_is_over_about_350_lines():
    """The core by concern: every module of it under 360 lines."""
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "core").rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > 360} == {}
