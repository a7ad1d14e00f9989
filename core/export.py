"""`peft-apps export`: a run as merged weights or as the LoRA folder vLLM loads, checked against the adapter
before it is handed over.

    merged   HF safetensors of base + adapter (4-bit bases dequantized, `core.merge`), the tokenizer with the
             chat template, and a generation_config whose eos ids end a turn
    vllm     the adapter as vLLM loads it (safetensors, its own config, the base resolved to a path or hub id,
             the tokenizer), and the `vllm serve ... --enable-lora --lora-modules ...` line

The parity check (on by default; `--no-check` skips it): fixed prompts (the app's eval records, or
`--prompts FILE`) go through the adapter in the engine and through the export (transformers for
`merged`, a plain-peft reload for `vllm`). Per prompt it records greedy-output equality, teacher-forced
top-1 agreement over the adapter's output and the first differing token. The export fails when a greedy
output differs (fp32), when agreement falls below 1.0, or when the chat template or the end-of-turn ids
are missing. The report goes to `parity.json` and `parity.md` in the export. A failed export is left in
`OUT.failed/` with its report, never in `OUT`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError

TARGETS = ("merged", "vllm", "gguf", "ollama")
BUILT = ("merged", "vllm")
MAX_NEW_TOKENS = 24


@dataclass
class Parity:
    target: str
    prompts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and all(p["equal"] and p["agreement"] >= 1.0 for p in self.prompts)

    def as_dict(self) -> dict[str, Any]:
        n = len(self.prompts)
        return {"target": self.target, "passed": self.passed, "prompts": n,
                "greedy_equal": sum(p["equal"] for p in self.prompts),
                "mean_agreement": round(sum(p["agreement"] for p in self.prompts) / max(1, n), 6),
                "problems": self.problems, "per_prompt": self.prompts}

    def markdown(self) -> str:
        d = self.as_dict()
        lines = [f"# Parity of the {self.target} export: {'passed' if self.passed else 'FAILED'}", "",
                 f"{d['greedy_equal']}/{d['prompts']} greedy outputs equal; mean top-1 agreement "
                 f"{d['mean_agreement']:.4f}"]
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


def check_target(to: str) -> None:
    if to not in TARGETS:
        raise UserError(f"--to {to}: unknown export target", hint="one of: " + ", ".join(TARGETS))
    if to not in BUILT:
        raise UserError(f"--to {to}: the GGUF and Ollama exports are not built yet", hint="--to merged or --to vllm")


def export(adapter: Path, to: str, out: Path, *, prompts_file: Path | None = None, check: bool = True,
           force: bool = False, console=None) -> tuple[Path, Parity | None]:
    """Export `adapter` to `out` (see the module docstring); returns where it went and the parity report."""
    from peft_apps.core import run_folder
    from peft_apps.core.engine import adapter_base_config

    check_target(to)
    adapter, out = Path(adapter), Path(out)
    run_folder.check_run_folder(adapter)
    if run_folder.is_full_model(adapter):
        raise UserError(f"{adapter} is a full fine-tune (peft.method=full): it is already a standalone model")
    for folder in (out, out.with_name(out.name + ".failed")):
        if folder.exists() and any(folder.iterdir()) and not force:
            raise UserError(f"{folder} already exists", hint="pass --force to replace it, or choose another -o")
    mcfg = adapter_base_config(adapter)
    _check_base_available(mcfg.base)
    recipe = _recipe(adapter)
    prompts = _prompts(adapter, recipe, prompts_file)  # bad prompt files fail before any work
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    if to == "merged":
        _export_merged(adapter, work)
    else:
        _export_vllm(adapter, work, recipe)
    parity = None
    if check:
        parity = _parity(adapter, work, to, prompts, console)
        (work / "parity.json").write_text(json.dumps(parity.as_dict(), indent=2, ensure_ascii=False))
        (work / "parity.md").write_text(parity.markdown())
    final = out if parity is None or parity.passed else out.with_name(out.name + ".failed")
    for folder in (out, out.with_name(out.name + ".failed")):
        if folder.exists():
            shutil.rmtree(folder)
    work.rename(final)
    return final, parity


def _check_base_available(base: str) -> None:
    from peft_apps.core.modeling import resolve_base

    if base.startswith("builtin:"):
        return
    path = Path(resolve_base(base)).expanduser()
    if path.exists():
        return
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(base, local_files_only=True, allow_patterns=["config.json"])
    except Exception:  # noqa: BLE001 - not in the local cache, hub offline or unreachable
        raise UserError(f"the run's base model {base!r} is not available here (not a folder, not in the local "
                        "hub cache)", hint="download it first, or point the run at a local copy") from None


def _recipe(adapter: Path):
    from peft_apps.core.config import load_recipe

    path = adapter / "recipe.yaml"
    if not path.is_file():
        raise UserError(f"{adapter} has no recipe.yaml: export needs the run folder `peft-apps train` wrote")
    data = __import__("yaml").safe_load(path.read_text())
    return load_recipe(path, [], app=data.get("app"))


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
    from transformers import GenerationConfig

    from peft_apps.core.engine.decode import stop_ids
    from peft_apps.core.merge import merge_adapter

    merge_adapter(adapter, work)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(work))
    model = AutoModelForCausalLM.from_pretrained(str(work))
    eos = sorted(stop_ids(model, tok))
    gen = GenerationConfig.from_model_config(model.config)
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
        from peft_apps.core.engine import adapter_base_config
        from peft_apps.core.modeling import load_tokenizer

        load_tokenizer(adapter_base_config(adapter)).save_pretrained(str(work))
    rank = adapter_rank(adapter)
    rank = next((v for v in VLLM_RANKS if v >= rank), rank)
    name = adapter.name
    line = (f"vllm serve {cfg['base_model_name_or_path']} --enable-lora --max-lora-rank {rank} "
            f"--lora-modules {name}={work.with_name(work.name.removesuffix('.partial')).resolve()}")
    (work / "vllm_serve.txt").write_text(line + "\n")


def _parity(adapter: Path, work: Path, to: str, prompts, console=None) -> Parity:
    import torch

    from peft_apps.core.data import render_prompt
    from peft_apps.core.engine import Engine, GenerationOptions

    report = Parity(to)
    engine = Engine.from_pretrained(None, adapter, dtype="float32")
    tok = engine.tokenizer
    if to == "merged":
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        exported = AutoModelForCausalLM.from_pretrained(str(work), dtype=torch.float32).eval()
        etok = AutoTokenizer.from_pretrained(str(work))
        gen = GenerationConfig.from_pretrained(str(work))
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = AutoModelForCausalLM.from_pretrained(json.loads((work / "adapter_config.json").read_text())
                                                    ["base_model_name_or_path"], dtype=torch.float32)
        exported = PeftModel.from_pretrained(base, str(work)).eval()
        etok = AutoTokenizer.from_pretrained(str(work))
        eos = None
    from peft_apps.core.engine.decode import stop_ids

    want = sorted(stop_ids(engine.model, tok))
    if not getattr(etok, "chat_template", None):
        report.problems.append("the export's tokenizer has no chat template")
    elif etok.chat_template != tok.chat_template:
        report.problems.append("the export's chat template differs from the one the run trained with")
    if eos is not None and not set(want) <= {e for e in eos if e is not None}:
        report.problems.append(f"generation_config's eos ids {eos} miss the end-of-turn ids {want}")
    for pid, messages in prompts:
        text = render_prompt(tok, messages)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ref = engine.generate_token_ids([ids], options=GenerationOptions(max_new_tokens=MAX_NEW_TOKENS))[0]
        ref = [t for t in ref if t not in want]  # (an end-of-turn id ends the output; the export's is cut too)
        got = _greedy(exported, ids, MAX_NEW_TOKENS, set(want))
        agree, first = _agreement(exported, ids, ref, tok)
        report.prompts.append({"id": pid, "equal": got == ref, "agreement": agree, "first_difference": first,
                               "adapter": tok.decode(ref), "export": tok.decode(got)})
    return report


def _greedy(model, ids: list[int], n: int, stops: set[int]) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=sorted(stops), pad_token_id=sorted(stops)[0])
    new = out[0, len(ids):].tolist()
    for i, t in enumerate(new):
        if t in stops:
            return new[:i]
    return new


def _agreement(model, ids: list[int], ref: list[int], tok) -> tuple[float, dict | None]:
    """Top-1 agreement of `model` with the adapter's greedy tokens `ref`, teacher-forced, and the first
    position where they differ."""
    import torch

    if not ref:
        return 1.0, None
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids + ref])).logits[0, len(ids) - 1:len(ids) - 1 + len(ref)]
    top = logits.argmax(-1).tolist()
    same = [a == b for a, b in zip(top, ref)]
    first = next((i for i, s in enumerate(same) if not s), None)
    where = None if first is None else {"position": first, "adapter": tok.decode([ref[first]]),
                                        "export": tok.decode([top[first]])}
    return sum(same) / len(same), where
