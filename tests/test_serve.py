"""`peft-apps serve` with the official `openai` client, the app endpoints, and every app's pipeline generating
through `--endpoint`: greedy outputs equal an in-process run, concurrent requests of three adapters equal
each adapter alone, bad requests get JSON 4xx errors, a client leaving mid-stream leaves nothing running,
SIGTERM finishes the requests in flight."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from helpers.preloaded import run_cli
from helpers import served_runs
from helpers.served_runs import make_run

ROOT = Path(__file__).resolve().parents[1]
RUNS = [("autore-run", "autore", ()), ("review-run", "codereview", ()), ("testgen-run", "testgen", ()),
        ("exam-run", "exam", ()), ("alpha", "sft", ()), ("beta", "sft", ()), ("gamma", "sft", ())]
DOC = ("Marie Curie was a physicist born in Warsaw . She won the Nobel Prize in Physics in 1903 . "
       "Pierre Curie , her husband , was born in Paris .")
ROME = '{"entity": "Rome", "sentence": "Rome is the capital of Italy ."}'
MODULE = "def add(a, b):\n    return a + b\n\n\ndef clamp(x, lo, hi):\n    return max(lo, min(x, hi))\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], port: int, cwd: Path, log: Path) -> subprocess.Popen:
    return served_runs.start_server([*args, "--port", str(port)], cwd, log, dict(os.environ))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_path) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for i, (name, app, extra) in enumerate(RUNS):
        make_run(root / name, app, i, *extra)
    return root


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = start_server([name for name, _, _ in RUNS] + ["--max-tokens", "256", "--max-body-mb", "1"], port, runs, log)
    yield f"http://127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-2000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def engine(runs):
    """The same runs loaded in-process: the reference every served output must equal."""
    from peft_apps.core.engine import Engine

    return Engine.from_pretrained(None, {n: runs / n for n, app, _ in RUNS if app == "sft"}, dtype="float32")


def ids_of(engine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- the OpenAI endpoints with the official client ------------------------------------------------------

def test_models_completions_chat_and_streaming(client, engine):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"builtin:tiny", *(n for n, _, _ in RUNS)}
    assert models["alpha"].parent == "builtin:tiny" and models["builtin:tiny"].parent is None
    assert models["alpha"].owned_by == "peft-apps" and models["alpha"].max_model_len == engine.context_length

    ids = ids_of(engine, "The capital of France is")
    want = engine.generate_ids([ids], adapter="beta", max_new_tokens=12)[0]
    got = client.completions.create(model="beta", prompt=ids, max_tokens=12, temperature=0)
    assert got.choices[0].text == want and got.usage.prompt_tokens == len(ids)
    assert got.choices[0].finish_reason in ("length", "stop")
    streamed = client.completions.create(model="beta", prompt=ids, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == want

    base = engine.generate_ids([ids], adapter="__base__", max_new_tokens=8)[0]
    assert client.completions.create(model="builtin:tiny", prompt=ids, max_tokens=8, temperature=0).choices[0].text == base

    conv = [{"role": "user", "content": "Name a river in France."}]
    want_chat = engine.chat([conv], adapter="gamma", max_new_tokens=10)[0]
    chat = client.chat.completions.create(model="gamma", messages=conv, max_tokens=10, temperature=0)
    assert chat.choices[0].message.content == want_chat and chat.choices[0].message.role == "assistant"
    parts = list(client.chat.completions.create(model="gamma", messages=conv, max_tokens=10, temperature=0, stream=True))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == want_chat
    assert parts[-1].choices[0].finish_reason in ("length", "stop")

    two = client.completions.create(model="alpha", prompt=[ids, ids[:3]], max_tokens=6, temperature=0)
    assert [c.text for c in two.choices] == engine.generate_ids([ids, ids[:3]], adapter="alpha", max_new_tokens=6)


def test_sampling_with_a_seed_repeats(client, engine):
    ids = ids_of(engine, "Once upon a time")
    a = client.completions.create(model="alpha", prompt=ids, max_tokens=10, temperature=0.9, seed=7)
    b = client.completions.create(model="alpha", prompt=ids, max_tokens=10, temperature=0.9, seed=7)
    assert a.choices[0].text == b.choices[0].text


def test_concurrent_requests_of_three_adapters_equal_each_alone(client, engine, server):
    prompts = ["The river Seine flows", "def fibonacci(n):", "Kyiv is the capital of", "A B C D E F",
               "Warsaw lies on the Vistula", "import numpy as np"]
    jobs = [(name, ids_of(engine, p)) for p in prompts for name in ("alpha", "beta", "gamma")]
    alone = [engine.generate_ids([ids], adapter=name, max_new_tokens=16)[0] for name, ids in jobs]
    before = httpx.get(server + "/health").json()
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda j: client.completions.create(model=j[0], prompt=j[1], max_tokens=16,
                                                                 temperature=0).choices[0].text, jobs))
    after = httpx.get(server + "/health").json()
    assert got == alone
    assert len({t for t in alone}) > 3  # the adapters answer differently: a mix-up would show
    steps, tokens = after["steps"] - before["steps"], after["tokens"] - before["tokens"]
    assert tokens > 2 * steps  # rows were decoded together, not one request after another


# ---- bad requests ---------------------------------------------------------------------------------------

def test_bad_requests_get_json_errors(client, server, engine):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert "nope" in e.value.body["message"] and e.value.body["code"] == "model_not_found"
    r = httpx.post(server + "/v1/completions", content=b'{"model": "alpha", "prompt": ',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/completions", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="at most 256"):
        client.completions.create(model="alpha", prompt="x", max_tokens=1000)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="alpha", prompt=[1] * engine.context_length, max_tokens=8)
    assert e.value.body["code"] == "context_length_exceeded"
    r = httpx.post(server + "/v1/chat/completions", json={"model": "alpha", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(server + "/v1/apps/exam/answer", json={"question": "no options here"})
    assert r.status_code == 400 and "no options found" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/apps/autore/extract", json={"text": DOC, "model": "alpha"})
    assert r.status_code == 400 and "not a served autore run" in r.json()["error"]["message"]
    for r in (r, httpx.post(server + "/v1/completions", json={"model": "alpha"})):
        assert "Traceback" not in r.text and set(r.json()["error"]) >= {"message", "type", "code"}


def test_a_client_leaving_mid_stream_leaves_nothing_running(server, engine):
    ids = ids_of(engine, "Tell a long story")
    with httpx.stream("POST", server + "/v1/completions", json={"model": "alpha", "prompt": ids, "max_tokens": 250,
                                                                  "temperature": 0, "stream": True}) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        h = httpx.get(server + "/health").json()
        if h["running"] == 0 and h["waiting"] == 0:
            break
        time.sleep(0.1)
    assert h["running"] == 0 and h["waiting"] == 0
    ok = httpx.post(server + "/v1/completions", json={"model": "alpha", "prompt": ids, "max_tokens": 4, "temperature": 0})
    assert ok.status_code == 200


def test_openapi_schema_lists_every_endpoint(server):
    paths = httpx.get(server + "/openapi.json").json()["paths"]
    for p in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/v1/apps/autore/extract",
              "/v1/apps/codereview/review", "/v1/apps/testgen/generate", "/v1/apps/exam/answer"):
        assert p in paths, p


# ---- every app: in-process, through its endpoint, and with --endpoint -----------------------------------

def test_autore_equal_in_process_endpoint_and_app_endpoint(runs, server):
    from peft_apps.apps.autore import AutoRE

    local = AutoRE.from_pretrained(None, runs / "autore-run").extract(DOC)
    remote = AutoRE.from_pretrained(None, runs / "autore-run", endpoint=server).extract(DOC)
    assert remote.raw == local.raw and remote.triples == local.triples
    assert local.stats.get("relation_calls")  # the stages ran
    body = httpx.post(server + "/v1/apps/autore/extract", json={"text": DOC}, timeout=300).json()
    assert body["triples"] == local.triples and body["output"] == local.model_text()


def test_codereview_equal_in_process_endpoint_and_app_endpoint(runs, server):
    from peft_apps.apps.codereview import CodeReviewer
    from peft_apps.apps.codereview.report import to_json

    diff = (ROOT / "data/codereview/itsdangerous-0e255fc.diff").read_text()
    local = CodeReviewer.from_pretrained(None, runs / "review-run").review(diff)
    remote = CodeReviewer.from_pretrained(None, runs / "review-run", endpoint=server).review(diff)
    assert to_json(remote) == to_json(local)
    assert len(local.hunks) > 10 and any(h.necessity_output for h in local.hunks)
    body = httpx.post(server + "/v1/apps/codereview/review", json={"diff": diff}, timeout=300).json()
    assert body == json.loads(to_json(local))


def test_testgen_equal_in_process_endpoint_and_app_endpoint(runs, server, tmp_path):
    from peft_apps.apps.testgen import TestGenerator
    from peft_apps.apps.testgen.generate import targets_in_files

    (tmp_path / "calc.py").write_text(MODULE)
    targets = targets_in_files(["calc.py"], tmp_path)
    local = TestGenerator.from_pretrained(None, runs / "testgen-run").candidates(targets, n=1)
    remote = TestGenerator.from_pretrained(None, runs / "testgen-run", endpoint=server).candidates(targets, n=1)
    assert remote == local and len(local) == 2
    body = httpx.post(server + "/v1/apps/testgen/generate", json={"source": MODULE, "path": "calc.py", "n": 1},
                      timeout=300).json()
    assert [f["target"] for f in body["functions"]] == ["calc.py::add", "calc.py::clamp"]
    assert [[c["output"] for c in f["candidates"]] for f in body["functions"]] == local
    assert body["functions"][0]["candidates"][0]["test"].startswith("import pytest\n\nfrom calc import add")
    sampled = httpx.post(server + "/v1/apps/testgen/generate", json={"source": MODULE, "path": "calc.py", "n": 3,
                                                                     "functions": ["clamp"]}, timeout=300).json()
    assert len(sampled["functions"]) == 1 and len(sampled["functions"][0]["candidates"]) == 3


def test_exam_equal_in_process_endpoint_and_app_endpoint(runs, server):
    from peft_apps.apps.exam import ExamSolver
    from peft_apps.core.registry import get_app

    app = get_app("exam")
    q = "Яке місто є столицею України?\nА) Київ\nБ) Львів\nВ) Одеса\nГ) Харків"
    solver = ExamSolver.from_pretrained(None, runs / "exam-run")
    local = solver.solve_records([app.from_text(q, "q", solver.recipe)])[0]
    remote_solver = ExamSolver.from_pretrained(None, runs / "exam-run", endpoint=server)
    remote = remote_solver.solve_records([app.from_text(q, "q", solver.recipe)])[0]
    assert remote == local and local.output
    body = httpx.post(server + "/v1/apps/exam/answer", json={"question": q}, timeout=300).json()
    assert body["output"] == local.output and body["answer"] == local.answer
    options = httpx.post(server + "/v1/apps/exam/answer", timeout=300, json={
        "question": "Яке місто є столицею України?", "options": [["А", "Київ"], ["Б", "Львів"], ["В", "Одеса"],
                                                                  ["Г", "Харків"]]}).json()
    assert options["output"] == local.output  # the same question, its options given apart
    voted = httpx.post(server + "/v1/apps/exam/answer", json={"question": q, "samples": 3}, timeout=300).json()
    assert len(voted["samples"]) == 3


def test_cli_predict_and_review_with_endpoint_equal_in_process(runs, server):
    local = run_cli(["peft-apps", "predict", "sft", "--adapter", str(runs / "beta"), ROME])
    remote = run_cli(["peft-apps", "predict", "sft", "--adapter", str(runs / "beta"), "--endpoint", server,
                      ROME])
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and json.loads(local.stdout)["output"]
    named = run_cli(["peft-apps", "predict", "sft", "--adapter", str(runs / "beta"), "--endpoint", server,
                     "--model", "gamma", ROME])
    assert named.returncode == 0 and named.stdout != local.stdout  # another served adapter answered
    diff = str(ROOT / "data/codereview/itsdangerous-0e255fc.diff")
    args = ["peft-apps", "codereview", "review", "--adapter", str(runs / "review-run"), "--diff", diff, "-f", "json"]
    a, b = run_cli(args), run_cli(args + ["--endpoint", server])
    assert a.returncode == 0 and b.returncode == 0, b.stderr
    assert json.loads(a.stdout)["hunks"] == json.loads(b.stdout)["hunks"]
    wrong = run_cli(["peft-apps", "predict", "sft", "--adapter", str(runs / "beta"), "--endpoint", server,
                     "--model", "nope", ROME])
    assert wrong.returncode == 2 and "does not serve 'nope'" in wrong.stderr and "alpha" in wrong.stderr
    gone = run_cli(["peft-apps", "predict", "sft", "--adapter", str(runs / "beta"), "--endpoint",
                    f"http://127.0.0.1:{free_port()}", ROME])
    assert gone.returncode == 2 and "cannot reach the server" in gone.stderr and "Traceback" not in gone.stderr


# ---- the server's command line ------------------------------------------------------------------------

def test_serve_refuses_bad_runs_before_loading(runs, tmp_path, server):
    not_run = tmp_path / "empty"
    not_run.mkdir()
    r = run_cli(["peft-apps", "serve", str(not_run)])
    assert r.returncode == 2 and "not an adapter folder" in r.stderr
    other = make_run(tmp_path / "other-base", "sft", 9, "model.base=builtin:small")
    r = run_cli(["peft-apps", "serve", str(runs / "alpha"), str(other)])
    assert r.returncode == 2 and "different base models" in r.stderr and "builtin:small" in r.stderr
    r = run_cli(["peft-apps", "serve", str(runs / "alpha"), f"alpha={runs / 'beta'}"])
    assert r.returncode == 2 and "two runs are named 'alpha'" in r.stderr
    port = server.rsplit(":", 1)[1]
    r = run_cli(["peft-apps", "serve", str(runs / "alpha"), "--port", port])
    assert r.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in r.stderr
    r = run_cli(["peft-apps", "serve", str(runs / "alpha"), "--engine", "vllm", "--port", str(free_port())])
    assert r.returncode == 2 and "vLLM" in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_vllm_command_line_from_the_recipes(runs, tmp_path, tiny_path):
    from peft_apps.core.serve.runs import read_runs
    from peft_apps.core.serve.vllm import vllm_command

    wide = make_run(tmp_path / "wide", "codereview", 3, rank=12)
    served = read_runs([str(runs / "alpha"), f"review={wide}"])
    cmd = vllm_command(served, None, 8001)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert flags["--model"] == str(tiny_path) and flags["--served-model-name"] == "builtin:tiny"
    assert flags["--port"] == "8001" and flags["--host"] == "127.0.0.1"
    assert flags["--max-lora-rank"] == "16" and flags["--max-loras"] == "2" and flags["--dtype"] == "float32"
    longest = max(r.recipe.data.max_length for r in served)
    assert flags["--max-model-len"] == str(longest + 1024)
    modules = cmd[cmd.index("--lora-modules") + 1:]
    assert modules == [f"alpha={(runs / 'alpha').resolve()}", f"review={wide.resolve()}"]
    assert "--enable-lora" in cmd and "--quantization" not in cmd


def test_sigterm_finishes_the_request_in_flight(runs, tmp_path, engine):
    port = free_port()
    proc = start_server([str(runs / "alpha")], port, tmp_path, tmp_path / "log")
    ids = ids_of(engine, "Tell a long story")
    want = engine.generate_ids([ids], adapter="alpha", max_new_tokens=250)[0]
    got: dict = {}

    def ask():
        got["r"] = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                              json={"model": "alpha", "prompt": ids, "max_tokens": 250, "temperature": 0})

    t = threading.Thread(target=ask)
    t.start()
    while httpx.get(f"http://127.0.0.1:{port}/health").json()["running"] == 0 and t.is_alive():
        time.sleep(0.01)
    assert t.is_alive()  # the request is being generated when the signal comes
    proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert proc.wait(60) == 0
    assert got["r"].status_code == 200 and got["r"].json()["choices"][0]["text"] == want


def test_scheduler_rows_join_a_running_batch_and_share_prefixes(engine):
    """In-process: rows submitted while others decode join the running batch; rows of one adapter with a
    long common prefix prefill it once; every row's text equals its adapter's run alone."""
    from peft_apps.core.serve.scheduler import Row, Scheduler

    doc = "Marie Curie was a physicist born in Warsaw . She won the Nobel Prize in Physics in 1903 . " * 2
    first = [Row(ids=ids_of(engine, "Tell a long story"), adapter="alpha", max_new_tokens=60)]
    shared = [Row(ids=ids_of(engine, doc + q), adapter="beta", max_new_tokens=12)
              for q in (" Who won?", " Where was she born?", " When?")]
    others = [Row(ids=ids_of(engine, "import numpy as np"), adapter="gamma", max_new_tokens=12),
              Row(ids=ids_of(engine, "import numpy as np"), adapter="__base__", max_new_tokens=12)]
    scheduler = Scheduler(engine).start()
    try:
        scheduler.submit(first)
        while not scheduler.rows and first[0].finish_reason is None:
            time.sleep(0.001)
        scheduler.submit(shared + others)
        for r in first + shared + others:
            assert r.done.wait(60)
    finally:
        scheduler.close()
    for r in first + shared + others:
        alone = engine.generate_ids([r.ids], adapter=r.adapter, max_new_tokens=r.max_new_tokens)[0]
        assert r.text(engine.tokenizer) == alone and r.finish_reason in ("stop", "length")
    assert scheduler.stats["joined_running"] >= 1
    common = len(os.path.commonprefix([r.ids for r in shared]))
    assert scheduler.stats["shared_prefix_tokens"] == common * (len(shared) - 1) and common > 30


# ---- the prefix cache and chunked prefill --------------------------------------------------------------
INSTRUCTIONS = ("You are a careful reviewer . Read the text below and answer the question in one word . "
                "Keep to the facts of the text . ") * 3


def _run_rows(scheduler, rows, timeout=120):
    scheduler.submit(rows)
    for r in rows:
        assert r.done.wait(timeout)
    return rows


def _alone(engine, r):
    return engine.generate_ids([r.ids], adapter=r.adapter, max_new_tokens=r.max_new_tokens)[0]


def test_prefix_cache_outlives_requests_and_gives_the_cold_greedy_output(engine):
    """Requests of three adapters and the base repeating a long instruction prefix: the second wave finds
    the first wave's blocks (per adapter only), computes fewer prompt tokens, and every text equals the
    adapter's run alone."""
    from peft_apps.core.serve.scheduler import Row, Scheduler

    adapters = ["alpha", "beta", "gamma", "__base__"]
    questions = [" Who won ?", " Where was she born ?", " When ?", " Which prize ?"]
    scheduler = Scheduler(engine, prefix_cache_mb=64).start()
    try:
        wave1 = _run_rows(scheduler, [Row(ids=ids_of(engine, INSTRUCTIONS + DOC + q), adapter=a, max_new_tokens=10)
                                      for a, q in zip(adapters, questions)])
        cold = dict(scheduler.report())
        assert cold["cache_hits"] == 0 and cold["cache_blocks"] > 0
        wave2 = _run_rows(scheduler, [Row(ids=ids_of(engine, INSTRUCTIONS + DOC + q), adapter=a, max_new_tokens=10)
                                      for a in adapters for q in questions[::-1]])
        warm = scheduler.report()
    finally:
        scheduler.close()
    for r in wave1 + wave2:
        assert r.finish_reason in ("stop", "length")
        assert r.text(engine.tokenizer) == _alone(engine, r), (r.adapter, r.ids[-6:])
    assert warm["cache_hits"] == len(wave2) and warm["cache_misses"] == len(wave1)
    common = len(os.path.commonprefix([r.ids for r in wave2]))
    assert warm["cache_tokens_saved"] >= len(wave2) * (common // 16) * 16
    computed = warm["prefill_tokens"] - cold["prefill_tokens"]
    sent = warm["prompt_tokens"] - cold["prompt_tokens"]
    assert computed < sent - warm["cache_tokens_saved"] + 1


def test_prefix_cache_is_never_shared_across_adapters():
    from peft_apps.core.engine.prefix_cache import PrefixCache
    import torch

    cache = PrefixCache(1 << 20, block=4)
    ids = list(range(10))
    kv = [(torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)) for _ in range(3)]
    assert cache.store("alpha", ids, kv) == 2  # 8 of 10 tokens in full blocks
    n, got = cache.lookup("alpha", ids + [99])
    assert n == 8 and torch.equal(got[1][0], kv[1][0][:, :, :8]) and torch.equal(got[2][1], kv[2][1][:, :, :8])
    assert cache.lookup("beta", ids + [99]) == (0, None)
    assert cache.lookup("alpha", [0, 1, 2, 3, 4, 5, 6, 7])[0] == 4  # one token is always left to compute
    assert cache.lookup("alpha", [1] + ids)[0] == 0  # a block stands for everything before it too
    assert cache.report()["hits"] == 2 and cache.report()["misses"] == 2


def test_prefix_cache_evicts_least_recently_used_chain_ends_first_and_skips_prompts_over_budget():
    from peft_apps.core.engine.prefix_cache import PrefixCache
    import torch

    per_block = 2 * 1 * 4 * 4 * 4  # K and V, 1 layer, 1 head, 4 tokens, dim 4, fp32
    cache = PrefixCache(5 * per_block, block=4)

    def kv(n):
        return [(torch.randn(1, 1, n, 4), torch.randn(1, 1, n, 4))]

    a, b = list(range(100, 112)), list(range(200, 212))
    cache.store("x", a, kv(12))
    cache.store("x", b, kv(12))  # 6 blocks > 5: the least recent chain loses its end
    assert cache.report()["evictions"] == 1 and cache.bytes <= cache.budget
    assert cache.lookup("x", a + [0])[0] == 8 and cache.lookup("x", b + [0])[0] == 12
    cache.lookup("x", a + [0])  # a is now the more recent
    cache.store("x", list(range(300, 312)), kv(12))
    assert cache.lookup("x", b + [0], count=False)[0] < 12 and cache.bytes <= cache.budget
    assert cache.store("x", list(range(24)), kv(24)) == 0 and cache.report()["uncached_prompts"] == 1
    assert cache.lookup("x", a + [0], count=False)[0] == 8  # a prompt over the budget evicted nothing
    # a block's eviction takes the blocks after it along (they could no longer be found)
    cache.clear()
    cache.store("x", a, kv(12))
    assert next(iter(cache.blocks.values())).parent != b""  # a chain's end is the first to go
    cache._drop(next(k for k, b in cache.blocks.items() if b.parent == b""))
    assert len(cache) == 0 and cache.bytes == 0


def test_chunked_prefill_splits_only_prompts_longer_than_a_chunk(engine):
    """While a row decodes, prompts shorter than a chunk are each computed whole in one pass (never a
    fragment of one filling the rest of another's budget); a prompt longer than a chunk is computed in
    chunks of exactly `prefill_chunk` tokens, each alone in its pass."""
    from peft_apps.core.serve.scheduler import Row, Scheduler

    scheduler = Scheduler(engine, prefix_cache_mb=0, prefill_chunk=40)
    seen: list[list[tuple[int, int]]] = []
    real = scheduler._computed  # after every pass that computed prompt tokens, mixed with a step or not

    def recording(parts, *args):
        seen.append([(id(r), len(p)) for r, p in parts])
        return real(parts, *args)

    scheduler._computed = recording
    scheduler.start()
    try:
        first = [Row(ids=ids_of(engine, "Tell a long story"), adapter="alpha", max_new_tokens=120)]
        scheduler.submit(first)
        while not scheduler.rows and first[0].finish_reason is None:
            time.sleep(0.001)
        seen.clear()
        texts = ["Where was Marie Curie born , and when did she win the Nobel Prize ?",
                 "Pierre Curie was born in Paris . Name the city where he was born .",
                 "Rome is the capital of Italy . Which country has Rome as its capital city ?",
                 DOC + " Who won the prize ?" + MODULE]
        rows = [Row(ids=ids_of(engine, t), adapter=a, max_new_tokens=4)
                for t, a in zip(texts, ["alpha", "beta", "gamma", "beta"])]
        _run_rows(scheduler, rows)
        assert first[0].finish_reason is None or len(first[0].produced) == 120
    finally:
        scheduler.close()
    short, long = rows[:3], rows[3]
    assert scheduler.report()["mixed_steps"] >= 3  # the prompts were computed along with decoding steps
    assert all(16 < len(r.ids) <= 40 for r in short) and len(long.ids) > 80, [len(r.ids) for r in rows]
    parts = [p for ps in seen for p in ps]
    for r in short:
        assert [n for i, n in parts if i == id(r)] == [len(r.ids)]
    chunks = [n for i, n in parts if i == id(long)]
    assert sum(chunks) == len(long.ids) and all(n == 40 for n in chunks[:-1]) and len(chunks) >= 3
    for ps in seen:
        if any(i == id(long) for i, _ in ps) and len(ps) > 1:
            assert [n for i, n in ps if i == id(long)][0] < 40  # a full chunk runs alone
    for r in rows:
        assert r.text(engine.tokenizer) == _alone(engine, r)


def test_a_pass_orders_its_prompts_by_adapter_one_run_each(engine, monkeypatch):
    """The prompts of one pass are ordered by adapter, so that each adapter's tokens make one run (its
    LoRA matmuls once per layer for all its prompts); every row still takes its own first token."""
    from peft_apps.core.serve import scheduler as module
    from peft_apps.core.serve.scheduler import Row, Scheduler

    seen = []
    real = module.rows_of_adapters

    def recording(model, names, runs=None):
        if runs:
            seen.append(list(runs))
        return real(model, names, runs)

    monkeypatch.setattr(module, "rows_of_adapters", recording)
    scheduler = Scheduler(engine, prefix_cache_mb=0)
    texts = ["Where was Marie Curie born ?", "Pierre Curie was born in Paris .", "Rome is the capital of Italy .",
             "Name the city where he was born ."]
    rows = [Row(ids=ids_of(engine, t), adapter=a, max_new_tokens=5) for t, a in zip(texts, ["alpha", "beta", "alpha", "beta"])]
    scheduler.start()
    try:
        _run_rows(scheduler, [Row(ids=ids_of(engine, "Hello"), adapter="alpha", max_new_tokens=1)])  # the first
        seen.clear()  # pass is a plain one (it makes the cache template mixed passes build on)
        _run_rows(scheduler, rows)
    finally:
        scheduler.close()
    first = seen[0]  # the pass that computed the four prompts (no row was running)
    assert [a for *_, a in first] == ["alpha", "beta"] and first[0][1] == first[1][0]
    assert first[0][1] - first[0][0] == len(rows[0].ids) + len(rows[2].ids)
    assert sum(e - s for s, e, _ in first) == sum(len(r.ids) for r in rows)
    for r in rows:
        assert r.text(engine.tokenizer) == _alone(engine, r)


def test_a_failed_mixed_pass_fails_its_rows_and_the_scheduler_goes_on(engine, monkeypatch):
    """A decoding step that carries prefill rows and fails ends every row it held with an error (the
    prefill rows too: none is left waiting forever); the next rows are served as before."""
    from peft_apps.core.engine.attention import MixedPass
    from peft_apps.core.serve.scheduler import Row, Scheduler

    real, calls = MixedPass.attention, []

    def failing(self, *args):
        calls.append(1)
        raise RuntimeError("injected")

    scheduler = Scheduler(engine, prefix_cache_mb=0).start()
    try:
        first = [Row(ids=ids_of(engine, "Tell a long story"), adapter="alpha", max_new_tokens=200)]
        scheduler.submit(first)
        while not scheduler.rows and first[0].finish_reason is None:
            time.sleep(0.001)
        monkeypatch.setattr(MixedPass, "attention", failing)
        joining = _run_rows(scheduler, [Row(ids=ids_of(engine, "Rome is the capital of"), adapter="beta",
                                            max_new_tokens=4)], timeout=60)
        assert first[0].done.wait(60)
        monkeypatch.setattr(MixedPass, "attention", real)
        after = _run_rows(scheduler, [Row(ids=ids_of(engine, "Paris is"), adapter="gamma", max_new_tokens=6)])
    finally:
        scheduler.close()
    assert calls and joining[0].finish_reason == "error" and "injected" in joining[0].error
    assert first[0].finish_reason == "error"
    assert after[0].finish_reason in ("stop", "length") and after[0].text(engine.tokenizer) == _alone(engine, after[0])


def test_small_cache_budget_and_chunked_prefill_keep_outputs_and_interleave_decoding(engine):
    """A budget of a few blocks evicts and still gives every row its cold output; a long prompt arriving
    while a row decodes is prefilled in chunks of `prefill_chunk` tokens, decoding steps in between."""
    from peft_apps.core.serve.scheduler import Row, Scheduler

    scheduler = Scheduler(engine, prefix_cache_mb=0.15, prefill_chunk=32).start()  # ~19 blocks of the tiny model
    try:
        first = [Row(ids=ids_of(engine, "Tell a long story"), adapter="alpha", max_new_tokens=80)]
        scheduler.submit(first)
        while not scheduler.rows and first[0].finish_reason is None:
            time.sleep(0.001)
        before = dict(scheduler.report())
        produced = len(first[0].produced)
        long = [Row(ids=ids_of(engine, (INSTRUCTIONS + DOC) * 2 + " Who ?"), adapter="beta", max_new_tokens=8)]
        _run_rows(scheduler, long)
        after = dict(scheduler.report())
        mid = len(first[0].produced)
        more = _run_rows(scheduler, [Row(ids=ids_of(engine, q + INSTRUCTIONS + DOC + q), adapter="gamma", max_new_tokens=8)
                                     for q in ("Who ?", "Where ?", "When ?", "Who ?")])
        assert first[0].done.wait(120)
    finally:
        scheduler.close()
    passes = after["prefills"] - before["prefills"]
    assert passes >= len(long[0].ids) // 32, passes
    assert mid - produced >= passes - 1  # a decoding step after each chunk
    report = scheduler.report()
    assert report["cache_evictions"] > 0 and report["cache_mb"] <= 0.15
    assert report["cache_uncached_prompts"] >= 1  # the long prompt alone is over the budget: it ran uncached
    for r in first + long + more:
        assert r.text(engine.tokenizer) == _alone(engine, r)


def test_serve_shortens_the_gil_switch_interval_for_the_model_thread(monkeypatch):
    """The local server runs with a 0.5 ms GIL switch interval, not Python's 5 ms: request threads give the
    model's worker thread the GIL back sooner."""
    import sys

    import peft_apps.core.serve as serve_module

    seen = []

    class Fake:
        def __init__(self, config):
            pass

        def run(self):
            seen.append(sys.getswitchinterval())

    closed = []
    monkeypatch.setattr(serve_module, "read_runs", lambda items: [])
    monkeypatch.setattr(serve_module, "check_port", lambda host, port: None)
    monkeypatch.setattr(serve_module, "local_served", lambda *a, **k: type("S", (), {"close": lambda self: closed.append(1)})())
    monkeypatch.setattr(serve_module, "build_app", lambda served, limits: None)
    monkeypatch.setattr(serve_module, "_Server", Fake)
    before = sys.getswitchinterval()
    try:
        serve_module.serve([], port=1)
        assert seen == [pytest.approx(serve_module.SWITCH_INTERVAL)] and closed == [1]
    finally:
        sys.setswitchinterval(before)


def test_an_app_request_sleeps_until_its_rows_end_or_it_is_cancelled(monkeypatch):
    """The completer the app endpoints generate through: its thread wakes when its rows end or its `Cancel`
    is set, not every few milliseconds to look (with 16 requests waiting, such wake-ups slowed the worker's
    steps); a plain Event as the cancellation is still looked at."""
    from types import SimpleNamespace

    from peft_apps.core.serve.rows import Cancel, Cancelled, completer

    timed_out = []  # waits that ended without their event: wake-ups to look
    wait = threading.Event.wait

    def counted(self, timeout=None):
        got = wait(self, timeout)
        if not got:
            timed_out.append(1)
        return got

    monkeypatch.setattr(threading.Event, "wait", counted)

    class Counting(threading.Event):
        checks = 0

        def is_set(self):
            Counting.checks += 1
            return super().is_set()

    class Scheduler:  # takes the rows and runs nothing: the test ends them
        tokenizer = SimpleNamespace(decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))
        rows: list = []

        def submit(self, rows, force=False):
            for r in rows:
                r.done = Counting()
            self.rows += rows

    def request():
        return SimpleNamespace(ids=[1, 2], adapter="a", max_new_tokens=4, do_sample=False, temperature=1.0, top_p=1.0,
                               stop=[], seed=None)

    def started(fn):
        out = {}

        def run():
            try:
                out["value"] = fn()
            except Exception as e:  # noqa: BLE001 - handed to the test
                out["error"] = e

        thread = threading.Thread(target=run, daemon=True)  # a failing test leaves no thread behind
        thread.start()
        return thread, out

    scheduler = Scheduler()
    cancel = Cancel()
    thread, out = started(lambda: completer(scheduler, cancel)([request(), request()]))
    time.sleep(0.5)
    assert len(scheduler.rows) == 2 and Counting.checks <= 2  # looked once on the way in, then slept
    scheduler.rows[0].produced = [7]
    scheduler.rows[0].finish("length")
    time.sleep(0.2)
    assert thread.is_alive() and Counting.checks <= 4  # woken by the first row's end; the second still runs
    scheduler.rows[1].produced = [8, 9]
    scheduler.rows[1].finish("stop")
    thread.join(2)
    assert not thread.is_alive() and out == {"value": ["7", "8 9"]} and not timed_out

    cancel = Cancel()
    thread, out = started(lambda: completer(scheduler, cancel)([request()]))
    time.sleep(0.3)
    cancel.set()
    thread.join(2)
    assert not thread.is_alive() and isinstance(out.get("error"), Cancelled) and scheduler.rows[-1].cancelled
    assert not timed_out

    plain = threading.Event()  # no `on_set`: looked at every 50 ms
    thread, out = started(lambda: completer(scheduler, plain)([request()]))
    time.sleep(0.2)
    plain.set()
    thread.join(2)
    assert not thread.is_alive() and isinstance(out.get("error"), Cancelled) and timed_out
    cancel = Cancel()
    cancel.set()
    woken = []
    cancel.on_set(lambda: woken.append(1))  # already set: at once
    assert woken == [1]
