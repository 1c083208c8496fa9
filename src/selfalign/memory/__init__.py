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

from selfalign.memory.estimate import estimate_memory, estimate_recipe
from selfalign.memory.facts import FACTS_DIR, config_from_facts, load_model_config, shipped_model_facts
from selfalign.memory.launch import Launch, Strategy, read_launch
from selfalign.memory.parameters import (
    LinearLayer,
    ModelFacts,
    count_parameters,
    lora_targets,
    quantized_linears,
)
from selfalign.memory.recipes import RecipeInfo, TrainingSetup, default_lora_regex, read_recipe, trainer_of
from selfalign.memory.report import (
    CUDA_OVERHEAD_GIB,
    DISCLAIMER,
    GIB,
    GPU_SIZES_GB,
    LABELS,
    USABLE_FRACTION,
    Estimate,
    format_estimate,
    gpu_that_fits,
)
from selfalign.memory.sequences import (
    DEFAULT_TEXT_TOKENS,
    QWEN_MAX_PIXELS_ASSUMED,
    SequenceSpec,
    image_tokens_for,
    sequence_for,
)

__all__ = [
    "CUDA_OVERHEAD_GIB",
    "DEFAULT_TEXT_TOKENS",
    "DISCLAIMER",
    "Estimate",
    "FACTS_DIR",
    "GIB",
    "GPU_SIZES_GB",
    "LABELS",
    "Launch",
    "LinearLayer",
    "ModelFacts",
    "QWEN_MAX_PIXELS_ASSUMED",
    "RecipeInfo",
    "SequenceSpec",
    "Strategy",
    "TrainingSetup",
    "USABLE_FRACTION",
    "config_from_facts",
    "count_parameters",
    "default_lora_regex",
    "estimate_memory",
    "estimate_recipe",
    "format_estimate",
    "gpu_that_fits",
    "image_tokens_for",
    "load_model_config",
    "lora_targets",
    "quantized_linears",
    "read_launch",
    "read_recipe",
    "sequence_for",
    "shipped_model_facts",
    "trainer_of",
]
