"""Bytes of the activations autograd saves: decoder layers, LoRA adapters and (when it trains) the vision tower."""

from __future__ import annotations

from selfalign.memory.parameters import LinearLayer, ModelFacts
from selfalign.memory.recipes import TrainingSetup
from selfalign.memory.sequences import SequenceSpec


def saved_activations(
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
