"""Every registered PEFT method builds on the tiny Llama and trains: one step changes only its parameters."""

import json
from pathlib import Path

import pytest
import torch

from peft_apps.core.config import Recipe
from peft_apps.core.methods import METHODS, default_targets


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_attaches_and_gets_gradients(method, tiny_path):
    from peft_apps.core.modeling import attach_peft, load_base_model

    r = Recipe.model_validate({"app": "sft", "model": {"base": str(tiny_path), "quantization": "none"},
                               "peft": {"method": method, "r": 4, "alpha": 8, "num_virtual_tokens": 4}})
    model = attach_peft(load_base_model(r.model), r, total_steps=20, gradient_checkpointing=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, method
    ids = torch.randint(10, 200, (2, 12)).to(model.device)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), method
    base_grads = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not base_grads


def test_default_targets_per_architecture():
    assert default_targets("llama") == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert default_targets("some_new_arch") == "all-linear"


def test_adalora_budget_schedule_wired_into_training(sft_app, tmp_path):
    """AdaLoRA's rank allocation runs: after training, some ranks were masked out (budget < init)."""
    from helpers import synthetic
    from peft_apps.core.config import load_recipe
    from peft_apps.core.trainer import train

    tr = synthetic.write(tmp_path / "t.jsonl", synthetic.make(64, 3))
    r = load_recipe(sft_app.recipe_path("demo"), [
        f"data.train={tr}", "data.template=default", "task.completion_field=completion", "peft.method=adalora",
        "peft.init_r=6", "peft.target_r=2", "train.max_steps=30", "train.batch_size=8", "peft.modules_to_save=[]",
        f"train.output_dir={tmp_path / 'ada'}", "train.report_to=[]",
        "peft.options={tinit: 2, tfinal: 5, deltaT: 2}"])
    res = train(r, sft_app.training_records(r, "train"))
    cfg = __import__("json").loads((res.output_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "ADALORA" and cfg["total_step"] == 30
    assert cfg["rank_pattern"], "update_and_allocate never ran: no rank pattern saved"
    kept = sum(sum(v) for v in cfg["rank_pattern"].values())
    total = sum(len(v) for v in cfg["rank_pattern"].values())
    assert kept < total


def test_qlora_trains_on_cpu_and_merges_into_dequantized_weights(sft_app, tmp_path):
    """4-bit NF4 base (bitsandbytes CPU backend): trains, and the merged model reproduces its outputs."""
    from helpers import synthetic
    from transformers import AutoModelForCausalLM

    from peft_apps.core.config import load_recipe
    from peft_apps.core.engine import Engine
    from peft_apps.core.merge import merge_adapter
    from peft_apps.core.trainer import train

    tr = synthetic.write(tmp_path / "t.jsonl", synthetic.make(32, 4))
    r = load_recipe(sft_app.recipe_path("demo"), [
        f"data.train={tr}", "data.template=default", "task.completion_field=completion", "peft.method=qlora",
        "model.quantization=nf4", "train.max_steps=4", "train.batch_size=8", "peft.modules_to_save=[]",
        "train.lr=5e-2", f"train.output_dir={tmp_path / 'q'}", "train.report_to=[]"])
    res = train(r, sft_app.training_records(r, "train"))
    assert res.metrics["quantized"] is True
    engine = Engine.from_pretrained(None, res.output_dir)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in engine.model.modules())
    merged = AutoModelForCausalLM.from_pretrained(merge_adapter(res.output_dir, tmp_path / "m"))
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    ids = torch.randint(10, 200, (1, 16)).to(engine.device)
    merged.to(engine.device)
    with torch.no_grad():
        a = engine.model(input_ids=ids).logits
        b = merged(input_ids=ids).logits
        with engine.model.disable_adapter():
            base = engine.model(input_ids=ids).logits
    assert (a - base).abs().max() > 1e-3, "adapter had no effect: the test would prove nothing"
    # The naive merge into the original full-precision weights, for comparison.
    from peft import PeftModel

    from peft_apps.core.modeling import resolve_base

    base_name = json.loads((res.output_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    # the base as plain peft resolves it: a builtin model's own folder (its name stays in recipe.yaml)
    from peft_apps.core.modeling import resolve_base

    assert base_name == str(Path(resolve_base(r.model.base)).resolve())
    naive = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_base(base_name)),
                                      str(res.output_dir)).merge_and_unload().to(engine.device)
    with torch.no_grad():
        c = naive(input_ids=ids).logits
    err_dequant, err_naive = (a - b).abs().max().item(), (a - c).abs().max().item()
    # the 4-bit CPU kernel computes in bf16, so "equal" means within bf16 rounding of the logits
    assert err_dequant < 0.03 and err_dequant < err_naive / 3, (err_dequant, err_naive)


def test_completion_only_loss_equals_full_loss_and_gradients(tiny_path):
    """The trainer's loss (logits only at label positions) matches the model's own loss and gradients."""
    from peft_apps.core.modeling import attach_peft, load_base_model
    from peft_apps.core.trainer import _causal_lm, completion_only_loss

    r = Recipe.model_validate({"app": "sft", "model": {"base": str(tiny_path), "quantization": "none",
                                                       "dtype": "float32"},
                               "peft": {"method": "lora", "r": 4, "modules_to_save": ["lm_head"], "dropout": 0.0}})
    model = attach_peft(load_base_model(r.model), r, total_steps=1, gradient_checkpointing=False)
    torch.manual_seed(0)
    ids = torch.randint(10, 200, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # right padding
    labels = ids.clone()
    labels[:, :12] = -100
    labels[mask == 0] = -100
    inputs = {k: v.to(model.device) for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}
    ref = model(**inputs).loss
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    ours = completion_only_loss(_causal_lm(model), inputs)
    ours.backward()
    assert torch.allclose(ours, ref, atol=1e-5), (ours, ref)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, ref_grads[n], atol=1e-5), n


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_packed_row_equals_padded_batch(attn, tiny_path):
    """Padding-free packing without FlashAttention: two sequences in one row, told apart only by their
    position ids, give the padded batch's loss (transformers builds the block-diagonal mask from them)."""
    from peft_apps.core.modeling import attach_peft, load_base_model
    from peft_apps.core.trainer import _causal_lm, completion_only_loss

    r = Recipe.model_validate({"app": "sft", "model": {"base": str(tiny_path), "quantization": "none",
                                                       "dtype": "float32", "attn_implementation": attn},
                               "peft": {"method": "lora", "r": 4, "dropout": 0.0}})
    torch.manual_seed(0)
    model = attach_peft(load_base_model(r.model), r, total_steps=1, gradient_checkpointing=False)
    a, b = torch.randint(10, 200, (12,)), torch.randint(10, 200, (7,))
    la, lb = a.clone(), b.clone()
    la[:6], lb[:3] = -100, -100
    pad = torch.zeros(5, dtype=torch.long)
    padded = {"input_ids": torch.stack([a, torch.cat([b, pad])]),
              "attention_mask": torch.stack([torch.ones(12, dtype=torch.long), torch.cat([torch.ones_like(b), pad])]),
              "labels": torch.stack([la, torch.cat([lb, torch.full((5,), -100)])])}
    packed = {"input_ids": torch.cat([a, b]).view(1, -1),
              "position_ids": torch.cat([torch.arange(12), torch.arange(7)]).view(1, -1),
              "labels": torch.cat([la, lb]).view(1, -1)}
    lm = _causal_lm(model)
    dev = model.device
    want = completion_only_loss(lm, {k: v.to(dev) for k, v in padded.items()})
    got = completion_only_loss(lm, {k: v.to(dev) for k, v in packed.items()})
    assert torch.allclose(got, want, atol=1e-6), (got, want)


def test_llama_adapter_trains_saves_safetensors_and_serves_through_the_prefix_cache(sft_app, tmp_path):
    """LLaMA-Adapter (zero-init gated prompts, LLaMA-Reviewer's prefix setting): the gates move off zero in
    training, the adapter is saved as safetensors, and the engine's shared-prefix decoding gives what
    plain generation gives, different from the base model's."""
    from helpers import synthetic
    from safetensors.torch import load_file

    from peft_apps.core.config import load_recipe
    from peft_apps.core.engine import Engine
    from peft_apps.core.trainer import train

    tr = synthetic.write(tmp_path / "t.jsonl", synthetic.make(32, 4))
    r = load_recipe(sft_app.recipe_path("demo"), [
        f"data.train={tr}", "data.template=default", "task.completion_field=completion", "peft.method=llama_adapter",
        "peft.num_virtual_tokens=6", "peft.modules_to_save=[]", "train.max_steps=4", "train.batch_size=8",
        "train.lr=5e-2", f"train.output_dir={tmp_path / 'la'}", "train.report_to=[]"])
    res = train(r, sft_app.training_records(r, "train"))
    cfg = json.loads((res.output_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "ADAPTION_PROMPT" and cfg["adapter_len"] == 6 and cfg["adapter_layers"] == 2
    assert not list(res.output_dir.glob("*.bin"))
    gates = [v for k, v in load_file(res.output_dir / "adapter_model.safetensors").items() if "gate" in k]
    assert gates and any(g.abs().max() > 0 for g in gates)
    engine = Engine.from_pretrained(None, res.output_dir)
    tok = engine.tokenizer
    docs = ["the cat sat on the mat and the cat sat", "red green blue red green"]
    roots = dict(enumerate(engine.encode_prefixes([tok(d, add_special_tokens=False)["input_ids"] for d in docs])))
    calls = [(k, tok(d + " Next:", add_special_tokens=False)["input_ids"]) for k, d in enumerate(docs)]
    got = engine.generate_prefixed([(k, ids[len(roots[k]):]) for k, ids in calls], roots, max_new_tokens=10)
    assert got == [engine.generate_ids([ids], max_new_tokens=10)[0] for _, ids in calls]
    ids = torch.tensor([calls[0][1]], device=engine.device)
    with torch.no_grad():
        tuned = engine.model(input_ids=ids).logits
        with engine.model.disable_adapter():
            base = engine.model(input_ids=ids).logits
    assert (tuned - base).abs().max() > 1e-4, "the adapter had no effect: the test would prove nothing"


def test_full_fine_tuning_trains_every_weight_and_its_folder_loads_as_the_model(sft_app, tmp_path):
    """peft.method=full: every weight changes, the folder holds the whole model as safetensors, the engine
    loads it as the base (no adapter), merge says there is nothing to merge, a quantized base is refused."""
    from helpers import synthetic
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from peft_apps.core.config import load_recipe
    from peft_apps.core.engine import Engine
    from peft_apps.core.errors import UserError
    from peft_apps.core.merge import merge_adapter
    from peft_apps.core.tiny import builtin_model_path
    from peft_apps.core.trainer import train

    tr = synthetic.write(tmp_path / "t.jsonl", synthetic.make(32, 4))
    common = [f"data.train={tr}", "data.template=default", "task.completion_field=completion", "peft.method=full",
              "peft.modules_to_save=[]", "train.max_steps=3", "train.batch_size=8", "train.lr=1e-3",
              "train.report_to=[]"]
    r = load_recipe(sft_app.recipe_path("demo"), [*common, f"train.output_dir={tmp_path / 'full'}"])
    res = train(r, sft_app.training_records(r, "train"))
    out = res.output_dir
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert not list(out.glob("*.bin"))
    trained = load_file(out / "model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(builtin_model_path("tiny")).state_dict()
    changed = [k for k, v in trained.items() if k in base and not torch.equal(v, base[k].to(v.dtype))]
    assert len(changed) >= len(trained) - 2, "not every weight trained"  # (tied weights are saved once)
    engine = Engine.from_pretrained(None, out)
    assert engine.adapters == [] and not hasattr(engine.model, "peft_config")
    assert torch.equal(engine.model.state_dict()["model.norm.weight"].float(), trained["model.norm.weight"].float())
    assert engine.generate(["hello"], max_new_tokens=3) is not None
    with pytest.raises(UserError, match="nothing to merge|no adapter to merge"):
        merge_adapter(out, tmp_path / "m")
    r4 = load_recipe(sft_app.recipe_path("demo"), [*common, "model.quantization=nf4",
                                                    f"train.output_dir={tmp_path / 'q'}"])
    with pytest.raises(UserError, match="quantized base cannot be fully fine-tuned"):
        train(r4, sft_app.training_records(r4, "train"))
