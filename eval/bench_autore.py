"""Benchmark: AutoRE documents/s, the batched shared-prefix pipeline vs the sequential RHF loop.

Both run on the same model (`--model`: the `small` offline model, ~32M parameters, by default;
`builtin:1b` for GPU shapes) with a randomly initialised LoRA adapter on q/v, and the same real
Re-DocRED dev documents, teacher-forced: every generate call of the three stages is made, but the
relations and heads that drive the next stage come from the gold labels and each call decodes as many
tokens as its gold answer has. So both do exactly the reference's stage structure (1 + |relations| +
|(relation, head)| calls per document) whatever the untrained model says. Greedy decoding in both. In fp32 (`--dtype float32`, the default) the raw text of every call must
be identical in both, or it fails; in bf16 batching changes rounding, so the share of documents whose
outputs match is reported instead.

    python eval/bench_autore.py [--model builtin:small] [--dtype float32] [--docs 8] [--start 0]
                                [--batch 128] [--lookahead 10] [--data DEV.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "redocred" / "dev_revised.json"


def make_adapter(out: Path, base: str = "builtin:small", dtype: str = "float32") -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_apps.core.config import ModelConfig
    from peft_apps.core.bases import resolve_base

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_base(base)),
                           LoraConfig(r=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                      task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    cfg = ModelConfig(base=base, quantization="none", dtype=dtype)
    (out / "recipe.yaml").write_text(f"app: autore\nmodel: {json.dumps(cfg.model_dump())}\n")
    return out


def gold_lookup_rate(pipe, docs, lookahead: int) -> float:
    """Answer tokens per forward pass that prompt-lookup speculation would reach for a model that writes
    the gold answers (each forward pass keeps its agreeing drafts plus one token of its own). The random
    adapter here repeats itself, which drafts predict well; this says what to expect of a trained one."""
    from peft_apps.apps.autore.docred import stage_examples
    from peft_apps.core.data import render_prompt
    from peft_apps.core.engine import Drafter
    from peft_apps.core.prompts import render

    tok = pipe.engine.tokenizer
    ex = stage_examples(docs)
    tokens = forwards = 0
    for stage, recs in (("relation", ex.relation), ("head", ex.head), ("facts", ex.facts)):
        for r in recs:
            fields = {k: v for k, v in r.items() if k not in ("id", "doc", "completion")}
            prompt = render_prompt(tok, [{"role": "user", "content": render("autore", stage, **fields)}])
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            answer = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            d, done = Drafter([list(ids)]), 0
            while done < len(answer):
                draft = d.draft(0, lookahead)
                k = 0
                while k < len(draft) and done + k < len(answer) and draft[k] == answer[done + k]:
                    k += 1
                for t in answer[done:done + k + 1]:
                    d.push(0, t)
                done += k + 1
                forwards += 1
            tokens += len(answer)
    return tokens / forwards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lookahead", type=int, default=10, help="prompt-lookup draft tokens (0: no speculation)")
    ap.add_argument("--model", default="builtin:small", help="base model: builtin:small|1b|8b, a folder or hub id")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="model dtype; outputs must be identical in float32 only")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if not a.data.is_file():
        sys.exit(f"error: {a.data} not found (pass --data PATH to a DocRED-format JSON file)")
    from peft_apps.core.quiet import quiet

    quiet()
    import torch

    from peft_apps.apps.autore.docred import load_docs
    from peft_apps.apps.autore.pipeline import AutoRE

    docs = [d for d in load_docs(a.data)[a.start:] if d.get("labels")][: a.docs]
    with tempfile.TemporaryDirectory() as tmp:
        pipe = AutoRE.from_pretrained(None, str(make_adapter(Path(tmp) / "adapter", a.model, a.dtype)),
                                      batch_size=a.batch, lookahead=a.lookahead)
    torch.set_num_threads(torch.get_num_threads())
    # warm-up (allocator, kernels) on one document, outside the timings
    pipe.extract(docs[0], teacher_forced=True)
    t = time.perf_counter()
    slow = [pipe.extract_sequential(d, teacher_forced=True) for d in docs]
    seq_s = time.perf_counter() - t
    pipe.engine.decode_stats.update(forwards=0, tokens=0, drafted=0, accepted=0)
    t = time.perf_counter()
    fast = pipe.extract(docs, teacher_forced=True)
    fast_s = time.perf_counter() - t
    st = dict(pipe.engine.decode_stats)
    calls = matching = 0
    for d, x, y in zip(docs, slow, fast):
        rs, rf = x.raw["windows"][0], y.raw["windows"][0]
        same = (rs["relation"], rs["head"], rs["facts"]) == (rf["relation"], rf["head"], rf["facts"]) \
            and x.triples == y.triples
        if not same and a.dtype == "float32":
            sys.exit(f"outputs differ on document {d['title']!r}: the pipelines are not equivalent")
        matching += same
        calls += 1 + len(rs["head"]) + len(rs["facts"])
    summary = {
        "documents": len(docs), "calls_per_document": round(calls / len(docs), 1),
        "sequential_s": round(seq_s, 2), "pipeline_s": round(fast_s, 2),
        "sequential_docs_per_s": round(len(docs) / seq_s, 4), "pipeline_docs_per_s": round(len(docs) / fast_s, 4),
        "docs_per_s_ratio": round(seq_s / fast_s, 2),
        "outputs_identical": matching == len(docs), "documents_matching": round(matching / len(docs), 3),
        "model": a.model, "dtype": a.dtype, "device": str(pipe.engine.device),
        "mode": "teacher-forced, greedy, random LoRA",
        "batch_size": a.batch, "lookahead": a.lookahead,
        "pipeline_decode": {**st, "tokens_per_forward": round(st["tokens"] / max(1, st["forwards"]), 2),
                            "draft_acceptance": round(st["accepted"] / max(1, st["drafted"]), 3)},
        "gold_answers_tokens_per_forward": round(gold_lookup_rate(pipe, docs, pipe.options.lookahead), 2),
    }
    print(json.dumps(summary))
    print(f"AutoRE pipeline vs sequential RHF: {summary['docs_per_s_ratio']}x documents/s "
          f"({summary['pipeline_docs_per_s']} vs {summary['sequential_docs_per_s']}) on {a.model} {a.dtype} "
          f"{summary['device']}, {summary['documents_matching']:.0%} of documents with identical outputs, "
          f"{summary['calls_per_document']} calls per document; prompt-lookup drafts: "
          f"{summary['pipeline_decode']['draft_acceptance']:.0%} accepted "
          f"(gold answers would give {summary['gold_answers_tokens_per_forward']} tokens per forward per row)")
    if a.out:
        a.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
