"""The GPU check of the product itself, in one device call: the test suite, the project's own trainer at
~1B and Llama-3-8B shapes with 16-bit LoRA and QLoRA, then the training and AutoRE benchmarks.

Nothing comes from a hub: the models are `builtin:1b` (TinyLlama-1.1B's shape) and `builtin:8b`
(Llama-3-8B's shape) with random weights, built on the GPU on first use; the records are real Re-DocRED
documents (`--data`). Each training run goes through `peft_apps.core.trainer.train` (recipe, runtime
choice, memory check, trl underneath), in its own process so its peak memory is its own, and prints:

  peak GPU memory (torch's allocator), and what each part took: weights after loading, the adapter and
  optimizer, and the rest of the peak (activations, logits, workspace); the core's estimate beside it
  useful (non-padding) tokens/s over the timed steps, and MFU = tokens/s x 6 x parameters / peak bf16 FLOP/s

    . .gpu-data/env.sh && python eval/gpu_check.py --data .gpu-data/redocred/dev_revised.json
    python eval/gpu_check.py --phases train --shapes 8b --methods qlora      # one part only
    python eval/gpu_check.py --smoke                                         # the code paths, CPU too

Phases: tests, train, bench_train, bench_autore, multi_gpu (default: all; multi_gpu runs where there are
2+ GPUs: DDP, FSDP, FSDP+QLoRA and ZeRO-3 through `peft-apps train --num-processes N`, then
`bench_train.py --processes N`). Results go to `--out` (JSON). bench_train
compares trl's defaults with the core under each of `--variants` (padding-free packing with SDPA's
packed-sequence masks or flex attention, no gradient checkpointing, liger's fused loss): the GPU levers to
keep or drop by what they measure.
Target (issue): 8B QLoRA r=16 training at <= 7.4 GiB peak; core >= 2x trl defaults' useful tokens/s at 1B.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "redocred" / "dev_revised.json"
GIB = 2 ** 30
# dense bf16 tensor-core peak per GPU, FLOP/s (vendor datasheets, SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def train_once(shape: str, method: str, data: Path, docs: int, steps: int, batch: int, max_length: int,
               overrides: list[str]) -> dict:
    """One training run of the core trainer; returns its figures (run in a child process)."""
    from peft_apps.core.quiet import quiet

    quiet()
    import torch
    from rich.console import Console
    from transformers import TrainerCallback

    from peft_apps.core.config import apply_overrides, validate_recipe
    from peft_apps.core.memory import estimate_training_memory
    from peft_apps.core.modeling import load_config
    from peft_apps.core.trainer import train
    from peft_apps.eval.bench_train import records

    cuda = torch.cuda.is_available()
    base = f"builtin:{shape}"
    from peft_apps.core.bases import resolve_base

    resolve_base(base)  # build the random model (once, cached) before anything is measured
    recipe = validate_recipe(apply_overrides({
        "app": "gpu-check", "name": f"{shape}-{method}",
        "model": {"base": base, "quantization": "nf4" if method == "qlora" else "none"},
        "peft": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "auto"},
        "data": {"max_length": max_length},
        "train": {"output_dir": f"/tmp/gpu-check/{shape}-{method}", "max_steps": steps, "batch_size": batch,
                  "report_to": [], "save_steps": 10 ** 6, "logging_steps": 10 ** 6, "lr": 1e-4,
                  "warmup_ratio": 0.0},
    }, overrides))
    recs = records(data, docs)
    marks: dict[str, float] = {}

    class Probe(TrainerCallback):
        def __init__(self):
            self.t: list[float] = []
            self.tokens: list[int] = []

        def on_train_begin(self, args, state, control, model=None, **kw):
            if cuda:
                torch.cuda.synchronize()
                marks["before_train"] = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()
            self.tok0 = trainer_ref[0].useful_tokens if trainer_ref else 0

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.t.append(time.perf_counter() - self.t0)
            self.tokens.append(trainer_ref[0].useful_tokens - self.tok0)

    probe = Probe()
    trainer_ref: list = []
    from peft_apps.core import sft_trainer

    class Grab(sft_trainer.CoreSFTTrainer):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            trainer_ref.append(self)

    sft_trainer.CoreSFTTrainer = Grab
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    res = train(recipe, recs, None, console=Console(file=open(os.devnull, "w")), extra_callbacks=[probe], force=True)
    model = trainer_ref[0].model
    n_params = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())  # 4-bit packs 2
    skip = 2 if len(probe.t) > 4 else 0
    tps = sum(probe.tokens[skip:]) / max(sum(probe.t[skip:]), 1e-9)
    out = {"shape": shape, "method": method, "steps": len(probe.t), "batch": batch, "max_length": max_length,
           "parameters": n_params, "useful_tokens_per_s": round(tps, 1),
           "precision": res.metrics["precision"], "batching": res.metrics["batching"],
           "attn_implementation": res.metrics["attn_implementation"], "quantized": res.metrics["quantized"]}
    if cuda:
        name = torch.cuda.get_device_name(0)
        peak = torch.cuda.max_memory_allocated()
        # upper bound: every row at max_length, a quarter of it completion
        est = estimate_training_memory(load_config(recipe.model), recipe, batch * max_length, batch * max_length // 4)
        flops = peak_flops(name)
        out.update(device=name, peak_gpu_gib=round(peak / GIB, 2),
                   parts_gib={"weights_and_adapter_before_training": round(marks.get("before_train", 0) / GIB, 2),
                              "training_peak_above_that": round((peak - marks.get("before_train", 0)) / GIB, 2)},
                   estimate_gib=est.parts(), mfu=round(tps * 6 * n_params / flops, 4) if flops else None)
    return out


def run_child(args: list[str], timeout: int) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="tests,train,bench_train,bench_autore,sweep,multi_gpu")
    ap.add_argument("--sweep-methods", default="lora,qlora,loftq,dora,pissa,ssf,layerwise,dept,ia3,prompt_tuning",
                    help="the sweep phase: methods trained on the sft demo at builtin:1b's shape (CUDA peak memory)")
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--methods", default="lora16,qlora")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides for the runs")
    ap.add_argument("--variants", default=";train.batching=packing;train.batching=packing "
                    "train.gradient_checkpointing=false;train.batching=packing model.attn_implementation=flex_attention",
                    help="bench_train: core settings to compare with trl, ';'-separated (each KEY=VALUE ...; empty: "
                         "the recipe defaults); add train.loss_kernel=liger where liger-kernel is installed")
    ap.add_argument("--repeats", type=int, default=1, help="bench_train pairs per variant")
    ap.add_argument("--smoke", action="store_true", help="tiny shape, 2 steps, any device: checks the code paths")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--one", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(train_once(a.one[0], a.one[1], a.data, a.docs, a.steps, a.batch, a.max_length, a.set)))
        return
    import torch

    if not torch.cuda.is_available() and not a.smoke:
        sys.exit("gpu_check needs a CUDA GPU (or --smoke for a CPU check of the script's code paths)")
    if not a.data.is_file():
        sys.exit(f"error: {a.data} not found (pass --data PATH to a DocRED-format JSON file)")
    phases = a.phases.split(",")
    shapes = ["tiny"] if a.smoke else a.shapes.split(",")
    steps, docs = (2, 8) if a.smoke else (a.steps, a.docs)
    results: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__, "versions": _versions()}
    print(json.dumps(results), flush=True)
    if "tests" in phases and not a.smoke:
        t = time.perf_counter()
        code, out, err = run_child(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], 1800)
        tail = (out + err).strip().splitlines()[-25:]
        results["tests"] = {"exit_code": code, "seconds": round(time.perf_counter() - t, 1), "tail": tail}
        print("\n".join(tail), flush=True)
    if "train" in phases:
        results["train"] = []
        for shape in shapes:
            for method in a.methods.split(","):
                args = [str(HERE / "gpu_check.py"), "--one", shape, method, "--data", str(a.data), "--docs",
                        str(docs), "--steps", str(steps), "--batch", str(a.batch), "--max-length",
                        str(a.max_length), "--set", *a.set]
                code, out, err = run_child(args, 1800)
                row = json.loads(out.strip().splitlines()[-1]) if code == 0 else \
                    {"shape": shape, "method": method, "error": err.strip().splitlines()[-3:]}
                results["train"].append(row)
                print(json.dumps(row), flush=True)
    model = "builtin:tiny" if a.smoke else "builtin:1b"
    if "bench_train" in phases:
        results["bench_train"] = {}
        for variant in a.variants.split(";"):
            sets = variant.split()
            code, out, err = run_child([str(HERE / "bench_train.py"), "--model", model, "--data", str(a.data),
                                        "--docs", str(16 if a.smoke else 200), "--repeats", str(a.repeats),
                                        "--core-set", *sets], 3600)
            lines = out.strip().splitlines()[-2:] if code == 0 else err.strip().splitlines()[-5:]
            results["bench_train"][variant or "defaults"] = lines
            print(f"[bench_train core {variant or 'defaults'}]", *lines, sep="\n", flush=True)
    if "bench_autore" in phases:
        for dtype in (["float32"] if a.smoke else ["float32", "bfloat16"]):
            code, out, err = run_child([str(HERE / "bench_autore.py"), "--model", model, "--dtype", dtype,
                                        "--data", str(a.data), "--docs", "2" if a.smoke else "8"], 3600)
            key = f"bench_autore_{dtype}"
            results[key] = out.strip().splitlines()[-1:] if code == 0 else err.strip().splitlines()[-5:]
            print("\n".join(results[key]), flush=True)
    if "sweep" in phases:
        # every method of --sweep-methods on the sft demo at the 1B shape (QLoRA-style nf4 base unless the method
        # refuses one): metric, trainable share, CUDA peak memory and tokens/s per method, through `peft-apps sweep`
        with tempfile.TemporaryDirectory() as tmp:
            sets = [f"model.base={model}", "model.quantization=nf4", "train.max_steps=" + ("3" if a.smoke else "30"),
                    "eval.limit=" + ("4" if a.smoke else "60"), "train.report_to=[]"]
            code, out, err = run_child(["-m", "peft_apps.core.cli", "sweep", "sft", "-r", "demo", "--methods",
                                        "lora,ia3" if a.smoke else a.sweep_methods, *sets, "-o", f"{tmp}/sweep"], 3600)
            table = Path(tmp) / "sweep" / "sweep.md"
            results["sweep"] = {"exit_code": code, "table": table.read_text() if table.is_file() else None,
                                "tail": (out + err).strip().splitlines()[-5:]}
            print(results["sweep"]["table"] or "\n".join(results["sweep"]["tail"]), flush=True)
    gpus = torch.cuda.device_count()
    if "multi_gpu" in phases and gpus > 1:
        # training in N processes: DDP, FSDP (LoRA and QLoRA) and, where DeepSpeed is installed, ZeRO-3, a few
        # steps each through `peft-apps train --num-processes N`; then bench_train's N-vs-1 tokens/s
        results["multi_gpu"] = {"gpus": gpus}
        base = [f"model.base={model}", "data.max_length=512", "train.max_steps=6", "train.save_steps=3",
                "train.report_to=[]", "train.batch_size=" + str(2 * gpus)]
        runs = {"ddp": ["train.distributed=ddp", "model.quantization=none"],
                "fsdp": ["train.distributed=fsdp", "model.quantization=none"],
                "fsdp_qlora": ["train.distributed=fsdp", "model.quantization=nf4"],
                "zero3": ["train.distributed=deepspeed-zero3", "model.quantization=none"]}
        for name, sets in runs.items():
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                code, out, err = run_child(["-m", "peft_apps.core.cli", "train", "sft", "-r", "demo", *base, *sets,
                                            f"train.output_dir={tmp}/run", "--num-processes", str(gpus)], 1800)
                row = {"exit_code": code, "seconds": round(time.perf_counter() - t, 1),
                       "tail": (out + err).strip().splitlines()[-3:]}
                metrics = Path(tmp) / "run" / "metrics.json"
                if metrics.is_file():
                    m = json.loads(metrics.read_text())
                    row.update({k: m.get(k) for k in ("steps", "first_logged_loss", "last_logged_loss",
                                                      "useful_tokens_per_second", "distributed", "processes")})
            results["multi_gpu"][name] = row
            print(f"[multi_gpu {name}]", json.dumps(row), flush=True)
        code, out, err = run_child([str(HERE / "bench_train.py"), "--processes", str(gpus), "--model", model,
                                    "--data", str(a.data), "--docs", "64", "--repeats", "1"], 3600)
        results["multi_gpu"]["bench_train"] = out.strip().splitlines()[-2:] if code == 0 else err.strip().splitlines()[-5:]
        print("\n".join(results["multi_gpu"]["bench_train"]), flush=True)
    if a.out:
        a.out.write_text(json.dumps(results, indent=2))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transformers", "peft", "trl", "bitsandbytes", "accelerate", "liger-kernel"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


if __name__ == "__main__":
    main()
