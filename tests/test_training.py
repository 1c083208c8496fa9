"""scripts/sft.py and scripts/dpo.py on every tiny family, with LoRA and QLoRA, and every real recipe.

The tests call each script's `main()` with the arguments a user would pass and check what training
did: every trainable parameter moved, every frozen one (4-bit base weights included) did not.
"""

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from helpers import REPO, load_script
from test_recipes import RECIPES, recipe_dataclasses

from selfalign.config import parse_recipe
from selfalign.tiny_zoo import FAMILIES
from selfalign.tiny_zoo.data import preference_dataset, save_hub_layout

# The tiny family that shares each seed model's architecture.
SEED_MODEL_FAMILY = {
    "llava-1.5-7b": "llava",
    "llava-1.5-13b": "llava",
    "llava-v1.6-mistral-7b": "llava_next",
    "qwen2-vl-7b-instruct": "qwen2_vl",
    "qwen2.5-vl-7b-instruct": "qwen2_5_vl",
}
# Training recipes; the data-building ones of the same folders (pairs, iterate) run in their builders' tests.
SEED_RECIPES = [
    path for path in RECIPES if path.parts[-3] in SEED_MODEL_FAMILY and path.stem not in ("pairs", "iterate")
]


def parameter_values(model) -> dict[str, torch.Tensor]:
    """Every parameter's value; a 4-bit weight is read as its layer's output for the identity input.

    bitsandbytes repacks 4-bit storage for its CPU kernel, so the raw bytes can change while the weight
    does not. The identity input requires grad because a no-grad forward in eval mode triggers that
    repacking, after which backward through the layer gives zero input gradients.
    """
    values = {name: param.detach().clone() for name, param in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            identity = torch.eye(module.in_features, requires_grad=True)
            values[f"{name}.weight"] = module(identity).detach()
    return values


def run_main(script: str, args: list[str]):
    """Run `scripts/<script>.py`'s main() on a command line; return its trainer and the parameters before training."""
    module = load_script(script)
    trainer_class = getattr(module, f"{script.upper()}Trainer")
    seen = {}

    class ProbedTrainer(trainer_class):
        steps_run = 0

        def train(self, *train_args, **train_kwargs):
            seen["trainer"] = self
            seen["before"] = parameter_values(self.model)
            self.resumed_from = train_kwargs.get("resume_from_checkpoint")
            return super().train(*train_args, **train_kwargs)

        def training_step(self, *step_args, **step_kwargs):
            self.steps_run += 1
            return super().training_step(*step_args, **step_kwargs)

    setattr(module, trainer_class.__name__, ProbedTrainer)
    module.main(*parse_recipe(module.RECIPE_DATACLASSES, args))
    return seen["trainer"], seen["before"]


@pytest.mark.parametrize("adaptation", ["lora", "qlora"])
@pytest.mark.parametrize("script", ["sft", "dpo"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_recipe_trains_adapters_only(
    family, script, adaptation, tiny_model_dirs, local_datasets, tmp_path
):
    output_dir = tmp_path / "out"
    trainer, before = run_main(
        script,
        [
            "--config",
            str(REPO / "recipes" / "tiny" / f"{script}_{adaptation}.yaml"),
            "--model_name_or_path",
            str(tiny_model_dirs[family]),
            "--dataset_name",
            str(local_datasets[script]),
            "--output_dir",
            str(output_dir),
        ],
    )

    after = parameter_values(trainer.model)
    trainable = {name for name, param in trainer.model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert not any("vision_tower" in name or "visual" in name for name in trainable), (
        "adapters stay on the LM"
    )
    still = [name for name in trainable if torch.equal(after[name], before[name])]
    assert not still, f"trainable parameters that did not move: {still[:5]}"
    moved = [name for name in after.keys() - trainable if not torch.equal(after[name], before[name])]
    assert not moved, f"frozen parameters that moved: {moved[:5]}"
    if adaptation == "qlora":
        assert any(type(param).__name__ == "Params4bit" for param in trainer.model.parameters()), (
            "base must be 4-bit"
        )

    assert (output_dir / "adapter_model.safetensors").is_file()
    assert (output_dir / "train_results.json").is_file()
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card
    assert "library_name: peft" in card


@pytest.mark.parametrize("recipe", SEED_RECIPES, ids=lambda path: str(path.relative_to(REPO / "recipes")))
def test_seed_recipe_trains_on_tiny_model_of_its_architecture(
    recipe, tiny_model_dirs, local_datasets, tmp_path
):
    """The real recipe, unchanged but for model, data, length, warmup and device, trains: with its own
    learning rate (1e-7 for CSR), every adapter weight moves in two steps, QLoRA included; full
    fine-tuning moves every language-model weight."""
    script = script_for(recipe)
    output_dir = tmp_path / "out"
    # Full recipes are meant for ZeRO-3, whose fp32 master weights can't run here; in pure bf16 their
    # small steps round away, so they run in fp32.
    full_precision = [] if recipe_uses_peft(recipe) else ["--dtype", "float32", "--bf16", "false"]
    trainer, before = run_main(script, [*full_precision,
        "--config", str(recipe),
        "--model_name_or_path", str(tiny_model_dirs[SEED_MODEL_FAMILY[recipe.parts[-3]]]),
        "--dataset_name", str(local_datasets[script]),
        "--output_dir", str(output_dir),
        "--max_steps", "2",
        "--warmup_steps", "0",
        "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1",
        "--save_strategy", "no",
        "--use_cpu", "true",
    ])  # fmt: skip
    assert trainer.state.global_step == 2
    after = parameter_values(trainer.model)
    trainable = [name for name, param in trainer.model.named_parameters() if param.requires_grad]
    # The vision tower's last layer gets no gradient: LLaVA reads features from the layer before it.
    language = [name for name in trainable if "language_model" in name]
    still = [name for name in language if torch.equal(after[name], before[name])]
    assert language and not still, f"trainable parameters that did not move: {still[:5]}"
    weights = "adapter_model.safetensors" if recipe_uses_peft(recipe) else "model.safetensors"
    assert (output_dir / weights).is_file()
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card
    assert ("- critic" in card) == ("model_role: critic" in recipe.read_text())


def script_for(recipe: Path) -> str:
    return "dpo" if recipe_dataclasses(recipe)[1].__name__ == "DPOConfig" else "sft"


def recipe_uses_peft(recipe: Path) -> bool:
    return "use_peft: true" in recipe.read_text()


def test_interrupted_run_resumes_from_its_last_checkpoint(tiny_model_dirs, local_datasets, tmp_path):
    args = [
        "--config", str(REPO / "recipes" / "tiny" / "dpo_lora.yaml"),
        "--model_name_or_path", str(tiny_model_dirs["qwen2_vl"]),
        "--dataset_name", str(local_datasets["dpo"]),
        "--output_dir", str(tmp_path / "out"),
        "--save_strategy", "steps",
        "--save_steps", "1",
    ]  # fmt: skip
    first, _ = run_main("dpo", [*args, "--max_steps", "2"])
    assert first.resumed_from is None
    assert (tmp_path / "out" / "checkpoint-2").is_dir()

    second, _ = run_main("dpo", [*args, "--max_steps", "3"])
    assert Path(second.resumed_from) == tmp_path / "out" / "checkpoint-2"
    assert second.steps_run == 1, "only the step after the checkpoint is trained again"
    assert second.state.global_step == 3


def test_weighted_mixture_of_local_datasets(tmp_path):
    from trl import DatasetMixtureConfig

    from selfalign.train.arguments import ScriptArguments
    from selfalign.train.data import load_training_data

    first = save_hub_layout(preference_dataset(num_rows=8, seed=1), tmp_path / "a")
    second = save_hub_layout(preference_dataset(num_rows=8, seed=2), tmp_path / "b")
    mixture = DatasetMixtureConfig(
        datasets=[{"path": str(first), "fraction": 0.75}, {"path": str(second), "fraction": 0.25}]
    )
    data = load_training_data(ScriptArguments(), mixture, "dpo", need_test_split=False)
    chosen = [row["chosen"][0]["content"][0]["text"] for row in data["train"]]
    from_first = [row["chosen"][0]["content"][0]["text"] for row in preference_dataset(num_rows=8, seed=1)]
    from_second = [row["chosen"][0]["content"][0]["text"] for row in preference_dataset(num_rows=8, seed=2)]
    # Shares 3:1, capped so that no source is oversampled: all 8 of the first, round(8 / 3) of the second.
    assert chosen == from_first + from_second[:3]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_full_sft_with_a_frozen_vision_tower_trains_everything_else(
    family, tiny_model_dirs, local_datasets, tmp_path
):
    output_dir = tmp_path / "out"
    trainer, before = run_main("sft", [
        "--config", str(REPO / "recipes" / "tiny" / "policy_sft.yaml"),
        "--model_name_or_path", str(tiny_model_dirs[family]),
        "--dataset_name", str(local_datasets["sft"]),
        "--output_dir", str(output_dir),
        "--freeze_vision_tower", "true",
        "--max_steps", "2",
        "--per_device_train_batch_size", "2",
    ])  # fmt: skip
    after = parameter_values(trainer.model)
    tower_prefix = {"llava": "model.vision_tower.", "qwen2_vl": "model.visual."}[family]
    tower = [name for name in after if name.startswith(tower_prefix)]
    rest = [name for name in after if not name.startswith(tower_prefix)]
    assert tower and rest
    # Without the option, the tower's first layers move at this learning rate (test above).
    moved = [name for name in tower if not torch.equal(after[name], before[name])]
    assert not moved, f"vision tower weights that moved: {moved[:5]}"
    language = [name for name in rest if "language_model" in name]
    still = [name for name in language if torch.equal(after[name], before[name])]
    assert language and not still, f"language model weights that did not move: {still[:5]}"
    assert "freeze_vision_tower" in (output_dir / "README.md").read_text()
