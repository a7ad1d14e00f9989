"""`--to gguf` (and the GGUF of `--to ollama`): llama.cpp's `convert_hf_to_gguf.py`, `llama-quantize` where it is
built, the file's metadata, and parity in llama-cpp-python."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError

from .merged import _export_merged
from .ollama import check_modelfile, modelfile
from .parity import AGREEMENT, MAX_NEW_TOKENS, Parity, _adapter_tokens, _entry, _reference, _template_problems


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
