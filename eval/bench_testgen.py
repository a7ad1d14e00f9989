"""Benchmark: the testgen sandbox's cost per candidate, and candidates verified per second in parallel.

1. Sandbox cost: each candidate test is judged as `testgen generate` judges it (a fresh copy of the
   project, bubblewrap, pytest under line+branch coverage, the verdict), against a plain
   `python -m pytest` run of the same test file in the project (no copy, no sandbox, no coverage).
   Ratio of medians; target at most 1.5x.
2. Parallel checks: the same candidates verified with one sandbox run per CPU core at a time against
   one at a time (each with its existing-suite baseline already measured). Ratio of candidates/s;
   target at least 1.8x on 2 cores.

Candidates: hand-written passing tests for the bundled `textkit` project's functions (a real pytest
run each), so the figures measure the checking, not a model.

    python eval/bench_testgen.py [--repeats 3] [--project DIR] [--out bench_testgen.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEXTKIT = HERE.parent / "data" / "testgen" / "textkit"

CANDIDATES = {
    "reading_time": "from textkit.stats import reading_time\n\n\ndef test_reading_time():\n"
                    "    assert reading_time('a b c', wpm=2) == 2\n    assert reading_time('') == 0\n",
    "top_words": "from textkit.stats import top_words\n\n\ndef test_top_words():\n"
                 "    assert top_words('b a b c a b', n=2) == ['b', 'a']\n",
    "is_slug": "from textkit.slug import is_slug\n\n\ndef test_is_slug():\n    assert is_slug('a-b')\n"
               "    assert not is_slug('')\n",
    "truncate": "from textkit.slug import truncate\n\n\ndef test_truncate_cuts_at_a_word():\n"
                "    assert truncate('hello brave new world', 12) == 'hello...'\n",
    "slugify_max": "from textkit.slug import slugify\n\n\ndef test_slugify_max_length():\n"
                   "    assert slugify('Hello big world', max_length=9) == 'hello-big'\n",
    "word_counts": "from textkit.stats import word_counts\n\n\ndef test_word_counts_case():\n"
                   "    assert word_counts('A a', ignore_case=False)['A'] == 1\n",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--project", default=str(TEXTKIT))
    ap.add_argument("--out", default="bench_testgen.json")
    args = ap.parse_args(argv)

    from peft_apps.apps.testgen.check import Checker
    from peft_apps.apps.testgen.sandbox import Limits, bwrap_works

    project = Path(args.project).resolve()
    items = [(f"tests/test_bench_{k}.py", src) for k, src in CANDIDATES.items()]
    cores = os.cpu_count() or 1
    print(f"{len(items)} candidates; {cores} cores; sandbox isolated: {bwrap_works()[0]} {bwrap_works()[1]}", flush=True)

    # 1. per-candidate cost: sandboxed verdict vs plain pytest, alternating, medians
    checker = Checker(project, Limits(timeout_s=60))
    checker.baseline()
    plain_s, box_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / project.name
        shutil.copytree(project, work, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        env = {**os.environ, "PYTHONPATH": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
        for rep in range(args.repeats):
            for rel, src in items:
                (work / rel).write_text(src)
                t = time.perf_counter()
                p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", rel], cwd=work,
                                   env=env, capture_output=True, text=True)
                plain_s.append(time.perf_counter() - t)
                (work / rel).unlink()
                if p.returncode != 0:
                    sys.exit(f"plain pytest failed on {rel}:\n{p.stdout[-2000:]}")
                t = time.perf_counter()
                v = checker.check(rel, src)
                box_s.append(time.perf_counter() - t)
                if v.reason not in ("passes and adds coverage", "no coverage gain"):
                    sys.exit(f"sandbox verdict on {rel}: {v.reason} {v.message[-500:]}")
            print(f"round {rep + 1}: plain pytest median {statistics.median(plain_s):.2f}s, "
                  f"sandboxed verdict median {statistics.median(box_s):.2f}s", flush=True)
    cost = statistics.median(box_s) / statistics.median(plain_s)

    # 2. throughput: all candidates at once on every core vs one at a time
    par_s, seq_s = [], []
    for rep in range(args.repeats):
        t = time.perf_counter()
        a = checker.check_many(items, workers=cores)
        par_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = checker.check_many(items, workers=1)
        seq_s.append(time.perf_counter() - t)
        if [v.reason for v in a] != [v.reason for v in b]:
            sys.exit("parallel and sequential verdicts differ")
        print(f"round {rep + 1}: {cores} at a time {par_s[-1]:.2f}s, one at a time {seq_s[-1]:.2f}s", flush=True)
    speedup = statistics.median(seq_s) / statistics.median(par_s)
    result = {"candidates": len(items), "cores": cores, "isolated": bwrap_works()[0], "repeats": args.repeats,
              "plain_pytest_s": plain_s, "sandboxed_verdict_s": box_s, "sandbox_cost_ratio": cost,
              "parallel_s": par_s, "sequential_s": seq_s,
              "candidates_per_s_parallel": len(items) / statistics.median(par_s),
              "candidates_per_s_sequential": len(items) / statistics.median(seq_s), "parallel_speedup": speedup}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"sandbox cost per candidate: {cost:.2f}x a plain pytest run (target <= 1.5x)")
    print(f"candidates/s: {result['candidates_per_s_parallel']:.2f} on {cores} cores vs "
          f"{result['candidates_per_s_sequential']:.2f} one at a time -> {speedup:.2f}x (target >= 1.8x); -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
