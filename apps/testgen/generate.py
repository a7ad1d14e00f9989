"""`peft-apps testgen generate`: which functions need tests (named, or changed in a git range), their
prompts, candidate tests assembled into test modules, keep/drop in the sandbox, and writing the kept
ones into the test tree (or a patch). No model here: candidates come from `TestGenerator` or a file."""

from __future__ import annotations

import difflib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from peft_apps.core.errors import UserError, warn

from . import pysource
from .check import Checker, Verdict, select
from .miner import focal_block, is_test_file, module_of


@dataclass
class Target:
    file: str  # relative to the project
    function: pysource.Function
    module: str
    imports: str  # what a new test module for it starts with
    signature: str
    prompt: str

    @property
    def id(self) -> str:
        return f"{self.file}::{self.function.qualname}"


@dataclass
class Candidate:
    index: int
    source: str  # the whole test module as run
    output: str = ""  # the model's text (or the hand-written test)
    verdict: Verdict | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "verdict": self.verdict.as_dict() if self.verdict else None,
                "test": self.source}


@dataclass
class FunctionResult:
    target: str
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def kept(self) -> list[Candidate]:
        return [c for c in self.candidates if c.verdict and c.verdict.status == "keep"]


@dataclass
class GenerationResult:
    functions: list[FunctionResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # files that do not parse, ...
    written: dict[str, str] = field(default_factory=dict)  # test file -> new text
    isolated: bool = True
    baseline_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for f in self.functions:
            for c in f.candidates:
                counts[c.verdict.reason] = counts.get(c.verdict.reason, 0) + 1
        return {"functions": [{"target": f.target, "kept": len(f.kept),
                               "candidates": [c.as_dict() for c in f.candidates]} for f in self.functions],
                "counts": {"functions": len(self.functions),
                           "functions_with_kept_tests": sum(bool(f.kept) for f in self.functions),
                           "candidates": sum(len(f.candidates) for f in self.functions),
                           "kept": sum(len(f.kept) for f in self.functions), "reasons": counts},
                "problems": self.problems, "written": sorted(self.written), "sandbox_isolated": self.isolated,
                "baseline_note": self.baseline_note}


# ---- targets -----------------------------------------------------------------------------------------
def _target(project: Path, path: Path, text: str, fn: pysource.Function) -> Target:
    rel = path.relative_to(project).as_posix()
    module = module_of(project, path)
    name = fn.class_name or fn.name
    imports = f"import pytest\n\nfrom {module} import {name}"
    test_name = f"test_{fn.qualname.replace('.', '_').lower()}"
    sig = f"def {test_name}():\n"
    prompt = f"{focal_block(text, fn, module)}\n\n{imports}\n\n\n{sig}"
    return Target(rel, fn, module, imports, sig, prompt)


def _read_source(path: Path, problems: list[str], project: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path}: cannot read ({e}); skipped")
        return None
    if pysource.syntax_errors(text):
        try:
            rel = path.relative_to(project)
        except ValueError:
            rel = path
        problems.append(f"{rel}: does not parse; skipped")
        return None
    return text


def targets_in_files(items: list[str], project: Path, problems: list[str] | None = None) -> list[Target]:
    """`path.py` (its public top-level functions and methods) or `path.py::name` / `path.py::Class.method`."""
    project = Path(project).resolve()
    problems = problems if problems is not None else []
    out = []
    for item in items:
        file, _, name = item.partition("::")
        path = (project / file).resolve() if not Path(file).is_absolute() else Path(file)
        if not path.is_file():
            raise UserError(f"{file}: no such file in {project}")
        if path.suffix != ".py":
            raise UserError(f"{file}: not a Python file")
        try:
            path.relative_to(project)
        except ValueError:
            raise UserError(f"{file} is outside the project {project}", hint="run from the project, or pass --project")
        text = _read_source(path, problems, project)
        if text is None:
            continue
        fns = pysource.functions(text)
        if name:
            chosen = [f for f in fns if f.qualname == name or f.name == name]
            if not chosen:
                raise UserError(f"{file}: no function {name!r}",
                                hint=f"functions there: {', '.join(f.qualname for f in fns) or '(none)'}")
        else:
            chosen = [f for f in fns if not f.name.startswith("_") and not f.is_test]
        out.extend(_target(project, path, text, f) for f in chosen)
    return out


def changed_targets(project: Path, rng: str, problems: list[str] | None = None) -> list[Target]:
    """Functions of non-test Python files whose lines `git diff BASE..HEAD` (or, for "staged", the staged
    changes) adds or changes, as the files stand in the work tree."""
    from unidiff import PatchSet

    project = Path(project).resolve()
    problems = problems if problems is not None else []
    if rng == "staged":  # what `git commit` is about to record (the pre-commit hook)
        cmd = ["git", "diff", "--cached", "-U0", "--no-color", "--", "*.py"]
    elif ".." in rng:
        cmd = ["git", "diff", "-U0", "--no-color", rng, "--", "*.py"]
    else:
        raise UserError(f"--changed {rng!r}: expected BASE..HEAD (e.g. origin/main..HEAD) or 'staged'")
    try:
        p = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError("git is not installed") from None
    if p.returncode != 0:
        raise UserError(f"git diff {rng} failed in {project}: {p.stderr.strip()[:300]}")
    out = []
    for pf in PatchSet(p.stdout):
        if pf.is_removed_file or is_test_file(Path(pf.path)):
            continue
        lines = {ln.target_line_no for h in pf for ln in h if ln.is_added}
        if not lines:
            continue
        path = project / pf.path
        if not path.is_file():
            continue
        text = _read_source(path, problems, project)
        if text is None:
            continue
        for fn in pysource.functions(text):
            if not fn.is_test and any(fn.start_line <= n <= fn.end_line for n in lines):
                out.append(_target(project, path, text, fn))
    return out


# ---- candidates -----------------------------------------------------------------------------------------
def assemble(target: Target, text: str) -> str:
    """A test module from a candidate: the model's body under the target's test signature, or (when the
    text defines test functions itself) those functions under the target's imports."""
    from .units import clean, python_body

    code = clean(text)
    if re.search(r"^(async\s+)?def\s+test\w*\s*\(", code, re.M):
        head = target.imports if not re.search(r"^(import|from)\s", code, re.M) else ""
        return (head + "\n\n\n" if head else "") + code.strip("\n") + "\n"
    return f"{target.imports}\n\n\n{target.signature}{python_body(code, 0)}"


def scratch_name(target: Target, k: int) -> str:
    base = re.sub(r"\W", "_", target.function.qualname.lower())
    return f"tests/test_peft_apps_candidate_{Path(target.file).stem}_{base}_{k}.py"


def check_candidates(checker: Checker, targets: list[Target], texts: list[list[str]], workers: int | None = None,
                     progress: Callable[[], None] | None = None) -> list[FunctionResult]:
    """Every candidate of every target through the sandbox (in parallel), then keep/drop per target."""
    results = [FunctionResult(t.id, [Candidate(k, assemble(t, x), x) for k, x in enumerate(xs)])
               for t, xs in zip(targets, texts)]
    items = [(scratch_name(t, c.index), c.source) for t, r in zip(targets, results) for c in r.candidates]
    verdicts = iter(checker.check_many(items, workers, progress))
    for r in results:
        for c in r.candidates:
            c.verdict = next(verdicts)
        select([c.verdict for c in r.candidates])
    return results


def load_candidates(path: Path, targets: list[Target]) -> list[list[str]]:
    """Hand-written (or externally generated) candidates: JSONL of {"target": "file.py::name", "test": text}."""
    from peft_apps.core.data import read_jsonl

    by_id: dict[str, list[str]] = {t.id: [] for t in targets}
    for n, row in read_jsonl(path):
        tid, test = row.get("target"), row.get("test")
        if not isinstance(tid, str) or not isinstance(test, str):
            raise UserError(f"{path}, line {n}: needs string fields 'target' (file.py::name) and 'test'")
        if tid not in by_id:
            warn(f"{path}, line {n}: target {tid!r} is not among the functions to test; skipped")
            continue
        by_id[tid].append(test)
    return [by_id[t.id] for t in targets]


# ---- writing ------------------------------------------------------------------------------------------
def pytest_settings(project: Path) -> dict[str, list[str]]:
    """The project's pytest `testpaths` and `python_files`, from the first file pytest itself would read
    them from: pytest.ini, pyproject.toml ([tool.pytest.ini_options]), tox.ini, setup.cfg ([tool:pytest])."""
    import configparser
    import tomllib

    def split(v) -> list[str]:
        return [x for x in (v if isinstance(v, list) else str(v).split()) if x]

    ini = project / "pytest.ini"
    candidates: list[tuple[Path, str]] = [(ini, "pytest"), (project / "pyproject.toml", ""),
                                          (project / "tox.ini", "pytest"), (project / "setup.cfg", "tool:pytest")]
    for path, section in candidates:
        if not path.is_file():
            continue
        if path.suffix == ".toml":
            try:
                opts = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("pytest", {}) \
                    .get("ini_options")
            except (tomllib.TOMLDecodeError, UnicodeDecodeError):
                continue
            if opts is None:
                continue
            return {k: split(opts[k]) for k in ("testpaths", "python_files") if k in opts}
        cp = configparser.ConfigParser()
        try:
            cp.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        if cp.has_section(section) or path == ini:
            sec = cp[section] if cp.has_section(section) else {}
            return {k: split(sec[k]) for k in ("testpaths", "python_files") if k in sec}
    return {}


def tests_dir(project: Path) -> Path:
    """Where pytest will collect a new test file: the project's first `testpaths` entry (pytest's
    configuration), else its tests/ or test/ folder, else a new tests/."""
    for entry in pytest_settings(project).get("testpaths", []):
        if not any(ch in entry for ch in "*?["):
            return project / entry
    for name in ("tests", "test"):
        if (project / name).is_dir():
            return project / name
    return project / "tests"


def generated_file_name(project: Path, module: str) -> str:
    """`test_<module>_generated.py`, or the name the project's `python_files` patterns collect."""
    import fnmatch

    name = f"test_{module}_generated.py"
    patterns = pytest_settings(project).get("python_files") or ["test_*.py", "*_test.py"]
    if any(fnmatch.fnmatch(name, p) for p in patterns):
        return name
    pattern = next((p for p in patterns if p.count("*") == 1 and p.endswith(".py")), None)
    return pattern.replace("*", f"{module}_generated") if pattern else name


def kept_modules(project: Path, targets: list[Target], results: list[FunctionResult]) -> dict[str, str]:
    """The test files to write: per source module `tests/test_<module>_generated.py` (appended to when it
    exists), each kept test renamed so that names never clash. The folder and name follow the project's
    pytest configuration (`testpaths`, `python_files`) so that pytest collects them."""
    files: dict[str, str] = {}
    where = tests_dir(project)
    for t, r in zip(targets, results):
        for c in r.kept:
            rel = (where / generated_file_name(project, Path(t.file).stem)).relative_to(project).as_posix()
            if rel not in files:
                existing = project / rel
                files[rel] = existing.read_text(encoding="utf-8") if existing.is_file() else \
                    "# Tests written by `peft-apps testgen generate`: each passed in the sandbox and added coverage.\n"
            files[rel] = _merge(files[rel], c.source, f"_gen{c.index}")
    return files


def _merge(module: str, test: str, suffix: str) -> str:
    """Append `test`'s functions to `module` (renamed with `suffix`), its imports added at the top."""
    test_imports = pysource.import_block(test).split("\n")
    have = set(pysource.import_block(module).split("\n"))
    new_imports = [ln for ln in test_imports if ln.strip() and ln not in have]
    body_lines = [ln for ln in test.split("\n") if ln not in test_imports]
    body = "\n".join(body_lines).strip("\n")
    existing = {m.group(1) for m in re.finditer(r"^def (test\w*)", module, re.M)}

    def rename(m):
        name = m.group(1) + suffix
        while name in existing:
            name += "_"
        return f"def {name}("

    body = re.sub(r"^def (test\w*)\(", rename, body, flags=re.M)
    lines = module.rstrip("\n").split("\n")
    last_import = max([i for i, ln in enumerate(lines) if re.match(r"(import|from)\s", ln)], default=0)
    lines[last_import + 1:last_import + 1] = new_imports
    return "\n".join(lines).rstrip("\n") + "\n\n\n" + body + "\n"


def write(project: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = project / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def patch(project: Path, files: dict[str, str]) -> str:
    out = []
    for rel, text in sorted(files.items()):
        p = project / rel
        old = p.read_text(encoding="utf-8") if p.is_file() else ""
        out.extend(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                        "/dev/null" if not p.is_file() else f"a/{rel}", f"b/{rel}"))
    return "".join(out)
