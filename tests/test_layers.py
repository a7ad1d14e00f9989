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
