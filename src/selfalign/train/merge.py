"""Merging a LoRA adapter into its base: the merged weights, the adapter's processor and a card."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from peft import PeftConfig, PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfalign.errors import SelfAlignError
from selfalign.publish.hub import check_can_push, push_folder


@dataclass
class MergeArguments:
    adapter: str = field(
        metadata={"help": "Folder or Hub id of the LoRA adapter (a scripts/dpo.py or sft.py output)."}
    )
    output_dir: str = field(metadata={"help": "Where to save the merged model."})
    base_model: str | None = field(
        default=None, metadata={"help": "Base model to merge into; defaults to the one the adapter names."}
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model, for the card, when `base_model` is a local folder."},
    )
    dtype: str = field(default="bfloat16", metadata={"help": "dtype of the merged weights."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the merged model to `hub_model_id`."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id to push to."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the repo as private."})


def merge_adapter(args: MergeArguments) -> Path:
    """Merge, save the merged model with the adapter's processor and a card, push if asked; return the folder."""
    if args.push_to_hub:
        check_can_push(args.hub_model_id)
    try:
        base = args.base_model or PeftConfig.from_pretrained(args.adapter).base_model_name_or_path
    except ValueError as error:
        raise SelfAlignError(f"'{args.adapter}' is not a PEFT adapter: {error}") from error
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=getattr(torch, args.dtype))
    model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    AutoProcessor.from_pretrained(args.adapter).save_pretrained(output_dir)

    base_id = args.base_model_id or base
    card = ModelCard.from_template(
        ModelCardData(
            base_model=base_id,
            library_name="transformers",
            pipeline_tag="image-text-to-text",
            tags=["vlm", "selfalign", "merged-lora"],
        ),
        template_str="---\n{{ card_data }}\n---\n\n# {{ name }}\n\n{{ base }} with the LoRA adapter {{ adapter }} "
        "merged into its weights (selfalign, scripts/merge_adapter.py).\n",
        name=args.hub_model_id or output_dir.name,
        base=base_id,
        adapter=args.adapter if not Path(args.adapter).exists() else Path(args.adapter).name,
    )
    card.save(output_dir / "README.md")
    print(f"merged {args.adapter} into {base}: saved to {output_dir}")
    if args.push_to_hub:
        print(
            "pushed:",
            push_folder(
                output_dir,
                args.hub_model_id,
                private=args.hub_private_repo,
                commit_message=f"Merge {card.data.base_model} + LoRA adapter",
            ),
        )
    return output_dir
