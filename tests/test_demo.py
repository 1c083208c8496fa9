"""`make demo`'s script runs to the end: a local Hub, a tiny model, data, DPO, publish, load back, generate."""

import os
import subprocess
import sys

from helpers import REPO


def test_demo_runs_end_to_end(tmp_path):
    # The demo starts its own Hub server and sets its own Hub variables, as on a user's machine.
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--output-dir", str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[5/5]" in result.stdout
    assert "32 rows" in result.stdout and "pixels identical: True" in result.stdout
    assert (tmp_path / "demo" / "dpo_lora" / "adapter_model.safetensors").is_file()
    assert (
        "base_model: selfalign-demo/tiny-qwen2-vl"
        in (tmp_path / "demo" / "dpo_lora" / "README.md").read_text()
    )
