"""The GPU memory estimator: exact parameter counts, and estimates that move the way memory does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForImageTextToText, LlavaConfig, Qwen2VLConfig

from selfalign.memory import (
    GIB,
    Launch,
    TrainingSetup,
    config_from_facts,
    count_parameters,
    default_lora_regex,
    estimate_memory,
    estimate_recipe,
    lora_targets,
    quantized_linears,
    read_launch,
    sequence_for,
    shipped_model_facts,
)

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = ROOT / "recipes" / "accelerate_configs"
# The training recipes of the seed models (data-building recipes such as pairs.yaml are not estimated).
SEED_RECIPES = sorted(
    path
    for path in (ROOT / "recipes").glob("*/*/*.yaml")
    if path.parts[-3] not in ("tiny", "shapes", "accelerate_configs")
    and ("dpo" in path.stem or "sft" in path.stem)
)
# Published total parameter counts of the seed models.
KNOWN_TOTALS = {
    "llava-hf/llava-1.5-7b-hf": 7.06e9,
    "llava-hf/llava-1.5-13b-hf": 13.35e9,
    "llava-hf/llava-v1.6-mistral-7b-hf": 7.57e9,
    "Qwen/Qwen2-VL-7B-Instruct": 8.29e9,
    "Qwen/Qwen2.5-VL-7B-Instruct": 8.29e9,
}
SKIP = ("lm_head", "model.vision_tower", "model.multi_modal_projector", "model.visual")


def tiny_llava_config() -> LlavaConfig:
    return LlavaConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": 320,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
            "projection_dim": 8,
        },
        image_token_index=300,
        image_seq_length=4,
    )


def tiny_qwen2_vl_config() -> Qwen2VLConfig:
    return Qwen2VLConfig(
        text_config={
            "vocab_size": 320,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
        },
        vision_config={"depth": 2, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=300,
        video_token_id=301,
        vision_start_token_id=302,
        vision_end_token_id=303,
    )


def real_model(config):
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config)


@pytest.mark.parametrize("make_config", [tiny_llava_config, tiny_qwen2_vl_config], ids=["llava", "qwen2_vl"])
def test_meta_counts_equal_the_instantiated_model(make_config):
    config = make_config()
    facts = count_parameters(config)
    model = real_model(config)
    assert facts.total == sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n or ".visual." in n)
    assert facts.vision_tower + facts.projector == vision + sum(
        p.numel() for n, p in model.named_parameters() if "multi_modal_projector" in n
    )
    assert facts.lm_head == model.lm_head.weight.numel()
    assert facts.language_model == sum(
        p.numel() for n, p in model.named_parameters() if "language_model" in n
    )
    assert facts.largest_decoder_layer == sum(
        p.numel() for p in model.model.language_model.layers[0].parameters()
    )


@pytest.mark.parametrize("make_config", [tiny_llava_config, tiny_qwen2_vl_config], ids=["llava", "qwen2_vl"])
def test_lora_count_equals_peft_on_the_recipes_targets(make_config):
    from peft import get_peft_model
    from trl import ModelConfig

    from selfalign.train.model import lora_config

    config = make_config()
    model_args = ModelConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["all-linear"])
    peft_model = get_peft_model(real_model(config), lora_config(model_args))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)

    facts = count_parameters(config)
    targets = lora_targets(facts, default_lora_regex())
    assert sum(4 * (t.in_features + t.out_features) for t in targets) == trainable
    assert targets and all("language_model" in t.name for t in targets)
    # The vision tower has linear layers of its own, which get no adapters.
    vision_linears = [t for t in facts.linears if "vision_tower" in t.name or ".visual." in t.name]
    assert vision_linears and not set(vision_linears) & set(targets)

    setup = TrainingSetup(trainer="dpo", finetuning="lora", lora_r=4, lora_target_regex=default_lora_regex())
    sequence = sequence_for(config, setup)
    estimate = estimate_memory(facts, setup, Launch(), sequence)
    assert estimate.trainable_parameters == trainable


def test_quantized_linears_are_those_bitsandbytes_quantizes(tmp_path):
    import bitsandbytes as bnb
    from trl import ModelConfig

    from selfalign.train.model import quantization_config

    config = tiny_llava_config()
    real_model(config).save_pretrained(tmp_path)
    model_args = ModelConfig(load_in_4bit=True, use_peft=True, use_bnb_nested_quant=True, dtype="bfloat16")
    model = AutoModelForImageTextToText.from_pretrained(
        tmp_path, quantization_config=quantization_config(model_args), dtype=torch.bfloat16
    )
    real = {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}

    quantized = quantized_linears(count_parameters(config), SKIP)
    assert {layer.name for layer in quantized} == set(real)
    assert len(quantized) == 7 * 2  # q, k, v, o, gate, up, down in each of the 2 language-model layers
    for layer in quantized:  # 4 bits per weight, packed into the bf16 storage
        weight = real[layer.name].weight
        assert weight.numel() * weight.element_size() == layer.in_features * layer.out_features // 2


@pytest.mark.parametrize("hub_id", sorted(KNOWN_TOTALS))
def test_shipped_facts_give_the_known_totals(hub_id):
    facts = count_parameters(config_from_facts(shipped_model_facts()[hub_id]))
    assert facts.total == pytest.approx(KNOWN_TOTALS[hub_id], rel=0.01)
    assert facts.vision_tower > 0 and facts.projector > 0 and facts.lm_head > 0


@pytest.fixture(scope="module")
def llava_7b():
    config = config_from_facts(shipped_model_facts()["llava-hf/llava-1.5-7b-hf"])
    return config, count_parameters(config)


def _total(model, finetuning, launch, trainer="dpo", checkpointing=True):
    config, facts = model
    setup = TrainingSetup(
        trainer=trainer,
        finetuning=finetuning,
        lora_target_regex=default_lora_regex(),
        quantization_skip_modules=SKIP,
        activation_checkpointing=checkpointing,
    )
    return estimate_memory(facts, setup, launch, sequence_for(config, setup))


@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3", "fsdp"])
def test_qlora_below_lora_below_full(llava_7b, strategy):
    launch = Launch(strategy=strategy, num_gpus=8)
    qlora, lora, full = (_total(llava_7b, kind, launch) for kind in ("qlora", "lora", "full"))
    assert qlora.total < lora.total < full.total
    assert qlora.components["weights"] < lora.components["weights"]
    # DPO with full fine-tuning keeps a frozen reference copy; with LoRA the adapter is disabled instead.
    assert full.components["reference_model"] > 0
    assert lora.components["reference_model"] == qlora.components["reference_model"] == 0


def test_qlora_weights_are_about_half_a_byte_per_language_model_weight(llava_7b):
    estimate = _total(llava_7b, "qlora", Launch(num_gpus=1))
    _, facts = llava_7b
    quantized = estimate.quantized_parameters
    rest = facts.total - quantized
    per_weight = (estimate.components["weights"] - 2 * rest) / quantized
    assert 0.5 < per_weight < 0.52  # 4-bit + double-quantized constants


@pytest.mark.parametrize("finetuning", ["full", "lora", "qlora"])
def test_zero3_falls_with_more_gpus_ddp_does_not(llava_7b, finetuning):
    zero3 = [_total(llava_7b, finetuning, Launch(strategy="zero3", num_gpus=n)).total for n in (2, 4, 8, 16)]
    assert zero3 == sorted(zero3, reverse=True) and zero3[0] > zero3[-1]
    ddp = [_total(llava_7b, finetuning, Launch(strategy="ddp", num_gpus=n)).total for n in (2, 4, 8, 16)]
    assert max(ddp) == min(ddp)


def test_zero2_shards_gradients_and_optimizer_not_weights(llava_7b):
    two, eight = (_total(llava_7b, "full", Launch(strategy="zero2", num_gpus=n)) for n in (2, 8))
    assert two.components["weights"] == eight.components["weights"]
    assert eight.components["gradients"] == pytest.approx(two.components["gradients"] / 4)
    assert eight.components["optimizer_states"] == pytest.approx(two.components["optimizer_states"] / 4)


@pytest.mark.parametrize("finetuning", ["full", "lora", "qlora"])
@pytest.mark.parametrize("trainer", ["dpo", "sft"])
def test_activation_checkpointing_lowers_activations(llava_7b, finetuning, trainer):
    on = _total(llava_7b, finetuning, Launch(), trainer=trainer, checkpointing=True)
    off = _total(llava_7b, finetuning, Launch(), trainer=trainer, checkpointing=False)
    assert on.components["activations"] < off.components["activations"]
    assert on.activations_full == off.components["activations"]
    assert on.total < off.total


def test_dpo_doubles_the_sequences_of_sft(llava_7b):
    dpo = _total(llava_7b, "lora", Launch(), trainer="dpo")
    sft = _total(llava_7b, "lora", Launch(), trainer="sft")
    assert dpo.sequences_per_gpu == 2 * sft.sequences_per_gpu


@pytest.mark.parametrize(
    ("name", "strategy"), [("ddp", "ddp"), ("zero2", "zero2"), ("zero3", "zero3"), ("fsdp", "fsdp")]
)
def test_read_launch(name, strategy):
    launch = read_launch(ACCELERATE / f"{name}.yaml")
    assert (launch.strategy, launch.num_gpus, launch.mixed_precision) == (strategy, 8, "bf16")
    assert read_launch(ACCELERATE / f"{name}.yaml", num_gpus=2).num_gpus == 2


def test_seed_recipes_are_found():
    assert len(SEED_RECIPES) >= 13
    assert {path.parts[-3] for path in SEED_RECIPES} >= {"llava-1.5-7b", "qwen2-vl-7b-instruct"}


# The EACO SFT stage starts from the merged DPO model, which has its base model's architecture.
SAME_ARCHITECTURE = {"your-org/llava-v1.6-mistral-7b-eaco-dpo-merged": "llava-hf/llava-v1.6-mistral-7b-hf"}


@pytest.mark.parametrize("recipe", SEED_RECIPES, ids=lambda p: "/".join(p.parts[-3:]))
def test_every_seed_recipe_estimates(recipe):
    model = yaml.safe_load(recipe.read_text())["model_name_or_path"]
    overrides = ["--base_model_id", SAME_ARCHITECTURE[model]] if model in SAME_ARCHITECTURE else []
    totals = {}
    for name in ("ddp", "zero3"):
        estimate = estimate_recipe(recipe, ACCELERATE / f"{name}.yaml", overrides=overrides)
        assert estimate.total > 0
        assert all(value >= 0 for value in estimate.components.values())
        totals[name] = estimate.total
    assert totals["zero3"] < totals["ddp"]


def test_recipe_overrides_change_the_estimate():
    recipe = ROOT / "recipes" / "llava-1.5-7b" / "csr" / "dpo_lora.yaml"
    one = estimate_recipe(recipe, ACCELERATE / "ddp.yaml")
    four = estimate_recipe(recipe, ACCELERATE / "ddp.yaml", overrides=["--per_device_train_batch_size", "4"])
    assert four.sequences_per_gpu == 4 * one.sequences_per_gpu
    assert four.components["activations"] > one.components["activations"]


def test_cli_prints_text_and_json():
    recipe = "recipes/llava-1.5-7b/csr/dpo_qlora.yaml"
    command = [sys.executable, "scripts/estimate_memory.py", "--config", recipe]
    command += ["--accelerate_config", "recipes/accelerate_configs/zero3.yaml", "--num_gpus", "4"]
    text = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "ESTIMATE" in text and "total" in text and "reference model" in text

    result = subprocess.run(command + ["--json"], cwd=ROOT, capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    assert data["estimate"] is True and "estimate" in data["disclaimer"]
    assert data["launch"]["num_gpus"] == 4 and data["launch"]["strategy"] == "zero3"
    assert data["parameters"]["total"] == 7_063_427_072
    parts = data["gib_per_gpu"]
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"), abs=0.05)
    assert data["sequence"]["image_tokens"] == 576
    assert data["total_gib_without_checkpointing"] > parts["total"]
    assert parts["total"] * GIB > 0
