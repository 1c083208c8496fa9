"""A DPO adapter trained from Hub-hosted model and data, pushed to the (test) Hub, loads back and generates."""

import re
import subprocess
import sys
import uuid

import torch
from helpers import REPO, describe_inputs
from huggingface_hub import HfApi, ModelCard
from peft import PeftModel
from test_training import run_main
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfalign.publish.hub import push_folder
from selfalign.tiny_zoo.data import draw_shape, preference_dataset


def test_adapter_round_trip_through_the_hub(hub_server, tiny_model_dirs, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    base_id, data_id, adapter_id = f"tiny/qwen2-vl-{suffix}", f"tests/pairs-{suffix}", f"tests/dpo-{suffix}"
    push_folder(tiny_model_dirs["qwen2_vl"], base_id, commit_message="Tiny Qwen2-VL")
    preference_dataset(num_rows=4, seed=3).push_to_hub(data_id)

    trainer, _ = run_main(
        "dpo",
        [
            "--config",
            str(REPO / "recipes" / "tiny" / "dpo_lora.yaml"),
            "--model_name_or_path",
            base_id,
            "--dataset_name",
            data_id,
            "--output_dir",
            str(tmp_path / "out"),
            "--push_to_hub",
            "true",
            "--hub_model_id",
            adapter_id,
            "--hub_private_repo",
            "true",
        ],
    )

    api = HfApi()
    files = set(api.list_repo_files(adapter_id))
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= files
    assert not any(name.startswith("checkpoint-") for name in files)
    assert api.model_info(adapter_id).private

    card = ModelCard.load(adapter_id)
    assert card.data.base_model == base_id
    assert card.data.datasets == [data_id]
    assert card.data.pipeline_tag == "image-text-to-text"
    assert card.data.library_name == "peft"
    assert "csr" in card.data.tags

    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_id), adapter_id)
    trained = {name: param for name, param in trainer.model.named_parameters() if "lora_B" in name}
    loaded = dict(model.named_parameters())
    assert trained and all(torch.equal(loaded[name], param.detach()) for name, param in trained.items())
    processor = AutoProcessor.from_pretrained(adapter_id)
    inputs = describe_inputs(processor, draw_shape("red", "circle", (48, 48)))
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]

    # The card's usage snippet runs as written, next to an example.jpg, in a fresh interpreter.
    snippet = re.search(r"```python\n(.*?)```", card.text, re.DOTALL).group(1)
    draw_shape("blue", "square", (64, 40)).save(tmp_path / "example.jpg")
    result = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
