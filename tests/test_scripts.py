"""The GPU check script's code paths, run on the tiny shape (it refuses full runs without a GPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "redocred" / "dev_revised.json"


@pytest.mark.skipif(not DATA.is_file(), reason="needs ../shared/data/redocred")
def test_gpu_check_smoke_trains_both_methods_through_the_core(tmp_path):
    out = tmp_path / "check.json"
    p = subprocess.run([sys.executable, str(ROOT / "eval" / "gpu_check.py"), "--smoke", "--phases", "train",
                        "--data", str(DATA), "--batch", "2", "--max-length", "1024", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads(out.read_text())["train"]
    assert [(r["shape"], r["method"]) for r in rows] == [("tiny", "lora16"), ("tiny", "qlora")], rows
    assert all(r["useful_tokens_per_s"] > 0 and r["steps"] == 2 for r in rows), rows
    assert [r["quantized"] for r in rows] == [False, True]


def test_gpu_check_refuses_without_a_gpu_unless_smoke():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    p = subprocess.run([sys.executable, str(ROOT / "eval" / "gpu_check.py"), "--phases", "train"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "needs a CUDA GPU" in p.stderr
