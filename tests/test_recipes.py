"""Every recipe parses strictly; a misspelt key or a wrong type fails with the key and the file named."""

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from helpers import REPO, load_script, run_script
from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, SFTConfig

from selfalign.build.policy import PolicyArguments, PolicySamplingArguments
from selfalign.build.runner import BuildArguments
from selfalign.config import RecipeError, parse_recipe
from selfalign.evaluation.inputs import EvaluationArguments
from selfalign.images import ImageSourceArguments
from selfalign.methods.csr import CsrArguments
from selfalign.rounds.arguments import IterateArguments
from selfalign.synthetic import ShapesWorldArguments
from selfalign.train.arguments import ScriptArguments

TRAINING_CONFIGS = {"dpo": DPOConfig, "sft": SFTConfig}
# Dataset builder recipes, by file name: the dataclasses their builder parses.
BUILDER_RECIPES = {
    "images": (ImageSourceArguments, BuildArguments),
    "samples": (ImageSourceArguments, PolicySamplingArguments, BuildArguments),
    "shapes": (ShapesWorldArguments, BuildArguments),
    "world": (ShapesWorldArguments, BuildArguments),
    "world_truthful": (ShapesWorldArguments, BuildArguments),
    "clip": (load_script("train_clip").ClipTrainingArguments,),
    "eval": (EvaluationArguments,),
}
# Method recipes, by (method folder, file name).
METHOD_RECIPES = {
    ("csr", "pairs"): (ImageSourceArguments, PolicyArguments, CsrArguments, BuildArguments),
    ("csr", "iterate"): (IterateArguments,),
    ("csr", "iterate_scene_truth"): (IterateArguments,),
}
ACCELERATE_DIR = REPO / "recipes" / "accelerate_configs"
# Values the configs themselves rewrite when constructed (TRL's ModelConfig, transformers' TrainingArguments).
CONFIG_REWRITES = {("lora_target_modules", "['all-linear']"): "all-linear", ("report_to", "none"): []}
RECIPES = sorted(path for path in (REPO / "recipes").rglob("*.yaml") if ACCELERATE_DIR not in path.parents)


def recipe_dataclasses(recipe: Path) -> tuple:
    """The dataclasses a recipe configures, from its file name (`dpo_*.yaml` -> DPO, `*sft*.yaml` -> SFT)."""
    if (recipe.parent.name, recipe.stem) in METHOD_RECIPES:
        return METHOD_RECIPES[recipe.parent.name, recipe.stem]
    if recipe.stem in BUILDER_RECIPES:
        return BUILDER_RECIPES[recipe.stem]
    for script, config in TRAINING_CONFIGS.items():
        if recipe.stem.startswith(script) or f"_{script}" in recipe.stem:
            return (ScriptArguments, config, ModelConfig, DatasetMixtureConfig)
    raise AssertionError(
        f"{recipe}: no test knows which script reads this recipe; add it to TRAINING_CONFIGS"
    )


def test_recipes_exist_for_every_seed_model():
    folders = {path.relative_to(REPO / "recipes").parts[0] for path in RECIPES}
    assert {
        "llava-1.5-7b",
        "llava-1.5-13b",
        "llava-v1.6-mistral-7b",
        "qwen2-vl-7b-instruct",
        "qwen2.5-vl-7b-instruct",
        "tiny",
    } <= folders


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: str(path.relative_to(REPO / "recipes")))
def test_recipe_parses_strictly(recipe):
    dataclasses = recipe_dataclasses(recipe)
    training = any(config in dataclasses for config in TRAINING_CONFIGS.values())
    cpu = ["--use_cpu", "true"] if training else []  # bf16 training recipes, parsed on a CPU
    parsed = parse_recipe(dataclasses, ["--config", str(recipe), *cpu])
    values = yaml.safe_load(recipe.read_text())
    for key, value in values.items():
        holder = next(config for config in parsed if hasattr(config, key))
        parsed_value = getattr(holder, key)
        expected = (
            float(value) if isinstance(parsed_value, float) else CONFIG_REWRITES.get((key, str(value)), value)
        )
        assert parsed_value == expected, key
    if values.get("load_in_4bit"):
        assert values.get("use_peft"), "QLoRA recipes must train adapters"


def test_command_line_overrides_recipe():
    recipe = REPO / "recipes" / "tiny" / "dpo_lora.yaml"
    _, training_args, model_args, _ = parse_recipe(
        recipe_dataclasses(recipe), ["--config", str(recipe), "--learning_rate", "0.5", "--lora_r", "4"]
    )
    assert training_args.learning_rate == 0.5
    assert model_args.lora_r == 4
    assert training_args.beta == 0.1  # untouched keys keep the recipe's value


def test_csr_recipe_carries_the_paper_hyperparameters():
    recipe = REPO / "recipes" / "llava-1.5-7b" / "csr" / "dpo_lora.yaml"
    _, training_args, model_args, _ = parse_recipe(
        recipe_dataclasses(recipe), ["--config", str(recipe), "--use_cpu", "true"]
    )
    assert (model_args.lora_r, model_args.lora_alpha) == (128, 256)
    assert training_args.learning_rate == 1e-7
    assert training_args.beta == 0.1
    assert training_args.num_train_epochs == 1
    assert training_args.loss_type == ["sigmoid"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lerning_rate: 1.0e-5\n", "unknown key 'lerning_rate' (did you mean 'learning_rate'?)"),
        ("learning_rate: fast\n", "key 'learning_rate' expects float, got str 'fast'"),
        ("use_peft: sometimes\n", "key 'use_peft' expects bool"),
        ("lora_r: 8.5\n", "key 'lora_r' expects int"),
        ("model_role: judge\n", "key 'model_role' expects one of 'policy', 'critic'"),
        ("datasets:\n  - path: a\n    fracton: 0.5\n", "key 'datasets' item 0 has unknown entry 'fracton'"),
        ("- just\n- a list\n", "a recipe must be a YAML mapping"),
    ],
)
def test_bad_recipe_names_key_and_file(tmp_path, text, expected):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(RecipeError) as error:
        parse_recipe(
            recipe_dataclasses(REPO / "recipes" / "tiny" / "dpo_lora.yaml"), ["--config", str(recipe)]
        )
    assert str(recipe) in str(error.value)
    assert expected in str(error.value)


def test_misspelt_key_is_one_clear_line_for_the_user(tmp_path):
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text((REPO / "recipes" / "tiny" / "dpo_lora.yaml").read_text().replace("beta:", "betta:"))
    result = run_script("dpo", "--config", str(recipe))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"error: {recipe}: unknown key 'betta' (did you mean 'beta'?)" in result.stderr


@pytest.mark.parametrize("config", sorted(ACCELERATE_DIR.glob("*.yaml")), ids=lambda path: path.name)
def test_accelerate_config_loads(config):
    loaded = load_config_from_file(str(config))
    assert loaded.mixed_precision == "bf16"
    assert loaded.num_processes >= 1


def test_zero3_is_set_up_for_qlora_as_peft_documents():
    loaded = load_config_from_file(str(ACCELERATE_DIR / "zero3.yaml"))
    assert loaded.deepspeed_config["zero_stage"] == 3
    assert loaded.deepspeed_config["zero3_init_flag"] is True
