"""CPU-only CI cannot run CUDA, so device placement is guarded by a lint over core/, apps/ and eval/:
every tensor factory call (`torch.tensor`, `torch.zeros`, ...) names its `device=`, or says on its line
(`# host: ...`) why it is built on the CPU on purpose (then it is moved as one copy before it meets the
model's tensors). The first CUDA run of this project failed on exactly such calls: a mask padded on the
CPU concatenated with one on the GPU.

Why not FakeTensorMode with a fake `cuda` device: on torch's CPU build it fakes factory calls only;
`.to("cuda")`, `masked_fill_` with a scalar, `x[i] = 0` and parameter initialisation all stop with
"PyTorch is not linked with support for cuda devices", so it cannot run the engine or the trainer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "rand", "randn", "randint",
             "randperm", "eye", "linspace", "tril", "triu"}


def unplaced_factories(source: str, filename: str = "<src>") -> list[str]:
    """`file:line: call` for each torch factory call with no `device=` and no `# host:` note."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        if not (isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in FACTORIES):
            continue
        if f.attr in ("tril", "triu") and node.args:  # torch.tril(x): an op on x, not a factory
            continue
        if any(k.arg == "device" for k in node.keywords):
            continue
        span = lines[node.lineno - 1:(node.end_lineno or node.lineno)]
        if any("# host:" in line for line in span):
            continue
        found.append(f"{filename}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_lint_catches_the_first_cuda_failure():
    """The padding helper as it was when the engine failed on CUDA (mask built on the CPU, no note)."""
    old = ("def _left_pad(rows, pad):\n"
           "    ids = torch.full((len(rows), 4), pad, dtype=torch.long)\n"
           "    mask = torch.zeros((len(rows), 4), dtype=torch.long)\n"
           "    return ids, mask\n")
    assert len(unplaced_factories(old)) == 2
    fixed = old.replace("dtype=torch.long)\n    mask", "dtype=torch.long, device=dev)\n    mask") \
               .replace("torch.zeros((len(rows), 4), dtype=torch.long)",
                        "torch.zeros((len(rows), 4), dtype=torch.long)  # host: moved by the caller")
    assert unplaced_factories(fixed) == []


def test_every_tensor_factory_in_the_package_is_placed():
    found = []
    for folder in ("core", "apps", "eval"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += unplaced_factories(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "tensor created without device= (add it, or a '# host: why' note):\n" + "\n".join(found)


def test_memory_estimate_for_llama3_8b_qlora_and_refusal_message():
    """Llama-3-8B's shape (config only, meta device): QLoRA weights ~5.5 GiB against ~15 GiB in bf16, and a
    GPU with too little free memory is refused with the parts and the settings that lower them."""
    from transformers import LlamaConfig

    from peft_apps.core.config import Recipe
    from peft_apps.core.errors import UserError
    from peft_apps.core.memory import GIB, check_fits, estimate_training_memory
    from peft_apps.core.tiny import SIZES

    spec = {k: v for k, v in SIZES["8b"].items() if k != "tokenizer_vocab"}
    cfg = LlamaConfig(**spec)
    q = Recipe.model_validate({"app": "x", "model": {"quantization": "nf4"}, "peft": {"r": 16},
                               "train": {"batch_size": 2}, "data": {"max_length": 2048}})
    full = q.model_copy(update={"model": q.model.model_copy(update={"quantization": "none"})})
    eq = estimate_training_memory(cfg, q, batch_tokens=2 * 2048, completion_tokens=2 * 256)
    ef = estimate_training_memory(cfg, full, batch_tokens=2 * 2048, completion_tokens=2 * 256)
    assert 4.5 * GIB < eq.weights < 6.5 * GIB and 14 * GIB < ef.weights < 16 * GIB
    assert 0 < eq.adapter < 1 * GIB  # r=16 on all linear layers: ~42M fp32 params with grads and AdamW
    check_fits(eq, 80 * GIB, q)  # fits an 80 GB card: no error
    with pytest.raises(UserError) as e:
        check_fits(ef, 8 * GIB, full, "a test GPU")
    text = str(e.value)
    assert "GiB of GPU memory" in text and "a test GPU has 8.0 GiB free" in text
    assert "model.quantization=nf4" in text and "train.batch_size=1" in text
