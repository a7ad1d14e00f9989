"""Run folders for the server tests: a LoRA adapter with random (non-zero) weights on the tiny base for an
app's demo recipe, made in a second (no training: the tests compare generation paths, not quality)."""

import subprocess
import sys
import time
from pathlib import Path


def make_run(out: Path, app_name: str, seed: int = 0, *overrides: str, rank: int = 4,
             base: str = "builtin:tiny") -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_apps.core.config import load_recipe
    from peft_apps.core.registry import get_app
    from peft_apps.core.tiny import builtin_model_path

    app = get_app(app_name)
    recipe = load_recipe(app.recipe_path("demo"), [f"model.base={base}", "model.quantization=none",
                                                   "model.dtype=float32", "peft.modules_to_save=[]", *overrides],
                         app=app_name)
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(builtin_model_path(base.removeprefix("builtin:"))),
                           LoraConfig(r=rank, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                      init_lora_weights=False, task_type="CAUSAL_LM"))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "recipe.yaml").write_text(recipe.to_yaml())
    return out


def start_server(argv: list[str], cwd: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """`peft-apps serve` with `argv` (after `serve`, `--port` among them) through the console script's entry
    point; returned once /health answers (its log in `log` when it exits or does not answer in 180 s)."""
    import httpx

    port = argv[argv.index("--port") + 1]
    proc = subprocess.Popen([sys.executable, "-c", "from peft_apps.core.cli import main; main()", "serve", *argv],
                            cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not answer: {log.read_text()[-3000:]}")
