"""The runtime decision table (README "Real use on a GPU"): device, precision, weight dtype and attention
chosen together. The machine's facts are faked, so every row is checked on any machine."""

import pytest
import torch

from peft_apps.core import modeling
from peft_apps.core.config import ModelConfig


@pytest.fixture()
def machine(monkeypatch):
    def set_machine(cuda: bool, bf16: bool):
        monkeypatch.setattr(modeling, "has_cuda", lambda: cuda)
        monkeypatch.setattr(modeling, "native_bf16", lambda: bf16)
    return set_machine


@pytest.mark.parametrize("cuda,bf16,training,precision,dtype", [
    (False, False, True, "fp32", torch.float32),     # CPU without AVX-512 BF16: QLoRA trains in fp32
    (False, True, True, "bf16", torch.bfloat16),     # CPU with native bf16
    (False, True, False, "fp32", torch.float32),     # inference on a CPU stays fp32
    (True, True, True, "bf16", torch.bfloat16),      # Ampere and newer
    (True, True, False, "bf16", torch.bfloat16),
    (True, False, True, "fp16", torch.float16),      # older GPUs
])
def test_precision_and_dtype_follow_the_device(machine, cuda, bf16, training, precision, dtype):
    machine(cuda, bf16)
    rt = modeling.choose_runtime(ModelConfig(), training=training)
    assert (rt.device, rt.precision, rt.dtype) == ("cuda" if cuda else "cpu", precision, dtype)


def test_explicit_choices_win(machine):
    machine(True, True)
    assert modeling.choose_runtime(ModelConfig(), "fp32").dtype == torch.float32
    assert modeling.choose_runtime(ModelConfig(dtype="float16"), "bf16").dtype == torch.float16


def test_attention_only_where_the_architecture_has_it(machine):
    from transformers import Gemma2ForCausalLM, GPT2LMHeadModel, LlamaForCausalLM

    from peft_apps.core.errors import UserError

    machine(False, False)
    assert modeling.attn_implementation(ModelConfig(), LlamaForCausalLM) == "sdpa"
    assert modeling.attn_implementation(ModelConfig(), Gemma2ForCausalLM) == "eager"
    assert modeling.attn_implementation(ModelConfig(), None) == "sdpa"  # unknown (remote code): tried, then eager
    with pytest.raises(UserError, match="Gemma2ForCausalLM does not support model.attn_implementation=sdpa"):
        modeling.attn_implementation(ModelConfig(attn_implementation="sdpa"), Gemma2ForCausalLM)
    with pytest.raises(UserError, match="flex_attention"):
        modeling.attn_implementation(ModelConfig(attn_implementation="flex_attention"), GPT2LMHeadModel)
    machine(True, True)  # FlashAttention-2 only when the package is installed
    import importlib.util

    want = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert modeling.attn_implementation(ModelConfig(), LlamaForCausalLM) == want
