"""`peft-apps merge --checkpoints` (metric-, loss- or uniformly weighted checkpoint averaging) and
`peft-apps sweep` (every method with one recipe and budget, resumable), on real runs of the sft demo."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.preloaded import run_cli


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory):
    """The sft demo, 20 steps, an evaluation (task metric and loss) and a checkpoint every 5 steps."""
    out = tmp_path_factory.mktemp("avg") / "run"
    p = run_cli(["peft-apps", "train", "sft", "-r", "demo", "train.max_steps=20", "train.eval_steps=5",
                 "train.save_steps=5", "train.save_total_limit=4", "train.eval_examples=24", "train.report_to=[]",
                 f"train.output_dir={out}"])
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def _ckpts(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def test_uniform_average_is_the_mean_of_the_checkpoints(run_with_checkpoints, tmp_path):
    a, b = _ckpts(run_with_checkpoints)[:2]
    p = run_cli(["peft-apps", "merge", "--checkpoints", str(a), str(b), "--weights", "uniform", "-o",
                 str(tmp_path / "avg")])
    assert p.returncode == 0, p.stderr[-3000:]
    got = load_file(str(tmp_path / "avg" / "adapter_model.safetensors"))
    sa, sb = (load_file(str(c / "adapter_model.safetensors")) for c in (a, b))
    assert set(got) == set(sa)
    for k in sa:
        torch.testing.assert_close(got[k], (sa[k] + sb[k]) / 2)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)  # the checkpoints differ: the mean is not either


def test_metric_and_loss_weights_favour_the_better_checkpoint_and_the_average_evaluates(run_with_checkpoints,
                                                                                        tmp_path):
    ckpts = _ckpts(run_with_checkpoints)
    history = json.loads((run_with_checkpoints / "metrics.json").read_text())["eval_history"]
    by_step = {h["step"]: h for h in history}
    # the shell's expansion of RUN/checkpoints/checkpoint-*: the first after --checkpoints, the rest positional
    p = run_cli(["peft-apps", "merge", "--checkpoints", *map(str, ckpts), "--weights", "metric", "--metric",
                 "macro_f1", "-o", str(tmp_path / "m")])
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((tmp_path / "m" / "merge.json").read_text())
    values = [by_step[c["step"]]["eval_macro_f1"] for c in report["checkpoints"]]
    assert [c["value"] for c in report["checkpoints"]] == values
    weights = [c["weight"] for c in report["checkpoints"]]
    assert abs(sum(weights) - 1) < 1e-5
    best, worst = max(range(len(values)), key=values.__getitem__), min(range(len(values)), key=values.__getitem__)
    assert values[best] > values[worst] and weights[best] > weights[worst]
    for w, v in zip(weights, values):
        assert abs(w - v / sum(values)) < 1e-5
    merged = load_file(str(tmp_path / "m" / "adapter_model.safetensors"))
    states = [load_file(str(c / "adapter_model.safetensors")) for c in ckpts]
    k = next(iter(merged))
    torch.testing.assert_close(merged[k], sum(w * s[k] for w, s in zip(weights, states)), atol=1e-5, rtol=1e-4)

    p = run_cli(["peft-apps", "merge", "--checkpoints", str(run_with_checkpoints), "--weights", "loss", "-o",
                 str(tmp_path / "l")])  # a run folder: all of its checkpoints
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((tmp_path / "l" / "merge.json").read_text())
    losses = [c["value"] for c in report["checkpoints"]]
    assert losses == [by_step[c["step"]]["eval_loss"] for c in report["checkpoints"]]
    lowest = min(range(len(losses)), key=losses.__getitem__)
    assert max(c["weight"] for c in report["checkpoints"]) == report["checkpoints"][lowest]["weight"]

    p = run_cli(["peft-apps", "eval", "sft", "--adapter", str(tmp_path / "m"), "eval.limit=16"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "m" / "eval_metrics.json").read_text())["n"] == 16


def test_averaging_refuses_what_it_cannot_weigh_or_add(run_with_checkpoints, tmp_path):
    a, b = _ckpts(run_with_checkpoints)[:2]
    for c in (a, b):  # checkpoints outside their run and without evaluations in their trainer state
        shutil.copytree(c, tmp_path / c.name)
        state = json.loads((tmp_path / c.name / "trainer_state.json").read_text())
        state["log_history"] = [h for h in state["log_history"] if not any(k.startswith("eval_") for k in h)]
        (tmp_path / c.name / "trainer_state.json").write_text(json.dumps(state))
    p = run_cli(["peft-apps", "merge", "--checkpoints", str(tmp_path / a.name), str(tmp_path / b.name),
                 "--weights", "loss", "-o", str(tmp_path / "x")])
    assert p.returncode == 2 and "no evaluation with 'loss'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x").exists()
    cfg = json.loads((tmp_path / b.name / "adapter_config.json").read_text())
    cfg["r"] = 4
    (tmp_path / b.name / "adapter_config.json").write_text(json.dumps(cfg))
    p = run_cli(["peft-apps", "merge", "--checkpoints", str(tmp_path / a.name), str(tmp_path / b.name),
                 "-o", str(tmp_path / "y")])
    assert p.returncode == 2 and "different adapter" in p.stderr and "r differ" in p.stderr.replace("(", "")
    p = run_cli(["peft-apps", "merge", "--checkpoints", str(a), "-o", str(tmp_path / "z")])
    assert p.returncode == 2 and "at least two checkpoints" in p.stderr


def test_sweep_compares_methods_reports_a_failure_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    budget = ["model.quantization=nf4", "train.max_steps=3", "data.limit_train=32", "eval.limit=8"]
    p = run_cli(["peft-apps", "sweep", "sft", "-r", "demo", "--methods", "hra,lora", *budget, "-o", str(out)],
                timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    state = json.loads((out / "sweep.json").read_text())
    rows = state["results"]
    assert rows["lora"]["status"] == "ok"
    assert rows["hra"]["status"] == "failed" and "does not train on a quantized base" in rows["hra"]["error"]
    for m in ("lora",):
        r = rows[m]
        assert r["metric"] == "exact_match" and 0 <= r["value"] <= 1
        assert 0 < r["trainable_parameters"] and 0 < r["trainable_share"] < 1
        assert r["peak_rss_mib"] > 100 and r["tokens_per_second"] > 0 and r["adapter_bytes"] > 0
        assert r["steps"] == 3 and r["wall_seconds"] > 0
        ev = json.loads((Path(r["run"]) / "eval_metrics.json").read_text())
        assert ev["exact_match"] == r["value"] and ev["n"] == 8
    table = (out / "sweep.md").read_text()
    assert table.count("\n| ") == 3 and "| hra | peft | - |" in table and "failed in train" in table
    assert f"| lora | peft | {r['value']:.4g} | {r['trainable_parameters']:,} |" in table
    assert (out / "sweep.png").stat().st_size > 10_000

    p = run_cli(["peft-apps", "sweep", "sft", "-r", "demo", "--methods", "hra,lora", *budget, "-o", str(out)],
                timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2/2 lora: finished earlier" in p.stderr
    assert "1/2 hra failed" in p.stderr  # a failed method is tried again

    p = run_cli(["peft-apps", "sweep", "sft", "-r", "demo", "--methods", "lora", "train.max_steps=4", "-o", str(out)])
    assert p.returncode == 2 and "holds a different sweep" in p.stderr


def test_sweep_and_method_names_fail_clearly(tmp_path):
    p = run_cli(["peft-apps", "sweep", "sft", "-r", "demo", "--methods", "lora,rand_lora,ia_3", "-o", str(tmp_path)])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "'rand_lora' (did you mean 'randlora'?)" in p.stderr and "'ia_3' (did you mean 'ia3'?)" in p.stderr
    p = run_cli(["peft-apps", "train", "sft", "-r", "demo", "peft.method=lora", "peft.options={lora_rank: 4}",
                 f"train.output_dir={tmp_path / 'x'}"])
    assert p.returncode == 2 and "peft.options: lora_rank not taken by peft.method=lora" in p.stderr
    assert "use_rslora" in p.stderr  # the keys it takes
    assert not (tmp_path / "x").exists()
    p = run_cli(["peft-apps", "train", "sft", "-r", "demo", "peft.method=prompt_tuning", "train.batching=packing",
                 f"train.output_dir={tmp_path / 'y'}"])
    assert p.returncode == 2 and "cannot train on packed rows" in p.stderr
