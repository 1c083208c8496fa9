"""Bad input to the training entry points fails early with a message that says what to fix."""

import shutil

import pytest
from datasets import Dataset, Image, List
from helpers import REPO, run_script
from test_training import run_main

from selfalign.errors import SelfAlignError
from selfalign.tiny_zoo.data import draw_shape, preference_dataset, save_hub_layout

DPO_RECIPE = str(REPO / "recipes" / "tiny" / "dpo_lora.yaml")


@pytest.fixture
def pairs_dir(tmp_path):
    return save_hub_layout(preference_dataset(num_rows=2), tmp_path / "pairs")


def dpo_args(model, data, output_dir, *extra):
    return [
        "--config",
        DPO_RECIPE,
        "--model_name_or_path",
        str(model),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(output_dir),
        *extra,
    ]


def test_model_without_chat_template(tiny_model_dirs, pairs_dir, tmp_path):
    model = shutil.copytree(tiny_model_dirs["llava"], tmp_path / "no-template")
    (model / "chat_template.jinja").unlink()
    with pytest.raises(SelfAlignError, match="has no chat template"):
        run_main("dpo", dpo_args(model, pairs_dir, tmp_path / "out"))


def test_dataset_missing_trainer_columns(tiny_model_dirs, tmp_path):
    data = save_hub_layout(
        preference_dataset(num_rows=2).remove_columns(["chosen", "rejected"]), tmp_path / "d"
    )
    result = run_script("dpo", *dpo_args(tiny_model_dirs["qwen2_vl"], data, tmp_path / "out"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "missing the column(s) ['chosen', 'rejected'] that DPO training needs" in result.stderr


def test_images_and_placeholders_disagree(tiny_model_dirs, tmp_path):
    rows = preference_dataset(num_rows=3).to_list()
    rows[2]["images"] = [draw_shape("red", "circle", (48, 48))] * 2  # two images, one placeholder
    data = save_hub_layout(Dataset.from_list(rows).cast_column("images", List(Image())), tmp_path / "d")
    with pytest.raises(SelfAlignError, match=r"row 2: 2 image\(s\) but 1 image placeholder\(s\) in 'prompt'"):
        run_main("dpo", dpo_args(tiny_model_dirs["qwen2_vl"], data, tmp_path / "out"))


@pytest.mark.parametrize(
    "repo_id", ["no-namespace", "two/slashes/here", "bad name/with space", "org/--double-dash"]
)
def test_malformed_repo_id_fails_before_training(repo_id, tiny_model_dirs, pairs_dir, tmp_path):
    output_dir = tmp_path / "out"
    with pytest.raises(SelfAlignError, match="repo id"):
        run_main(
            "dpo",
            dpo_args(
                tiny_model_dirs["qwen2_vl"],
                pairs_dir,
                output_dir,
                "--push_to_hub",
                "true",
                "--hub_model_id",
                repo_id,
            ),
        )
    assert not output_dir.exists(), "nothing may be trained before the push settings are checked"


def test_push_without_token_fails_before_training(monkeypatch, tiny_model_dirs, pairs_dir, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    output_dir = tmp_path / "out"
    with pytest.raises(SelfAlignError, match="needs a token"):
        run_main(
            "dpo",
            dpo_args(
                tiny_model_dirs["qwen2_vl"],
                pairs_dir,
                output_dir,
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "org/name",
                "--base_model_id",
                "org/base",
            ),
        )
    assert not output_dir.exists()


def test_local_base_model_needs_its_hub_id_to_publish(tiny_model_dirs, pairs_dir, tmp_path):
    with pytest.raises(SelfAlignError, match="set `base_model_id`"):
        run_main(
            "dpo",
            dpo_args(
                tiny_model_dirs["qwen2_vl"],
                pairs_dir,
                tmp_path / "out",
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "org/name",
            ),
        )


def test_missing_dataset(tiny_model_dirs, tmp_path):
    with pytest.raises(SelfAlignError, match="could not load the training data"):
        run_main("dpo", dpo_args(tiny_model_dirs["qwen2_vl"], tmp_path / "nowhere", tmp_path / "out"))


def test_image_max_pixels_only_for_dynamic_resolution_processors(tiny_model_dirs):
    from selfalign.models import load_vlm_processor

    image = draw_shape("red", "circle", (128, 128))
    qwen = str(tiny_model_dirs["qwen2_vl"])
    full = load_vlm_processor(qwen).image_processor(images=[image])["image_grid_thw"].prod()
    capped = (
        load_vlm_processor(qwen, image_max_pixels=32 * 32)
        .image_processor(images=[image])["image_grid_thw"]
        .prod()
    )
    assert capped < full
    with pytest.raises(SelfAlignError, match="dynamic-resolution processors"):
        load_vlm_processor(str(tiny_model_dirs["llava"]), image_max_pixels=32 * 32)
