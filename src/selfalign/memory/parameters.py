"""Exact parameter counts of a model, per part, and the linear layers LoRA adapts or bitsandbytes quantizes."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from selfalign.errors import SelfAlignError


@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class ModelFacts:
    """Exact parameter counts per part, and the shapes the activation estimate needs."""

    model_type: str
    language_model: int  # embeddings, decoder layers, final norm
    lm_head: int
    vision_tower: int
    projector: int  # multi-modal projector / patch merger / LLaVA-NeXT image newline
    other: int
    largest_decoder_layer: int
    linears: tuple[LinearLayer, ...]
    # language model shapes
    hidden_size: int
    intermediate_size: int
    num_layers: int
    q_dim: int
    kv_dim: int
    vocab_size: int
    # vision tower shapes
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_layers: int

    @property
    def total(self) -> int:
        return self.language_model + self.lm_head + self.vision_tower + self.projector + self.other

    def parts(self) -> dict[str, int]:
        return {
            "language_model": self.language_model,
            "lm_head": self.lm_head,
            "vision_tower": self.vision_tower,
            "projector": self.projector,
            "other": self.other,
            "total": self.total,
        }


def _part_of(name: str) -> str:
    if name.startswith("lm_head"):
        return "lm_head"
    if "multi_modal_projector" in name or "image_newline" in name or ".visual.merger" in name:
        return "projector"
    if "vision_tower" in name or ".visual." in name:
        return "vision_tower"
    if "language_model" in name:
        return "language_model"
    return "other"


def count_parameters(config) -> ModelFacts:
    """Build the model on the `meta` device from `config` and count its parameters per part."""
    return _count_parameters_cached(config.to_json_string(use_diff=False))


@functools.lru_cache(maxsize=32)
def _count_parameters_cached(config_json: str) -> ModelFacts:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    data = json.loads(config_json)
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)

    counts = {"language_model": 0, "lm_head": 0, "vision_tower": 0, "projector": 0, "other": 0}
    layer_sizes: dict[str, int] = {}
    layer_pattern = re.compile(r"(.*language_model\.layers\.\d+)\.")
    for name, parameter in model.named_parameters():  # shared (tied) parameters are listed once
        counts[_part_of(name)] += parameter.numel()
        match = layer_pattern.match(name)
        if match:
            layer_sizes[match.group(1)] = layer_sizes.get(match.group(1), 0) + parameter.numel()
    linears = tuple(
        LinearLayer(name, module.in_features, module.out_features, module.bias is not None)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    )

    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    num_kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    vision = getattr(config, "vision_config", None)
    vision_hidden = getattr(vision, "embed_dim", None) or getattr(vision, "hidden_size", 0)
    vision_intermediate = getattr(vision, "intermediate_size", None)
    if vision_intermediate is None:
        vision_intermediate = int(vision_hidden * getattr(vision, "mlp_ratio", 4))
    vision_layers = getattr(vision, "num_hidden_layers", None) or getattr(vision, "depth", 0)
    return ModelFacts(
        model_type=config.model_type,
        **counts,
        largest_decoder_layer=max(layer_sizes.values(), default=0),
        linears=linears,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=text.num_hidden_layers,
        q_dim=text.num_attention_heads * head_dim,
        kv_dim=num_kv_heads * head_dim,
        vocab_size=text.vocab_size,
        vision_hidden_size=vision_hidden or 0,
        vision_intermediate_size=vision_intermediate or 0,
        vision_num_layers=vision_layers or 0,
    )


def lora_targets(facts: ModelFacts, target_regex: str) -> list[LinearLayer]:
    """The linear layers PEFT adapts for a string `target_modules` (it full-matches module paths)."""
    pattern = re.compile(target_regex)
    return [layer for layer in facts.linears if pattern.fullmatch(layer.name)]


def quantized_linears(facts: ModelFacts, skip_modules: Sequence[str]) -> list[LinearLayer]:
    """The linear layers bitsandbytes quantizes: all but those whose path contains a skipped name."""
    return [layer for layer in facts.linears if not any(skip in layer.name for skip in skip_modules)]


def modules_to_save_params(facts: ModelFacts, names: Sequence[str]) -> int:
    """Parameters of the layers PEFT trains in full next to the adapters (`lora_modules_to_save`)."""
    if not names:
        return 0
    total = 0
    for layer in facts.linears:
        if any(layer.name == name or layer.name.endswith("." + name) for name in names):
            total += layer.in_features * layer.out_features + (layer.out_features if layer.bias else 0)
    if not total:
        raise SelfAlignError(f"lora_modules_to_save {list(names)} names no linear layer of this model")
    return total
