"""Per-GPU memory estimate for a training recipe under a launch (accelerate) config.

This is an ESTIMATE, not a measurement. Parameter counts are exact: the model is built from its
config on the `meta` device (no weights, no download) and counted per part, and the LoRA adapters
are counted on the modules the recipe's target regex really matches. The bytes per parameter follow
what the stack on this machine does (transformers 5, TRL 1.16, PEFT, accelerate FSDP2, DeepSpeed):

- weights: the `dtype` of the recipe (bf16: 2 bytes); QLoRA stores the language model's linear
  weights in 4-bit NF4 (0.5 byte) plus quantization constants (fp32 absmax per 64 weights, or 8-bit
  absmax plus fp32 per 256 blocks with double quantization); the vision tower, projector,
  embeddings, norms and lm_head stay in `dtype`, as `selfalign.train.model.quantization_config` sets.
- trainable weights, gradients, optimizer: PEFT keeps LoRA weights in fp32 (TRL casts them to bf16
  for a quantized base, and selfalign casts them back: `keep_adapters_in_float32`), except under
  DeepSpeed, whose engine holds them in the model dtype. Without
  DeepSpeed or FSDP, gradients and AdamW states are in the parameters' dtype (torch.optim): full
  fine-tuning of a bf16 model is then pure bf16, with no fp32 master copy; DDP adds its gradient
  buckets. DeepSpeed casts the model to bf16 and keeps an fp32 master copy and fp32 AdamW states
  (16 bytes per trainable parameter in all: 2 + 2 + 4 + 8). FSDP2 upcasts trainable parameters to
  fp32 in place (accelerate, mixed precision) and shards everything.
- reference model: DPO full fine-tuning loads a frozen copy of the policy (sharded under ZeRO-3 and
  FSDP, replicated otherwise); with LoRA the reference pass runs with the adapter disabled.
- activations: an approximation of the tensors autograd saves per token in each decoder layer
  (RMSNorm fp32 input copies, q/k/v and attention output for a memory-efficient SDPA kernel, the
  four SwiGLU tensors), plus what LoRA adds (an input copy when the adapter dtype differs from the
  compute dtype or dropout is on, the dropout mask, the rank-r intermediate; TRL's DPO zeroes
  dropout, SFT keeps it). With activation
  checkpointing only each layer's input is kept, plus one layer recomputed during backward. The
  vision tower saves activations only when it trains (full fine-tuning). TRL's fused LM head
  computes log-probs in tiles, so full logits are never materialised.

Not included: the CUDA context, the caching allocator's fragmentation and NCCL buffers (~1-3 GB per
GPU together), nor the memory taken by evaluation or generation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from selfalign.errors import SelfAlignError

GIB = 2**30
FACTS_DIR = Path(__file__).parent / "model_facts"
DISCLAIMER = (
    "This is an estimate, not a measurement: parameter counts are exact, activation memory and framework "
    "overheads are approximations, and the CUDA context plus allocator fragmentation add ~1-3 GB per GPU."
)
CUDA_OVERHEAD_GIB = 2.0  # midpoint of the 1-3 GB above, used only to say which GPU a run fits
USABLE_FRACTION = 0.94
GPU_SIZES_GB = (16, 24, 40, 48, 80, 141)
# TRL's fused LM head (trl/kernels/chunked_logprob.py): tiles of up to 4096 tokens x 32768 vocabulary entries.
_LOGPROB_TILE_TOKENS = 4096
_LOGPROB_TILE_VOCAB = 32768
# DeepSpeed's default reduce_bucket_size (accelerate's generated config does not set it).
_DEEPSPEED_BUCKET = 500_000_000
# bitsandbytes 4-bit: blocks of 64 weights.
_NF4_BLOCK = 64
_NESTED_BLOCK = 256
# Default text lengths (tokens) around the image, per kind of run; the CLI can override them.
DEFAULT_TEXT_TOKENS = {
    "dpo": (64, 256),  # a short instruction; a detailed answer (the longer of chosen/rejected)
    "sft": (64, 256),
    # The critic's evaluation instruction holds question, response and rubric; it answers with scores + rationale.
    "critic": (512, 128),
}
# Qwen2-VL / Qwen2.5-VL: 28x28 pixels per image token (14-px patches merged 2x2).
QWEN_MAX_PIXELS_ASSUMED = 1280 * 28 * 28

Strategy = Literal["ddp", "zero0", "zero1", "zero2", "zero3", "fsdp", "fsdp_grad_op"]


# ---------------------------------------------------------------------------------------------
# Model configs and exact parameter counts
# ---------------------------------------------------------------------------------------------


def shipped_model_facts() -> dict[str, Path]:
    """Hub id -> JSON file of its architecture facts, for the seed models whose configs ship here."""
    facts = {}
    for path in sorted(FACTS_DIR.glob("*.json")):
        facts[json.loads(path.read_text())["_hub_id"]] = path
    return facts


def config_from_facts(path: str | Path):
    """A transformers config built from one of the shipped facts files."""
    from transformers import AutoConfig

    data = {
        key: value for key, value in json.loads(Path(path).read_text()).items() if not key.startswith("_")
    }
    return AutoConfig.for_model(data.pop("model_type"), **data)


def load_model_config(name: str, base_model_id: str | None = None):
    """The config of `name` and where it came from: a local folder, the shipped facts, or the Hub cache.

    A Hub id that is not one of the seed models falls back to `base_model_id` when that one is (a
    merged checkpoint keeps the architecture of its base).
    """
    from transformers import AutoConfig

    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise SelfAlignError(f"'{name}' is a folder without a config.json")
        return AutoConfig.from_pretrained(name), f"{name}/config.json"
    facts = {key.lower(): path for key, path in shipped_model_facts().items()}
    for candidate in (name, base_model_id):
        if candidate and candidate.lower() in facts:
            path = facts[candidate.lower()]
            source = f"shipped facts {path.relative_to(FACTS_DIR.parent.parent.parent)}"
            if candidate != name:
                source += f" (architecture of base_model_id {candidate})"
            return config_from_facts(path), source
    try:
        return AutoConfig.from_pretrained(name), f"{name} (Hub or local cache)"
    except (OSError, ValueError) as error:
        known = ", ".join(shipped_model_facts())
        raise SelfAlignError(
            f"no config for '{name}': it is not a local folder, not one of the shipped model facts ({known}) and "
            f"could not be fetched ({error.__class__.__name__}). Pass a local folder with a config.json, or set "
            "base_model_id to a shipped model with the same architecture."
        ) from error


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


# ---------------------------------------------------------------------------------------------
# Training setup (from a recipe) and launch (from an accelerate config)
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingSetup:
    """What a recipe asks for, in the terms the estimate needs."""

    trainer: Literal["dpo", "sft"] = "dpo"
    finetuning: Literal["full", "lora", "qlora", "lora_8bit"] = "lora"
    model_role: Literal["policy", "critic"] = "policy"
    dtype_bytes: int = 2  # bytes per weight as loaded (`dtype`)
    mixed_precision: bool = True  # bf16/fp16 autocast (`bf16`/`fp16`)
    per_device_batch_size: int = 1
    activation_checkpointing: bool = True
    lora_r: int = 128
    lora_dropout: float = 0.05
    lora_target_regex: str | None = None  # from selfalign.train.model.lora_config
    use_dora: bool = False
    lora_modules_to_save: tuple[str, ...] = ()
    double_quant: bool = True
    quantization_skip_modules: tuple[str, ...] = ()
    optimizer: str = "adamw_torch_fused"
    precompute_ref_log_probs: bool = False
    disable_dropout: bool = True  # TRL's DPOConfig zeroes every dropout, LoRA's included

    @property
    def peft(self) -> bool:
        return self.finetuning != "full"

    @property
    def quantized(self) -> bool:
        return self.finetuning in ("qlora", "lora_8bit")

    def describe(self) -> str:
        kind = {
            "full": "full fine-tuning",
            "lora": f"LoRA r={self.lora_r}",
            "qlora": f"QLoRA r={self.lora_r} (4-bit NF4{', double quant' if self.double_quant else ''})",
            "lora_8bit": f"LoRA r={self.lora_r} on an 8-bit base",
        }[self.finetuning]
        role = ", critic" if self.model_role == "critic" else ""
        return f"{self.trainer.upper()}{role}, {kind}"


@dataclass
class Launch:
    """How the run is spread over GPUs: the parts of an accelerate config that change memory."""

    strategy: Strategy = "ddp"
    num_gpus: int = 1
    mixed_precision: str = "bf16"
    offload_optimizer: bool = False
    offload_params: bool = False
    activation_checkpointing: bool = False  # FSDP's own activation checkpointing
    source: str = ""

    @property
    def deepspeed(self) -> bool:
        return self.strategy.startswith("zero")

    @property
    def zero_stage(self) -> int:
        return int(self.strategy[-1]) if self.deepspeed else 0

    @property
    def fsdp(self) -> bool:
        return self.strategy.startswith("fsdp")

    def describe(self) -> str:
        names = {
            "ddp": "DDP (no sharding)",
            "zero0": "DeepSpeed ZeRO-0 (no sharding)",
            "zero1": "DeepSpeed ZeRO-1 (optimizer states sharded)",
            "zero2": "DeepSpeed ZeRO-2 (gradients + optimizer states sharded)",
            "zero3": "DeepSpeed ZeRO-3 (weights, gradients, optimizer states sharded)",
            "fsdp": "FSDP full shard (weights, gradients, optimizer states sharded)",
            "fsdp_grad_op": "FSDP shard-grad-op (weights gathered from forward to backward)",
        }
        if self.strategy == "ddp" and self.num_gpus == 1:
            return "one GPU, no data parallelism"
        text = f"{names[self.strategy]}, {self.num_gpus} GPU{'s' if self.num_gpus != 1 else ''}"
        if self.offload_optimizer:
            text += ", optimizer offloaded to CPU"
        if self.offload_params:
            text += ", parameters offloaded to CPU"
        return text


def read_launch(path: str | Path | None, num_gpus: int | None = None) -> Launch:
    """The memory-relevant settings of an accelerate config file (None: one GPU, no sharding)."""
    if path is None:
        return Launch(strategy="ddp", num_gpus=num_gpus or 1, source="no accelerate config")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as error:
        raise SelfAlignError(f"{path}: accelerate config not found") from error
    if not isinstance(data, dict):
        raise SelfAlignError(f"{path}: an accelerate config must be a YAML mapping")
    launch = Launch(
        num_gpus=num_gpus or int(data.get("num_processes") or 1),
        mixed_precision=str(data.get("mixed_precision") or "no"),
        source=str(path),
    )
    distributed = str(data.get("distributed_type") or "NO").upper()
    if distributed in ("NO", "MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU"):
        launch.strategy = "ddp"
    elif distributed == "DEEPSPEED":
        ds = data.get("deepspeed_config") or {}
        if "deepspeed_config_file" in ds:
            ds = _deepspeed_json(Path(path).parent, ds["deepspeed_config_file"])
        stage = int(ds.get("zero_stage", 0))
        if stage not in (0, 1, 2, 3):
            raise SelfAlignError(f"{path}: unknown DeepSpeed zero_stage {stage}")
        launch.strategy = f"zero{stage}"
        launch.offload_optimizer = str(ds.get("offload_optimizer_device", "none")).lower() in ("cpu", "nvme")
        launch.offload_params = str(ds.get("offload_param_device", "none")).lower() in ("cpu", "nvme")
    elif distributed == "FSDP":
        fsdp = data.get("fsdp_config") or {}
        strategy = str(fsdp.get("fsdp_sharding_strategy", "FULL_SHARD")).upper()
        reshard = fsdp.get("fsdp_reshard_after_forward", True)
        if strategy in ("NO_SHARD", "3"):
            launch.strategy = "ddp"
        elif (
            strategy in ("SHARD_GRAD_OP", "2") or reshard is False or str(reshard).upper() == "SHARD_GRAD_OP"
        ):
            launch.strategy = "fsdp_grad_op"
        else:
            launch.strategy = "fsdp"
        launch.offload_params = bool(fsdp.get("fsdp_offload_params", False))
        launch.offload_optimizer = launch.offload_params
        launch.activation_checkpointing = bool(fsdp.get("fsdp_activation_checkpointing", False))
    else:
        raise SelfAlignError(f"{path}: distributed_type '{distributed}' is not one this estimator models")
    return launch


def _deepspeed_json(folder: Path, name: str) -> dict:
    data = json.loads((folder / name).read_text() if not Path(name).is_absolute() else Path(name).read_text())
    zero = data.get("zero_optimization", {})
    return {
        "zero_stage": zero.get("stage", 0),
        "offload_optimizer_device": (zero.get("offload_optimizer") or {}).get("device", "none"),
        "offload_param_device": (zero.get("offload_param") or {}).get("device", "none"),
    }


@dataclass
class RecipeInfo:
    path: str
    model_name: str
    base_model_id: str | None
    setup: TrainingSetup


def trainer_of(path: str | Path, recipe: dict) -> Literal["dpo", "sft"]:
    """DPO or SFT: from the recipe's file name (dpo_*, *sft*) or, failing that, from DPO-only keys."""
    stem = Path(path).stem
    if stem.startswith("dpo") or "_dpo" in stem:
        return "dpo"
    if "sft" in stem:
        return "sft"
    return "dpo" if {"beta", "loss_type", "precompute_ref_log_probs"} & set(recipe) else "sft"


def read_recipe(path: str | Path, overrides: Sequence[str] = (), trainer: str | None = None) -> RecipeInfo:
    """Parse a recipe (strictly, as the training scripts do, command-line overrides included)."""
    from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, SFTConfig

    from selfalign.config import parse_recipe
    from selfalign.train.arguments import ScriptArguments
    from selfalign.train.model import VISION_MODULES, lora_config

    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as error:
        raise SelfAlignError(f"{path}: recipe file not found") from error
    kind = trainer or trainer_of(path, recipe if isinstance(recipe, dict) else {})
    config_class = DPOConfig if kind == "dpo" else SFTConfig
    # `use_cpu` only lets the training arguments be built on a machine without a GPU (their bf16 check);
    # nothing here reads it.
    script_args, training_args, model_args, _ = parse_recipe(
        (ScriptArguments, config_class, ModelConfig, DatasetMixtureConfig),
        ["--config", str(path), *overrides, "--use_cpu", "true"],
    )
    if model_args.load_in_4bit:
        finetuning = "qlora"
    elif model_args.load_in_8bit:
        finetuning = "lora_8bit"
    else:
        finetuning = "lora" if model_args.use_peft else "full"
    if finetuning in ("qlora", "lora_8bit") and not model_args.use_peft:
        raise SelfAlignError(
            f"{path}: a quantized base needs use_peft: true (quantized weights cannot be trained)"
        )
    lora = lora_config(model_args)
    dtype = model_args.dtype if model_args.dtype not in (None, "auto") else "bfloat16"
    setup = TrainingSetup(
        trainer=kind,
        finetuning=finetuning,
        model_role=script_args.model_role,
        dtype_bytes=4 if dtype == "float32" else 2,
        mixed_precision=bool(training_args.bf16 or training_args.fp16),
        per_device_batch_size=training_args.per_device_train_batch_size,
        activation_checkpointing=bool(training_args.activation_checkpointing),
        lora_r=model_args.lora_r,
        lora_dropout=model_args.lora_dropout,
        lora_target_regex=lora.target_modules if lora else None,
        use_dora=bool(model_args.use_dora),
        lora_modules_to_save=tuple(model_args.lora_modules_to_save or ()),
        double_quant=bool(model_args.use_bnb_nested_quant),
        quantization_skip_modules=("lm_head", *VISION_MODULES),
        optimizer=str(getattr(training_args.optim, "value", training_args.optim)),
        precompute_ref_log_probs=bool(getattr(training_args, "precompute_ref_log_probs", False)),
        disable_dropout=bool(getattr(training_args, "disable_dropout", False)),
    )
    return RecipeInfo(str(path), model_args.model_name_or_path, script_args.base_model_id, setup)


def default_lora_regex(names: Sequence[str] = ("all-linear",)) -> str:
    """The target regex `selfalign.train.model.lora_config` builds for these names."""
    from trl import ModelConfig

    from selfalign.train.model import lora_config

    return lora_config(ModelConfig(use_peft=True, lora_target_modules=list(names))).target_modules


# ---------------------------------------------------------------------------------------------
# Sequence lengths
# ---------------------------------------------------------------------------------------------


@dataclass
class SequenceSpec:
    prompt_tokens: int
    image_tokens: int  # tokens the image takes in the language model's sequence
    response_tokens: int
    vision_tokens: int  # tokens the vision tower runs over per image (all tiles / patches)
    assumption: str

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.image_tokens + self.response_tokens


def image_tokens_for(config, max_pixels: int | None = None) -> tuple[int, int, str]:
    """(language-model image tokens, vision-tower tokens, the assumption stated) for one image."""
    model_type = config.model_type
    vision = getattr(config, "vision_config", None)
    if model_type == "llava":
        side = vision.image_size // vision.patch_size
        tokens = getattr(config, "image_seq_length", None) or side * side
        return (
            tokens,
            side * side + 1,
            f"LLaVA-1.5: {tokens} image tokens per image ({vision.image_size}-px input, {vision.patch_size}-px patches)",
        )
    if model_type == "llava_next":
        side = vision.image_size // vision.patch_size
        tiles = 1 + max(
            (h // vision.image_size) * (w // vision.image_size) for h, w in config.image_grid_pinpoints
        )
        return (
            tiles * side * side,
            tiles * (side * side + 1),
            f"LLaVA-NeXT anyres: up to {tiles} x {side * side} = {tiles * side * side} image tokens "
            f"(base image + {tiles - 1} tiles, the largest grid; row-newline tokens left out)",
        )
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        pixels = max_pixels or QWEN_MAX_PIXELS_ASSUMED
        unit = vision.patch_size * vision.spatial_merge_size
        tokens = pixels // (unit * unit)
        merge = vision.spatial_merge_size**2
        default_note = (
            "; the processor's default max_pixels (12845056) allows up to 16384, so cap max_pixels "
            "for training"
            if max_pixels is None
            else ""
        )
        return (
            tokens,
            tokens * merge,
            f"Qwen2-VL dynamic resolution: image tokens = max_pixels / ({unit}x{unit}); assumed max_pixels = "
            f"{pixels} -> {tokens} image tokens{default_note}",
        )
    tokens = getattr(config, "image_seq_length", None) or 576
    return tokens, tokens, f"{model_type}: assumed {tokens} image tokens per image (pass --image_tokens)"


def sequence_for(
    config,
    setup: TrainingSetup,
    prompt_tokens: int | None = None,
    response_tokens: int | None = None,
    image_tokens: int | None = None,
    max_pixels: int | None = None,
) -> SequenceSpec:
    kind = "critic" if setup.model_role == "critic" else setup.trainer
    default_prompt, default_response = DEFAULT_TEXT_TOKENS[kind]
    lm_tokens, vision_tokens, assumption = image_tokens_for(config, max_pixels)
    if image_tokens is not None:
        vision_tokens = round(vision_tokens * image_tokens / lm_tokens) if lm_tokens else image_tokens
        lm_tokens = image_tokens
        assumption = f"{image_tokens} image tokens per image (given)"
    return SequenceSpec(
        prompt_tokens=default_prompt if prompt_tokens is None else prompt_tokens,
        image_tokens=lm_tokens,
        response_tokens=default_response if response_tokens is None else response_tokens,
        vision_tokens=vision_tokens,
        assumption=assumption,
    )


# ---------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------


@dataclass
class Estimate:
    """Bytes per GPU by component, plus the facts they were computed from."""

    components: dict[str, float]  # bytes per GPU
    activations_checkpointed: float
    activations_full: float
    activation_checkpointing: bool
    parameters: dict[str, int]
    trainable_parameters: int
    lora_modules: int
    quantized_parameters: int
    sequences_per_gpu: int
    sequence: SequenceSpec
    setup: TrainingSetup
    launch: Launch
    notes: dict[str, str] = field(default_factory=dict)
    model_name: str = ""
    model_source: str = ""
    recipe: str = ""

    @property
    def total(self) -> float:
        return sum(self.components.values())

    def gib(self) -> dict[str, float]:
        values = {name: round(value / GIB, 2) for name, value in self.components.items()}
        values["total"] = round(self.total / GIB, 2)
        return values

    def total_without_checkpointing(self) -> float:
        return self.total - self.components["activations"] + self.activations_full

    def fits(self) -> str:
        return gpu_that_fits(self.total / GIB)

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": True,
            "disclaimer": DISCLAIMER,
            "recipe": self.recipe,
            "model": {"name": self.model_name, "config_source": self.model_source},
            "training": dataclasses.asdict(self.setup) | {"description": self.setup.describe()},
            "launch": dataclasses.asdict(self.launch) | {"description": self.launch.describe()},
            "parameters": self.parameters
            | {
                "trainable": self.trainable_parameters,
                "lora_modules": self.lora_modules,
                "quantized": self.quantized_parameters,
            },
            "sequence": dataclasses.asdict(self.sequence)
            | {"tokens_per_sequence": self.sequence.tokens, "sequences_per_gpu": self.sequences_per_gpu},
            "activation_checkpointing": self.activation_checkpointing,
            "gib_per_gpu": self.gib(),
            "activations_gib": {
                "with_checkpointing": round(self.activations_checkpointed / GIB, 2),
                "without_checkpointing": round(self.activations_full / GIB, 2),
            },
            "total_gib_without_checkpointing": round(self.total_without_checkpointing() / GIB, 2),
            "cuda_overhead_gib_not_included": "1-3",
            "fits": self.fits(),
            "notes": self.notes,
        }


def gpu_that_fits(total_gib: float) -> str:
    """The smallest common GPU size the estimate plus ~2 GB of CUDA context and fragmentation fits.

    Cards expose a little less than their nominal size (a 24 GB A10G or L4 has ~22.5 GiB, a 48 GB L40S
    ~45 GiB), so only 94% of the nominal size is counted as usable.
    """
    need = total_gib + CUDA_OVERHEAD_GIB
    for size in GPU_SIZES_GB:
        if need <= USABLE_FRACTION * size:
            return f"{size} GB"
    return f"more than {GPU_SIZES_GB[-1]} GB: shard more (ZeRO-3/FSDP), use more GPUs, or QLoRA"


def estimate_memory(
    facts: ModelFacts,
    setup: TrainingSetup,
    launch: Launch,
    sequence: SequenceSpec,
) -> Estimate:
    """Per-GPU bytes of each component for `setup` launched as `launch`."""
    n = max(1, launch.num_gpus)
    sharded_weights = launch.zero_stage == 3 or launch.fsdp
    shard_weights = n if sharded_weights else 1
    shard_grads = n if (launch.zero_stage >= 2 or launch.fsdp) else 1
    shard_optim = n if (launch.zero_stage >= 1 or launch.fsdp) else 1
    notes: dict[str, str] = {}
    w = setup.dtype_bytes
    a = 2 if (setup.mixed_precision or w == 2) else 4  # bytes per activation element
    if launch.deepspeed and launch.mixed_precision != "no":
        w = 2  # the DeepSpeed engine casts the module to bf16/fp16

    # --- which parameters train, and the base weights as stored ---
    targets = lora_targets(facts, setup.lora_target_regex) if setup.peft and setup.lora_target_regex else []
    if setup.peft and not targets:
        raise SelfAlignError(
            f"the LoRA target regex {setup.lora_target_regex!r} matches no linear layer of this model"
        )
    lora_params = sum(
        setup.lora_r * (t.in_features + t.out_features) + (t.out_features if setup.use_dora else 0)
        for t in targets
    )
    saved_copies = _modules_to_save_params(facts, setup.lora_modules_to_save) if setup.peft else 0
    quantized = quantized_linears(facts, setup.quantization_skip_modules) if setup.quantized else []
    quantized_weights = sum(q.in_features * q.out_features for q in quantized)
    if setup.finetuning == "qlora":
        constants = (
            1 / _NF4_BLOCK + 4 / (_NF4_BLOCK * _NESTED_BLOCK) if setup.double_quant else 4 / _NF4_BLOCK
        )
        quantized_bytes = quantized_weights * (0.5 + constants)
        notes["weights"] = (
            f"{quantized_weights:,} language-model linear weights in 4-bit NF4 "
            f"({0.5 + constants:.4f} bytes each with quantization constants); the rest in {_dtype(w)}"
        )
    elif setup.finetuning == "lora_8bit":
        quantized_bytes = quantized_weights + 4 * sum(q.out_features for q in quantized)
        notes["weights"] = (
            f"{quantized_weights:,} language-model linear weights in int8; the rest in {_dtype(w)}"
        )
    else:
        quantized_bytes = 0
    base_bytes = quantized_bytes + (facts.total - quantized_weights) * w + saved_copies * w

    if setup.peft:
        trainable = lora_params + saved_copies
        # PEFT upcasts adapters to fp32 (on a quantized base, selfalign undoes TRL's bf16 cast); the
        # DeepSpeed engine casts everything to bf16 (fp32 master in the optimizer).
        if launch.deepspeed and launch.mixed_precision != "no":
            p = 2
        else:
            p = 4
        weights = base_bytes / shard_weights
        trainable_weights = trainable * p / shard_weights
        notes.setdefault("weights", f"base model frozen, in {_dtype(w)}")
        notes["trainable_weights"] = f"{trainable:,} LoRA parameters ({len(targets)} modules) in {_dtype(p)}"
    else:
        trainable = facts.total
        if launch.fsdp and launch.mixed_precision != "no":
            p = 4  # accelerate's FSDP2 upcasts trainable parameters to fp32
        else:
            p = w
        weights = facts.total * p / shard_weights
        trainable_weights = 0.0
        notes["weights"] = f"all {facts.total:,} parameters train, stored in {_dtype(p)}"
        notes["trainable_weights"] = "full fine-tuning: the weights above are the trained weights"

    # --- gradients and optimizer states ---
    if launch.deepspeed:
        grad_bytes = 2 if launch.mixed_precision != "no" else 4
        master = 4 if p < 4 else 0
        gradients = trainable * grad_bytes / shard_grads
        optim_bytes = _optimizer_state_bytes(setup.optimizer, 4) + master
        notes["gradients"] = f"{_dtype(grad_bytes)} gradients" + (
            f", sharded over {n} GPUs" if shard_grads > 1 else ""
        )
        notes["optimizer_states"] = f"{_optim_label(setup.optimizer)} fp32 states" + (
            " + fp32 master copy" if master else ""
        )
    else:
        gradients = trainable * p / shard_grads
        optim_bytes = _optimizer_state_bytes(setup.optimizer, p)
        notes["gradients"] = f"{_dtype(p)} gradients (the parameters' dtype)"
        notes["optimizer_states"] = (
            f"{_optim_label(setup.optimizer)} states in the parameters' dtype ({_dtype(p)})"
        )
        if not setup.peft and p == 2:
            notes["optimizer_states"] += "; pure bf16, no fp32 master copy"
        if launch.strategy == "ddp" and n > 1:
            gradients *= 2
            notes["gradients"] += " + DDP's gradient buckets (gradient_as_bucket_view=False)"
    if shard_weights > 1:
        notes["weights"] += f", sharded over {n} GPUs"
    if shard_grads > 1 and not launch.deepspeed:
        notes["gradients"] += f", sharded over {n} GPUs"
    optimizer = trainable * optim_bytes / shard_optim
    if launch.offload_optimizer:
        optimizer = 0.0
        notes["optimizer_states"] += ", offloaded to CPU"
    if shard_optim > 1 and not launch.offload_optimizer:
        notes["optimizer_states"] += f", sharded over {n} GPUs"

    # --- reference model ---
    reference = 0.0
    if setup.trainer != "dpo":
        notes["reference_model"] = "SFT: no reference model"
    elif setup.peft:
        notes["reference_model"] = "LoRA: no copy, the reference pass runs with the adapter disabled"
    elif setup.precompute_ref_log_probs:
        notes["reference_model"] = "reference log-probs precomputed before training"
    else:
        ref_bytes = 2 if (launch.deepspeed and launch.mixed_precision != "no") else setup.dtype_bytes
        reference = facts.total * ref_bytes / (n if sharded_weights else 1)
        notes["reference_model"] = f"frozen copy of the policy in {_dtype(ref_bytes)}" + (
            f", sharded over {n} GPUs" if sharded_weights and n > 1 else ", replicated on each GPU"
        )

    if launch.offload_params:
        weights = trainable_weights = reference = 0.0
        notes["weights"] += "; offloaded to CPU"

    # --- activations ---
    sequences = setup.per_device_batch_size * (2 if setup.trainer == "dpo" else 1)
    checkpointing = setup.activation_checkpointing or launch.activation_checkpointing
    full_act, ckpt_act, layer_act = _activations(facts, setup, targets, sequence, sequences, a, p)
    activations = ckpt_act if checkpointing else full_act
    notes["activations"] = (
        f"{sequences} sequence{'s' if sequences > 1 else ''} x {sequence.tokens} tokens"
        + (" (chosen + rejected)" if setup.trainer == "dpo" else "")
        + f", activation checkpointing {'on' if checkpointing else 'off'}"
        + f" ({'off' if checkpointing else 'on'}: {(full_act if checkpointing else ckpt_act) / GIB:.1f} GiB)"
        + ("; vision tower trains, its activations included" if not setup.peft else "; vision tower frozen")
    )

    # --- overheads: fused log-prob tiles, backward working set, gathered shards ---
    tile_tokens = min(sequences * sequence.tokens, _LOGPROB_TILE_TOKENS)
    overheads = 2 * tile_tokens * _LOGPROB_TILE_VOCAB * a + layer_act  # forward and backward tile buffers
    parts = ["TRL fused log-prob tiles", "backward working set"]
    if not setup.peft:
        overheads += 4 * facts.lm_head  # fp32 accumulator of the lm_head gradient in the fused head
        parts.append("fp32 lm_head gradient accumulator")
    if launch.strategy == "fsdp_grad_op" and n > 1:
        # SHARD_GRAD_OP keeps the gathered weights from the forward to the backward pass.
        overheads += base_bytes if setup.peft else facts.total * a
        parts.append("all weights gathered between forward and backward (shard-grad-op)")
    elif sharded_weights and n > 1:
        # ZeRO-3/FSDP gather each layer before use (and prefetch the next), in the compute dtype.
        layer_bytes = a if not setup.quantized else (quantized_bytes / max(1, quantized_weights))
        overheads += 2 * facts.largest_decoder_layer * layer_bytes + facts.lm_head * a
        parts.append("gathered parameters (two decoder layers + lm_head)")
        if not setup.peft:
            overheads += (
                facts.largest_decoder_layer * a
            )  # a layer's unsharded gradients before reduce-scatter
            parts.append("one layer's unsharded gradients")
    if launch.deepspeed and launch.zero_stage >= 1:
        # DeepSpeed's default reduce_bucket_size (5e8 elements): the buffer gradients are reduced through.
        overheads += min(_DEEPSPEED_BUCKET, trainable) * 2
        parts.append("DeepSpeed gradient reduce bucket")
    notes["overheads"] = ", ".join(parts)

    components = {
        "weights": weights,
        "trainable_weights": trainable_weights,
        "gradients": gradients,
        "optimizer_states": optimizer,
        "reference_model": reference,
        "activations": activations,
        "overheads": overheads,
    }
    return Estimate(
        components=components,
        activations_checkpointed=ckpt_act,
        activations_full=full_act,
        activation_checkpointing=checkpointing,
        parameters=facts.parts(),
        trainable_parameters=trainable,
        lora_modules=len(targets),
        quantized_parameters=quantized_weights,
        sequences_per_gpu=sequences,
        sequence=sequence,
        setup=setup,
        launch=launch,
        notes=notes,
    )


def _activations(
    facts: ModelFacts,
    setup: TrainingSetup,
    targets: list[LinearLayer],
    sequence: SequenceSpec,
    sequences: int,
    a: int,
    adapter_bytes: int,
) -> tuple[float, float, float]:
    """(without checkpointing, with checkpointing, one layer's worth) of saved-activation bytes.

    `a` is the bytes of an activation element (2 under bf16 autocast), `adapter_bytes` those of a LoRA weight.
    """
    h, i, q, kv = facts.hidden_size, facts.intermediate_size, facts.q_dim, facts.kv_dim
    # Per token and decoder layer: two RMSNorms (fp32 input copy, normalised and output tensors),
    # q/k/v after RoPE + attention output (memory-efficient SDPA saves no score matrix), SwiGLU's four
    # intermediate tensors.
    per_layer = 2 * (4 * h + 2 * a * h) + a * (2 * q + 2 * kv) + 4 * a * i
    # LoRA: the rank-r intermediate; an input copy when dropout is on or the adapter's dtype differs from
    # the compute dtype (PEFT casts the input to the adapter's dtype, autocast casts it back); the mask.
    dropout = setup.lora_dropout > 0 and not (setup.trainer == "dpo" and setup.disable_dropout)
    adapter_fp32 = adapter_bytes > a
    lora_total = 0.0
    for target in targets:
        lora_total += a * setup.lora_r
        if dropout or adapter_fp32:
            lora_total += a * target.in_features
        if dropout:
            lora_total += target.in_features  # bool mask
    layers = max(1, facts.num_layers)
    tokens = sequences * sequence.tokens
    outside = 4 * a * h  # embeddings output, final norm
    full = tokens * (layers * per_layer + lora_total + outside)
    one_layer = tokens * (per_layer + lora_total / layers)
    checkpointed = tokens * (layers * a * h + outside) + one_layer

    if not setup.peft and facts.vision_num_layers:
        # The vision tower trains: LayerNorm/attention/MLP tensors of each vision block, per image token.
        hv, iv = facts.vision_hidden_size, facts.vision_intermediate_size
        vision_per_layer = a * (12 * hv + 4 * iv)
        vision_tokens = sequences * sequence.vision_tokens
        full += vision_tokens * facts.vision_num_layers * vision_per_layer
        checkpointed += vision_tokens * (facts.vision_num_layers * a * hv + vision_per_layer)
    return full, checkpointed, one_layer


def _modules_to_save_params(facts: ModelFacts, names: Sequence[str]) -> int:
    if not names:
        return 0
    total = 0
    for layer in facts.linears:
        if any(layer.name == name or layer.name.endswith("." + name) for name in names):
            total += layer.in_features * layer.out_features + (layer.out_features if layer.bias else 0)
    if not total:
        raise SelfAlignError(f"lora_modules_to_save {list(names)} names no linear layer of this model")
    return total


def _optimizer_state_bytes(optimizer: str, param_bytes: int) -> float:
    name = optimizer.lower()
    if "8bit" in name:
        return 2.0
    if name.startswith("sgd"):
        return 0.0
    if "adafactor" in name:
        return 0.1 * param_bytes  # factored second moments: a small fraction of the parameters
    return 2.0 * param_bytes  # AdamW: exp_avg and exp_avg_sq


def _optim_label(optimizer: str) -> str:
    name = optimizer.lower()
    if "8bit" in name:
        return "8-bit AdamW"
    return "AdamW" if "adam" in name else optimizer


def _dtype(num_bytes: float) -> str:
    return {2: "bf16", 4: "fp32", 1: "int8"}.get(int(num_bytes), f"{num_bytes} bytes")


# ---------------------------------------------------------------------------------------------
# From files to an estimate, and its text form
# ---------------------------------------------------------------------------------------------


def estimate_recipe(
    recipe_path: str | Path,
    accelerate_config: str | Path | None = None,
    num_gpus: int | None = None,
    overrides: Sequence[str] = (),
    trainer: str | None = None,
    prompt_tokens: int | None = None,
    response_tokens: int | None = None,
    image_tokens: int | None = None,
    max_pixels: int | None = None,
    activation_checkpointing: bool | None = None,
) -> Estimate:
    """The estimate for a recipe file launched with an accelerate config file."""
    info = read_recipe(recipe_path, overrides, trainer)
    if activation_checkpointing is not None:
        info.setup.activation_checkpointing = activation_checkpointing
    config, source = load_model_config(info.model_name, info.base_model_id)
    facts = count_parameters(config)
    launch = read_launch(accelerate_config, num_gpus)
    sequence = sequence_for(config, info.setup, prompt_tokens, response_tokens, image_tokens, max_pixels)
    estimate = estimate_memory(facts, info.setup, launch, sequence)
    estimate.model_name, estimate.model_source, estimate.recipe = info.model_name, source, str(recipe_path)
    return estimate


LABELS = {
    "weights": "weights",
    "trainable_weights": "LoRA / trainable weights",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "reference_model": "reference model",
    "activations": "activations",
    "overheads": "overheads",
}


def format_estimate(estimate: Estimate) -> str:
    p = estimate.parameters
    seq = estimate.sequence
    lines = [
        "selfalign GPU memory ESTIMATE (per GPU, GiB = 2^30 bytes)",
        f"recipe      {estimate.recipe}: {estimate.setup.describe()}",
        f"model       {estimate.model_name}  [config: {estimate.model_source}]",
        f"parameters  {p['total']:,} = language model {p['language_model']:,} + lm_head {p['lm_head']:,}"
        f" + vision tower {p['vision_tower']:,} + projector {p['projector']:,}"
        + (f" + other {p['other']:,}" if p["other"] else ""),
        f"trainable   {estimate.trainable_parameters:,} ({100 * estimate.trainable_parameters / p['total']:.2f}%)",
        f"launch      {estimate.launch.describe()} [{estimate.launch.source}]",
        f"sequence    {estimate.sequences_per_gpu} x {seq.tokens} tokens per GPU step = {seq.prompt_tokens} prompt"
        f" + {seq.image_tokens} image + {seq.response_tokens} response",
        f"            {seq.assumption}",
        "",
        f"{'component':<26}{'GiB':>8}  note",
    ]
    gib = estimate.gib()
    for key, label in LABELS.items():
        lines.append(f"{label:<26}{gib[key]:>8.2f}  {estimate.notes.get(key, '')}")
    lines.append(f"{'total':<26}{gib['total']:>8.2f}  + CUDA context and fragmentation, ~1-3 GB")
    if estimate.activation_checkpointing:
        other, other_activations = "off", estimate.activations_full
    else:
        other, other_activations = "on", estimate.activations_checkpointed
    other_total = estimate.total - estimate.components["activations"] + other_activations
    fits = estimate.fits()
    lines += [
        f"{'total, checkpointing ' + other:<26}{other_total / GIB:>8.2f}",
        "",
        f"fits        {fits}" if fits.startswith("more") else f"fits        a {fits} GPU",
        "",
        DISCLAIMER,
    ]
    return "\n".join(lines)
