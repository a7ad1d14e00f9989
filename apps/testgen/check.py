"""The verdict on a test file: run it in the sandbox under coverage and decide keep or drop.

A test is kept when it passes and covers lines or branches of the project's code that the existing
suite does not (and that tests kept before it do not). Otherwise it is dropped with one reason:

    syntax error      Python cannot compile it (checked before anything runs)
    import error      collecting it failed on an import (a name the model made up)
    collection error  collecting it failed otherwise
    no tests          it defines no test pytest collects
    failed            a test failed or errored
    timeout           the run passed the wall-clock limit (an infinite loop, a hung socket ...)
    resource limit    the CPU-time, memory, process, file-size or disk limit ended it
    no coverage gain  it passes but covers nothing new

`peft-apps testgen check` prints this verdict as JSON; `testgen generate` applies it to every candidate.
"""

from __future__ import annotations

import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .sandbox import Limits, Sandbox, python_in_sandbox

RUNNER = Path(__file__).with_name("_runner.py")
OUT = ".peft-apps-verdict.json"

Lines = dict[str, set]  # file -> covered line numbers, or covered branches as (from, to)


@dataclass
class Coverage:
    lines: Lines = field(default_factory=dict)
    branches: Lines = field(default_factory=dict)
    statements: Lines = field(default_factory=dict)  # executed + missing: what could be covered
    all_branches: Lines = field(default_factory=dict)

    @classmethod
    def from_report(cls, files: dict[str, Any]) -> "Coverage":
        c = cls()
        for f, v in files.items():
            c.lines[f] = set(v["executed_lines"])
            c.branches[f] = {tuple(b) for b in v["executed_branches"]}
            c.statements[f] = set(v["executed_lines"]) | set(v["missing_lines"])
            c.all_branches[f] = c.branches[f] | {tuple(b) for b in v["missing_branches"]}
        return c

    def minus(self, *others: "Coverage") -> "Coverage":
        out = Coverage(statements=self.statements, all_branches=self.all_branches)
        for attr in ("lines", "branches"):
            for f, s in getattr(self, attr).items():
                rest = set(s)
                for o in others:
                    rest -= getattr(o, attr).get(f, set())
                if rest:
                    getattr(out, attr)[f] = rest
        return out

    def union(self, other: "Coverage") -> "Coverage":
        out = Coverage(dict(self.lines), dict(self.branches), self.statements, self.all_branches)
        for attr in ("lines", "branches"):
            d = getattr(out, attr)
            for f, s in getattr(other, attr).items():
                d[f] = d.get(f, set()) | s
        return out

    @property
    def n_lines(self) -> int:
        return sum(len(s) for s in self.lines.values())

    @property
    def n_branches(self) -> int:
        return sum(len(s) for s in self.branches.values())

    def of_function(self, file: str, start: int, end: int) -> dict[str, float | None]:
        """Line and branch coverage (0-1) of the lines start..end of `file` (a focal function)."""
        span = range(start, end + 1)
        stmts = {n for n in self.statements.get(file, ()) if n in span}
        arcs = {b for b in self.all_branches.get(file, ()) if b[0] in span}
        hit = {n for n in self.lines.get(file, ()) if n in span}
        hit_b = {b for b in self.branches.get(file, ()) if b[0] in span}
        return {"line_coverage": len(hit) / len(stmts) if stmts else None,
                "branch_coverage": len(hit_b) / len(arcs) if arcs else None}

    def summary(self) -> dict[str, Any]:
        return {"lines": self.n_lines, "branches": self.n_branches,
                "new_lines": {f: sorted(s) for f, s in sorted(self.lines.items())},
                "new_branches": {f: sorted(list(b) for b in s) for f, s in sorted(self.branches.items())}}


@dataclass
class Verdict:
    status: str  # "keep" | "drop"
    reason: str
    duration: float = 0.0
    passed: int = 0
    failed: int = 0
    message: str = ""
    coverage_gain: dict[str, Any] = field(default_factory=lambda: {"lines": 0, "branches": 0})
    isolated: bool = True
    gain: Coverage | None = field(default=None, repr=False)  # for the keep/drop bookkeeping
    covered: Coverage | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("gain"), d.pop("covered")
        d["duration"] = round(self.duration, 3)
        return d


class Checker:
    """Runs test files for one project in the sandbox; the existing suite's coverage is measured once."""

    def __init__(self, project: Path, limits: Limits | None = None, isolate: bool | None = None,
                 python: str | None = None, ignore: list[str] = ()):
        self.project = Path(project).resolve()
        self.sandbox = Sandbox(self.project, limits, isolate)
        self.python = python or python_in_sandbox()
        self._baseline: Coverage | None = None
        self._lock = threading.Lock()
        self.baseline_note = ""
        self.ignore = list(ignore)  # test files the baseline leaves out (the one being judged)

    def _pythonpath(self) -> str:
        return os.pathsep.join(["src", "."] if (self.project / "src").is_dir() else ["."])

    def run(self, pytest_args: list[str], files: dict[str, str] | None = None):
        argv = [self.python, "{tools}/" + RUNNER.name, OUT, ".", "--", *pytest_args]
        r = self.sandbox.run(argv, files=files, env={"PYTHONPATH": self._pythonpath()}, collect=[OUT],
                             tools={RUNNER.name: RUNNER})
        data = json.loads(r.files[OUT]) if OUT in r.files else None
        return r, data

    def baseline(self) -> Coverage:
        """Coverage of the project's existing tests (empty when it has none)."""
        with self._lock:
            if self._baseline is None:
                r, data = self.run([f"--ignore={p}" for p in self.ignore])
                if data is None:
                    why = (f"timed out after {r.duration:.1f} s" if r.timed_out else
                           f"ended by {r.signal}" if r.signal else
                           (r.stderr or r.stdout).strip()[-300:] or f"exit code {r.returncode}, no output")
                    self.baseline_note = f"the existing suite did not run: {why}"
                    self._baseline = Coverage()
                else:
                    if data["exit_code"] not in (0, 5):  # 5: no tests collected
                        self.baseline_note = "the existing suite has failures; its coverage is still the baseline"
                    self._baseline = Coverage.from_report(data["coverage"])
            return self._baseline

    def check(self, test_path: str, source: str, also_covered: Iterable[Coverage] = ()) -> Verdict:
        """The verdict on `source` written at `test_path` (relative to the project)."""
        try:
            compile(source, test_path, "exec")  # compiles only: nothing runs outside the sandbox
        except (SyntaxError, ValueError) as e:
            return Verdict("drop", "syntax error", message=f"{type(e).__name__}: {e}", isolated=self.sandbox.isolated)
        base = self.baseline()
        r, data = self.run([test_path], files={test_path: source})
        v = Verdict("drop", "", duration=r.duration, isolated=r.isolated)
        if r.timed_out:
            v.reason, v.message = "timeout", f"killed after {self.sandbox.limits.timeout_s:g} s"
            return v
        if r.disk_exceeded:
            v.reason = "resource limit"
            v.message = f"killed for writing more than {self.sandbox.limits.disk_mb} MB into the project copy"
            return v
        if data is None:
            why = r.signal or f"exit code {r.returncode}"
            v.reason = "resource limit" if r.signal in ("SIGXCPU", "SIGXFSZ", "SIGKILL", "SIGSEGV") else "error"
            v.message = f"the run ended without a report ({why}): {(r.stderr or r.stdout)[-500:]}"
            return v
        v.passed = sum(t["outcome"] == "passed" for t in data["tests"])
        v.failed = sum(t["outcome"] != "passed" for t in data["tests"])
        if data["collect_errors"]:
            msg = data["collect_errors"][0]["message"]
            v.reason = "import error" if ("ImportError" in msg or "ModuleNotFoundError" in msg) else "collection error"
            v.message = msg[-800:]
            return v
        if not data["tests"]:
            v.reason = "no tests"
            return v
        if v.failed:
            msg = next(t["message"] for t in data["tests"] if t["outcome"] != "passed")
            if "MemoryError" in msg or "Resource temporarily unavailable" in msg or "File too large" in msg:
                v.reason = "resource limit"
            elif re.search(r"^E\s+(ImportError|ModuleNotFoundError)\b", msg, re.M):
                v.reason = "import error"  # an import inside the test, of a name that does not exist
            else:
                v.reason = "failed"
            v.message = msg[-800:]
            return v
        covered = Coverage.from_report(data["coverage"])
        gain = covered.minus(base, *also_covered)
        v.covered, v.gain, v.coverage_gain = covered, gain, gain.summary()
        if gain.n_lines == 0 and gain.n_branches == 0:
            v.reason = "no coverage gain"
            return v
        v.status, v.reason = "keep", "passes and adds coverage"
        return v

    def check_many(self, items: list[tuple[str, str]], workers: int | None = None,
                   progress: Callable[[], None] | None = None) -> list[Verdict]:
        """Verdicts on (test path, source) pairs, run in parallel across `workers` (default: CPU cores)."""
        self.baseline()
        workers = workers or os.cpu_count() or 1

        def one(item):
            v = self.check(*item)
            if progress:
                progress()
            return v

        if workers == 1:
            return [one(i) for i in items]
        with ThreadPoolExecutor(workers) as ex:
            return list(ex.map(one, items))


def select(verdicts: list[Verdict]) -> list[Verdict]:
    """Keep/drop across one function's candidates: the passing, covering ones in order of their gain
    (largest first), each kept only if it still adds coverage over those kept before it; the others
    become "no coverage gain" (they cover what a kept test covers). Returns the verdicts, updated."""
    order = sorted([v for v in verdicts if v.status == "keep"], key=lambda v: -(v.gain.n_lines + v.gain.n_branches))
    kept: list[Coverage] = []
    for v in order:
        rest = v.gain.minus(*kept)
        if rest.n_lines == 0 and rest.n_branches == 0:
            v.status, v.reason = "drop", "no coverage gain"
            v.message = "covers only what a kept candidate covers"
        else:
            kept.append(v.gain)
    return verdicts
