"""Benchmark: `peft-apps serve` under concurrent load: requests/s against the same requests sent one at a
time, with the prefix cache on and off, chunked prefill on and off.

One server on loopback holds the `small` offline model (~32M parameters; `--base` takes any other, e.g.
builtin:smollm2-135m) with four runs, one per app (autore, codereview, testgen, exam), each a LoRA adapter
with random weights (the benchmark measures the serving path, not answers; an untrained adapter mostly
writes to its token budget, which is the heavy case). Three request mixes over real bundled data:

    present      the four app endpoints taking turns: Re-DocRED documents (autore extract), the files of a
                 real commit's diff (codereview review), the functions of a small package (testgen
                 generate, 2 candidates each) and ZNO questions (exam answer)
    pr           a CI job reviewing one pull request: one review request per hunk of the diff's largest file
    voting       exam voting: every question asked by 4 requests of 3 samples each (their own seeds)

Each configuration runs on a fresh server (an empty cache), warmed by one small request per endpoint,
`--repeats` times (3) in round robin; the run of median requests/s is reported:

    one-nocache      one client, no prefix cache, whole-prompt prefill: the baseline (today's server)
    one-cache        one client, the prefix cache on
    N-nocache        N concurrent clients, no prefix cache (chunked prefill on)
    N-cache          N clients, prefix cache and chunked prefill on: the server's defaults
    N-cache-whole    N clients, prefix cache on, chunked prefill off (p99 with and without chunking)

It prints, per mix and configuration: requests/s and its ratio to the baseline (the issue's target: at
least 4x at 16 clients on the present mix, 2 cores), p50/p99 latency, prompt tokens sent and prefill tokens
computed, cache hits and tokens saved, and the server's prefill and decoding seconds. The prefill bound is
the baseline's wall time over the seconds the best configuration spent prefilling the tokens it had to
compute: no schedule of that work could reach a higher ratio. Where prompt tokens ride along with a
decoding step (`mixed_steps`; the server's way on a CPU), the server counts as prefill the time such a
step took beyond the plain step before it. Results go to a JSON file and a markdown table.

`--dtype bfloat16` runs every server in bfloat16 (`serve --dtype`; the default is the server's own
choice, float32 on a CPU). On a CPU with AMX, bfloat16 matmuls of 20 rows or more run several times faster
than float32 ones, while one row's run slower: batching gains more.

    python eval/bench_serve.py [--clients 16] [--requests 32] [--base builtin:small] [--mixes present,pr,voting]
                               [--repeats 3] [--dtype bfloat16] [--out eval/results/serve]
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
COUNTERS = ("steps", "tokens", "prefills", "prompt_tokens", "prefill_tokens", "shared_prefix_tokens", "joined_running",
            "mixed_steps", "prefill_s", "step_s", "join_s", "step_cache_tokens", "step_padding_tokens", "step_read_tokens", "cache_hits", "cache_misses", "cache_evictions", "cache_tokens_saved")
CONFIGS = {  # name: (clients (0: --clients), prefix cache, chunked prefill)
    "one-nocache": (1, False, False),
    "one-cache": (1, True, True),
    "N-nocache": (0, False, True),
    "N-cache": (0, True, True),
    "N-cache-whole": (0, True, False),
}
WARM = [
    ("/v1/apps/autore/extract", {"text": "Ada Lovelace was born in London ."}),
    ("/v1/apps/codereview/review", {"diff": "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n"
                                            " import os\n-x = 1\n+x = 2\n"}),
    ("/v1/apps/testgen/generate", {"source": "def one():\n    return 1\n", "path": "one.py", "n": 1}),
    ("/v1/apps/exam/answer", {"question": "2 + 2 = ?", "options": [["А", "3"], ["Б", "4"]]}),
]


def make_run(out: Path, app_name: str, base: str, seed: int) -> Path:
    """A run folder of `app_name`'s demo recipe on `base` with a random LoRA adapter (q, v, o)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_apps.core.config import load_recipe
    from peft_apps.core.bases import resolve_base
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


def _bundled():
    docs = json.loads((DATA / "autore" / "redocred_dev_sample.json").read_text())
    texts = [" ".join(" ".join(s) for s in d["sents"]) for d in docs]
    diff = (DATA / "codereview" / "itsdangerous-0e255fc.diff").read_text()
    files = ["diff --git" + part for part in diff.split("diff --git")[1:]]
    modules = sorted((DATA / "testgen" / "textkit" / "textkit").glob("*.py"))
    modules = [(f"textkit/{p.name}", p.read_text()) for p in modules if p.name != "__init__.py"]
    questions = [json.loads(line) for line in (DATA / "exam" / "unlp-sample.jsonl").read_text().splitlines() if line]
    return texts, files, modules, questions


def _exam_body(q: dict, **extra) -> dict:
    return {"question": q["question"], "options": [[c["marker"], c["text"]] for c in q["choices"]], **extra}


def requests(n: int, mix: str = "present") -> list[tuple[str, dict]]:
    """`n` requests of `mix` over the bundled data (see the module docstring)."""
    texts, files, modules, questions = _bundled()
    if mix == "pr":
        largest = max(files, key=lambda f: f.count("\n@@ "))
        header, *hunks = largest.split("\n@@ ")
        items = [("/v1/apps/codereview/review", {"diff": header + "\n@@ " + h}) for h in hunks]
        return [items[i % len(items)] for i in range(n)]
    if mix == "voting":
        items = [("/v1/apps/exam/answer", _exam_body(q, samples=3, seed=s)) for q in questions for s in range(4)]
        return [items[i % len(items)] for i in range(n)]
    per_app = {
        "autore": [("/v1/apps/autore/extract", {"text": t}) for t in texts],
        "codereview": [("/v1/apps/codereview/review", {"diff": f}) for f in files],
        "testgen": [("/v1/apps/testgen/generate", {"source": src, "path": path, "n": 2}) for path, src in modules],
        "exam": [("/v1/apps/exam/answer", _exam_body(q)) for q in questions],
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


def measure(work: Path, items: list, clients: int, cache: bool, chunked: bool, chunk: int = 2048,
            dtype: str | None = None) -> dict:
    """One configuration on a fresh server: warm-up, the load, the server's counters over the load."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", "from peft_apps.core.cli import main; main()", "serve",
                             *[str(work / f"{a}-run") for a in APPS], "--port", str(port),
                             "--max-batch", "64", "--max-waiting", "4096",
                             "--prefix-cache-mb", "1024" if cache else "0", "--prefill-chunk", str(chunk) if chunked else "0",
                             *(["--dtype", dtype] if dtype else [])],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
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
        for item in WARM:
            send(url, item)
        h0 = httpx.get(url + "/health").json()
        load = run_load(url, items, clients)
        h1 = httpx.get(url + "/health").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    server = {k: round(h1[k] - h0.get(k, 0), 2) for k in COUNTERS if k in h1}
    server["tokens_per_step"] = round(server.get("tokens", 0) / max(1, server.get("steps", 0)), 2)
    return {"clients": clients, "prefix_cache": cache, "chunked_prefill": chunked, **load, "server": server}


def cpu_model() -> str:
    """The CPU's name and whether it has AMX and AVX-512 BF16: what decides bfloat16's pace here."""
    import torch

    name = ""
    try:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "")
    except OSError:
        pass
    flags = [f"{flag}: {'yes' if getattr(torch.cpu, check, lambda: False)() else 'no'}"
             for flag, check in (("AMX", "_is_amx_tile_supported"), ("AVX-512 BF16", "_is_avx512_bf16_supported"))]
    return ", ".join([name or "CPU", *flags])


def table(report: dict) -> str:
    lines = [f"model {report['model']} ({report.get('dtype', 'the server default')}), {report['requests']} requests "
             f"per run, {report['clients']} clients, {report['cpu']} CPUs"
             f"{' (' + report['cpu_model'] + ')' if report.get('cpu_model') else ''}; each configuration run "
             f"{report.get('repeats', 1)} times, the run of median requests/s shown", "",
             "| mix | configuration | requests/s | every run | x baseline | p50 s | p99 s | prompt tokens | computed | "
             "cache hits | tokens saved | prefill s | decode s | errors |", "|" + "---|" * 14]
    for mix, m in report["mixes"].items():
        for name, r in m["runs"].items():
            sv = r["server"]
            every = ", ".join(f"{x:.2f}" for x in r.get("requests_per_s_runs", [r["requests_per_s"]]))
            lines.append(f"| {mix} | {name.replace('N', str(report['clients']))} | {r['requests_per_s']:.3f} | {every} | "
                         f"{r['ratio']:.2f} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | {int(sv.get('prompt_tokens', 0))} | "
                         f"{int(sv.get('prefill_tokens', 0))} | {int(sv.get('cache_hits', 0))} | "
                         f"{int(sv.get('cache_tokens_saved', 0))} | {sv.get('prefill_s', 0):.1f} | "
                         f"{sv.get('step_s', 0):.1f} | {r['errors']} |")
    lines += ["", "| mix | best ratio | prefill bound | share of the bound |", "|---|---|---|---|"]
    for mix, m in report["mixes"].items():
        lines.append(f"| {mix} | {m['best_ratio']:.2f} | {m['prefill_bound']:.2f} | {m['share_of_bound']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--model", "--base", default="builtin:small", help="any model.base: builtin:small, builtin:smollm2-135m, a folder, a .gguf")
    ap.add_argument("--mixes", default="present,pr,voting", help="comma-separated: present, pr, voting")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configurations (see above)")
    ap.add_argument("--prefill-chunk", type=int, default=2048, help="the server's --prefill-chunk where chunking is on")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each configuration (round robin); the median "
                    "requests/s is reported")
    ap.add_argument("--dtype", default=None, help="the servers' --dtype (default: the server's own choice)")
    ap.add_argument("--out", type=Path, default=None, help="write bench_serve.json and bench_serve.md here")
    args = ap.parse_args()
    from peft_apps.core.quiet import quiet

    quiet()
    mixes = [m.strip() for m in args.mixes.split(",") if m.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for name in configs:
        if name not in CONFIGS:
            sys.exit(f"--configs: unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
    for mix in mixes:
        if mix not in ("present", "pr", "voting"):
            sys.exit(f"--mixes: unknown mix {mix!r}; known: present, pr, voting")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    for i, app in enumerate(APPS):
        make_run(work / f"{app}-run", app, args.model, i)
    report = {"model": args.model, "dtype": args.dtype or "the server's default", "requests": args.requests,
              "clients": args.clients, "repeats": args.repeats, "cpu": os.cpu_count(), "cpu_model": cpu_model(),
              "mixes": {}}
    for mix in mixes:
        items = requests(args.requests, mix)
        tries: dict[str, list[dict]] = {name: [] for name in configs}
        for attempt in range(args.repeats):  # round robin: a slow spell of the machine hits every configuration
            for name in configs:
                clients, cache, chunked = CONFIGS[name]
                r = measure(work, items, clients or args.clients, cache, chunked, args.prefill_chunk, args.dtype)
                tries[name].append(r)
                print(f"{mix:8s} {name:20s} {r['requests_per_s']:.3f} requests/s, p99 {r['p99_s']:.2f} s, "
                      f"computed {r['server'].get('prefill_tokens', 0):.0f} of "
                      f"{r['server'].get('prompt_tokens', 0):.0f} prompt tokens ({attempt + 1}/{args.repeats})", flush=True)
        runs = {}
        for name, rs in tries.items():  # the run of median requests/s, with every run's figure beside it
            runs[name] = sorted(rs, key=lambda r: r["requests_per_s"])[len(rs) // 2]
            runs[name]["requests_per_s_runs"] = [r["requests_per_s"] for r in rs]
        base = runs.get("one-nocache") or next(iter(runs.values()))
        for r in runs.values():
            r["ratio"] = round(r["requests_per_s"] / base["requests_per_s"], 2)
        best_name = max(runs, key=lambda n: runs[n]["requests_per_s"])
        best = runs[best_name]
        bound = base["seconds"] / max(1e-9, best["server"].get("prefill_s", 0))
        report["mixes"][mix] = {"runs": runs, "best": best_name, "best_ratio": best["ratio"],
                                "prefill_bound": round(bound, 2), "share_of_bound": round(min(best["ratio"], bound) / bound, 3)}
    text = table(report)
    print(json.dumps(report, indent=2))
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_serve.json").write_text(json.dumps(report, indent=2))
        (args.out / "bench_serve.md").write_text(text)


if __name__ == "__main__":
    main()
