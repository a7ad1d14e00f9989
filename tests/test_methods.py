"""Every registered PEFT method builds on the tiny Llama and trains: one step changes only its parameters."""

import json
from pathlib import Path

import pytest
import torch

from peft_apps.core.config import Recipe
from peft_apps.core.methods import METHODS, PEFT_TYPES, default_targets


# sizes the tiny model (hidden 64) needs where a method's default is for real models
TINY_OPTIONS = {"c3a": {"block_size": 16}, "vblora": {"vector_length": 16}, "waveft": {"n_frequency": 64},
                "road": {"group_size": 16}, "trainable_tokens": {"token_indices": [5, 6, 7]}, "ssf": {"shift": False},
                "cpt": {"cpt_token_ids": [5, 6, 7, 8, 9, 10], "cpt_mask": [1] * 6,
                        "cpt_tokens_type_mask": [1, 2, 2, 3, 4, 4]}}
TASK_IDS = ("POLY", "MULTITASK_PROMPT_TUNING")  # plain peft takes task_ids on every call


def _recipe(tiny_path, method, quantization="none", **options):
    return Recipe.model_validate({"app": "sft", "model": {"base": str(tiny_path), "quantization": quantization},
                                  "peft": {"method": method, "r": 4, "alpha": 8, "num_virtual_tokens": 4,
                                           "options": {**TINY_OPTIONS.get(method, {}), **options}}})


def _calibration():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(10, 200, (4, 16), generator=g),
             "attention_mask": torch.ones(4, 16, dtype=torch.long)} for _ in range(4)]


def _xlora_adapters(tiny_path, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for i in range(2):
        pm = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_path),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        pm.save_pretrained(tmp_path / f"lora{i}")
        out[f"a{i}"] = str(tmp_path / f"lora{i}")
    return out


def _logits(model, ids):
    kw = {}
    cfg = getattr(model, "peft_config", {}).get("default")
    if cfg is not None and str(cfg.peft_type.value) in TASK_IDS:
        kw["task_ids"] = torch.zeros(ids.shape[0], dtype=torch.long)
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


@pytest.mark.parametrize("method", sorted(m for m in METHODS if m != "full"))
def test_every_method_does_what_its_table_entry_says(method, tiny_path, tmp_path):
    """For every method (peft's whole set, the LoRA recipes, this project's tuners): it attaches by name and
    trains; its saved adapter (safetensors) loads back in plain peft to the same logits; it merges exactly when
    the table says so; it trains on a 4-bit base exactly when the table says so, and otherwise the recipe is
    refused before loading."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import peft_apps.core.tuners  # noqa: F401  plain peft with this project's tuners registered
    from peft_apps.core.errors import UserError
    from peft_apps.core.methods import check_recipe
    from peft_apps.core.modeling import attach_peft, load_base_model

    m = METHODS[method]
    extra = {"adapters": _xlora_adapters(tiny_path, tmp_path)} if method == "xlora" else {}
    recipe = _recipe(tiny_path, method, **extra)
    if m.broken:  # refused with the reason, and the reason still holds
        with pytest.raises(UserError, match="does not run with the installed peft"):
            check_recipe(recipe)
        with pytest.raises(Exception):
            model = attach_peft(load_base_model(recipe.model), recipe, 20, False, calibration=_calibration)
            model(input_ids=torch.randint(10, 200, (2, 8)), labels=torch.randint(10, 200, (2, 8)))
        return
    if m.needs_cuda and not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            check_recipe(recipe)
        pytest.skip(f"{method} runs on a CUDA GPU only")
    check_recipe(recipe)
    torch.manual_seed(0)
    model = attach_peft(load_base_model(recipe.model), recipe, 20, False, calibration=_calibration)
    if method == "eva":  # A starts as the top right-singular vectors of the layer inputs: orthonormal rows
        a = next(p for n, p in model.named_parameters() if "lora_A" in n).detach()
        torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0]), atol=1e-4, rtol=0)
    ids = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert before, "nothing to train"
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not frozen
    model.eval()
    ref = _logits(model, ids)
    initial = getattr(model, "peft_apps_initial", None)  # PiSSA / OLoRA / CorDA: saved as a plain LoRA
    model.save_pretrained(tmp_path / "adapter",
                          **({"path_initial_model_for_weight_conversion": initial} if initial else {}))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "adapter").glob("*.bin"))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_path), tmp_path / "adapter")
    torch.testing.assert_close(_logits(reloaded, ids), ref, atol=1e-5, rtol=1e-4)
    if m.merges:
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(_logits(merged, ids), ref, atol=1e-4, rtol=1e-3)
    else:
        with pytest.raises(Exception):
            reloaded.merge_and_unload()

    q = _recipe(tiny_path, method, quantization="nf4", **extra)
    if m.four_bit:
        check_recipe(q)
        model = attach_peft(load_base_model(q.model), q, 20, False, calibration=_calibration)
        model(input_ids=ids, labels=ids).loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    else:
        with pytest.raises(UserError, match="does not train on a quantized base"):
            check_recipe(q)
        try:  # and peft indeed cannot: it fails, or nothing learns
            model = attach_peft(load_base_model(q.model), q, 20, False, calibration=_calibration)
            model(input_ids=ids, labels=ids).loss.backward()
        except Exception:  # noqa: BLE001
            return
        assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_method_list_is_peft_s_own():
    from peft.utils import PeftType

    from peft_apps.core.tuners import TUNERS

    assert set(PEFT_TYPES) == {t.value.lower() for t in PeftType} - set(TUNERS)
    assert set(PEFT_TYPES) <= set(METHODS)


def test_readme_method_table_is_the_registry_s():
    from peft_apps.core.methods import method_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert method_table() in readme, "README's method table is stale: paste `peft-apps methods --markdown`"


def test_ssf_refuses_to_merge_a_shift_into_a_bias_free_layer_and_merges_into_one_with_a_bias(tiny_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_apps.core.tuners import SSFConfig

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_path),
                           SSFConfig(task_type="CAUSAL_LM", target_modules=["q_proj", "o_proj"], init_std=0.05))
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="no bias"):
        model.merge_and_unload()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing half-merged
    ids = torch.randint(10, 200, (1, 9))
    bias = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_path),
                          SSFConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], init_std=0.05))
    base = bias.base_model.model
    for layer in base.model.layers:  # give q_proj a bias, as Qwen2's has
        q = layer.self_attn.q_proj.base_layer
        q.bias = torch.nn.Parameter(torch.randn(q.out_features) * 0.1)
    ref = _logits(bias, ids)
    merged = bias.merge_and_unload()
    torch.testing.assert_close(_logits(merged, ids), ref, atol=1e-5, rtol=1e-4)


def test_dept_generation_with_a_cache_left_padding_and_batches_matches_recomputing(tiny_path):
    """DePT puts its prompt in front and offsets positions: cached greedy decoding equals recomputing the
    whole sequence every step, and a left-padded row equals the row alone."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_apps.core.tuners import DePTConfig

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_path),
                           DePTConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, r=4, max_length=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(10, 200, (1, 6), generator=g), torch.randint(10, 200, (1, 9), generator=g)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    cached = model.generate(input_ids=a, attention_mask=torch.ones_like(a), **kw)
    seq = a
    for _ in range(8):
        with torch.no_grad():
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert cached.tolist() == seq.tolist()
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), a], 1), b])
    mask = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(a)], 1), torch.ones_like(b)])
    both = model.generate(input_ids=batch, attention_mask=mask, **kw)
    alone_b = model.generate(input_ids=b, attention_mask=torch.ones_like(b), **kw)
    assert both[0, 3:].tolist() == cached[0].tolist() and both[1].tolist() == alone_b[0].tolist()
    with model.disable_adapter():  # off: the base model itself
        plain = AutoModelForCausalLM.from_pretrained(tiny_path)
        torch.testing.assert_close(_logits(model, a), _logits(plain, a))


@pytest.mark.parametrize("method", ["prompt_tuning", "dept", "poly", "ssf"])
def test_engine_prefixed_generation_serves_every_kind_of_adapter(method, tiny_path, tmp_path):
    """The engine's shared-prefix path (apps, server) gives each adapter's own greedy output: methods that cannot
    run on a cached prefix (virtual tokens, per-call task ids) are generated whole, the others share it."""
    from peft_apps.core.engine import Engine
    from peft_apps.core.modeling import attach_peft, load_base_model

    torch.manual_seed(0)
    r = _recipe(tiny_path, method)
    model = attach_peft(load_base_model(r.model), r, 20, False)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(tmp_path / method)
    engine = Engine.from_pretrained(str(tiny_path), {method: str(tmp_path / method)})
    assert engine.prefix_safe(method) == METHODS[method].shared_prefix
    g = torch.Generator().manual_seed(2)
    doc = torch.randint(10, 200, (12,), generator=g).tolist()
    suffixes = [torch.randint(10, 200, (n,), generator=g).tolist() for n in (3, 5, 2)]
    prefixed = engine.generate_prefixed([(0, s) for s in suffixes], {0: engine.encode_prefix(doc, method)},
                                        adapter=method, max_new_tokens=6)
    whole = [engine.generate_ids([doc + s], method, max_new_tokens=6, batch_size=1)[0] for s in suffixes]
    assert prefixed == whole
    # the prefix caches that outlive a call (the engine's, the server's) hold such adapters' prefixes never
    from peft_apps.core.engine import PrefixTree
    from peft_apps.core.serve.scheduler import Row, Scheduler

    long_doc = torch.randint(10, 200, (40,), generator=g).tolist()
    PrefixTree(engine).roots({0: long_doc}, method)
    assert (len(engine.prefix_cache) > 0) == METHODS[method].shared_prefix
    scheduler = Scheduler(engine, prefix_cache_mb=16).start()
    try:
        for _ in range(2):  # one row at a time: the second time round, each finds its prompt computed
            for s in suffixes:
                row = Row(ids=long_doc + s, adapter=method, max_new_tokens=6)
                scheduler.submit([row])
                assert row.done.wait(60)
                alone = engine.generate_ids([long_doc + s], method, max_new_tokens=6, batch_size=1)[0]
                assert row.text(engine.tokenizer) == alone
    finally:
        scheduler.close()
    assert (scheduler.report()["cache_hits"] > 0) == METHODS[method].shared_prefix


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

    from peft_apps.core.bases import resolve_base

    base_name = json.loads((res.output_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    # the base as plain peft resolves it: a builtin model's own folder (its name stays in recipe.yaml)
    from peft_apps.core.bases import resolve_base

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


class _Capture:
    """A trainer callback keeping the optimizer's learning rates after each step and the model's logits at the
    end."""

    def __init__(self, ids):
        from transformers import TrainerCallback

        self.ids, self.lrs, self.logits = ids, [], None
        outer = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, optimizer=None, **kw):
                if optimizer is not None:
                    outer.lrs.append(sorted({g["lr"] for g in optimizer.param_groups}))

            def on_train_end(self, args, state, control, model=None, **kw):
                model.eval()
                outer.logits = _logits(model, outer.ids.to(model.device))

        self.callback = CB()


@pytest.mark.parametrize("method,options", [
    ("ssf", {"shift": False}), ("layerwise", {}), ("dept", {}), ("pissa", {}), ("lora_plus", {}),
])
def test_tuner_or_recipe_trains_on_the_demo_reloads_and_merges(method, options, sft_app, tmp_path):
    """This project's tuners (SSF, layer-wise partial fine-tuning, DePT) and the LoRA recipes that need the
    trainer (PiSSA's conversion on save, LoRA+'s optimizer) through `train`: the
    loss falls on the demo; the run folder reloads in plain peft to the logits training ended with; it merges
    to the same logits where the method merges, and is refused with a message where it does not."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import peft_apps.core.tuners  # noqa: F401
    from peft_apps.core.config import load_recipe
    from peft_apps.core.errors import UserError
    from peft_apps.core.merge import merge_adapter
    from peft_apps.core.tiny import builtin_model_path
    from peft_apps.core.trainer import train

    r = load_recipe(sft_app.recipe_path("demo"), [
        f"peft.method={method}", f"peft.options={json.dumps(options)}", "train.max_steps=16", "train.logging_steps=4",
        "data.limit_train=128", "train.report_to=[]", "train.mixed_precision=fp32",
        f"train.output_dir={tmp_path / method}"])
    ids = torch.randint(10, 200, (2, 14), generator=torch.Generator().manual_seed(5))
    cap = _Capture(ids)
    res = train(r, sft_app.training_records(r, "train"), extra_callbacks=[cap.callback])
    m = json.loads((res.output_dir / "metrics.json").read_text())
    assert m["last_logged_loss"] < m["first_logged_loss"] * 0.8, (m["first_logged_loss"], m["last_logged_loss"])
    assert (res.output_dir / "adapter_model.safetensors").is_file()
    cfg = json.loads((res.output_dir / "adapter_config.json").read_text())
    base = builtin_model_path("tiny")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), res.output_dir).eval()
    torch.testing.assert_close(_logits(reloaded, ids), cap.logits, atol=1e-5, rtol=1e-4)
    if method == "pissa":  # saved as a plain LoRA on the original base: twice the rank, default init
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 2 * r.peft.r and cfg["init_lora_weights"] is True
    if method == "lora_plus":  # B learns 16 times faster than A
        assert any(abs(hi / lo - 16) < 1e-6 for step in cap.lrs for lo in step for hi in step if lo > 0), cap.lrs
    if METHODS[method].merges:
        merged = AutoModelForCausalLM.from_pretrained(merge_adapter(res.output_dir, tmp_path / "merged")).eval()
        torch.testing.assert_close(_logits(merged, ids), cap.logits, atol=1e-4, rtol=1e-3)
    else:
        with pytest.raises(UserError, match="cannot merge"):
            merge_adapter(res.output_dir, tmp_path / "merged")
