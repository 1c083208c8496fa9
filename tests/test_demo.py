"""`make demo`'s script runs to the end on a fresh output folder: the shapes world, a trained CLIP, the
base and clean-labels policies trained from it, the oracle's and CSR's first round, published to a local
Hub, evaluated, and the table with its breakdown."""

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


ROWS = (
    "base policy (SFT)",
    "clean-labels SFT",
    "oracle (scene truth) round 1",
    "CSR round 1",
)


@pytest.mark.timeout(900)
def test_the_quick_demo_trains_publishes_evaluates_and_reports_every_row(tmp_path):
    # The demo starts its own Hub server and sets its own Hub variables, as on a user's machine.
    # --quick: the same steps on a small world with few steps; what it measures is not checked here,
    # the full demo (`make demo`) measures the README's numbers.
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    output = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--quick", "--output-dir", str(output)],
        env=env, capture_output=True, text=True, timeout=800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[9/9]" in result.stdout

    # The policy was evaluated as published: loaded from the local Hub, on the published eval scenes.
    report = json.loads((output / "eval" / "base" / "report.json").read_text())
    assert report["model"]["name_or_path"] == POLICY_ID
    assert report["model"]["revision"] != "local"
    assert report["eval_set"]["name_or_path"] == "selfalign-demo/shapes-eval"
    assert report["eval_set"]["num_scenes"] == 50  # the quick world's
    clean = json.loads((output / "eval" / "clean_labels" / "report.json").read_text())
    assert clean["model"]["name_or_path"] == "selfalign-demo/shapes-policy-clean-labels"
    for folder in ("policy", "policy_clean_labels"):
        card = (output / folder / "README.md").read_text()
        assert "base_model: selfalign-demo/shapes-llava-init" in card
        assert "| freeze_vision_tower | True |" in card

    # The two SFT sets hold the same rows; only the noisy one names companions the scene lacks.
    noisy = sft_rows(output / "world" / "sft")
    clean_rows = sft_rows(output / "world" / "sft_clean_labels")
    assert [row["id"] for row in noisy] == [row["id"] for row in clean_rows]
    assert any(row["annotator_added"] for row in noisy)
    assert not any(row["annotator_added"] for row in clean_rows)

    # The oracle's and CSR's round (the full demo runs two): sampled, trained and evaluated; the
    # start was evaluated once, in the demo's own step, not again by either run.
    for run_name in ("oracle", "csr"):
        summary = json.loads((output / run_name / "summary.json").read_text())
        assert summary["start_eval"] is None
        assert all(entry["pairs"]["rows"] > 0 and entry["eval"] for entry in summary["rounds"])
    csr = json.loads((output / "csr" / "summary.json").read_text())
    assert [entry["model"]["hub_id"] for entry in csr["rounds"]] == ["selfalign-demo/shapes-csr-iter1"]

    # The table: every row, printed and in report.md (headline and breakdown), the chart beside it.
    markdown = (output / "report.md").read_text()
    captions = report["captions"]
    row = f"| base policy (SFT) | {captions['chair_i']:.3f} | {captions['chair_s']:.3f} |"
    assert row in result.stdout and row in markdown
    for name in ROWS:  # the headline, the breakdown and, for a round, its pairs
        assert markdown.count(f"| {name} |") == (3 if "round" in name else 2), name
        assert f"| {name} |" in result.stdout
    low, high = captions["intervals_95"]["chair_i"]  # how far apart two rows must be to differ
    assert f"| {low:.3f}-{high:.3f} |" in markdown
    assert "| absent companions | wrong shape |" in markdown
    # Each round's pairs, judged by the scenes' truth, with as many rows as the round's pairs.
    assert "| pairs | rows | chosen CHAIR_i | rejected CHAIR_i |" in markdown
    for run_name, title in (("oracle", "oracle (scene truth)"), ("csr", "CSR")):
        summary = json.loads((output / run_name / "summary.json").read_text())
        assert f"| {title} round 1 | {summary['rounds'][0]['pairs']['rows']} | " in markdown
    assert (output / "report.png").read_bytes().startswith(b"\x89PNG")


def sft_rows(folder):
    from datasets import load_dataset

    return load_dataset(str(folder), split="train").select_columns(["id", "annotator_added"]).to_list()
