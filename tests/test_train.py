"""Training on the tiny model: it learns, saves, reloads, resumes exactly, serves mixed batches, merges."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import synthetic
from peft_apps.core.config import load_recipe

pytestmark = pytest.mark.slow


def _recipe(app, tmp: Path, out: str, *extra: str):
    tr = synthetic.write(tmp / "train.jsonl", synthetic.make(240, 1))
    ev = synthetic.write(tmp / "eval.jsonl", synthetic.make(60, 2))
    return load_recipe(app.recipe_path("demo"), [
        f"data.train={tr}", f"data.eval={ev}", "data.template=default", "task.completion_field=completion",
        f"train.output_dir={tmp / out}", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, _isolated_cache):
    """The synthetic task trained once: (app, recipe, result)."""
    from peft_apps.core import get_app
    from peft_apps.core.trainer import train

    app = get_app("sft")
    tmp = tmp_path_factory.mktemp("learn")
    r = _recipe(app, tmp, "run", "train.epochs=15", "train.batch_size=8", "train.lr=3e-3")
    res = train(r, app.training_records(r, "train"), app.training_records(r, "eval"))
    return app, r, res


def _exact_match(engine, records, adapter=None):
    from peft_apps.apps.sft.metrics.classification import exact_match

    outs = engine.chat([r.prompt for r in records], adapter=adapter, max_new_tokens=4, batch_size=32)
    return exact_match(outs, [r.completion for r in records]), outs


def test_learns_held_out_synthetic_task(trained):
    from peft_apps.core.engine import Engine

    app, r, res = trained
    ev = app.training_records(r, "eval")
    engine = Engine.from_pretrained(None, {"sft": res.output_dir})
    before, _ = _exact_match(engine, ev, adapter="__base__")
    after, outs = _exact_match(engine, ev)
    assert before <= 0.1, before
    assert after >= 0.9, (after, outs[:10])
    m = res.metrics
    assert m["last_logged_loss"] < m["first_logged_loss"] / 3
    assert m["data"]["train"]["kept"] == 240 and m["data"]["train"]["truncated"] == 0


def test_output_folder_is_standard_peft_and_pickle_free(trained, tiny_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, res = trained
    out = res.output_dir
    for name in ("adapter_model.safetensors", "adapter_config.json", "recipe.yaml", "metrics.json", "loss.png",
                 "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert ckpts, "no checkpoint written"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl")], "pickle file in output"
    assert (ckpts[-1] / "optimizer.safetensors").is_file() and (ckpts[-1] / "rng_state.safetensors").is_file()
    # plain peft loads it
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_path), str(out))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and model.peft_config["default"].peft_type.value == "LORA"


def test_save_load_round_trip_identical_outputs(trained):
    """Logits of the freshly loaded adapter equal the trained in-memory model's."""
    from peft_apps.core.engine import Engine

    app, r, res = trained
    ev = app.training_records(r, "eval")[:8]
    e1 = Engine.from_pretrained(None, res.output_dir)
    e2 = Engine.from_pretrained("builtin:tiny", {"again": res.output_dir})
    prompts = [e1.tokenizer.apply_chat_template(x.prompt, tokenize=False, add_generation_prompt=True) for x in ev]
    ids = e1.tokenizer(prompts[0], add_special_tokens=False, return_tensors="pt").input_ids.to(e1.device)
    with torch.no_grad():
        assert torch.equal(e1.model(input_ids=ids).logits, e2.model(input_ids=ids).logits)
    assert e1.generate(prompts, max_new_tokens=4) == e2.generate(prompts, max_new_tokens=4)


def test_mixed_adapter_batch_equals_per_adapter(trained, tmp_path):
    """A second adapter trained differently; one mixed batch == each adapter's own batch."""
    from peft_apps.core.engine import Engine
    from peft_apps.core.trainer import train

    app, r, res = trained
    r2 = _recipe(app, tmp_path, "other", "train.max_steps=6", "train.lr=1e-2", "train.seed=7")
    res2 = train(r2, app.training_records(r2, "train"))
    # fp32: on a GPU, bf16 rounding differs between a padded batch and a single row
    engine = Engine.from_pretrained(None, {"a": res.output_dir, "b": res2.output_dir}, dtype="float32")
    ev = app.training_records(r, "eval")[:6]
    convs = [x.prompt for x in ev]
    names = ["a", "b", "__base__", "a", "b", "__base__"]
    mixed = engine.chat(convs, adapter=names, max_new_tokens=6)
    single = [engine.chat([c], adapter=n, max_new_tokens=6)[0] for c, n in zip(convs, names)]
    assert mixed == single
    assert len({single[0], single[1], single[2]}) > 1 or single[0] != single[1]


@pytest.mark.parametrize("optim,method", [("auto", "lora"), ("paged_adamw_8bit", "lora"),  # the core's pick on CUDA with QLoRA
                                          ("auto", "full")])
def test_resume_after_interrupt_reaches_same_adapter(optim, method, sft_app, tmp_path):
    """An interrupted run resumed from its last checkpoint ends with the weights of an uninterrupted one:
    a LoRA adapter, or with peft.method=full the whole model."""
    from peft_apps.core.trainer import train

    common = ["train.max_steps=12", "train.save_steps=4", "train.batch_size=8", "peft.dropout=0.1",
              "train.report_to=[]", f"train.optim={optim}", f"peft.method={method}"]
    if method == "full":
        common += ["peft.modules_to_save=[]", "train.lr=1e-3"]
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    ra = _recipe(sft_app, tmp_path, "straight", *common)
    rb = _recipe(sft_app, tmp_path, "interrupted", *common)
    recs = sft_app.training_records(ra, "train")
    train(ra, recs)
    part = train(rb, recs, stop_after_steps=6)
    assert part.metrics == {"interrupted_at_step": 6}
    assert not (tmp_path / "interrupted" / weights).exists()
    resumed = train(rb, recs, resume=True)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-6")
    run_files = [p for p in (tmp_path / "interrupted").rglob("*") if p.is_file()]
    assert not [p for p in run_files if p.suffix in (".pt", ".pth", ".bin", ".pkl")], "pickle file in the run"
    a = load_file(str(tmp_path / "straight" / weights))
    b = load_file(str(tmp_path / "interrupted" / weights))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_resume_without_checkpoint_is_clear_error(sft_app, tmp_path):
    from peft_apps.core import UserError
    from peft_apps.core.trainer import train

    r = _recipe(sft_app, tmp_path, "none")
    with pytest.raises(UserError, match="no checkpoint found"):
        train(r, sft_app.training_records(r, "train"), resume=True)


def test_merge_reproduces_adapter_outputs(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from peft_apps.core.engine import Engine
    from peft_apps.core.merge import merge_adapter

    app, r, res = trained
    merged_dir = merge_adapter(res.output_dir, tmp_path / "merged")
    engine = Engine.from_pretrained(None, res.output_dir, dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).to(engine.device)
    text = engine.tokenizer.apply_chat_template(app.training_records(r, "eval")[0].prompt, tokenize=False,
                                                add_generation_prompt=True)
    ids = engine.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(engine.device)
    with torch.no_grad():
        assert torch.allclose(engine.model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


def test_engine_stop_strings_and_sampling(trained):
    from peft_apps.core.engine import Engine

    app, r, res = trained
    ev = [x for x in app.training_records(r, "eval") if x.completion == "animal"][:2]
    engine = Engine.from_pretrained(None, res.output_dir)
    greedy = engine.chat([x.prompt for x in ev], max_new_tokens=4)
    assert greedy == ["animal", "animal"]
    assert engine.chat([x.prompt for x in ev], max_new_tokens=4, stop=["m"]) == ["ani", "ani"]
    s1 = engine.chat([x.prompt for x in ev], max_new_tokens=4, do_sample=True, temperature=5.0, seed=1)
    s2 = engine.chat([x.prompt for x in ev], max_new_tokens=4, do_sample=True, temperature=5.0, seed=1)
    assert s1 == s2  # seeded sampling is reproducible


def test_task_metrics_while_training_select_the_adapter(sft_app, tmp_path):
    """Every eval_steps the app's own metrics run on the eval slice; the run keeps the best adapter by the
    headline metric; that adapter, evaluated offline, gives the number logged for it; and evaluating
    mid-training leaves training as it was (same final weights as a run without task metrics)."""
    from peft_apps.core import loop
    from peft_apps.core.trainer import train

    common = ["train.max_steps=16", "train.eval_steps=4", "train.eval_examples=12", "train.batch_size=8",
              "train.lr=3e-3", "train.warmup_ratio=0", "eval.limit=12"]
    r = _recipe(sft_app, tmp_path, "select", *common, "train.select_by=auto")
    exs = loop.examples(sft_app, r, "eval")[:12]
    res = train(r, sft_app.training_records(r, "train"), sft_app.training_records(r, "eval"),
                task_eval=loop.task_evaluator(sft_app, r, exs), headline=sft_app.headline)
    hist = [h for h in res.metrics["eval_history"] if "eval_exact_match" in h]
    assert [h["step"] for h in hist][:4] == [4, 8, 12, 16] and all("eval_loss" in h for h in hist)
    best = max(hist, key=lambda h: h["eval_exact_match"])  # the first of equal values is kept
    sel = res.metrics["selected"]
    assert sel["metric"] == "exact_match" and sel["step"] == best["step"]
    assert sel["value"] == best["eval_exact_match"]
    out = res.output_dir
    assert (out / "adapter_model.safetensors").read_bytes() == (out / "best" / "adapter_model.safetensors").read_bytes()
    offline = loop.evaluate(sft_app, str(out), r.model_copy(update={}), "eval")
    assert offline["exact_match"] == pytest.approx(sel["value"])
    assert (out / "loss.png").stat().st_size > 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert "eval/exact_match" in acc.Tags()["scalars"]

    plain = _recipe(sft_app, tmp_path, "plain", *common)
    res2 = train(plain, sft_app.training_records(plain, "train"), sft_app.training_records(plain, "eval"))
    with_eval = load_file(str(out / "checkpoints" / "checkpoint-16" / "adapter_model.safetensors"))
    without = load_file(str(res2.output_dir / "adapter_model.safetensors"))
    for k in without:
        assert torch.equal(with_eval[k], without[k]), k


def test_select_by_needs_evaluations(sft_app, tmp_path):
    from peft_apps.core import UserError
    from peft_apps.core.trainer import train

    r = _recipe(sft_app, tmp_path, "x", "train.select_by=loss")
    with pytest.raises(UserError, match="eval_steps"):
        train(r, sft_app.training_records(r, "train")[:8])


def test_a_run_folder_holds_one_run(sft_app, tmp_path):
    """A finished run (checkpoint-8); a new run in its folder is refused, or with force replaces it. The new
    run (another learning rate) is interrupted at step 4 and resumed: from its own checkpoint-4, not the old
    run's checkpoint-8, with the old learning rate refused unless allowed."""
    import json
    import shutil

    from peft_apps.core import UserError
    from peft_apps.core.trainer import train

    common = ["train.save_steps=4", "train.batch_size=8", "train.report_to=[]", "train.save_total_limit=1"]
    old = _recipe(sft_app, tmp_path, "run", "train.max_steps=8", *common)
    recs = sft_app.training_records(old, "train")[:64]
    train(old, recs)
    folder = tmp_path / "run"
    first = json.loads((folder / "run.json").read_text())
    assert json.loads((folder / "checkpoints" / "checkpoint-8" / "run.json").read_text())["run_id"] == first["run_id"]
    new = _recipe(sft_app, tmp_path, "run", "train.max_steps=8", "train.lr=1e-3", *common)
    with pytest.raises(UserError, match="already holds a run"):
        train(new, recs)
    assert (folder / "checkpoints" / "checkpoint-8").is_dir()  # nothing touched
    part = train(new, recs, stop_after_steps=4, force=True)
    assert part.metrics == {"interrupted_at_step": 4}
    assert sorted(p.name for p in (folder / "checkpoints").glob("checkpoint-*")) == ["checkpoint-4"]  # the old run: gone
    second = json.loads((folder / "run.json").read_text())["run_id"]
    assert second != first["run_id"]
    # resuming with another recipe than the checkpoint's is refused, naming the setting
    with pytest.raises(UserError, match=r"train.lr: 0.001 -> 0.005"):
        train(_recipe(sft_app, tmp_path, "run", "train.max_steps=8", "train.lr=5e-3", *common), recs, resume=True)
    # a checkpoint of another run is refused
    foreign = folder / "checkpoints" / "checkpoint-6"
    shutil.copytree(folder / "checkpoints" / "checkpoint-4", foreign)
    (foreign / "run.json").write_text(json.dumps({**first, "trajectory": {}}))
    with pytest.raises(UserError, match="belongs to run"):
        train(new, recs, resume=True)
    shutil.rmtree(foreign)
    resumed = train(new, recs, resume=True)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-4") and resumed.metrics["steps"] == 8
    assert json.loads((folder / "checkpoints" / "checkpoint-8" / "run.json").read_text())["run_id"] == second


def test_a_folder_of_other_files_is_never_a_run_folder(sft_app, tmp_path):
    from peft_apps.core import UserError
    from peft_apps.core.trainer import train

    r = _recipe(sft_app, tmp_path, ".", "train.max_steps=1")  # the folder holding the data files
    with pytest.raises(UserError, match="not empty and holds no run"):
        train(r, sft_app.training_records(r, "train")[:8], force=True)
    assert (tmp_path / "train.jsonl").is_file()
