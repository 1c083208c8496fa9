"""scripts/iterate.py on tiny models: two CSR rounds (pairs -> DPO -> merge), published per round to the
test Hub and loaded back, resumed at step granularity after an interruption."""

import json
import shlex

import pytest
import torch
import yaml
from datasets import load_dataset
from helpers import REPO, run_script
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModelForImageTextToText

from selfalign.config import parse_recipe
from selfalign.rounds.arguments import IterateArguments

RECIPE = REPO / "recipes" / "tiny" / "csr" / "iterate.yaml"


def iterate_args(image_folder, tiny_model_dirs, tiny_clip_dir, output_dir, *extra: str) -> list[str]:
    # The builder's own flags quoted together as one value, as a user types them on a command line.
    pairs_args = shlex.join(["--image_folder", str(image_folder), "--clip_model", str(tiny_clip_dir)])
    return ["--config", str(RECIPE), "--pairs_args", pairs_args, "--policy_model", str(tiny_model_dirs["llava"]),
            "--output_dir", str(output_dir), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def published_run(hub_server, image_folder, tiny_model_dirs, tiny_clip_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("iterate") / "run"
    args = iterate_args(
        image_folder, tiny_model_dirs, tiny_clip_dir, output,
        "--push_to_hub", "true", "--hub_model_id", "selfalign-test/tiny-csr",
        "--hub_dataset_id", "selfalign-test/tiny-csr-pairs", "--policy_model_id", "selfalign-test/tiny-llava",
    )  # fmt: skip
    result = run_script("iterate", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_two_rounds_publish_each_rounds_pairs_and_model(published_run, tiny_model_dirs):
    output, result = published_run
    api = HfApi()
    for round_number in (1, 2):
        pairs = load_dataset(f"selfalign-test/tiny-csr-pairs-iter{round_number}", split="train")
        assert len(pairs) > 0 and set(pairs["iteration"]) == {round_number}
        assert set(pairs["method"]) == {"csr"}
        assert api.model_info(f"selfalign-test/tiny-csr-iter{round_number}").sha
    # Round 2 sampled its pairs from round 1's published model.
    round_2 = load_dataset("selfalign-test/tiny-csr-pairs-iter2", split="train")
    assert set(round_2["policy_model"]) == {"selfalign-test/tiny-csr-iter1"}

    start = _weights(AutoModelForImageTextToText.from_pretrained(tiny_model_dirs["llava"]))
    first = _weights(AutoModelForImageTextToText.from_pretrained("selfalign-test/tiny-csr-iter1"))
    second = _weights(AutoModelForImageTextToText.from_pretrained("selfalign-test/tiny-csr-iter2"))
    changed = [name for name in start if not torch.equal(start[name], first[name])]
    # DPO with LoRA on the language model: its projections moved, the vision tower did not.
    assert changed and all("language_model" in name for name in changed)
    assert any(not torch.equal(first[name], second[name]) for name in changed)
    assert ModelCard.load("selfalign-test/tiny-csr-iter2").data.base_model == "selfalign-test/tiny-csr-iter1"
    assert ModelCard.load("selfalign-test/tiny-csr-iter1").data.base_model == "selfalign-test/tiny-llava"

    summary = json.loads((output / "summary.json").read_text())
    assert [entry["round"] for entry in summary["rounds"]] == [1, 2]
    assert all(entry["dpo"]["metrics"]["train_loss"] > 0 for entry in summary["rounds"])
    table = (output / "summary.md").read_text()
    assert "| 2 |" in table and "selfalign-test/tiny-csr-iter2" in table
    assert "| 2 |" in result.stdout  # the summary is printed too


def test_a_rerun_goes_on_from_the_first_unfinished_step(
    published_run, image_folder, tiny_model_dirs, tiny_clip_dir
):
    output, _ = published_run
    progress = json.loads((output / "progress.json").read_text())
    # Forget round 2's merge: the rerun redoes that step only, and a third round on top.
    del progress["steps"]["round_2/merged"]
    (output / "progress.json").write_text(json.dumps(progress))
    args = iterate_args(
        image_folder, tiny_model_dirs, tiny_clip_dir, output, "--rounds", "3",
        "--push_to_hub", "true", "--hub_model_id", "selfalign-test/tiny-csr",
        "--hub_dataset_id", "selfalign-test/tiny-csr-pairs", "--policy_model_id", "selfalign-test/tiny-llava",
    )  # fmt: skip
    result = run_script("iterate", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    commands = [line for line in result.stdout.splitlines() if line.startswith("$ ")]
    assert [command.split()[2] for command in commands] == [
        "scripts/merge_adapter.py",  # round 2's unfinished step
        "dataset_builders/csr_pairs.py", "scripts/dpo.py", "scripts/merge_adapter.py",  # round 3
    ]  # fmt: skip
    assert HfApi().model_info("selfalign-test/tiny-csr-iter3").sha


def test_builder_flags_come_as_a_yaml_list_or_one_quoted_command_line_value(tmp_path):
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["pairs_args"] = ["--image_folder", "my images", "--batch_size", "8"]
    path = tmp_path / "iterate.yaml"
    path.write_text(yaml.safe_dump(recipe))
    (from_yaml,) = parse_recipe([IterateArguments], ["--config", str(path)])
    assert from_yaml.pairs_args == ["--image_folder", "my images", "--batch_size", "8"]  # kept whole
    (from_command_line,) = parse_recipe(
        [IterateArguments],
        ["--config", str(path), "--pairs_args", "--image_folder 'my images' --batch_size 4",
         "--dpo_args=--learning_rate 1e-6", "--eval_args", "--eval_dataset shapes-eval"],
    )  # fmt: skip
    assert from_command_line.pairs_args == ["--image_folder", "my images", "--batch_size", "4"]
    assert from_command_line.dpo_args == ["--learning_rate", "1e-6"]
    assert from_command_line.eval_args == ["--eval_dataset", "shapes-eval"]


def test_other_settings_in_the_same_folder_are_refused(
    published_run, image_folder, tiny_model_dirs, tiny_clip_dir
):
    output, _ = published_run
    result = run_script("iterate", *iterate_args(image_folder, tiny_model_dirs, tiny_clip_dir, output))
    assert result.returncode != 0
    assert "holds a run with other settings (hub_dataset_id, hub_model_id, policy_model_id, push_to_hub)" in (
        result.stderr
    )
