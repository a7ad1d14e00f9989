"""Mine focal-function -> test-function pairs from a Python repository with pytest tests, as methods2test
does for Java: find the test functions (tree-sitter), then resolve the function each one tests from its
calls, its name and the test module's imports.

Resolution, per test function:
1. candidates: functions of the repository's own modules that the test calls, through the test module's
   imports (`from pkg.mod import f`, `from pkg import f` re-exported by `pkg/__init__.py`,
   `import pkg.mod as m` / `from pkg import mod` then `m.f(...)`);
2. the focal function is the candidate whose name the test's name contains (`test_slugify_drops_accents`
   -> `slugify`), the longest such name when several match; else the only candidate, if there is one;
3. otherwise the test is skipped and counted (no candidate / ambiguous).
Test code is never a candidate: functions of test modules, conftest.py files and tests/ folders, and the
assertion helpers some packages keep beside their code (`raises`, `assert_*`).

A record: {"id": "tests/test_x.py::test_y", "lang": "python", "prompt": focal function (with its class
line) + the test module's imports + the test's signature, "reference": the test's body, "meta": where
both live}: the same prompt/reference shape as methods2test's runnable subset.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import pysource

SKIP_DIRS = {".git", ".venv", "venv", "env", ".tox", ".nox", "node_modules", "build", "dist", "__pycache__",
             "site-packages", ".eggs"}


def is_test_file(rel: Path) -> bool:
    return rel.suffix == ".py" and (rel.name.startswith("test_") or rel.stem.endswith("_test"))


TEST_DIRS = {"tests", "test", "testing"}


def is_test_support(rel: Path, name: str = "") -> bool:
    """Test code, never a focal function: a test module, a conftest.py, anything under a tests/ folder; and
    the assertion helpers packages keep for their tests (`raises(err, lambda: ...)`, `assert_*`)."""
    return (is_test_file(rel) or rel.name == "conftest.py" or any(p in TEST_DIRS for p in rel.parts[:-1])
            or name == "raises" or name.startswith("assert"))


def python_files(repo: Path) -> list[Path]:
    out = []
    for p in sorted(repo.rglob("*.py")):
        rel = p.relative_to(repo)
        if not any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            out.append(p)
    return out


def source_roots(repo: Path) -> list[Path]:
    """Where the repository's importable packages live: `src/` when it has packages, and the root."""
    roots = [repo]
    if (repo / "src").is_dir():
        roots.insert(0, repo / "src")
    return roots


def module_of(repo: Path, path: Path) -> str:
    """Dotted module name of a file, relative to its source root."""
    for root in source_roots(repo):
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        return ".".join(parts)
    return path.stem


@dataclass
class Mined:
    records: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # files that do not parse, ...


class Repo:
    """The repository's modules, parsed once: module name -> (path, text, functions)."""

    def __init__(self, root: Path, mined: Mined):
        self.root = root
        self.modules: dict[str, tuple[Path, str, list[pysource.Function]]] = {}
        for p in python_files(root):
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError) as e:
                mined.problems.append(f"{p.relative_to(root)}: cannot read ({e})")
                mined.counts["files unreadable"] += 1
                continue
            if pysource.syntax_errors(text):
                mined.problems.append(f"{p.relative_to(root)}: does not parse; skipped")
                mined.counts["files that do not parse"] += 1
                continue
            self.modules[module_of(root, p)] = (p, text, pysource.functions(text))

    def resolve(self, module: str, attr: str | None, depth: int = 0):
        """(module name, Function) for `from module import attr`, following one re-export; a module
        object for `import module` / `from pkg import module`: ("module", name)."""
        if attr is None:
            return ("module", module) if module in self.modules else None
        if f"{module}.{attr}" in self.modules:
            return ("module", f"{module}.{attr}")
        entry = self.modules.get(module)
        if entry is None:
            return None
        for fn in entry[2]:
            if fn.class_name is None and fn.name == attr:
                return (module, fn)
        if depth < 2:  # a package re-exporting the name: `from .slug import slugify` in __init__
            for local, (mod, a) in pysource.imports(entry[1]).items():
                if local == attr:
                    return self.resolve(_absolute(module, mod, entry[0].name == "__init__.py"), a, depth + 1)
        return None


def _absolute(current: str, mod: str, is_package: bool) -> str:
    if not mod.startswith("."):
        return mod
    dots = len(mod) - len(mod.lstrip("."))
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (dots - 1)] if dots > 1 else base
    rest = mod.lstrip(".")
    return ".".join(base + ([rest] if rest else []))


def mine(repo: Path) -> Mined:
    repo = Path(repo).resolve()
    mined = Mined()
    r = Repo(repo, mined)
    for mod, (path, text, fns) in sorted(r.modules.items()):
        rel = path.relative_to(repo)
        if not is_test_file(rel):
            continue
        mined.counts["test files"] += 1
        names = pysource.imports(text)
        resolved = {local: r.resolve(_absolute(mod, m, path.name == "__init__.py"), a) for local, (m, a) in names.items()}
        test_imports = pysource.import_block(text)
        for t in fns:
            if not t.is_test:
                continue
            mined.counts["test functions"] += 1
            cands: dict[tuple[str, str], pysource.Function] = {}
            for called in t.calls | t.call_roots:
                hit = resolved.get(called)
                if hit is None:
                    continue
                if hit[0] == "module":  # m.f(...): every called name that m defines
                    mpath, _, mfns = r.modules[hit[1]]
                    for fn in mfns:
                        if fn.class_name is None and fn.name in t.calls \
                                and not is_test_support(mpath.relative_to(repo), fn.name):
                            cands[(hit[1], fn.name)] = fn
                elif called in t.call_roots and not is_test_support(r.modules[hit[0]][0].relative_to(repo), hit[1].name):
                    cands[(hit[0], hit[1].name)] = hit[1]
            focal = _choose(t, cands)
            if focal is None:
                mined.counts["no candidate" if not cands else "ambiguous focal function"] += 1
                continue
            (fmod, _), fn = focal
            fpath, ftext, _ = r.modules[fmod]
            mined.records.append(record(repo, path, t, test_imports, fpath, ftext, fn, fmod))
            mined.counts["pairs"] += 1
    return mined


def _choose(test: pysource.Function, cands: dict) -> Any:
    named = [(k, fn) for k, fn in cands.items() if fn.name.lower() in test.name.lower()]
    if named:
        return max(named, key=lambda kv: len(kv[1].name))
    return next(iter(cands.items())) if len(cands) == 1 else None


def signature_and_body(fn: pysource.Function) -> tuple[str, str]:
    """A function's source split after the line that ends its signature (the first line ending in ':'
    at bracket depth 0), decorators kept with the signature."""
    lines = fn.source.split("\n")
    depth = 0
    for i, line in enumerate(lines):
        for ch in line:
            depth += ch in "([{"
            depth -= ch in ")]}"
        if depth == 0 and line.rstrip().endswith(":") and not line.lstrip().startswith("@"):
            return "\n".join(lines[: i + 1]) + "\n", "\n".join(lines[i + 1:])
    return fn.source + "\n", ""


def focal_block(text: str, fn: pysource.Function, module: str) -> str:
    head = pysource.header(text, fn)
    src = fn.source if not head else head + "\n" + "\n".join("    " + ln if ln else ln for ln in fn.source.split("\n"))
    return f"# module {module}\n{src}\n"


def record(repo: Path, test_path: Path, test: pysource.Function, test_imports: str, focal_path: Path,
           focal_text: str, focal: pysource.Function, focal_module: str) -> dict[str, Any]:
    sig, body = signature_and_body(test)
    prompt = f"{focal_block(focal_text, focal, focal_module)}\n\n{test_imports}\n\n\n{sig}"
    return {"id": f"{test_path.relative_to(repo).as_posix()}::{test.qualname}", "lang": "python",
            "prompt": prompt, "reference": body,
            "meta": {"project": str(repo), "focal_file": focal_path.relative_to(repo).as_posix(),
                     "focal_function": focal.qualname, "focal_lines": [focal.start_line, focal.end_line],
                     "test_file": test_path.relative_to(repo).as_posix(), "test_function": test.qualname,
                     "test_imports": test_imports, "test_signature": sig}}
