"""Benchmark: `peft-apps serve` under concurrent load, requests/s against the same requests sent one at a time.

One server on loopback holds the `small` offline model (~32M parameters) with four runs, one per app
(autore, codereview, testgen, exam), each a LoRA adapter with random weights (the benchmark measures the
serving path, not answers; an untrained adapter mostly writes to its token budget, which is the heavy
case). The requests mix the four app endpoints over real bundled data: Re-DocRED documents (autore
extract), the files of a real commit's diff (codereview review), the functions of a small package
(testgen generate, 2 candidates each) and ZNO questions (exam answer).

The same request list runs twice on the same warm server: one at a time (one client), then from N
concurrent clients. It prints requests/s of both, their ratio (the issue's target: at least 4x at 16
clients on 2 cores), p50/p99 latency of the concurrent run, the error count, and the server's decoding
counters (tokens per decoding step shows how many rows each step carried).

    python eval/bench_serve.py [--clients 16] [--requests 32] [--model builtin:small] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
APPS = ("autore", "codereview", "testgen", "exam")
COUNTERS = ("steps", "tokens", "prefills", "prefill_tokens", "shared_prefix_tokens", "joined_running", "prefill_s",
            "step_s")


def make_run(out: Path, app_name: str, base: str, seed: int) -> Path:
    """A run folder of `app_name`'s demo recipe on `base` with a random LoRA adapter (q, v, o)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_apps.core.config import load_recipe
    from peft_apps.core.modeling import resolve_base
    from peft_apps.core.registry import get_app

    recipe = load_recipe(get_app(app_name).recipe_path("demo"), [f"model.base={base}", "model.quantization=none",
                                                                  "peft.modules_to_save=[]"], app=app_name)
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve_base(base)),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False,
                                      task_type="CAUSAL_LM"))
    model.save_pretrained(out)
    (out / "recipe.yaml").write_text(recipe.to_yaml())
    return out


def requests(n: int) -> list[tuple[str, dict]]:
    """`n` app requests over the bundled data, the four apps taking turns."""
    docs = json.loads((DATA / "autore" / "redocred_dev_sample.json").read_text())
    texts = [" ".join(" ".join(s) for s in d["sents"]) for d in docs]
    diff = (DATA / "codereview" / "itsdangerous-0e255fc.diff").read_text()
    files = ["diff --git" + part for part in diff.split("diff --git")[1:]]
    modules = sorted((DATA / "testgen" / "textkit" / "textkit").glob("*.py"))
    modules = [(f"textkit/{p.name}", p.read_text()) for p in modules if p.name != "__init__.py"]
    questions = [json.loads(line) for line in (DATA / "exam" / "unlp-sample.jsonl").read_text().splitlines() if line]
    per_app = {
        "autore": [("/v1/apps/autore/extract", {"text": t}) for t in texts],
        "codereview": [("/v1/apps/codereview/review", {"diff": f}) for f in files],
        "testgen": [("/v1/apps/testgen/generate", {"source": src, "path": path, "n": 2}) for path, src in modules],
        "exam": [("/v1/apps/exam/answer", {"question": q["question"],
                                           "options": [[c["marker"], c["text"]] for c in q["choices"]]})
                 for q in questions],
    }
    out = []
    for i in range(n):
        app = APPS[i % len(APPS)]
        items = per_app[app]
        out.append(items[(i // len(APPS)) % len(items)])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(url: str, item: tuple[str, dict]) -> tuple[float, bool]:
    import httpx

    t0 = time.perf_counter()
    try:
        ok = httpx.post(url + item[0], json=item[1], timeout=1200).status_code == 200
    except httpx.HTTPError:
        ok = False
    return time.perf_counter() - t0, ok


def run_load(url: str, items: list, clients: int) -> dict:
    t0 = time.perf_counter()
    if clients == 1:
        results = [send(url, it) for it in items]
    else:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda it: send(url, it), items))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    return {"seconds": round(wall, 2), "requests_per_s": round(len(items) / wall, 3),
            "p50_s": round(statistics.median(lat), 3), "p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3),
            "errors": sum(1 for r in results if not r[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--model", "--base", default="builtin:small", help="any model.base: builtin:small, builtin:smollm2-135m, a folder, a .gguf")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    import httpx

    from peft_apps.core.quiet import quiet

    quiet()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    for i, app in enumerate(APPS):
        make_run(work / f"{app}-run", app, args.model, i)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", "from peft_apps.core.cli import main; main()", "serve",
                             *[str(work / f"{a}-run") for a in APPS], "--port", str(port),
                             "--max-batch", "64", "--max-waiting", "4096"], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ))
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                sys.exit(f"the server exited: {(work / 'serve.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > 300:
                sys.exit("the server did not start")
            time.sleep(0.5)
        items = requests(args.requests)
        for app_item in {it[0]: it for it in items}.values():  # warm every path once
            send(url, app_item)
        h0 = httpx.get(url + "/health").json()
        one = run_load(url, items, 1)
        h1 = httpx.get(url + "/health").json()
        many = run_load(url, items, args.clients)
        h2 = httpx.get(url + "/health").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    ratio = many["requests_per_s"] / one["requests_per_s"]
    report = {"model": args.model, "requests": args.requests, "clients": args.clients, "one_at_a_time": one,
              "concurrent": many, "ratio": round(ratio, 2),
              "tokens_per_step_one_at_a_time": round((h1["tokens"] - h0["tokens"]) / max(1, h1["steps"] - h0["steps"]), 2),
              "tokens_per_step_concurrent": round((h2["tokens"] - h1["tokens"]) / max(1, h2["steps"] - h1["steps"]), 2),
              "server_one_at_a_time": {k: round(h1[k] - h0.get(k, 0), 2) for k in COUNTERS if k in h1},
              "server_concurrent": {k: round(h2[k] - h1.get(k, 0), 2) for k in COUNTERS if k in h2},
              "cpu": os.cpu_count()}
    print(json.dumps(report, indent=2))
    print(f"requests/s: {one['requests_per_s']:.3f} one at a time, {many['requests_per_s']:.3f} with "
          f"{args.clients} clients: {ratio:.2f}x (target 4x); p50 {many['p50_s']:.2f} s, p99 {many['p99_s']:.2f} s, "
          f"{many['errors'] + one['errors']} errors")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
