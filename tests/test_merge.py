"""scripts/merge_adapter.py folds a trained LoRA adapter into its base: same outputs, no adapter left."""

import torch
from helpers import REPO, describe_inputs, load_script
from peft import PeftModel
from test_training import run_main
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfalign.config import parse_recipe
from selfalign.tiny_zoo.data import draw_shape


def test_merged_model_matches_base_plus_adapter(tiny_model_dirs, local_datasets, tmp_path):
    base = tiny_model_dirs["llava"]
    adapter = tmp_path / "adapter"
    run_main("dpo", ["--config", str(REPO / "recipes" / "tiny" / "dpo_lora.yaml"), "--model_name_or_path", str(base),
                     "--dataset_name", str(local_datasets["dpo"]), "--output_dir", str(adapter)])  # fmt: skip

    merge = load_script("merge_adapter")
    merged = merge.main(*parse_recipe(merge.RECIPE_DATACLASSES, [
        "--adapter", str(adapter), "--output_dir", str(tmp_path / "merged"), "--dtype", "float32",
        "--base_model_id", "llava-hf/llava-1.5-7b-hf",
    ]))  # fmt: skip

    processor = AutoProcessor.from_pretrained(merged)
    inputs = describe_inputs(processor, draw_shape("green", "square", (48, 48)))
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), adapter)(
            **inputs
        ).logits
        plain_base = AutoModelForImageTextToText.from_pretrained(base)(**inputs).logits
        merged_model = AutoModelForImageTextToText.from_pretrained(merged)
        actual = merged_model(**inputs).logits
    assert not any("lora" in name for name, _ in merged_model.named_parameters())
    assert torch.allclose(actual, expected, atol=1e-5)
    assert not torch.allclose(actual, plain_base, atol=1e-5), "the adapter changed something"
    card = (merged / "README.md").read_text()
    assert "base_model: llava-hf/llava-1.5-7b-hf" in card
    assert str(tmp_path) not in card, "no local paths in a card"
