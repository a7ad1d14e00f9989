"""Training in N processes (core/distributed.py): 2 CPU processes over gloo against 1, the batches each rank
draws, rank 0 alone writing, Ctrl-C and resume across process counts, the generated backend configs, and
the settings refused before anything loads.

Tolerance: with the same global batch, 2 processes compute each step's gradient from the same records as
1 process, but pad each half to its own longest record and sum in another order, so the numbers agree to
fp32 rounding (the runs train in fp32: bf16 autocast would round each run at 3 digits, differently). Over
16 AdamW steps the logged losses agree to 1e-5 relative and the adapter weights to 1e-4 absolute (their
largest entries are about 0.14; measured: 3e-7 and 3e-6).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.preloaded import run_cli

def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# Two CPU processes over gloo; a GPU machine trains in N processes in eval/gpu_check.sh's multi_gpu phase.
cpu_processes = pytest.mark.skipif(_cuda(), reason="the 2-process runs here are CPU processes over gloo")
STEPS = 16
COMMON = ["train", "sft", "-r", "demo", f"train.max_steps={STEPS}", "train.logging_steps=1", "train.save_steps=2",
          "train.report_to=[]", "train.mixed_precision=fp32", "model.dtype=float32",
          "train.eval_steps=8", "train.eval_examples=16", "train.select_by=auto"]


def cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from peft_apps.core.cli import main; sys.exit(main())", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, COLUMNS="400"), **kw)


def train(out: Path, *extra: str, timeout: int = 300) -> str:
    p = cli([*COMMON, f"train.output_dir={out}", *extra], out.parent)
    log, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, log[-4000:]
    return log


def adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def losses(folder: Path) -> list[float]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def assert_same_training(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == STEPS
    assert all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(la, lb)), (la, lb)
    wa, wb = adapter(a), adapter(b)
    assert wa.keys() == wb.keys()
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert diff <= 1e-4, diff


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_path):
    """The same recipe trained in 1 process and in 2 (global batch 16: 8 records a process)."""
    root = tmp_path_factory.mktemp("dist")
    train(root / "one")
    log = train(root / "two", "--num-processes", "2")
    return root, log


@cpu_processes
def test_two_processes_train_as_one(runs):
    root, log = runs
    assert "launch 2 processes (ddp, CPU over gloo)" in log
    last = f"checkpoints/checkpoint-{STEPS}"
    assert_same_training(root / "one" / last, root / "two" / last)
    m = json.loads((root / "two" / "metrics.json").read_text())
    assert m["processes"] == 2 and m["distributed"] == "ddp" and m["steps"] == STEPS
    one = json.loads((root / "one" / "metrics.json").read_text())
    assert m["data"] == one["data"]  # every rank tokenized the same records; rank 0 reported them once
    # task metrics during training and the adapter kept by them: as in one process
    for a, b in zip(one["eval_history"], m["eval_history"], strict=True):
        assert a["step"] == b["step"] and a["eval_exact_match"] == b["eval_exact_match"]
        assert a["eval_macro_f1"] == pytest.approx(b["eval_macro_f1"], abs=1e-9)
        # (eval loss is transformers' mean of per-batch means: it moves with how the eval batches split)
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=2e-3)
    assert m["selected"]["step"] == one["selected"]["step"]


@cpu_processes
def test_rank_zero_alone_writes(runs):
    root, log = runs
    two = root / "two"
    assert log.count("train sft / demo") == 1 and log.count("done in") == 1  # one voice, not two
    cfg = (two / "accelerate.yaml").read_text()
    assert "num_processes: 2" in cfg and "use_cpu: true" in cfg
    ckpt = two / "checkpoints" / f"checkpoint-{STEPS}"
    names = {p.name for p in ckpt.iterdir()}
    # one optimizer state (DDP keeps it equal on every rank), each rank its own RNG state, nothing pickled
    assert {"optimizer.safetensors", "rng_state.safetensors", "rng_state_1.safetensors"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin"))]
    one_files = {p.name for p in (root / "one").iterdir()}
    assert {p.name for p in two.iterdir()} - one_files == {"accelerate.yaml"}


@cpu_processes
def test_ctrl_c_stops_every_rank_and_the_checkpoint_resumes_in_two_and_in_one(runs, tmp_path):
    root, _ = runs
    out = tmp_path / "cut"
    p = cli([*COMMON, f"train.output_dir={out}", "--num-processes", "2"], tmp_path, start_new_session=True)
    t0 = time.monotonic()
    while not (out / "checkpoints" / "checkpoint-2").is_dir():
        assert p.poll() is None and time.monotonic() - t0 < 240, p.communicate()[0][-3000:]
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)  # what Ctrl-C sends the command in a terminal
    log, _ = p.communicate(timeout=120)
    assert p.returncode == 130, log[-3000:]
    assert "resume with:" in log and "--resume --num-processes 2" in log
    stopped = sorted(int(c.name.split("-")[1]) for c in (out / "checkpoints").glob("checkpoint-*"))
    assert 2 <= stopped[-1] < STEPS and not (out / "adapter_model.safetensors").exists()
    # no rank is left behind
    assert subprocess.run(["pgrep", "-f", f"train.output_dir={out}"], capture_output=True).stdout == b""

    alone = tmp_path / "cut-in-one"
    shutil.copytree(out, alone)
    for folder, extra in ((out, ["--num-processes", "2"]), (alone, [])):
        q = cli([*COMMON, f"train.output_dir={folder}", "--resume", *extra], tmp_path)
        rlog, _ = q.communicate(timeout=300)
        assert q.returncode == 0, rlog[-3000:]
        assert f"from {out if folder == out else alone}/checkpoints/checkpoint-{stopped[-1]}" in rlog
        assert_same_training(root / "two" / "checkpoints" / f"checkpoint-{STEPS}",
                             folder / "checkpoints" / f"checkpoint-{STEPS}")


@pytest.mark.parametrize("n,world", [(10, 1), (10, 2), (7, 2), (17, 3), (5, 4), (3, 4)])
def test_every_record_is_trained_once_per_epoch_across_ranks(n, world):
    """The batch sampler every rank runs: the global batches of 4 are the one-process run's, split over the
    ranks; a rank left without a record in the last batch gets a copy with nothing to train on."""
    from datasets import Dataset

    from peft_apps.core.distributed import MaskedCopies, RankBatches

    lengths = [5 + (i * 7) % 11 for i in range(n)]
    one = RankBatches(lengths, 4, 1, 0, seed=3)
    for epoch in (0, 1):
        one.set_epoch(epoch)
        per_rank = []
        for rank in range(world):
            s = RankBatches(lengths, 4, world, rank, seed=3)
            s.set_epoch(epoch)
            per_rank.append(list(s))
            assert len(per_rank[-1]) == len(s) == len(one)  # every rank takes as many steps
        trained = [i for batches in per_rank for b in batches for i in b if i < n]
        assert sorted(trained) == list(range(n))
        # step by step, the ranks together hold the one-process batch
        for step, batch in enumerate(one):
            assert sorted(i for r in per_rank for i in r[step] if i < n) == sorted(batch)
    fillers = [i for r in per_rank for b in r for i in b if i >= n]
    assert (len(fillers) > 0) == (0 < n % 4 < world)
    ds = MaskedCopies(Dataset.from_dict({"input_ids": [[1, 2]] * n, "completion_mask": [[0, 1]] * n}))
    assert ds[0]["completion_mask"] == [0, 1] and ds[n]["completion_mask"] == [0, 0] and ds[n]["input_ids"] == [1, 2]


def test_backend_configs_are_generated_from_the_recipe_and_accepted(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from transformers import AutoConfig, TrainingArguments

    from peft_apps.core import distributed
    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app
    from peft_apps.core.tiny import builtin_model_path

    config = AutoConfig.from_pretrained(builtin_model_path("tiny"))

    def recipe(*o):
        return load_recipe(get_app("sft").recipe_path("demo"), list(o), app="sft")

    r = recipe("train.distributed=fsdp", "model.quantization=nf4")
    args = distributed.trainer_arguments(r, 4, True, config)
    fc = args["fsdp_config"]
    assert fc["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"] and fc["use_orig_params"]
    assert fc["cpu_ram_efficient_loading"] and fc["activation_checkpointing"]
    ta = TrainingArguments(output_dir=str(tmp_path / "x"), use_cpu=True, fsdp=args["fsdp"], fsdp_config=fc)
    plugin = FullyShardedDataParallelPlugin(**ta.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.cpu_ram_efficient_loading
    path = distributed.write_launch_files(tmp_path / "fsdp", r, 4, True, config)
    launch = load_config_from_file(str(path))
    assert launch.distributed_type == "FSDP" and launch.num_processes == 4
    assert launch.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"

    for stage, offload in ((2, False), (2, True), (3, False), (3, True)):
        r = recipe(f"train.distributed=deepspeed-zero{stage}", f"train.offload={str(offload).lower()}")
        path = distributed.write_launch_files(tmp_path / f"ds{stage}{offload}", r, 2, True, config)
        ds = json.loads((path.parent / "deepspeed.json").read_text())
        plugin = DeepSpeedPlugin(hf_ds_config=ds)
        assert plugin.zero_stage == stage
        assert (plugin.offload_optimizer_device == "cpu") == offload
        launch = load_config_from_file(str(path))
        assert launch.distributed_type == "DEEPSPEED"
        assert launch.deepspeed_config["deepspeed_config_file"] == str((path.parent / "deepspeed.json").resolve())

    # the memory check counts the shards: FSDP and ZeRO-3 divide weights and optimizer state by N
    assert distributed.shard_factors(recipe("train.distributed=fsdp"), 4) == (0.25, 0.25)
    assert distributed.shard_factors(recipe("train.distributed=deepspeed-zero2"), 4) == (1.0, 0.25)
    assert distributed.shard_factors(recipe(), 4) == (1.0, 1.0)
    cmd = distributed.launch_command(path, ["train", "sft"])
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"] and cmd[-3:] == ["peft_apps.core.cli",
                                                                                               "train", "sft"]


def test_memory_check_divides_by_the_shards(monkeypatch):
    import torch

    from peft_apps.core import memory
    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app
    from peft_apps.core.training.plan import _check_gpu_memory
    from transformers import AutoConfig

    from peft_apps.core.tiny import builtin_model_path

    config = AutoConfig.from_pretrained(builtin_model_path("tiny"))
    seen = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (10**12, 10**12))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "test GPU")
    monkeypatch.setattr(memory, "check_fits", lambda est, free, recipe, name: seen.append(est))
    cols = {"length": [100, 80], "completion_mask": [[1] * 10, [1] * 5]}
    for backend in ("ddp", "fsdp"):
        r = load_recipe(get_app("sft").recipe_path("demo"), [f"train.distributed={backend}"], app="sft")
        _check_gpu_memory(r, cols, config, 2, processes=4)
    ddp, fsdp = seen
    assert fsdp.weights == pytest.approx(ddp.weights / 4) and fsdp.adapter == pytest.approx(ddp.adapter / 4)


@pytest.mark.parametrize("args,message", [
    (["train.distributed=zero"], "train.distributed: Input should be 'none', 'ddp', 'fsdp'"),
    (["train.distributed=deepspeed-zero3", "--num-processes", "2"], "train.distributed=deepspeed-zero3 needs DeepSpeed"),
    (["train.distributed=fsdp", "--num-processes", "2"], "train.distributed=fsdp needs CUDA GPUs"),
    (["train.batch_size=15", "--num-processes", "2"], "train.batch_size=15 is the global batch"),
    (["train.offload=true", "--num-processes", "2"], "train.offload=true needs train.distributed=fsdp"),
    (["peft.method=prompt_tuning", "train.distributed=deepspeed-zero3", "--num-processes", "2"], "DeepSpeed"),
])
@cpu_processes
def test_settings_that_cannot_run_are_refused_before_anything_loads(tmp_path, args, message):
    p = run_cli(["peft-apps", "train", "sft", "-r", "demo", f"train.output_dir={tmp_path / 'out'}", *args],
                cwd=tmp_path, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert message in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_prompt_methods_cannot_be_sharded():
    from peft_apps.core import distributed
    from peft_apps.core.config import load_recipe
    from peft_apps.core.errors import UserError
    from peft_apps.core.registry import get_app

    for method in ("prompt_tuning", "adalora"):
        r = load_recipe(get_app("sft").recipe_path("demo"), [f"peft.method={method}", "train.distributed=fsdp"],
                        app="sft")
        with pytest.raises(UserError, match=f"peft.method={method} cannot train under train.distributed=fsdp"):
            distributed.check(r, 2, 2)
