"""`peft-apps serve --engine vllm`: vLLM's OpenAI server for the base, the runs as its LoRA modules, and this
tool's front server on `--port` (app endpoints, `/health`, and the OpenAI endpoints passed through).

vLLM's flags come from the recipes: `--max-lora-rank` (the largest rank in the adapters' configs, rounded up
to a rank vLLM takes), `--max-loras` (the number of runs), `--dtype` (the recipe's compute dtype), `--max-model-len`
(the longest `data.max_length` plus the longest answer budget the apps ask for) and bitsandbytes
quantization for QLoRA runs. vLLM itself listens on loopback, on the port after `--port`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from peft_apps.core.errors import UserError

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max-lora-rank values vLLM accepts
ANSWER_ROOM = 1024  # tokens added to the longest training sequence for prompts longer than trained and answers


def vllm_command(runs: list, base: str | None, port: int, extra: list[str] | None = None) -> list[str]:
    """The command line that starts vLLM's OpenAI server for `runs` (see the module docstring)."""
    if not runs and base is None:
        raise UserError("nothing to serve: give run folders or --base MODEL")
    for r in runs:
        if r.recipe.peft.method not in ("lora", "qlora", "rslora"):
            raise UserError(f"{r.name}: vLLM serves LoRA adapters; this run is {r.recipe.peft.method}",
                            hint="serve it with --engine local, or merge it (peft-apps merge) and serve the merged model")
        if r.recipe.peft.modules_to_save:
            raise UserError(f"{r.name}: the run trains {', '.join(r.recipe.peft.modules_to_save)} in full "
                            f"(peft.modules_to_save), which vLLM's LoRA cannot load",
                            hint="serve it with --engine local, or merge it (peft-apps merge) and serve the merged model")
    from peft_apps.core.bases import resolve_base, resolve_model

    model = runs[0].model if runs else None
    name = base or model.base
    rank = max((adapter_rank(r.folder) for r in runs), default=8)
    rank = next((v for v in VLLM_RANKS if v >= rank), rank)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(model) if model is not None and not base else resolve_base(name),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)]
    if model is not None and model.revision:
        cmd += ["--revision", model.revision]
    if model is not None and model.trust_remote_code:
        cmd += ["--trust-remote-code"]
    if model is not None and model.dtype != "auto":
        cmd += ["--dtype", model.dtype]
    if model is not None and model.quantization == "nf4":
        cmd += ["--quantization", "bitsandbytes"]
    if runs:
        longest = max(r.recipe.data.max_length for r in runs)
        cmd += ["--max-model-len", str(longest + ANSWER_ROOM), "--enable-lora", "--max-lora-rank", str(rank),
                "--max-loras", str(len(runs)), "--lora-modules", *[f"{r.name}={Path(r.folder).resolve()}" for r in runs]]
    return cmd + list(extra or [])


def adapter_rank(folder: Path) -> int:
    """The largest LoRA rank in an adapter folder (`r`, or a larger one in its `rank_pattern`)."""
    import json

    cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
    return max([int(cfg.get("r") or 8), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())])


def check_vllm() -> None:
    """One line when vLLM cannot run here: not installed, or no GPU."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise UserError("--engine vllm needs vLLM, which is not installed", hint='pip install -e ".[vllm]" on a GPU machine')
    import torch

    if not torch.cuda.is_available():
        raise UserError("--engine vllm needs a GPU, and this machine has none", hint="serve with --engine local")


def vllm_served(runs: list, base: str | None, host: str, port: int, limits, extra: list[str], console: Any):
    """Start vLLM on port+1, wait until it answers, and return the front server's wiring over it."""
    import atexit

    from peft_apps.core.engine.remote import Endpoint, remote_engine

    from .served import Served

    check_vllm()
    from .runs import check_port

    check_port("127.0.0.1", port + 1)
    cmd = vllm_command(runs, base, port + 1, extra)
    if console is not None:
        console.print("starting vLLM: " + " ".join(cmd), highlight=False, soft_wrap=True)
    proc = subprocess.Popen(cmd)
    atexit.register(proc.terminate)
    url = f"http://127.0.0.1:{port + 1}"
    _wait_healthy(proc, url)
    first = runs[0] if runs else None
    engine = remote_engine(Endpoint(url, ",".join(f"{r.name}={r.name}" for r in runs) or None),
                           base if first is None else None,
                           {r.name: r.folder for r in runs} if runs else None)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()

    from peft_apps.core.engine.rows import RowEngine

    served = Served(tokenizer=engine.tokenizer, base=base or first.model.base,
                    runs={r.name: r.folder for r in runs}, run_apps={r.name: r.recipe.app for r in runs},
                    context=engine.context_length, start_rows=None,  # the OpenAI endpoints go to vLLM as they are
                    engine=lambda names, cancel: RowEngine(engine.tokenizer, names, engine.complete,
                                                           engine.context_length),
                    load=lambda: {"engine": "vllm"}, owned_by="vllm", close=stop, proxy=url)
    return served


def _wait_healthy(proc, url: str, timeout: float = 1800) -> None:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise UserError(f"vLLM exited with code {proc.returncode} before it served (its log is above)")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    proc.terminate()
    raise UserError(f"vLLM did not answer at {url} within {timeout:.0f} s")
