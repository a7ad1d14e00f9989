"""QLoRA vs 16-bit LoRA training steps on a GPU: peak memory and tokens/s (see gpu_check.sh).

Needs torch with CUDA, transformers, peft and (for QLoRA) bitsandbytes; nothing from a hub: the model
is a randomly initialised Llama with TinyLlama-1.1B shapes. Each mode runs `--steps` optimizer steps
of batch x seq tokens after 3 warm-up steps; the median step time gives tokens/s.

    python3 eval/gpu_check.py [--steps 10] [--batch 4] [--seq 1024] [--out gpu_check.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time


SHAPES = {
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
    # a few-second smoke run of this script's code paths (CPU included)
    "smoke": dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
}


def run(mode: str, steps: int, batch: int, seq: int, shape: str = "1b", device: str = "cuda") -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape])
    cuda = device == "cuda"
    torch.manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    if mode == "qlora":
        import bitsandbytes as bnb  # noqa: F401
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # quantize through the standard loading path
            model.save_pretrained(tmp)
            del model
            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=q,
                                                         device_map={"": 0} if cuda else "cpu",
                                                         dtype=torch.bfloat16)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model = model.to(device)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for i in range(steps + 3):
        sync()
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= 3:
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    out = {"mode": mode, "params": sum(p.numel() for p in model.parameters()), "batch": batch, "seq": seq,
           "median_step_s": round(med, 4), "tokens_per_s": round(batch * seq / med, 1),
           "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if cuda else None,
           "final_loss": round(loss.item(), 4)}
    del model, opt
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, runs on CPU too: checks the code paths")
    a = ap.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.smoke:
        raise SystemExit("gpu_check needs a CUDA GPU (or --smoke for a CPU check of the script)")
    shape = "smoke" if a.smoke else "1b"
    results = [run("lora16", a.steps, a.batch, a.seq, shape, device), run("qlora", a.steps, a.batch, a.seq, shape, device)]
    for r in results:
        print(json.dumps(r))
    l16, q = results
    if device == "cpu":
        print("smoke run on CPU: code paths work; no GPU figures")
        return
    print(f"{torch.cuda.get_device_name(0)}: QLoRA peak {q['peak_gpu_mib']:.0f} MiB vs LoRA-16bit "
          f"{l16['peak_gpu_mib']:.0f} MiB ({q['peak_gpu_mib'] / l16['peak_gpu_mib']:.2f}x); tokens/s "
          f"{q['tokens_per_s']:.0f} vs {l16['tokens_per_s']:.0f} ({q['tokens_per_s'] / l16['tokens_per_s']:.2f}x)")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
