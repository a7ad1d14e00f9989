"""`peft-apps inspect`: the training records as the trainer sees them (template, tokenization, truncation),
trained tokens marked; `--json` for scripts."""

import json

from helpers.preloaded import run_cli


def test_json_rows_are_what_the_trainer_tokenizes(tmp_path):
    from peft_apps.core.config import load_recipe
    from peft_apps.core.data import tokenize_records
    from peft_apps.core.modeling import load_tokenizer
    from peft_apps.core.registry import get_app

    p = run_cli(["peft-apps", "inspect", "sft", "-r", "demo", "-n", "3", "--json"])
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(rows) == 3
    a = get_app("sft")
    r = load_recipe(a.recipe_path("demo"), app="sft")
    recs = a.training_records(r, "train")[:3]
    cols, _ = tokenize_records(recs, load_tokenizer(r.model), r.data.max_length, r.data.truncation)
    tok = load_tokenizer(r.model)
    for row, rec, ids, mask in zip(rows, recs, cols["input_ids"], cols["completion_mask"]):
        assert set(row) == {"id", "input_ids", "labels", "prompt", "completion", "truncated", "dropped"}
        assert row["id"] == rec.id and row["input_ids"] == ids and not row["dropped"] and row["truncated"] == 0
        assert row["labels"] == [t if m else -100 for t, m in zip(ids, mask)]
        assert row["completion"] == rec.completion + tok.eos_token  # the answer and its end of turn, no more
        assert row["prompt"].startswith(tok.bos_token) and row["prompt"].count(tok.bos_token) == 1


def test_truncation_and_dropping_are_shown():
    p = run_cli(["peft-apps", "inspect", "sft", "-r", "demo", "-n", "1", "--json", "data.max_length=40"])
    row = json.loads(p.stdout.splitlines()[0])
    assert row["dropped"] and row["input_ids"] == [] and row["truncated"] > 40
    p = run_cli(["peft-apps", "inspect", "exam", "-r", "demo", "-n", "1", "--json"])
    full = json.loads(p.stdout.splitlines()[0])
    n_prompt = full["labels"].count(-100)
    p = run_cli(["peft-apps", "inspect", "exam", "-r", "demo", "-n", "1", "--json", f"data.max_length={n_prompt + 2}"])
    cut = json.loads(p.stdout.splitlines()[0])
    assert not cut["dropped"] and cut["truncated"] == len(full["input_ids"]) - n_prompt - 2
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 2]


def test_rich_view_names_counts_and_cuts():
    p = run_cli(["peft-apps", "inspect", "exam", "-r", "demo", "-n", "2"])
    assert p.returncode == 0, p.stderr
    assert "training record(s) as the trainer sees them" in p.stdout and "prompt +" in p.stdout
    assert "trained" in p.stdout and "Answer:" in p.stdout
    p = run_cli(["peft-apps", "inspect", "exam", "-r", "demo", "-n", "2", "data.max_length=60"])
    assert p.returncode == 0 and "dropped" in p.stdout and "> data.max_length=60" in p.stdout
    p = run_cli(["peft-apps", "inspect", "exam", "-n", "0"])
    assert p.returncode == 2 and "Traceback" not in p.stderr
