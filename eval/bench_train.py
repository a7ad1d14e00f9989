"""Benchmark: useful (non-padding) training tokens/s and peak memory, core trainer vs plain trl.

Both train the same LoRA (r=16, all linear layers) on the same base (`--model`: the `small` offline model,
~32M parameters, by default; `builtin:1b` / `builtin:8b` on a GPU) for one epoch over the same real records, each in its own process so peak memory is its own:

  baseline  trl SFTTrainer with its default settings (batch 8, gradient checkpointing, its own
            tokenization of prompt/completion chat records); only `use_cpu` is set on a CPU machine.
  core      peft_apps' trainer with the recipe defaults at the same batch size: batching and precision
            chosen by device (`auto`: length-grouped batches, bf16 autocast where the CPU or GPU has
            it; padding-free packing with FlashAttention on a GPU).

Records: the relation stage of document-level RE built from real Re-DocRED dev documents (passage ->
relation names), a real long-tailed length distribution. Prints one JSON line per run, then the ratio.

    python eval/bench_train.py [--docs 96] [--repeats 3] [--data ../shared/data/redocred/dev_revised.json]

With `--processes N` it compares the core trainer in N processes (DDP through torchrun: GPUs, or CPU
processes over gloo) against the core trainer in one, at the same global batch: useful tokens/s of all
ranks together over the slowest rank's training time, as a ratio. On a 2-core CPU, 2 processes share
the cores one process already used, so the figure there says little; it is the GPU figure that counts.

    python eval/bench_train.py --processes 2 [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "redocred" / "dev_revised.json"


def records(path: Path, n_docs: int, rel_names: dict[str, str] | None = None):
    from peft_apps.core.data import Record

    docs = json.loads(path.read_text(encoding="utf-8"))[:n_docs]
    rel_file = path.with_name("rel_info.json")
    names = rel_names or (json.loads(rel_file.read_text()) if rel_file.is_file() else {})
    out = []
    for i, d in enumerate(docs):
        passage = " ".join(" ".join(s) for s in d["sents"])
        rels = list(dict.fromkeys(names.get(lab["r"], lab["r"]) for lab in d["labels"]))
        out.append(Record.simple(f"doc{i}", f"Passage: {passage}\nList the relations this passage expresses, "
                                            f"one per line.", "\n".join(rels)))
    return out


class _Counter:
    def __init__(self):
        self.tokens = 0
        self.padded = 0
        self.times: list[float] = []
        self.step_tokens: list[int] = []  # useful tokens of each optimizer step


def run_one(kind: str, data: Path, n_docs: int, batch: int, out_dir: Path, core_set: list[str] | None = None,
            model: str = "builtin:small") -> dict:
    from peft_apps.core.quiet import quiet

    quiet()
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from peft_apps.core.config import Recipe
    from peft_apps.core.modeling import load_tokenizer
    from peft_apps.core.bases import resolve_base

    model_path = resolve_base(model)
    recs = records(data, n_docs)
    counter = _Counter()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            counter.times.append(time.perf_counter() - self.t)
            counter.step_tokens.append(counter.tokens - sum(counter.step_tokens))

    def count(inputs):
        am = inputs.get("attention_mask")
        if am is not None:
            counter.tokens += int(am.sum())
            counter.padded += int(am.numel())
        else:
            counter.tokens += int(inputs["input_ids"].numel())
            counter.padded += int(inputs["input_ids"].numel())

    lora = dict(method="lora", r=16, alpha=32, dropout=0.05)
    if kind == "baseline":
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM

        class Counting(SFTTrainer):
            def training_step(self, model, inputs, num_items_in_batch=None):
                count(inputs)
                return super().training_step(model, inputs, num_items_in_batch)

        tok = load_tokenizer(Recipe(app="bench").model, model_path)
        ds = Dataset.from_list([{"prompt": r.prompt, "completion": [{"role": "assistant", "content": r.completion}]}
                                for r in recs])
        args = SFTConfig(output_dir=str(out_dir), use_cpu=not torch.cuda.is_available(),
                         per_device_train_batch_size=batch, num_train_epochs=1, report_to="none",
                         save_strategy="no", disable_tqdm=True)
        model = AutoModelForCausalLM.from_pretrained(model_path)
        peft_cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"])
        trainer = Counting(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                           callbacks=[Timer()])
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        settings = {"precision": "bf16" if args.bf16 else "fp32", "batching": "random (default)"}
    else:
        from peft_apps.core import trainer as core_trainer

        from peft_apps.core.config import apply_overrides, validate_recipe

        recipe = validate_recipe(apply_overrides({
            "app": "bench", "name": "bench", "model": {"base": model_path, "quantization": "none"},
            "peft": {**lora, "target_modules": "auto"},
            "data": {"max_length": 1024},
            "train": {"output_dir": str(out_dir), "epochs": 1, "batch_size": batch, "report_to": [],
                      "save_steps": 10 ** 6, "logging_steps": 10 ** 6, "lr": 2e-5, "warmup_ratio": 0.0},
        }, core_set or []))
        from peft_apps.core import sft_trainer

        class Counting(sft_trainer.CoreSFTTrainer):
            def training_step(self, model, inputs, num_items_in_batch=None):
                count(inputs)
                return super().training_step(model, inputs, num_items_in_batch)

        sft_trainer.CoreSFTTrainer = Counting
        t0 = time.perf_counter()
        res = core_trainer.train(recipe, recs, None, console=_null_console(), stop_after_steps=None,
                                 extra_callbacks=[Timer()], force=True)
        wall = time.perf_counter() - t0
        settings = {"precision": res.metrics["precision"], "batching": res.metrics["batching"]}
    skip = 2 if len(counter.times) > 4 else 0  # the first steps warm up allocators and kernels
    steps = counter.times[skip:]
    measured_tokens = sum(counter.step_tokens[skip:])
    return {
        "kind": kind, **settings, "steps": len(counter.times), "useful_tokens": counter.tokens,
        "batch_tokens": counter.padded, "padding_share": round(1 - counter.tokens / max(counter.padded, 1), 3),
        "train_seconds": round(sum(counter.times), 2), "median_step_s": round(sorted(counter.times)[len(counter.times) // 2], 3),
        "useful_tokens_per_s": round(measured_tokens / max(sum(steps), 1e-9), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if torch.cuda.is_available() else None,
        "wall_s": round(wall, 2),
    }


def _null_console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--docs", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="baseline/core pairs; the median ratio is reported")
    ap.add_argument("--model", "--base", default="builtin:small",
                    help="base model of both sides: builtin:small (default), builtin:1b / builtin:8b (GPU shapes, "
                         "random weights), a folder or a hub id")
    ap.add_argument("--one", choices=["baseline", "core"], help=argparse.SUPPRESS)
    ap.add_argument("--core-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="recipe overrides for the core run (e.g. train.mixed_precision=no)")
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    ap.add_argument("--processes", type=int, default=1, help="compare the core trainer in N processes with 1")
    a = ap.parse_args()
    if not a.data.is_file():
        sys.exit(f"error: {a.data} not found (pass --data PATH to a DocRED-format JSON file)")
    if a.one:
        rank = int(os.environ.get("RANK", 0))
        # every rank trains in the same folder's run: rank 0's temporary folder, passed down by the parent
        shared = os.environ.get("BENCH_TRAIN_DIR")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(shared or tmp)
            print(json.dumps({**run_one(a.one, a.data, a.docs, a.batch, out / "run", a.core_set, a.model),
                              "rank": rank}), flush=True)
        return
    if a.processes > 1:
        return compare_processes(a)
    import statistics

    runs: list[dict] = []
    ratios, mem_ratios = [], []
    for rep in range(a.repeats):  # alternate the two so machine noise hits both alike; report medians
        pair = {}
        for kind in ("baseline", "core"):
            p = subprocess.run([sys.executable, __file__, "--one", kind, "--data", str(a.data), "--docs",
                                str(a.docs), "--batch", str(a.batch), "--model", a.model, "--core-set", *a.core_set],
                               capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"{kind} run failed:\n{p.stderr[-3000:]}")
            pair[kind] = json.loads(p.stdout.strip().splitlines()[-1])
            pair[kind]["repeat"] = rep
            print(json.dumps(pair[kind]), flush=True)
            runs.append(pair[kind])
        b, c = pair["baseline"], pair["core"]
        mem = "peak_gpu_mib" if b["peak_gpu_mib"] else "peak_rss_mib"
        ratios.append(c["useful_tokens_per_s"] / b["useful_tokens_per_s"])
        mem_ratios.append(c[mem] / b[mem])
    results = {"runs": runs}
    b = {"useful_tokens_per_s": statistics.median(r["useful_tokens_per_s"] for r in runs if r["kind"] == "baseline")}
    c = {"useful_tokens_per_s": statistics.median(r["useful_tokens_per_s"] for r in runs if r["kind"] == "core"),
         "batching": runs[-1]["batching"], "precision": runs[-1]["precision"]}
    summary = {
        "useful_tokens_per_s_ratio": round(statistics.median(ratios), 2),
        "ratios": [round(x, 2) for x in ratios],
        "peak_memory_ratio": round(statistics.median(mem_ratios), 3), "memory_measure": mem,
        "core_settings": {"precision": c["precision"], "batching": c["batching"]},
    }
    print(json.dumps(summary))
    print(f"core vs trl defaults (median of {a.repeats}): {summary['useful_tokens_per_s_ratio']}x useful tokens/s "
          f"({c['useful_tokens_per_s']:.0f} vs {b['useful_tokens_per_s']:.0f}), peak memory ratio "
          f"{summary['peak_memory_ratio']} ({mem}); core used {c['batching']} + {c['precision']}")
    if a.out:
        a.out.write_text(json.dumps({**results, "summary": summary}, indent=2))


def compare_processes(a) -> None:
    """The core trainer in `a.processes` processes against one, `a.repeats` times alternating; median ratio."""
    import statistics

    base = [__file__, "--one", "core", "--data", str(a.data), "--docs", str(a.docs), "--batch", str(a.batch),
            "--model", a.model, "--core-set", *a.core_set]
    ratios, results = [], []
    for rep in range(a.repeats):
        pair = {}
        for n in (1, a.processes):
            with tempfile.TemporaryDirectory() as tmp:
                launcher = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                            "--nproc-per-node", str(n)]
                p = subprocess.run([*launcher, *base], capture_output=True, text=True,
                                   env={**os.environ, "BENCH_TRAIN_DIR": tmp})
            if p.returncode != 0:
                sys.exit(f"the {n}-process run failed:\n{p.stderr[-3000:]}")
            ranks = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
            tokens = sum(r["useful_tokens"] for r in ranks)
            seconds = max(r["train_seconds"] for r in ranks)
            pair[n] = {"processes": n, "repeat": rep, "useful_tokens": tokens, "train_seconds": seconds,
                       "useful_tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
                       "peak_rss_mib_per_rank": max(r["peak_rss_mib"] for r in ranks),
                       "peak_gpu_mib_per_rank": max((r["peak_gpu_mib"] or 0) for r in ranks) or None}
            print(json.dumps(pair[n]), flush=True)
            results.append(pair[n])
        ratios.append(pair[a.processes]["useful_tokens_per_s"] / pair[1]["useful_tokens_per_s"])
    summary = {"processes": a.processes, "useful_tokens_per_s_ratio": round(statistics.median(ratios), 2),
               "ratios": [round(x, 2) for x in ratios]}
    print(json.dumps(summary))
    print(f"core trainer, {a.processes} processes vs 1 (median of {a.repeats}): "
          f"{summary['useful_tokens_per_s_ratio']}x useful tokens/s at the same global batch")
    if a.out:
        a.out.write_text(json.dumps({"runs": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
