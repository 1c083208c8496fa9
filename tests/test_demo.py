"""`make demo`'s script runs to the end on a fresh output folder: the shapes world, a trained CLIP, the
base policy trained from it, CSR's two rounds, all published to a local Hub, evaluated, and the table."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

POLICY_ID = "selfalign-demo/shapes-policy"


def test_the_demo_loads_no_hub_client_before_it_points_them_at_its_own_server():
    # huggingface_hub reads HF_ENDPOINT once, when first imported; the demo sets it in main().
    loaded = subprocess.run(
        [sys.executable, "-c",
         "import runpy, sys; runpy.run_path(sys.argv[1]); print('huggingface_hub' in sys.modules)",
         str(REPO / "scripts" / "demo.py")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert loaded.stdout.strip() == "False"


@pytest.mark.timeout(1800)  # the whole showcase: about twelve minutes on 2 cores
def test_demo_trains_publishes_and_reports_the_base_policy(tmp_path):
    # The demo starts its own Hub server and sets its own Hub variables, as on a user's machine.
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    output = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--output-dir", str(output)],
        env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[7/7]" in result.stdout

    # The policy was evaluated as published (iterate's round 0): loaded from the local Hub, on the
    # published eval scenes.
    report = json.loads((output / "csr" / "round_0" / "eval" / "report.json").read_text())
    assert report["model"]["name_or_path"] == POLICY_ID
    assert report["model"]["revision"] != "local"
    assert report["eval_set"]["name_or_path"] == "selfalign-demo/shapes-eval"
    assert report["eval_set"]["num_scenes"] == 1000
    assert "base_model: selfalign-demo/shapes-llava-init" in (output / "policy" / "README.md").read_text()
    clip_metrics = json.loads((output / "clip" / "metrics.json").read_text())
    assert clip_metrics["image_to_text_top5"] > 5 * clip_metrics["before_training"]["image_to_text_top5"]
    # Its tower tells shapes apart at sentence level (the first, contrastive-only CLIP: 0.61; chance 0.5),
    # and the policy kept it frozen.
    assert clip_metrics["shape_discrimination"] > 0.8
    assert "| freeze_vision_tower | True |" in (output / "policy" / "README.md").read_text()

    # The base policy the methods start from: grounded, and hallucinating in 30-60% of its captions.
    captions = report["captions"]
    assert 0.3 <= captions["chair_s"] <= 0.6, captions
    assert captions["recall"] > 0.15 and captions["mean_caption_words"] > 8
    assert report["pope"]["all"]["f1"] > 0.3

    # The table: printed, in report.md with the chart beside it.
    row = f"| base policy (SFT) | {captions['chair_i']:.3f} | {captions['chair_s']:.3f} |"
    assert row in result.stdout
    assert row in (output / "report.md").read_text()
    low, high = captions["intervals_95"]["chair_i"]  # how far apart two rows must be to differ
    assert low < captions["chair_i"] < high
    assert f"| {low:.3f}-{high:.3f} |" in (output / "report.md").read_text()
    assert (output / "report.png").read_bytes().startswith(b"\x89PNG")
    # The breakdown table below it: one more row per model, the wrong mentions by kind.
    assert (output / "report.md").read_text().count("| base policy (SFT) |") == 2
    assert "| absent companions | wrong shape |" in (output / "report.md").read_text()

    # CSR's rounds: each sampled from the previous round's published model, each evaluated.
    summary = json.loads((output / "csr" / "summary.json").read_text())
    assert [entry["model"]["hub_id"] for entry in summary["rounds"]] == [
        "selfalign-demo/shapes-csr-iter1",
        "selfalign-demo/shapes-csr-iter2",
    ]
    assert all(entry["pairs"]["rows"] >= 500 for entry in summary["rounds"])  # of 600 scenes
    final = summary["rounds"][-1]["eval"]["report"]["captions"]
    assert f"| CSR round 2 | {final['chair_i']:.3f} |" in result.stdout
    assert final["chair_i"] < captions["chair_i"]  # CSR reduces object hallucination
