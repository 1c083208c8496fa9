"""The estimate: per-GPU bytes of weights, gradients, optimizer states, reference model, activations and
overheads for a training setup under a launch, and the estimate of a recipe file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from selfalign.errors import SelfAlignError
from selfalign.memory.activations import saved_activations
from selfalign.memory.facts import load_model_config
from selfalign.memory.launch import Launch, read_launch
from selfalign.memory.parameters import (
    LinearLayer,
    ModelFacts,
    count_parameters,
    lora_targets,
    modules_to_save_params,
    quantized_linears,
)
from selfalign.memory.recipes import TrainingSetup, read_recipe
from selfalign.memory.report import GIB, Estimate
from selfalign.memory.sequences import SequenceSpec, sequence_for

# TRL's fused LM head (trl/kernels/chunked_logprob.py): tiles of up to 4096 tokens x 32768 vocabulary entries.
_LOGPROB_TILE_TOKENS = 4096
_LOGPROB_TILE_VOCAB = 32768
# DeepSpeed's default reduce_bucket_size (accelerate's generated config does not set it).
_DEEPSPEED_BUCKET = 500_000_000
# bitsandbytes 4-bit: blocks of 64 weights.
_NF4_BLOCK = 64
_NESTED_BLOCK = 256


def estimate_memory(
    facts: ModelFacts,
    setup: TrainingSetup,
    launch: Launch,
    sequence: SequenceSpec,
) -> Estimate:
    """Per-GPU bytes of each component for `setup` launched as `launch`."""
    shards = _shards(launch)
    w, a = _element_bytes(setup, launch)
    notes: dict[str, str] = {}  # each step explains the component it computes
    targets = _lora_layers(facts, setup)
    saved_copies = modules_to_save_params(facts, setup.lora_modules_to_save) if setup.peft else 0
    base = _base_weights(facts, setup, w, saved_copies, notes)
    trainable = _trainable_parameters(facts, setup, targets, saved_copies)
    p = _trained_parameter_bytes(setup, launch, w)
    weights, trainable_weights = _weights(facts, setup, shards, base, trainable, targets, w, p, notes)
    gradients = _gradients(launch, shards, trainable, p, notes)
    optimizer = _optimizer_states(setup, launch, shards, trainable, p, notes)
    reference = _reference_model(facts, setup, launch, shards, notes)
    if launch.offload_params:
        weights = trainable_weights = reference = 0.0
        notes["weights"] += "; offloaded to CPU"

    sequences = setup.per_device_batch_size * (2 if setup.trainer == "dpo" else 1)
    checkpointing = setup.activation_checkpointing or launch.activation_checkpointing
    full_act, ckpt_act, layer_act = saved_activations(facts, setup, targets, sequence, sequences, a, p)
    notes["activations"] = _activations_note(setup, sequence, sequences, checkpointing, full_act, ckpt_act)
    tokens = sequences * sequence.tokens
    overheads = _overheads(facts, setup, launch, shards, base, trainable, tokens, layer_act, a, notes)

    components = {
        "weights": weights,
        "trainable_weights": trainable_weights,
        "gradients": gradients,
        "optimizer_states": optimizer,
        "reference_model": reference,
        "activations": ckpt_act if checkpointing else full_act,
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
        quantized_parameters=base.quantized_parameters,
        sequences_per_gpu=sequences,
        sequence=sequence,
        setup=setup,
        launch=launch,
        notes=notes,
    )


@dataclass(frozen=True)
class _Shards:
    """Over how many GPUs each kind of state is split (1: every GPU holds all of it)."""

    gpus: int
    weights: int  # ZeRO-3, FSDP
    gradients: int  # ZeRO-2 and up, FSDP
    optimizer: int  # ZeRO-1 and up, FSDP


def _shards(launch: Launch) -> _Shards:
    n = max(1, launch.num_gpus)
    return _Shards(
        gpus=n,
        weights=n if (launch.zero_stage == 3 or launch.fsdp) else 1,
        gradients=n if (launch.zero_stage >= 2 or launch.fsdp) else 1,
        optimizer=n if (launch.zero_stage >= 1 or launch.fsdp) else 1,
    )


def _element_bytes(setup: TrainingSetup, launch: Launch) -> tuple[int, int]:
    """(bytes per stored weight, bytes per activation element)."""
    w = setup.dtype_bytes
    a = 2 if (setup.mixed_precision or w == 2) else 4
    if launch.deepspeed and launch.mixed_precision != "no":
        w = 2  # the DeepSpeed engine casts the module to bf16/fp16
    return w, a


def _lora_layers(facts: ModelFacts, setup: TrainingSetup) -> list[LinearLayer]:
    """The linear layers that get adapters (none under full fine-tuning)."""
    targets = lora_targets(facts, setup.lora_target_regex) if setup.peft and setup.lora_target_regex else []
    if setup.peft and not targets:
        raise SelfAlignError(
            f"the LoRA target regex {setup.lora_target_regex!r} matches no linear layer of this model"
        )
    return targets


@dataclass(frozen=True)
class _BaseWeights:
    """The base model as stored: its quantized linear weights, and its bytes in all (the rest in `w` bytes)."""

    quantized_parameters: int
    quantized_bytes: float
    total_bytes: float


def _base_weights(
    facts: ModelFacts, setup: TrainingSetup, w: int, saved_copies: int, notes: dict[str, str]
) -> _BaseWeights:
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
    total_bytes = quantized_bytes + (facts.total - quantized_weights) * w + saved_copies * w
    return _BaseWeights(quantized_weights, quantized_bytes, total_bytes)


def _trainable_parameters(
    facts: ModelFacts, setup: TrainingSetup, targets: list[LinearLayer], saved_copies: int
) -> int:
    """The LoRA (and DoRA magnitude) parameters plus the modules saved in full; or all of them."""
    if not setup.peft:
        return facts.total
    lora_params = sum(
        setup.lora_r * (t.in_features + t.out_features) + (t.out_features if setup.use_dora else 0)
        for t in targets
    )
    return lora_params + saved_copies


def _trained_parameter_bytes(setup: TrainingSetup, launch: Launch, w: int) -> int:
    """Bytes per trained parameter, which its gradient and (outside DeepSpeed) optimizer states share."""
    if setup.peft:
        # PEFT upcasts adapters to fp32 (on a quantized base, selfalign undoes TRL's bf16 cast); the
        # DeepSpeed engine casts everything to bf16 (fp32 master in the optimizer).
        return 2 if launch.deepspeed and launch.mixed_precision != "no" else 4
    if launch.fsdp and launch.mixed_precision != "no":
        return 4  # accelerate's FSDP2 upcasts trainable parameters to fp32
    return w


def _weights(
    facts: ModelFacts,
    setup: TrainingSetup,
    shards: _Shards,
    base: _BaseWeights,
    trainable: int,
    targets: list[LinearLayer],
    w: int,
    p: int,
    notes: dict[str, str],
) -> tuple[float, float]:
    """(the model's weights, the LoRA weights) per GPU; under full fine-tuning the first are the trained ones."""
    if setup.peft:
        weights = base.total_bytes / shards.weights
        trainable_weights = trainable * p / shards.weights
        notes.setdefault("weights", f"base model frozen, in {_dtype(w)}")
        notes["trainable_weights"] = f"{trainable:,} LoRA parameters ({len(targets)} modules) in {_dtype(p)}"
    else:
        weights = facts.total * p / shards.weights
        trainable_weights = 0.0
        notes["weights"] = f"all {facts.total:,} parameters train, stored in {_dtype(p)}"
        notes["trainable_weights"] = "full fine-tuning: the weights above are the trained weights"
    if shards.weights > 1:
        notes["weights"] += f", sharded over {shards.gpus} GPUs"
    return weights, trainable_weights


def _gradients(launch: Launch, shards: _Shards, trainable: int, p: int, notes: dict[str, str]) -> float:
    if launch.deepspeed:
        grad_bytes = 2 if launch.mixed_precision != "no" else 4
        notes["gradients"] = f"{_dtype(grad_bytes)} gradients" + (
            f", sharded over {shards.gpus} GPUs" if shards.gradients > 1 else ""
        )
        return trainable * grad_bytes / shards.gradients
    gradients = trainable * p / shards.gradients
    notes["gradients"] = f"{_dtype(p)} gradients (the parameters' dtype)"
    if launch.strategy == "ddp" and shards.gpus > 1:
        gradients *= 2
        notes["gradients"] += " + DDP's gradient buckets (gradient_as_bucket_view=False)"
    if shards.gradients > 1:
        notes["gradients"] += f", sharded over {shards.gpus} GPUs"
    return gradients


def _optimizer_states(
    setup: TrainingSetup, launch: Launch, shards: _Shards, trainable: int, p: int, notes: dict[str, str]
) -> float:
    if launch.deepspeed:
        master = 4 if p < 4 else 0
        optim_bytes = _optimizer_state_bytes(setup.optimizer, 4) + master
        notes["optimizer_states"] = f"{_optim_label(setup.optimizer)} fp32 states" + (
            " + fp32 master copy" if master else ""
        )
    else:
        optim_bytes = _optimizer_state_bytes(setup.optimizer, p)
        notes["optimizer_states"] = (
            f"{_optim_label(setup.optimizer)} states in the parameters' dtype ({_dtype(p)})"
        )
        if not setup.peft and p == 2:
            notes["optimizer_states"] += "; pure bf16, no fp32 master copy"
    if launch.offload_optimizer:
        notes["optimizer_states"] += ", offloaded to CPU"
        return 0.0
    if shards.optimizer > 1:
        notes["optimizer_states"] += f", sharded over {shards.gpus} GPUs"
    return trainable * optim_bytes / shards.optimizer


def _reference_model(
    facts: ModelFacts, setup: TrainingSetup, launch: Launch, shards: _Shards, notes: dict[str, str]
) -> float:
    if setup.trainer != "dpo":
        notes["reference_model"] = "SFT: no reference model"
    elif setup.peft:
        notes["reference_model"] = "LoRA: no copy, the reference pass runs with the adapter disabled"
    elif setup.precompute_ref_log_probs:
        notes["reference_model"] = "reference log-probs precomputed before training"
    else:
        ref_bytes = 2 if (launch.deepspeed and launch.mixed_precision != "no") else setup.dtype_bytes
        notes["reference_model"] = f"frozen copy of the policy in {_dtype(ref_bytes)}" + (
            f", sharded over {shards.gpus} GPUs" if shards.weights > 1 else ", replicated on each GPU"
        )
        return facts.total * ref_bytes / shards.weights
    return 0.0


def _activations_note(
    setup: TrainingSetup,
    sequence: SequenceSpec,
    sequences: int,
    checkpointing: bool,
    full_act: float,
    ckpt_act: float,
) -> str:
    return (
        f"{sequences} sequence{'s' if sequences > 1 else ''} x {sequence.tokens} tokens"
        + (" (chosen + rejected)" if setup.trainer == "dpo" else "")
        + f", activation checkpointing {'on' if checkpointing else 'off'}"
        + f" ({'off' if checkpointing else 'on'}: {(full_act if checkpointing else ckpt_act) / GIB:.1f} GiB)"
        + ("; vision tower trains, its activations included" if not setup.peft else "; vision tower frozen")
    )


def _overheads(
    facts: ModelFacts,
    setup: TrainingSetup,
    launch: Launch,
    shards: _Shards,
    base: _BaseWeights,
    trainable: int,
    tokens: int,
    layer_act: float,
    a: int,
    notes: dict[str, str],
) -> float:
    """Fused log-prob tiles, the backward working set, gathered shards and DeepSpeed's reduce bucket."""
    tile_tokens = min(tokens, _LOGPROB_TILE_TOKENS)
    overheads = 2 * tile_tokens * _LOGPROB_TILE_VOCAB * a + layer_act  # forward and backward tile buffers
    parts = ["TRL fused log-prob tiles", "backward working set"]
    if not setup.peft:
        overheads += 4 * facts.lm_head  # fp32 accumulator of the lm_head gradient in the fused head
        parts.append("fp32 lm_head gradient accumulator")
    if launch.strategy == "fsdp_grad_op" and shards.gpus > 1:
        # SHARD_GRAD_OP keeps the gathered weights from the forward to the backward pass.
        overheads += base.total_bytes if setup.peft else facts.total * a
        parts.append("all weights gathered between forward and backward (shard-grad-op)")
    elif shards.weights > 1:
        # ZeRO-3/FSDP gather each layer before use (and prefetch the next), in the compute dtype.
        layer_bytes = a if not setup.quantized else (base.quantized_bytes / max(1, base.quantized_parameters))
        overheads += 2 * facts.largest_decoder_layer * layer_bytes + facts.lm_head * a
        parts.append("gathered parameters (two decoder layers + lm_head)")
        if not setup.peft:
            # A layer's unsharded gradients before reduce-scatter.
            overheads += facts.largest_decoder_layer * a
            parts.append("one layer's unsharded gradients")
    if launch.deepspeed and launch.zero_stage >= 1:
        # DeepSpeed's default reduce_bucket_size (5e8 elements): the buffer gradients are reduced through.
        overheads += min(_DEEPSPEED_BUCKET, trainable) * 2
        parts.append("DeepSpeed gradient reduce bucket")
    notes["overheads"] = ", ".join(parts)
    return overheads


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
