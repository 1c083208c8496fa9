"""What an estimate reports: bytes per GPU by component with their notes, the GPU size that fits, and the
estimate's JSON and text forms."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from selfalign.memory.launch import Launch
from selfalign.memory.recipes import TrainingSetup
from selfalign.memory.sequences import SequenceSpec

GIB = 2**30
DISCLAIMER = (
    "This is an estimate, not a measurement: parameter counts are exact, activation memory and framework "
    "overheads are approximations, and the CUDA context plus allocator fragmentation add ~1-3 GB per GPU."
)
CUDA_OVERHEAD_GIB = 2.0  # midpoint of the 1-3 GB above, used only to say which GPU a run fits
USABLE_FRACTION = 0.94
GPU_SIZES_GB = (16, 24, 40, 48, 80, 141)


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
