"""The parity check every export passes: fixed prompts through the adapter and through the export, greedy
outputs and teacher-forced top-1 agreement compared, the report (`parity.json`, `parity.md`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError


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
