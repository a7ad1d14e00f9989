"""Benchmark: `peft-apps codereview review` hunks/s, batched across the diff vs one hunk at a time.

Both review the same real multi-file diff (the bundled `itsdangerous-0e255fc.diff`: 7 Python files, 36
hunks, or `--diff`) through the same adapter and the same code: necessity on every hunk, then comment
generation on the hunks that need one. The batched review runs each stage over all hunks at once (the
hunk's text encoded once and shared by both stages through the prefix planner); the baseline reviews one
hunk at a time with batch size 1. Greedy decoding; the outputs must be identical, or it fails.

Both ways run with the engine's prefix cache off (as before it existed) and on, each from an empty cache:
one hunk at a time, every call after the first finds the review instructions' blocks computed; the batched
review is also run a second time over the warm cache (a diff reviewed again).

With no `--adapter`, two adapters are trained first on the bundled samples with the demo recipe (about
50 s on 2 CPU cores): necessity on the 120 necessity records (it answers "yes" to most hunks, so the
comment stage runs on them), and comments on the 40 comment records, trained long enough that the tiny
model writes comments of realistic length (10-48 tokens) rather than a word and EOS: a review's cost is
mostly its comments, and a benchmark of one-token comments measures only the prompt encoding.

    python eval/bench_review.py [--adapter RUN | --adapter necessity=RUN --adapter comment=RUN] [--diff FILE]
                                [--repeats 3] [--comment-tokens 48]
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
DEFAULT_DIFF = HERE.parent / "data" / "codereview" / "itsdangerous-0e255fc.diff"


def train_demo_adapters(out: Path) -> dict[str, str]:
    runs = {"necessity": ["task.task=necessity", "train.epochs=3"],
            "comment": ["task.task=comment", "data.train=bundled:codereview/msg-test.jsonl", "train.epochs=30"]}
    for task, overrides in runs.items():
        print(f"training the demo {task} adapter ...", flush=True)
        p = subprocess.run([sys.executable, "-m", "peft_apps.core.cli", "train", "codereview", "-r", "demo",
                            *overrides, f"train.output_dir={out / task}"], capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"training the demo {task} adapter failed:\n{p.stderr[-3000:]}")
    return {task: str(out / task) for task in runs}


def adapters_arg(values: list[str] | None) -> str | dict[str, str] | None:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    bad = [v for v in values if "=" not in v]
    if bad:
        sys.exit(f"--adapter {bad[0]}: give one multi-task adapter, or TASK=DIR for each task")
    return dict(v.split("=", 1) for v in values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter", action="append", help="a multi-task codereview adapter, or TASK=DIR (repeat); "
                    "default: train the demo adapters")
    ap.add_argument("--diff", default=str(DEFAULT_DIFF))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--comment-tokens", type=int, default=48, help="max new tokens of a comment")
    ap.add_argument("--batch", type=int, default=64, help="hunks per batch in the batched review")
    ap.add_argument("--out", default="bench_review.json")
    args = ap.parse_args(argv)

    from peft_apps.apps.codereview.diff import parse_diff
    from peft_apps.apps.codereview.pipeline import CodeReviewer
    from peft_apps.core.quiet import quiet

    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        adapters = adapters_arg(args.adapter) or train_demo_adapters(Path(tmp))
        reviewer = CodeReviewer.from_pretrained(None, adapters)
        reviewer.task_settings.max_new_tokens.comment = args.comment_tokens
        hunks = parse_diff(Path(args.diff).read_text(encoding="utf-8"), args.diff,
                           reviewer.task_settings.max_hunk_lines).hunks
        print(f"{len(hunks)} hunks from {args.diff}; device {reviewer.engine.device}", flush=True)
        from peft_apps.core.engine.prefix_cache import PrefixCache

        budget = reviewer.engine.prefix_cache.budget
        runs = {"batched": [], "single": [], "batched_cache": [], "single_cache": [], "batched_again": []}
        hits = {}

        def timed(name, cache, fn, fresh=True):
            if fresh:
                reviewer.engine.prefix_cache = PrefixCache(budget if cache else 0)
            t = time.perf_counter()
            out = fn()
            runs[name].append(time.perf_counter() - t)
            hits[name] = reviewer.engine.prefix_cache.report()
            return out

        for rep in range(args.repeats):
            batched = timed("batched", False, lambda: reviewer.review_hunks(hunks, batch_size=args.batch))
            single = timed("single", False, lambda: [reviewer.review_hunks([h], batch_size=1).hunks[0] for h in hunks])
            single_c = timed("single_cache", True,
                             lambda: [reviewer.review_hunks([h], batch_size=1).hunks[0] for h in hunks])
            batched_c = timed("batched_cache", True, lambda: reviewer.review_hunks(hunks, batch_size=args.batch))
            again = timed("batched_again", True, lambda: reviewer.review_hunks(hunks, batch_size=args.batch), fresh=False)
            for other in (single, single_c, batched_c.hunks, again.hunks):
                same = [(a.necessity_output, a.comment) == (b.necessity_output, b.comment)
                        for a, b in zip(batched.hunks, other)]
                if not all(same):
                    i = same.index(False)
                    sys.exit(f"outputs differ at hunk {hunks[i].id}: {batched.hunks[i].comment!r} vs {other[i].comment!r}")
            print(f"run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items())
                  + f"; {len(batched.comments)} comments, outputs identical", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    words = [len(h.comment.split()) for h in batched.comments]
    result = {"hunks": len(hunks), "comment_words_median": statistics.median(words) if words else 0,
              "comments": len(batched.comments), "repeats": args.repeats,
              "batched_seconds": runs["batched"], "single_seconds": runs["single"],
              "batched_hunks_per_s": len(hunks) / med["batched"], "single_hunks_per_s": len(hunks) / med["single"],
              "speedup": med["single"] / med["batched"],
              "prefix_cache": {k: {"seconds": runs[k], "hunks_per_s": len(hunks) / med[k], "cache": hits[k]}
                               for k in ("single_cache", "batched_cache", "batched_again")},
              "prefix_cache_speedup_single": med["single"] / med["single_cache"],
              "prefix_cache_speedup_batched": med["batched"] / med["batched_cache"],
              "prefix_cache_speedup_again": med["batched"] / med["batched_again"],
              "identical_outputs": True}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"hunks/s: batched {len(hunks) / med['batched']:.2f} vs one at a time {len(hunks) / med['single']:.2f} -> "
          f"{result['speedup']:.2f}x (medians of {args.repeats})")
    print(f"prefix cache (on against off, each from an empty cache): one at a time "
          f"{result['prefix_cache_speedup_single']:.2f}x, batched {result['prefix_cache_speedup_batched']:.2f}x, "
          f"the same diff again {result['prefix_cache_speedup_again']:.2f}x; -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
