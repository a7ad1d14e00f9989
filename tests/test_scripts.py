"""The GPU check script's code paths, run on tiny shapes (it refuses full runs without a GPU)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_both_modes():
    p = subprocess.run([sys.executable, str(ROOT / "eval" / "gpu_check.py"), "--smoke", "--steps", "1",
                        "--batch", "1", "--seq", "32"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert [r["mode"] for r in rows] == ["lora16", "qlora"] and all(r["tokens_per_s"] > 0 for r in rows)
