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

One module per target, the parity check shared by all:

    __init__.py  `export()`: the target's files in a work folder, the parity check, then OUT (or OUT.failed)
    merged.py    merged weights
    vllm.py      vLLM's LoRA folder
    gguf.py      llama.cpp's converter and quantizer, the GGUF's metadata, parity in llama-cpp-python
    ollama.py    the Modelfile: its TEMPLATE from the training template, the Go-template renderer
    parity.py    the prompts, the adapter's reference outputs, greedy and teacher-forced top-1 comparisons
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peft_apps.core.errors import UserError

from .gguf import GGUF_NAME, _export_gguf, _gguf_metadata, _parity_gguf, converter
from .merged import _export_merged
from .ollama import check_modelfile, go_template, modelfile, render_go
from .parity import AGREEMENT, MAX_NEW_TOKENS, Parity, _parity, _prompts
from .vllm import _export_vllm

__all__ = ["AGREEMENT", "GGUF_NAME", "MAX_NEW_TOKENS", "QUANTS", "TARGETS", "Parity", "_gguf_metadata", "check_modelfile",
           "check_target",
           "converter", "export", "go_template", "modelfile", "render_go"]


TARGETS = ("merged", "vllm", "gguf", "ollama")


QUANTS = ("f16", "q8_0", "q4_k_m")


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
    from peft_apps.core.bases import _offline_hint, resolve_model

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
