"""`peft-apps export` (core/export.py): merged and vLLM exports of a run, and the parity check that catches
a broken one (a corrupted weight, a lost chat template, a lost end-of-turn id)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.preloaded import run_cli
from helpers.served_runs import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_path) -> Path:
    """A LoRA run of sft's demo recipe with random non-zero weights: the export must keep its answers."""
    return make_run(tmp_path_factory.mktemp("export") / "sft-run", "sft", 3)


def test_merged_export_answers_as_the_adapter_and_keeps_template_and_stop_ids(run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from peft_apps.core.engine import Engine
    from peft_apps.core.engine.decode import stop_ids
    from peft_apps.core.export import export

    path, parity = export(run, "merged", tmp_path / "merged")
    assert path == tmp_path / "merged" and parity.passed, parity.as_dict()
    d = json.loads((path / "parity.json").read_text())
    assert d["prompts"] == 8 and d["greedy_equal"] == 8 and d["top1_agreement"] == 1.0
    assert any(len(p["adapter"]) > 10 for p in d["per_prompt"])  # real outputs were compared, not empty ones
    assert "| prompt | adapter's output | greedy equal |" in (path / "parity.md").read_text()
    # plain transformers loads it; the template and the end-of-turn ids came along
    model = AutoModelForCausalLM.from_pretrained(str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    engine = Engine.from_pretrained(None, run, dtype="float32")
    assert tok.chat_template == engine.tokenizer.chat_template
    eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
    assert set(stop_ids(engine.model, engine.tokenizer)) <= set(eos if isinstance(eos, list) else [eos])
    assert model.config.architectures == ["LlamaForCausalLM"] and not (path / "adapter_config.json").exists()


def test_vllm_export_is_the_lora_folder_with_its_serve_line(run, tmp_path):
    from safetensors.torch import load_file

    from peft_apps.core.export import export

    path, parity = export(run, "vllm", tmp_path / "v")
    assert parity.passed, parity.as_dict()
    line = (path / "vllm_serve.txt").read_text()
    assert "--enable-lora" in line and "--max-lora-rank 8" in line and f"--lora-modules sft-run={path.resolve()}" in line
    assert load_file(str(path / "adapter_model.safetensors")).keys() == load_file(
        str(run / "adapter_model.safetensors")).keys()
    assert (path / "tokenizer_config.json").is_file()


def _broken(monkeypatch, how: str):
    """Break the merged export after it is written, as a faulty converter would (for `--to merged` and for
    the merged model the GGUF targets convert)."""
    from peft_apps.core import export as ex
    from peft_apps.core.export import gguf

    real = ex._export_merged

    def broken(adapter, work):
        real(adapter, work)
        if how == "weight":
            import torch
            from safetensors.torch import load_file, save_file

            f = work / "model.safetensors"
            w = load_file(str(f))
            key = next(k for k in w if k.endswith("layers.0.self_attn.q_proj.weight"))
            w[key] = w[key] + 0.5 * torch.randn_like(w[key])
            save_file(w, str(f), metadata={"format": "pt"})
        elif how == "template":
            (work / "chat_template.jinja").unlink(missing_ok=True)
            cfg = json.loads((work / "tokenizer_config.json").read_text())
            cfg.pop("chat_template", None)
            (work / "tokenizer_config.json").write_text(json.dumps(cfg))
        elif how == "eos":
            gen = json.loads((work / "generation_config.json").read_text())
            gen["eos_token_id"] = 5
            (work / "generation_config.json").write_text(json.dumps(gen))

    monkeypatch.setattr(ex, "_export_merged", broken)
    monkeypatch.setattr(gguf, "_export_merged", broken)


@pytest.mark.parametrize("how,message", [("weight", None), ("template", "has no chat template"),
                                         ("eos", "miss the end-of-turn ids")])
def test_a_broken_export_fails_the_check_and_is_left_aside(run, tmp_path, monkeypatch, how, message):
    from peft_apps.core.export import export

    _broken(monkeypatch, how)
    path, parity = export(run, "merged", tmp_path / "m")
    assert not parity.passed and path == tmp_path / "m.failed" and not (tmp_path / "m").exists()
    d = json.loads((path / "parity.json").read_text())
    if message:
        assert any(message in p for p in d["problems"]), d["problems"]
    else:
        assert d["greedy_equal"] < d["prompts"] and d["top1_agreement"] < 1.0
        first = [p["first_difference"] for p in d["per_prompt"] if p["first_difference"]]
        assert first and "position" in first[0]


def test_export_command_and_its_errors(run, tmp_path):
    out = tmp_path / "cli"
    p = run_cli(["peft-apps", "export", "--adapter", str(run), "--to", "merged", "-o", str(out)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "8/8 greedy outputs equal" in p.stdout + p.stderr
    for args, message in ((["--to", "merged", "-o", str(out)], "already exists"),
                          (["--to", "onnx"], "unknown export target"),
                          
                          (["--to", "merged", "--prompts", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "x")],
                           "none.jsonl")):
        p = run_cli(["peft-apps", "export", "--adapter", str(run), *args], cwd=tmp_path)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    p = run_cli(["peft-apps", "export", "--adapter", str(tmp_path), "--to", "merged"], cwd=tmp_path)
    assert p.returncode == 2 and "not an adapter folder" in p.stderr
    # a run whose base is a hub model this machine does not have: refused before any work
    import shutil

    elsewhere = tmp_path / "hub-run"
    shutil.copytree(run, elsewhere)
    recipe = (elsewhere / "recipe.yaml").read_text().replace("base: builtin:tiny", "base: someorg/not-downloaded-7b")
    (elsewhere / "recipe.yaml").write_text(recipe)
    p = run_cli(["peft-apps", "export", "--adapter", str(elsewhere), "--to", "merged"], cwd=tmp_path)
    assert p.returncode == 2 and "'someorg/not-downloaded-7b' is not available here" in p.stderr, p.stderr[-2000:]
    assert not list(tmp_path.glob("hub-run-*"))


# ---- GGUF and Ollama: llama.cpp's converter, checked in llama-cpp-python ------------------------------------
# The base is builtin:tiny-qwen2.5: Qwen2's real BPE tokenizer and chat template, a layout llama.cpp's
# converter recognizes (builtin:tiny's own small BPE is not, and the converter refuses it).

needs_llama_cpp = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("export-gguf") / "qwen-run", "sft", 5, base="builtin:tiny-qwen2.5")


@needs_llama_cpp
def test_gguf_export_runs_in_llama_cpp_as_the_adapter(qwen_run, tmp_path):
    from peft_apps.core.export import _gguf_metadata, export

    path, parity = export(qwen_run, "gguf", tmp_path / "g")
    d = parity.as_dict()
    assert parity.passed and d["threshold"] == 0.98, d
    assert d["top1_agreement"] >= 0.98 and d["greedy_equal"] >= 7 and not d["problems"]
    meta = _gguf_metadata(path / "model-f16.gguf")
    assert "<|im_start|>" in meta["tokenizer.chat_template"] and meta["general.architecture"] == "qwen2"
    assert meta["tokenizer.ggml.eos_token_id"] == 151645  # <|im_end|>: the end of a turn


@needs_llama_cpp
def test_ollama_export_has_a_modelfile_that_renders_the_training_template(qwen_run, tmp_path):
    from transformers import AutoTokenizer

    from peft_apps.core.export import render_go, export

    path, parity = export(qwen_run, "ollama", tmp_path / "o", quant="q8_0")
    # q8_0's threshold; a random tiny model's near-tied logits are the hardest case for it (measured: 0.948),
    # so whichever way it falls, the verdict must be the threshold's and the Modelfile must be right
    assert parity.threshold == 0.95 and not parity.problems, parity.as_dict()
    assert parity.passed == (parity.agreement >= 0.95) and parity.agreement > 0.85
    assert path.name == ("o" if parity.passed else "o.failed")
    text = (path / "Modelfile").read_text()
    assert text.startswith("FROM ./model-q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in text
    assert (path / "ollama_create.txt").read_text().startswith(f"ollama create qwen-run -f {(tmp_path / 'o').resolve()}/Modelfile")
    template = text.split('TEMPLATE """')[1].split('"""')[0]
    tok = AutoTokenizer.from_pretrained(str(path))
    for conv in ([{"role": "user", "content": "Тип сутності 'Київ'?"}],
                 [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Rome?"}]):
        system = conv[0]["content"] if len(conv) == 2 else ""
        assert render_go(template, System=system, Prompt=conv[-1]["content"]) == tok.apply_chat_template(
            conv, tokenize=False, add_generation_prompt=True)


@needs_llama_cpp
def test_a_gguf_without_the_chat_template_fails_the_check(qwen_run, tmp_path, monkeypatch):
    from peft_apps.core.export import export

    _broken(monkeypatch, "template")
    path, parity = export(qwen_run, "gguf", tmp_path / "g")
    assert not parity.passed and path.name == "g.failed"
    assert any("no chat template" in p for p in parity.problems), parity.problems


@needs_llama_cpp
def test_gguf_refusals(run, tmp_path):
    p = run_cli(["peft-apps", "export", "--adapter", str(run), "--to", "gguf", "-o", str(tmp_path / "g")],
                cwd=tmp_path)
    assert p.returncode == 2 and "llama.cpp's converter refused the model" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "g").exists() and not (tmp_path / "g.partial").exists()
    for args, message in ((["--quant", "q3"], "unknown quantization"), (["--quant", "q4_k_m"], "llama-quantize"),
                          (["--to", "merged", "--quant", "q8_0"], "--quant is for --to gguf")):
        argv = ["peft-apps", "export", "--adapter", str(run), *(args if "--to" in args else ["--to", "gguf", *args])]
        p = run_cli(argv, cwd=tmp_path)
        assert p.returncode == 2 and message in p.stderr, p.stderr[-2000:]
