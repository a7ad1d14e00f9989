"""CPU-only CI cannot run CUDA, so device placement is guarded two ways.

1. The engine, the AutoRE pipeline, the training loss and the optimizer checkpoint run with the model on a
   simulated accelerator (`helpers/simdevice.py`): any op mixing its tensors with CPU tensors fails as on CUDA,
   and every output must equal the CPU run's. The first CUDA run of this project failed on such a mix
   (a mask padded on the CPU concatenated with one on the GPU); the simulated device reproduces it.
2. A lint over core/, apps/ and eval/: every tensor factory call (`torch.tensor`, `torch.zeros`, ...)
   names its `device=`, or says on its line (`# host: ...`) why it is built on the CPU on purpose (then
   it is moved as one copy before it meets the model's tensors). It covers code no test runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "full", "empty", "arange", "rand", "randn", "randint",
             "randperm", "eye", "linspace", "tril", "triu"}


def unplaced_factories(source: str, filename: str = "<src>") -> list[str]:
    """`file:line: call` for each torch factory call with no `device=` and no `# host:` note."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        if not (isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in FACTORIES):
            continue
        if f.attr in ("tril", "triu") and node.args:  # torch.tril(x): an op on x, not a factory
            continue
        if any(k.arg == "device" for k in node.keywords):
            continue
        span = lines[node.lineno - 1:(node.end_lineno or node.lineno)]
        if any("# host:" in line for line in span):
            continue
        found.append(f"{filename}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_lint_catches_the_first_cuda_failure():
    """The padding helper as it was when the engine failed on CUDA (mask built on the CPU, no note)."""
    old = ("def _left_pad(rows, pad):\n"
           "    ids = torch.full((len(rows), 4), pad, dtype=torch.long)\n"
           "    mask = torch.zeros((len(rows), 4), dtype=torch.long)\n"
           "    return ids, mask\n")
    assert len(unplaced_factories(old)) == 2
    fixed = old.replace("dtype=torch.long)\n    mask", "dtype=torch.long, device=dev)\n    mask") \
               .replace("torch.zeros((len(rows), 4), dtype=torch.long)",
                        "torch.zeros((len(rows), 4), dtype=torch.long)  # host: moved by the caller")
    assert unplaced_factories(fixed) == []


def test_every_tensor_factory_in_the_package_is_placed():
    found = []
    for folder in ("core", "apps", "eval"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += unplaced_factories(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not found, "tensor created without device= (add it, or a '# host: why' note):\n" + "\n".join(found)


def test_memory_estimate_for_llama3_8b_qlora_and_refusal_message():
    """Llama-3-8B's shape (config only, meta device): QLoRA weights ~5.5 GiB against ~15 GiB in bf16, and a
    GPU with too little free memory is refused with the parts and the settings that lower them."""
    from transformers import LlamaConfig

    from peft_apps.core.config import Recipe
    from peft_apps.core.errors import UserError
    from peft_apps.core.memory import GIB, check_fits, estimate_training_memory
    from peft_apps.core.tiny import SIZES

    spec = {k: v for k, v in SIZES["8b"].items() if k != "tokenizer_vocab"}
    cfg = LlamaConfig(**spec)
    q = Recipe.model_validate({"app": "x", "model": {"quantization": "nf4"}, "peft": {"r": 16},
                               "train": {"batch_size": 2}, "data": {"max_length": 2048}})
    full = q.model_copy(update={"model": q.model.model_copy(update={"quantization": "none"})})
    eq = estimate_training_memory(cfg, q, batch_tokens=2 * 2048, completion_tokens=2 * 256)
    ef = estimate_training_memory(cfg, full, batch_tokens=2 * 2048, completion_tokens=2 * 256)
    assert 4.5 * GIB < eq.weights < 6.5 * GIB and 14 * GIB < ef.weights < 16 * GIB
    assert 0 < eq.adapter < 1 * GIB  # r=16 on all linear layers: ~42M fp32 params with grads and AdamW
    check_fits(eq, 80 * GIB, q)  # fits an 80 GB card: no error
    with pytest.raises(UserError) as e:
        check_fits(ef, 8 * GIB, full, "a test GPU")
    text = str(e.value)
    assert "GiB of GPU memory" in text and "a test GPU has 8.0 GiB free" in text
    assert "model.quantization=nf4" in text and "train.batch_size=1" in text


# ---- the simulated accelerator ------------------------------------------------------------------


def test_simulated_device_fails_on_a_cpu_mix_like_cuda():
    from helpers.simdevice import DeviceMismatch, SimDevice

    with SimDevice() as dev:
        a = torch.zeros((2, 3), device=dev)
        assert a.device == dev and torch.cat([a, torch.ones((2, 1)).to(dev)], 1).sum().item() == 2
        with pytest.raises(DeviceMismatch):
            torch.cat([a, torch.zeros((2, 1))], dim=1)
        with pytest.raises(DeviceMismatch):
            torch.nn.Embedding(10, 4).to(dev)(torch.tensor([[1, 2]]))  # ids left on the CPU
        assert (a + torch.tensor(1.0)).device == dev  # a 0-dim CPU tensor mixes, as on CUDA


def _engines(tmp_path, tiny_path):
    """The same tiny model + two adapters as a CPU engine and, moved, as a simulated-device engine."""
    from helpers.autore_fixtures import random_adapter
    from peft_apps.core.engine import Engine

    ads = {"a": random_adapter(tmp_path / "a", seed=1), "b": random_adapter(tmp_path / "b", seed=2)}
    engines = Engine.from_pretrained(None, ads, dtype="float32"), Engine.from_pretrained(None, ads, dtype="float32")
    for e in engines:  # on a CUDA machine too: the reference is the CPU's kernels
        e.model.to("cpu")
    return engines


def test_engine_on_simulated_accelerator_equals_cpu(tmp_path, tiny_path):
    """Every generation path of the engine: HF generate (one adapter, mixed adapters, sampling, stop
    strings), shared-prefix decoding with prefix extensions and prompt-lookup speculation."""
    from helpers.simdevice import SimDevice

    cpu, sim = _engines(tmp_path, tiny_path)
    tok = cpu.tokenizer
    prompts = ["the cat sat on", "a b c d e f g h", "hello"]
    doc = tok("Passage: the river flows north to the sea past the old mill .", add_special_tokens=False)["input_ids"]
    more = tok(" Relation: located in", add_special_tokens=False)["input_ids"]
    suffix = [tok(s, add_special_tokens=False)["input_ids"] for s in (" the river", " the mill and", " sea")]

    def run(engine):
        out = [engine.generate(prompts, max_new_tokens=8),
               engine.generate(prompts, adapter=["a", "b", "__base__"], max_new_tokens=6),
               engine.generate(prompts, max_new_tokens=6, do_sample=True, seed=3, temperature=2.0),
               engine.generate(prompts, max_new_tokens=8, stop=["0"])]
        root = engine.encode_prefix(doc, adapter="a")
        ext = engine.extend_prefixes([(root, more), (root, [])], adapter="a")
        rows = [("r", suffix[0]), ("e", suffix[1]), ("r", suffix[2]), ("x", suffix[0])]
        out.append(engine.generate_prefixed(rows, {"r": root, "e": ext[0], "x": ext[1]}, adapter="a",
                                            max_new_tokens=12, lookahead=4))
        out.append(engine.generate_prefixed(rows, {"r": root, "e": ext[0], "x": ext[1]}, adapter="a",
                                            max_new_tokens=12, lookahead=0, batch_size=2))
        roots = engine.encode_prefixes([doc, doc[:7], more], adapter="b")  # one batch; single-row roots
        out.append(engine.generate_prefixed([(k, suffix[k]) for k in range(3)], dict(enumerate(roots)),
                                            adapter="b", max_new_tokens=10, lookahead=4))
        return out

    expected = run(cpu)
    with SimDevice() as dev:
        sim.model.to(dev)
        assert sim.device == dev
        assert run(sim) == expected


def test_autore_on_simulated_accelerator_equals_cpu(tmp_path):
    from helpers.simdevice import SimDevice

    from helpers.autore_fixtures import random_adapter
    from peft_apps.apps.autore import AutoRE
    from peft_apps.apps.autore.docred import load_docs
    from peft_apps.core.resources import data_dir

    doc = load_docs(data_dir("autore", "redocred_dev_sample.json"))[2]
    doc = {**doc, "labels": doc["labels"][:4]}  # teacher-forced over 4 facts: every stage, few calls (sim ops are slow)
    ad = str(random_adapter(tmp_path / "ad"))
    ref = AutoRE.from_pretrained(None, ad, batch_size=8)
    ref.engine.model.to("cpu")
    cpu = ref.extract(doc, teacher_forced=True)
    pipe = AutoRE.from_pretrained(None, ad, batch_size=8)
    with SimDevice() as dev:
        pipe.engine.model.to(dev)
        sim = pipe.extract(doc, teacher_forced=True)
    assert sim.raw == cpu.raw and sim.triples == cpu.triples
    assert cpu.stats["relation_calls"] == 1 and cpu.stats["head_calls"] > 0 and cpu.stats["facts_calls"] > 0


def test_codereview_on_simulated_accelerator_equals_cpu(tmp_path, monkeypatch):
    """The review pipeline (batched hunk roots, necessity then comments then suggestions) on a real diff."""
    from helpers.simdevice import SimDevice

    from helpers.autore_fixtures import random_adapter
    from peft_apps.apps.codereview import CodeReviewer
    from peft_apps.apps.codereview.diff import parse_diff
    from peft_apps.core.resources import data_dir

    ad = random_adapter(tmp_path / "ad")
    (ad / "recipe.yaml").write_text("app: codereview\nmodel:\n  base: builtin:tiny\n  quantization: none\n"
                                    "  dtype: float32\ntask:\n  max_new_tokens: {necessity: 2, comment: 8, refine: 8}\n")
    diff = data_dir("codereview", "itsdangerous-0e255fc.diff").read_text(encoding="utf-8")
    hunks = [h for h in parse_diff(diff, max_lines=30).hunks if not h.truncated][:3]  # sim ops are slow

    from peft_apps.apps.codereview import pipeline

    parse = pipeline.parse_answer  # a random adapter rarely answers "yes": every hunk gets a comment here
    monkeypatch.setattr(pipeline, "parse_answer", lambda t, task: "yes" if task == "necessity" else parse(t, task))

    def run(reviewer):
        return reviewer.review_hunks(hunks, suggest=True)

    ref = CodeReviewer.from_pretrained(None, ad)
    cpu = run(ref)
    pipe = CodeReviewer.from_pretrained(None, ad)
    with SimDevice() as dev:
        pipe.engine.model.to(dev)
        sim = run(pipe)
    assert [h.as_dict() for h in sim.hunks] == [h.as_dict() for h in cpu.hunks]
    assert len(cpu.hunks) == 3 and all(h.comment for h in cpu.hunks)
    assert any(h.suggestion is not None for h in cpu.hunks)


def test_testgen_candidates_on_simulated_accelerator_equal_cpu(tmp_path):
    """TestGenerator's candidates: greedy and seeded samples over each function's prompt encoded once."""
    from helpers.simdevice import SimDevice

    from helpers.autore_fixtures import random_adapter
    from peft_apps.apps.testgen import TestGenerator
    from peft_apps.apps.testgen.generate import targets_in_files
    from peft_apps.core.resources import data_dir

    ad = random_adapter(tmp_path / "ad")
    (ad / "recipe.yaml").write_text("app: testgen\nmodel:\n  base: builtin:tiny\n  quantization: none\n"
                                    "  dtype: float32\ntask:\n  max_new_tokens: 8\n")
    targets = targets_in_files(["textkit/slug.py::is_slug", "textkit/stats.py::top_words"],
                               data_dir("testgen", "textkit"))
    cpu = TestGenerator.from_pretrained(None, ad).candidates(targets, n=3, seed=1)
    gen = TestGenerator.from_pretrained(None, ad)
    with SimDevice() as dev:
        gen.engine.model.to(dev)
        sim = gen.candidates(targets, n=3, seed=1)
    assert sim == cpu and len(cpu) == 2 and all(len(c) == 3 for c in cpu)


def test_exam_self_consistency_on_simulated_accelerator_equals_cpu(tmp_path):
    """ExamSolver's seeded samples (k per question over its prompt encoded once) and the vote."""
    from helpers.simdevice import SimDevice

    from helpers.autore_fixtures import random_adapter
    from peft_apps.apps.exam import ExamSolver
    from peft_apps.core.registry import get_app
    from peft_apps.core.resources import data_dir

    ad = random_adapter(tmp_path / "ad")
    (ad / "recipe.yaml").write_text("app: exam\nmodel:\n  base: builtin:tiny\n  quantization: none\n"
                                    "  dtype: float32\neval:\n  max_new_tokens: 6\n  temperature: 1.0\n")
    ref = ExamSolver.from_pretrained(None, ad)
    q = "Столиця України? А) Київ Б) Львів В) Одеса"
    recs = [get_app("exam").from_text(q, "0", ref.recipe)]
    cpu = ref.solve_records(recs, 3, seed=5)
    solver = ExamSolver.from_pretrained(None, ad)
    with SimDevice() as dev:
        solver.engine.model.to(dev)
        sim = solver.solve_records(recs, 3, seed=5)
    assert [(s.samples, s.answer) for s in sim] == [(s.samples, s.answer) for s in cpu] and len(cpu[0].samples) == 3


def test_training_loss_and_optimizer_checkpoint_on_simulated_accelerator(tmp_path, tiny_path):
    """The trainer's completion-only loss and gradients, then an optimizer state saved pickle-free and
    loaded back onto the device, equal the CPU run."""
    from helpers.simdevice import SimDevice

    from peft_apps.core import checkpoint as ckpt
    from peft_apps.core.config import Recipe
    from peft_apps.core.modeling import attach_peft, load_base_model
    from peft_apps.core.trainer import _causal_lm, completion_only_loss

    r = Recipe.model_validate({"app": "sft", "model": {"base": str(tiny_path), "quantization": "none",
                                                       "dtype": "float32"},
                               "peft": {"method": "lora", "r": 4, "modules_to_save": ["lm_head"], "dropout": 0.0}})
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 200, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :12] = -100

    def steps(model, dev, folder=None, resume=None):
        batch = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "labels": labels.to(dev)}
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2, foreach=False)
        if resume is not None:
            opt.load_state_dict(ckpt.load_optimizer(resume))
        losses = []
        for _ in range(2):
            opt.zero_grad()
            loss = completion_only_loss(_causal_lm(model), batch)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if folder is not None:
            ckpt.save_optimizer(opt.state_dict(), folder)
        return losses, [p.detach().cpu() for p in params]

    def fresh():
        torch.manual_seed(0)
        return attach_peft(load_base_model(r.model), r, total_steps=4, gradient_checkpointing=False).to("cpu")

    (tmp_path / "cpu").mkdir()
    (tmp_path / "sim").mkdir()
    cpu_model = fresh()
    cpu_losses, _ = steps(cpu_model, "cpu", tmp_path / "cpu")
    cpu_more, cpu_params = steps(cpu_model, "cpu", resume=tmp_path / "cpu")
    sim_model = fresh()
    with SimDevice() as dev:
        sim_model.to(dev)
        sim_losses, _ = steps(sim_model, dev, tmp_path / "sim")
        sim_more, sim_params = steps(sim_model, dev, resume=tmp_path / "sim")
    # SDPA takes its math kernel on the simulated device and the fused CPU one on the CPU: equal to rounding
    assert sim_losses + sim_more == pytest.approx(cpu_losses + cpu_more, rel=1e-5)
    assert max((a - b).abs().max().item() for a, b in zip(cpu_params, sim_params)) < 1e-4


def test_trainer_memory_check_uses_the_longest_batch(monkeypatch, tiny_path):
    """The trainer's check sizes the largest batch from the tokenized records and asks the GPU for free
    memory (both faked here): 2 GiB free is plenty for the tiny model, 10 MiB is not."""
    from peft_apps.core.config import Recipe
    from peft_apps.core.errors import UserError
    from peft_apps.core.modeling import load_config
    from peft_apps.core.trainer import _check_gpu_memory

    r = Recipe.model_validate({"app": "sft", "model": {"base": str(tiny_path)}, "train": {"batch_size": 4}})
    cols = {"length": [100, 300], "completion_mask": [[1] * 10, [0] * 250 + [1] * 50]}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a test GPU")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (2 * 2 ** 30, 80 * 2 ** 30))
    _check_gpu_memory(r, cols, load_config(r.model))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (10 * 2 ** 20, 80 * 2 ** 30))
    with pytest.raises(UserError, match="a test GPU has 0.0 GiB free"):
        _check_gpu_memory(r, cols, load_config(r.model))
