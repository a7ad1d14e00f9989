"""Benchmark: self-consistency with k sampled CoT answers per question, decoded as one shared-prefix batch,
against k independent calls per question. Questions/s as a ratio; the seeded samples must be equal.

Both ways run `ExamSolver.sample` on the same adapter and questions: together, a question's prompt is
encoded once and its k samples (and the other questions') decode in shared batches; apart, each sample
is its own call (its prompt encoded again, a batch of one). Every sample has its own seed, so the two
ways must give the same texts, or the benchmark fails.

Both ways run with the engine's prefix cache off (as before it existed) and on, each from an empty cache.
Within one `sample` call a question's prompt is encoded once either way; what the cache adds shows where
a client asks for one sample per call (a vote gathered over k requests): `calls` makes k `sample` calls of
one sample per question, cache off and on (their samples must be equal), and with the cache every call
after a question's first finds its prompt computed.

With no `--adapter`, the demo recipe trains one first (about 30 s on 2 CPU cores).

    python eval/bench_exam.py [--adapter RUN] [--questions 8] [--k 8] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
UNLP = HERE.parent / "data" / "exam" / "unlp-sample.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens of a sampled answer")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_exam.json")
    args = ap.parse_args(argv)

    from peft_apps.apps.exam import ExamSolver
    from peft_apps.core.quiet import quiet
    from peft_apps.core.registry import get_app

    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter
        if adapter is None:
            adapter = str(Path(tmp) / "run")
            p = subprocess.run([sys.executable, "-m", "peft_apps.core.cli", "train", "exam", "-r", "demo",
                                "train.epochs=1", f"train.output_dir={adapter}"], capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"training the demo adapter failed:\n{p.stderr[-3000:]}")
        solver = ExamSolver.from_pretrained(None, adapter)
        solver.recipe.eval.max_new_tokens = args.tokens
        solver.recipe.eval.temperature = 0.8
        solver.recipe.eval.batch_size = 64
        records = get_app("exam").read(UNLP, solver.recipe, labelled=False)[:args.questions]
        print(f"{len(records)} questions x {args.k} samples, up to {args.tokens} tokens; "
              f"device {solver.engine.device}", flush=True)
        from peft_apps.core.engine.prefix_cache import PrefixCache

        budget = solver.engine.prefix_cache.budget
        runs = {"together": [], "apart": [], "together_cache": [], "apart_cache": [], "calls": [], "calls_cache": []}
        caches = {}

        def calls(rep):
            return [[solver.sample([r], 1, seed=rep * 1000 + j)[0][0] for j in range(args.k)] for r in records]

        for rep in range(args.repeats):
            outs = {}
            for name in runs:
                solver.engine.prefix_cache = PrefixCache(budget if name.endswith("_cache") else 0)
                t = time.perf_counter()
                outs[name] = calls(rep) if name.startswith("calls") else \
                    solver.sample(records, args.k, seed=rep, together=name.startswith("together"))
                runs[name].append(time.perf_counter() - t)
                caches[name] = solver.engine.prefix_cache.report()
            if any(o != outs["together"] for k, o in outs.items() if not k.startswith("calls")) \
                    or outs["calls"] != outs["calls_cache"]:
                sys.exit("seeded samples differ between one batch and separate calls, or with the prefix cache")
            tokens = sum(len(solver.engine.tokenizer(x, add_special_tokens=False)["input_ids"])
                         for xs in outs["together"] for x in xs)
            print(f"run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items())
                  + f"; {tokens} sampled tokens, samples equal", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    a, b = med["together"], med["apart"]
    result = {"questions": len(records), "k": args.k, "max_new_tokens": args.tokens, "repeats": args.repeats,
              "together_seconds": runs["together"], "apart_seconds": runs["apart"],
              "questions_per_s_together": len(records) / a, "questions_per_s_apart": len(records) / b,
              "speedup": b / a, "samples_equal": True,
              "prefix_cache": {k: {"seconds": runs[k], "questions_per_s": len(records) / med[k], "cache": caches[k]}
                               for k in ("together_cache", "apart_cache", "calls", "calls_cache")},
              "prefix_cache_speedup_together": a / med["together_cache"],
              "prefix_cache_speedup_apart": b / med["apart_cache"],
              "prefix_cache_speedup_calls": med["calls"] / med["calls_cache"]}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"questions/s: {len(records) / a:.3f} (one batch) vs {len(records) / b:.3f} ({args.k} calls each) -> "
          f"{b / a:.2f}x (medians of {args.repeats})")
    print(f"prefix cache (on against off, each from an empty cache): one batch "
          f"{result['prefix_cache_speedup_together']:.2f}x, {args.k} calls each "
          f"{result['prefix_cache_speedup_apart']:.2f}x, one sample per call "
          f"{result['prefix_cache_speedup_calls']:.2f}x; -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
