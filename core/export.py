"""`peft-apps export`: a run as merged weights, a GGUF (llama.cpp, Ollama) or the LoRA folder vLLM loads,
checked against the adapter before it is handed over.

    merged   HF safetensors of base + adapter (4-bit bases dequantized, `core.merge`), the tokenizer with the
             chat template, and a generation_config whose eos ids end a turn
    gguf     the merged model through llama.cpp's own `convert_hf_to_gguf.py` (chat template and eos id in the
             metadata), f16 or q8_0 by the converter, q4_k_m by llama.cpp's `llama-quantize` where it is built
    ollama   the GGUF and a Modelfile: TEMPLATE cut from the training template's rendered pieces, PARAMETER
             stop for each end-of-turn token, and the `ollama create` line
    vllm     the adapter as vLLM loads it (safetensors, its own config, the base resolved to a path or hub id,
             the tokenizer), and the `vllm serve ... --enable-lora --lora-modules ...` line

The parity check (on by default; `--no-check` skips it): fixed prompts (the app's eval records, or
`--prompts FILE`) go through the adapter in the engine and through the export (transformers for
`merged`, a plain-peft reload for `vllm`, llama-cpp-python for `gguf` / `ollama`). Per prompt it records
greedy-output equality, teacher-forced top-1 agreement over the adapter's output and the first differing
token. The export fails when the chat template or the end-of-turn ids are missing, when a greedy output
differs (merged and vllm: fp32, exact) or when top-1 agreement falls below the quantization's threshold
(`AGREEMENT`: f16 0.98, q8_0 0.95, q4_k_m 0.85), when llama.cpp tokenizes a prompt differently, or when the
Modelfile's TEMPLATE renders a prompt differently from the training template. The report goes to
`parity.json` and `parity.md` in the export. A failed export is left in `OUT.failed/` with its report,
never in `OUT`.

Why a Go-template renderer here (`render_go`): no Python package renders Ollama's templates, and the check
must render the Modelfile it wrote; it renders exactly the subset `go_template` writes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError

TARGETS = ("merged", "vllm", "gguf", "ollama")
QUANTS = ("f16", "q8_0", "q4_k_m")
# Top-1 agreement with the adapter (teacher-forced over its greedy output) a GGUF must reach, per quantization:
# f16 rounds the fp32 weights once; q8_0 keeps 8 bits per weight; q4_k_m about 4.8.
AGREEMENT = {"f16": 0.98, "q8_0": 0.95, "q4_k_m": 0.85}
MAX_NEW_TOKENS = 24


@dataclass
class Parity:
    target: str
    prompts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    threshold: float = 1.0  # the least top-1 agreement that passes
    exact: bool = True  # greedy outputs must be equal (fp32 exports)

    @property
    def agreement(self) -> float:
        """Top-1 agreement over every compared position of every prompt."""
        n = sum(p["positions"] for p in self.prompts)
        return sum(p["agreement"] * p["positions"] for p in self.prompts) / n if n else 1.0

    @property
    def passed(self) -> bool:
        if self.problems:
            return False
        if self.exact:  # fp32 exports: every greedy output equal, every position agreeing
            return all(p["equal"] and p["agreement"] >= 1.0 for p in self.prompts)
        return self.agreement >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        n = len(self.prompts)
        return {"target": self.target, "passed": self.passed, "prompts": n, "threshold": self.threshold,
                "greedy_equal": sum(p["equal"] for p in self.prompts),
                "top1_agreement": round(self.agreement, 6),
                "problems": self.problems, "per_prompt": self.prompts}

    def markdown(self) -> str:
        d = self.as_dict()
        lines = [f"# Parity of the {self.target} export: {'passed' if self.passed else 'FAILED'}", "",
                 f"{d['greedy_equal']}/{d['prompts']} greedy outputs equal; top-1 agreement "
                 f"{d['top1_agreement']:.4f} over all positions (to pass: "
                 f"{'every output equal' if self.exact else f'at least {self.threshold}'})"]
        lines += [""] + [f"- {p}" for p in self.problems] if self.problems else []
        lines += ["", "| prompt | adapter's output | greedy equal | top-1 agreement | first differing token |",
                  "|---|---|---|---|---|"]
        for p in self.prompts:
            first = p["first_difference"]
            where = "-" if first is None else f"{first['position']}: {first['adapter']!r} vs {first['export']!r}"
            shown = p["adapter"].replace("|", "\\|").replace("\n", " ")
            shown = shown if len(shown) <= 40 else shown[:39] + "…"
            lines.append(f"| {p['id']} | `{shown}` | {'yes' if p['equal'] else 'no'} | {p['agreement']:.4f} | {where} |")
        return "\n".join(lines) + "\n"


def check_target(to: str, quant: str | None = None) -> None:
    """An unknown target or quantization, or a quantization that needs llama.cpp's tools where they are not
    built: one message before any work."""
    if to not in TARGETS:
        raise UserError(f"--to {to}: unknown export target", hint="one of: " + ", ".join(TARGETS))
    if quant is not None and to not in ("gguf", "ollama"):
        raise UserError(f"--quant is for --to gguf / ollama (--to {to} keeps the weights' own precision)")
    if quant is not None and quant not in QUANTS:
        raise UserError(f"--quant {quant}: unknown quantization", hint="one of: " + ", ".join(QUANTS))
    if quant == "q4_k_m" and shutil.which("llama-quantize") is None:
        raise UserError("--quant q4_k_m needs llama.cpp's llama-quantize, which is not on PATH",
                        hint="build llama.cpp's tools (cmake -B build && cmake --build build -t llama-quantize), "
                             "or --quant f16 / q8_0 (written by the converter itself)")
    if to in ("gguf", "ollama"):
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None:
            raise UserError(f"--to {to} needs llama-cpp-python and gguf (the check runs the GGUF in llama.cpp)",
                            hint='pip install -e ".[export]"')


def export(adapter: Path, to: str, out: Path, *, quant: str | None = None, prompts_file: Path | None = None,
           check: bool = True, force: bool = False) -> tuple[Path, Parity | None]:
    """Export `adapter` to `out` (see the module docstring); returns where it went and the parity report."""
    from peft_apps.core import run_folder

    check_target(to, quant)
    quant = quant or ("f16" if to in ("gguf", "ollama") else None)
    adapter, out = Path(adapter), Path(out)
    run_folder.check_run_folder(adapter)
    if run_folder.is_full_model(adapter):
        raise UserError(f"{adapter} is a full fine-tune (peft.method=full): it is already a standalone model")
    for folder in (out, out.with_name(out.name + ".failed")):
        if folder.exists() and any(folder.iterdir()) and not force:
            raise UserError(f"{folder} already exists", hint="pass --force to replace it, or choose another -o")
    recipe = _recipe(adapter)
    _check_base_available(recipe.model)
    prompts = _prompts(adapter, recipe, prompts_file)  # bad prompt files fail before any work
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        if to == "merged":
            _export_merged(adapter, work)
        elif to == "vllm":
            _export_vllm(adapter, work, recipe)
        else:
            _export_gguf(adapter, work, quant, ollama=to == "ollama")
        parity = None
        if check:
            parity = (_parity(adapter, work, to, prompts) if to in ("merged", "vllm")
                      else _parity_gguf(adapter, work, to, quant, prompts))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # nothing half-written stays behind
        raise
    if parity is not None:
        (work / "parity.json").write_text(json.dumps(parity.as_dict(), indent=2, ensure_ascii=False))
        (work / "parity.md").write_text(parity.markdown())
    final = out if parity is None or parity.passed else out.with_name(out.name + ".failed")
    for folder in (out, out.with_name(out.name + ".failed")):
        if folder.exists():
            shutil.rmtree(folder)
    work.rename(final)
    return final, parity


def _check_base_available(model) -> None:
    """Before any work: the run's base is here (a GGUF base: the same file the run trained on)."""
    from peft_apps.core.gguf import is_real_builtin
    from peft_apps.core.modeling import _offline_hint, resolve_model

    base = model.base
    if base.startswith("builtin:") and not is_real_builtin(base):
        return  # built offline on first use
    path = Path(resolve_model(model)).expanduser()  # a GGUF base is checked (its SHA-256 too) and converted here
    if path.exists():
        return
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(base, local_files_only=True, allow_patterns=["config.json"])
    except Exception:  # noqa: BLE001 - not in the local cache, hub offline or unreachable
        raise UserError(f"the run's base model {base!r} is not available here (not a folder, not in the local "
                        "hub cache)", hint=_offline_hint(base)) from None


def _recipe(adapter: Path):
    from peft_apps.core.config import load_recipe

    path = adapter / "recipe.yaml"
    if not path.is_file():
        raise UserError(f"{adapter} has no recipe.yaml: export needs the run folder `peft-apps train` wrote")
    return load_recipe(path)


def _prompts(adapter: Path, recipe, prompts_file: Path | None, limit: int = 8) -> list[tuple[str, list[dict]]]:
    """(id, chat messages) of the prompts the check runs: `--prompts FILE` (JSONL with `prompt` as text or
    messages, or one text a line), else the first eval records of the run's app."""
    if prompts_file is not None:
        from peft_apps.core.io import read_text

        out = []
        for n, line in enumerate(read_text(prompts_file).splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = line
            prompt = obj.get("prompt") if isinstance(obj, dict) else obj
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            if not isinstance(prompt, list) or not prompt:
                raise UserError(f"{prompts_file}:{n}: field 'prompt': give a text or a list of chat messages")
            out.append((str(obj.get("id", n)) if isinstance(obj, dict) else str(n), prompt))
        if not out:
            raise UserError(f"{prompts_file}: no prompts in it")
        return out
    from peft_apps.core import loop
    from peft_apps.core.registry import get_app

    app = get_app(recipe.app)
    split = loop.splits(app, recipe)
    records = app.train_records(split["eval"] or split["train"], recipe)[:limit]
    if not records:
        raise UserError(f"the run's app {recipe.app} has no eval records to check with", hint="pass --prompts FILE")
    return [(r.id, r.prompt) for r in records]


def _export_merged(adapter: Path, work: Path) -> None:
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from peft_apps.core.engine.decode import stop_ids
    from peft_apps.core.merge import merge_adapter

    merge_adapter(adapter, work)
    tok = AutoTokenizer.from_pretrained(str(work))
    # the generation config the merged model loads with (its file, else one from its config), read without
    # loading its weights again
    try:
        gen = GenerationConfig.from_pretrained(str(work))
    except OSError:
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(work)))
    eos = sorted(stop_ids(SimpleNamespace(generation_config=gen), tok))
    gen.eos_token_id = eos if len(eos) > 1 else eos[0]
    gen.pad_token_id = tok.pad_token_id
    gen.save_pretrained(str(work))


def _export_vllm(adapter: Path, work: Path, recipe) -> None:
    from peft_apps.core.serve.vllm import VLLM_RANKS, adapter_rank

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{adapter}: vLLM loads LoRA adapters; this one is {cfg.get('peft_type')}",
                        hint="--to merged")
    if cfg.get("modules_to_save"):
        raise UserError(f"{adapter}: the run trains {', '.join(cfg['modules_to_save'])} in full "
                        "(peft.modules_to_save), which vLLM's LoRA cannot load", hint="--to merged")
    if cfg.get("use_dora"):
        raise UserError(f"{adapter}: vLLM does not load DoRA adapters", hint="--to merged")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise UserError(f"{adapter} has no adapter_model.safetensors")
    work.mkdir(parents=True)
    for f in adapter.iterdir():
        if f.is_file() and (f.name.startswith(("adapter_", "tokenizer", "special_tokens", "chat_template"))
                            or f.name in ("recipe.yaml", "README.md")):
            shutil.copy2(f, work / f.name)
    if not (work / "tokenizer_config.json").is_file():  # a run folder without its tokenizer: the base's
        from peft_apps.core.modeling import load_tokenizer

        load_tokenizer(recipe.model).save_pretrained(str(work))
    rank = adapter_rank(adapter)
    rank = next((v for v in VLLM_RANKS if v >= rank), rank)
    name = adapter.name
    line = (f"vllm serve {cfg['base_model_name_or_path']} --enable-lora --max-lora-rank {rank} "
            f"--lora-modules {name}={work.with_name(work.name.removesuffix('.partial')).resolve()}")
    (work / "vllm_serve.txt").write_text(line + "\n")


def _reference(adapter: Path):
    """The adapter in the engine, in fp32 (what every export is checked against), and its end-of-turn ids."""
    from peft_apps.core.engine import Engine
    from peft_apps.core.engine.decode import stop_ids

    engine = Engine.from_pretrained(None, adapter, dtype="float32")
    return engine, sorted(stop_ids(engine.model, engine.tokenizer))


def _adapter_tokens(engine, ids: list[int], stops: list[int]) -> list[int]:
    """The adapter's greedy tokens after `ids`; an end-of-turn id ends them (the export's are cut there too)."""
    from peft_apps.core.engine import GenerationOptions

    ref = engine.generate_token_ids([ids], options=GenerationOptions(max_new_tokens=MAX_NEW_TOKENS))[0]
    return [t for t in ref if t not in stops]


def _template_problems(template: str | None, tok, where: str) -> list[str]:
    if not template:
        return [f"{where} has no chat template"]
    if template != tok.chat_template:
        return [f"the chat template in {where} differs from the one the run trained with"]
    return []


def _entry(pid: str, ref: list[int], got: list[int], top: list[int], tok) -> dict[str, Any]:
    """One prompt's line of the report: the export's greedy tokens `got` and its teacher-forced top-1 tokens
    `top` against the adapter's `ref`."""
    same = [a == b for a, b in zip(top, ref)]
    first = next((i for i, x in enumerate(same) if not x), None)
    return {"id": pid, "equal": got == ref, "agreement": sum(same) / len(same) if same else 1.0,
            "positions": len(same),
            "first_difference": None if first is None else {"position": first, "adapter": tok.decode([ref[first]]),
                                                            "export": tok.decode([top[first]])},
            "adapter": tok.decode(ref), "export": tok.decode(got)}


def _parity(adapter: Path, work: Path, to: str, prompts) -> Parity:
    """The merged model (transformers) or the vLLM folder (a plain-peft reload) against the adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_apps.core.data import render_prompt

    report = Parity(to)
    engine, want = _reference(adapter)
    tok = engine.tokenizer
    if to == "merged":
        from transformers import GenerationConfig

        exported = AutoModelForCausalLM.from_pretrained(str(work), dtype=torch.float32).eval()
        gen = GenerationConfig.from_pretrained(str(work))
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        if not set(want) <= {e for e in eos if e is not None}:
            report.problems.append(f"generation_config's eos ids {eos} miss the end-of-turn ids {want}")
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(json.loads((work / "adapter_config.json").read_text())
                                                    ["base_model_name_or_path"], dtype=torch.float32)
        exported = PeftModel.from_pretrained(base, str(work)).eval()
    etok = AutoTokenizer.from_pretrained(str(work))
    report.problems += _template_problems(getattr(etok, "chat_template", None), tok, "the export's tokenizer")
    for pid, messages in prompts:
        ids = tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"]
        ref = _adapter_tokens(engine, ids, want)
        report.prompts.append(_entry(pid, ref, _greedy(exported, ids, MAX_NEW_TOKENS, set(want)),
                                     _top1(exported, ids, ref), tok))
    return report


def _greedy(model, ids: list[int], n: int, stops: set[int]) -> list[int]:
    import torch

    with torch.inference_mode():
        dev = model.device
        out = model.generate(input_ids=torch.tensor([ids], device=dev),
                             attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=dev), max_new_tokens=n,
                             do_sample=False, eos_token_id=sorted(stops), pad_token_id=sorted(stops)[0])
    new = out[0, len(ids):].tolist()
    for i, t in enumerate(new):
        if t in stops:
            return new[:i]
    return new


def _top1(model, ids: list[int], ref: list[int]) -> list[int]:
    """`model`'s top-1 token at each of the adapter's output positions, teacher-forced on `ref`."""
    import torch

    if not ref:
        return []
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids + ref], device=model.device)).logits
    return logits[0, len(ids) - 1:len(ids) - 1 + len(ref)].argmax(-1).tolist()


# ---- GGUF and Ollama ---------------------------------------------------------------------------------------

GGUF_NAME = "model-{quant}.gguf"


def converter() -> Path:
    """llama.cpp's `convert_hf_to_gguf.py`: `$PEFT_APPS_LLAMA_CPP` (a llama.cpp checkout), else the copy
    vendored in the source package of the installed llama-cpp-python, fetched once from the package index
    into the cache (its converter, gguf-py and conversion/ only)."""
    import os
    import subprocess
    import sys
    import tarfile
    import tempfile
    from importlib.metadata import version

    env = os.environ.get("PEFT_APPS_LLAMA_CPP")
    if env:
        path = Path(env).expanduser() / "convert_hf_to_gguf.py"
        if not path.is_file():
            raise UserError(f"PEFT_APPS_LLAMA_CPP={env}: no convert_hf_to_gguf.py there")
        return path
    v = version("llama-cpp-python")
    home = Path(os.environ.get("PEFT_APPS_CACHE", Path.home() / ".cache" / "peft-apps")) / f"llama.cpp-{v}"
    script = home / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", f"llama-cpp-python=={v}", "--no-deps",
                            "--no-binary", ":all:", "-d", tmp], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if p.returncode != 0 or not sdists:
            raise UserError(f"could not fetch llama-cpp-python {v}'s source package for llama.cpp's converter",
                            hint="set PEFT_APPS_LLAMA_CPP to a llama.cpp checkout")
        keep = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/gguf-py/", "vendor/llama.cpp/conversion/")
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers() if any(k in m.name for k in keep) and m.isfile()]
            stage = Path(tmp) / "x"
            tar.extractall(stage, members=members, filter="data")
        src = next(stage.glob("*/vendor/llama.cpp"))
        home.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(src, home)
    return script


def _export_gguf(adapter: Path, work: Path, quant: str, ollama: bool) -> None:
    """The merged model through llama.cpp's converter (chat template and end-of-turn ids in the metadata);
    q4_k_m through llama-quantize. With `ollama`, a Modelfile beside it."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged"
        _export_merged(adapter, merged)
        work.mkdir(parents=True)
        gguf = work / GGUF_NAME.format(quant=quant)
        first = "f16" if quant == "q4_k_m" else quant
        target = gguf if first == quant else Path(tmp) / "f16.gguf"
        p = subprocess.run([sys.executable, str(converter()), str(merged), "--outfile", str(target), "--outtype",
                            first], capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise UserError("llama.cpp's converter refused the model: " + " / ".join(tail),
                            hint="an architecture or tokenizer llama.cpp does not know cannot go to GGUF: --to merged")
        if quant == "q4_k_m":
            p = subprocess.run(["llama-quantize", str(target), str(gguf), "Q4_K_M"], capture_output=True, text=True)
            if p.returncode != 0:
                raise UserError("llama-quantize failed: " + (p.stderr or p.stdout).strip().splitlines()[-1])
        for f in ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
            if (merged / f).is_file():
                shutil.copy2(merged / f, work / f)
    if ollama:
        (work / "Modelfile").write_text(modelfile(work, gguf.name))
        final = work.with_name(work.name.removesuffix(".partial")).resolve()
        (work / "ollama_create.txt").write_text(f"ollama create {adapter.name} -f {final}/Modelfile\n")


def _gguf_metadata(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = {}
    for key in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                "tokenizer.ggml.bos_token_id", "general.architecture"):
        field = reader.fields.get(key)
        if field is None:
            continue
        value = field.parts[field.data[0]]
        out[key] = bytes(value).decode("utf-8") if value.dtype.kind == "u" and value.dtype.itemsize == 1 \
            else int(value[0])
    return out


def _parity_gguf(adapter: Path, work: Path, to: str, quant: str, prompts) -> Parity:
    """The GGUF in llama.cpp (llama-cpp-python) against the adapter in the engine: the same token ids from
    llama.cpp's own tokenizer, the template and end-of-turn ids in the metadata, greedy outputs and top-1
    agreement (the threshold of the quantization)."""
    import numpy as np
    from llama_cpp import Llama

    from peft_apps.core.data import render_prompt

    report = Parity(to, threshold=AGREEMENT[quant], exact=False)
    engine, want = _reference(adapter)
    tok = engine.tokenizer
    gguf = work / GGUF_NAME.format(quant=quant)
    meta = _gguf_metadata(gguf)
    report.problems += _template_problems(meta.get("tokenizer.chat_template"), tok,
                                          "the GGUF's metadata (tokenizer.chat_template)")
    ends = {meta.get("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.eot_token_id")} - {None}
    if not ends & set(want):
        report.problems.append(f"the GGUF's eos/eot ids {sorted(ends)} miss the end-of-turn ids {want}")
    if to == "ollama":
        report.problems += check_modelfile(work / "Modelfile", tok, [m for _, m in prompts], want)
    rows = [(pid, text, tok(text, add_special_tokens=False)["input_ids"])
            for pid, text in ((pid, render_prompt(tok, m)) for pid, m in prompts)]
    llm = Llama(model_path=str(gguf), n_ctx=max(len(ids) for _, _, ids in rows) + MAX_NEW_TOKENS + 8,
                logits_all=True, verbose=False, n_threads=2, seed=0)
    for pid, text, ids in rows:
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if theirs != ids:
            report.problems.append(f"prompt {pid}: llama.cpp tokenizes it differently ({len(theirs)} vs {len(ids)} "
                                   "tokens)")
        ref = _adapter_tokens(engine, ids, want)
        llm.reset()
        llm.eval(ids + ref)
        scores = np.asarray(llm.scores[: len(ids) + len(ref)])
        top = scores[len(ids) - 1: len(ids) - 1 + len(ref)].argmax(-1).tolist() if ref else []
        got = []
        llm.reset()
        for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if t in want or len(got) >= MAX_NEW_TOKENS:
                break
            got.append(int(t))
        report.prompts.append(_entry(pid, ref, got, top, tok))
    return report


# ---- Ollama's Modelfile --------------------------------------------------------------------------------------

PROBE = {"system": "\x01SYS\x01", "user": "\x01USER\x01"}


def _pieces(tokenizer) -> dict[str, str]:
    """The training template cut, by rendering probe conversations, into what comes before and after the
    system text, before the user text with and without a system turn, and after it up to where the model
    answers: the parts Ollama's `.System` / `.Prompt` / `.Response` template says."""
    def render(msgs):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    s, u = PROBE["system"], PROBE["user"]
    both = render([{"role": "system", "content": s}, {"role": "user", "content": u}])
    alone = render([{"role": "user", "content": u}])
    if both.count(s) != 1 or both.count(u) != 1 or alone.count(u) != 1:
        raise UserError("the chat template could not be cut into the pieces of a Modelfile TEMPLATE",
                        hint="--to gguf, and write the Modelfile's TEMPLATE by hand")
    system_open, rest = both.split(s)
    between, answer_open = rest.split(u)
    user_open, answer_open_alone = alone.split(u)
    if answer_open != answer_open_alone:
        raise UserError("the chat template opens the answer differently with and without a system turn: "
                        "a Modelfile TEMPLATE cannot say it", hint="--to gguf")
    return {"system_open": system_open, "between": between, "user_open": user_open, "answer_open": answer_open}


def go_template(p: dict[str, str]) -> str:
    """Ollama's template for the pieces (Go template syntax)."""
    return ("{{ if .System }}" + p["system_open"] + "{{ .System }}" + p["between"] + "{{ else }}" + p["user_open"]
            + "{{ end }}{{ .Prompt }}" + p["answer_open"] + "{{ .Response }}")


def render_go(template: str, **values: str) -> str:
    """Render the Go-template subset `go_template` writes (`{{ .X }}`, `{{ if .X }}...{{ else }}...{{ end }}`),
    as Ollama would; anything else is an error. The check renders the Modelfile with it."""
    import re

    out, stack = [], [True]  # stack: whether the current branch is emitted
    for part in re.split(r"({{.*?}})", template, flags=re.S):
        m = re.fullmatch(r"{{\s*(.*?)\s*}}", part, flags=re.S)
        if not m:
            if all(stack):
                out.append(part)
            continue
        action = m.group(1)
        if action.startswith("if "):
            stack.append(bool(values.get(action[3:].strip().lstrip("."), "")))
        elif action == "else":
            stack[-1] = not stack[-1]
        elif action == "end":
            stack.pop()
        elif re.fullmatch(r"\.\w+", action):
            if all(stack):
                out.append(values.get(action[1:], ""))
        else:
            raise ValueError(f"unsupported template action {{{{ {action} }}}}")
    return "".join(out)


def _stop_texts(tok, want: list[int]) -> list[str]:
    return sorted({tok.decode([i]) for i in want} - {""})


def modelfile(work: Path, gguf_name: str) -> str:
    """A Modelfile: the GGUF, a TEMPLATE built from the training template's pieces, and the end-of-turn
    tokens as stop parameters."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(work))
    gen = json.loads((work / "generation_config.json").read_text()).get("eos_token_id")
    want = gen if isinstance(gen, list) else [gen]
    template = go_template(_pieces(tok))
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in _stop_texts(tok, want)]
    return "\n".join(lines) + "\n"


def check_modelfile(path: Path, tok, conversations, want: list[int]) -> list[str]:
    """What keeps the Modelfile from reproducing the training template on these prompts, or from stopping at
    the end-of-turn tokens (empty: nothing)."""
    import re

    text = path.read_text()
    m = re.search(r'TEMPLATE """(.*?)"""', text, flags=re.S)
    if not m:
        return ["the Modelfile has no TEMPLATE"]
    problems = []
    stops = set(json.loads(s) for s in re.findall(r"^PARAMETER stop (.+)$", text, flags=re.M))
    missing = set(_stop_texts(tok, want)) - stops
    if missing:
        problems.append(f"the Modelfile does not stop at {sorted(missing)}")
    for n, messages in enumerate(conversations):
        roles = [x["role"] for x in messages]
        if roles not in (["user"], ["system", "user"]):
            problems.append(f"prompt {n}: a {'/'.join(roles)} conversation does not fit .System/.Prompt")
            continue
        want_text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        system = messages[0]["content"] if roles[0] == "system" else ""
        if render_go(m.group(1), System=system, Prompt=messages[-1]["content"]) != want_text:
            problems.append(f"prompt {n}: the Modelfile's TEMPLATE renders it differently from the training template")
            break
    return problems
