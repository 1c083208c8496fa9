"""Model cards for trained policies and critics, rendered from the templates in `model_cards/`."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from selfalign.errors import SelfAlignError

TEMPLATES_DIR = Path(__file__).resolve().parents[3] / "model_cards"
METHOD_NAMES = {
    "eaco": "EACO (critical observation: a trained Critic scores the policy's samples)",
    "csr": "CSR (calibrated self-rewarding: sentence-level beam search, CLIP-calibrated self-reward)",
    "ipa": "IPA (instruction-oriented preference alignment: revise, verify against references)",
}
# The instruction the usage snippet sends: a caption for a policy, an evaluation for a critic.
USAGE_PROMPTS = {
    "policy": "Describe the image in detail.",
    "critic": "Rate this response to 'Describe the image.' for helpfulness and visual faithfulness: "
    "'A red circle on the left.'",
}


@dataclass
class TrainingRun:
    """What a card says about how the model was made."""

    repo_id: str
    base_model: str
    trainer: str  # "DPO" or "SFT"
    is_adapter: bool
    datasets: list[str] = field(default_factory=list)
    method: str | None = None
    quantization: str | None = None
    lora: dict | None = None
    hyperparameters: dict = field(default_factory=dict)


def render_model_card(run: TrainingRun, role: str) -> ModelCard:
    """Fill the `role` template ("policy" or "critic") with the run's facts and YAML metadata."""
    template = TEMPLATES_DIR / f"{role}.md"
    if not template.is_file():
        raise SelfAlignError(f"no model card template for role '{role}' at model_cards/{role}.md")
    tags = [
        "vlm",
        "image-text-to-text",
        run.trainer.lower(),
        "selfalign",
        *([run.method] if run.method else []),
    ]
    if role == "critic":
        tags.append("critic")
    card_data = ModelCardData(
        base_model=run.base_model,
        datasets=run.datasets or None,
        pipeline_tag="image-text-to-text",
        library_name="peft" if run.is_adapter else "transformers",
        tags=tags,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        run=run,
        method_name=METHOD_NAMES.get(run.method or "", None),
        usage=usage_snippet(run, role),
        training=training_details(run),
    )


def training_details(run: TrainingRun) -> str:
    """The card's Training section: data, quantization, LoRA, hyperparameters, library versions."""
    if run.datasets:
        data = ", ".join(f"[{name}](https://huggingface.co/datasets/{name})" for name in run.datasets)
    else:
        data = "a local dataset"
    lines = [
        f"- Trainer: {run.trainer}" + (f" ({run.method.upper()} recipe)" if run.method else ""),
        f"- Data: {data}",
    ]
    if run.quantization:
        lines.append(f"- Quantization during training: {run.quantization}")
    if run.lora:
        lines.append("- LoRA: " + ", ".join(f"{key}={value}" for key, value in run.lora.items()))
    lines += ["", "| hyperparameter | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in run.hyperparameters.items()]
    lines += [
        "",
        "Framework versions: "
        + ", ".join(
            f"{name} {version(name)}" for name in ("transformers", "trl", "peft", "torch", "datasets")
        ),
    ]
    return "\n".join(lines)


def usage_snippet(run: TrainingRun, role: str) -> str:
    """Python that loads the published model and generates for one image (runs as written)."""
    if run.is_adapter:
        load = (
            f'model = AutoModelForImageTextToText.from_pretrained("{run.base_model}")\n'
            f'model = PeftModel.from_pretrained(model, "{run.repo_id}")\n'
        )
        imports = "from peft import PeftModel\n"
    else:
        load = f'model = AutoModelForImageTextToText.from_pretrained("{run.repo_id}")\n'
        imports = ""
    return (
        f"{imports}from PIL import Image\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'processor = AutoProcessor.from_pretrained("{run.repo_id}")\n'
        f"{load}\n"
        'image = Image.open("example.jpg").convert("RGB")\n'
        "messages = [\n"
        '    {"role": "user", "content": [{"type": "image"}, '
        f'{{"type": "text", "text": "{USAGE_PROMPTS[role]}"}}]}}\n'
        "]\n"
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)\n"
        'inputs = processor(images=[image], text=prompt, return_tensors="pt")\n'
        "output = model.generate(**inputs, max_new_tokens=64)\n"
        'print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
    )
