"""Recipe keys for the policy a builder samples from, shared by every builder that samples."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from selfalign.samples import SamplingParams, TransformersBackend


@dataclass
class PolicyArguments:
    policy_model: str = field(
        metadata={"help": "Hub id or folder of the policy VLM whose samples are collected."}
    )
    policy_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of the policy."}
    )
    image_max_pixels: int | None = field(
        default=None,
        metadata={"help": "Cap on pixels per image for dynamic-resolution processors (Qwen2-VL family)."},
    )
    dtype: str = field(
        default="auto", metadata={"help": "dtype to load the policy in (auto, bfloat16, float32)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generation call."})
    seed: int = field(
        default=0, metadata={"help": "Base seed; each row's seed derives from it and the row id."}
    )

    def backend(self, device: str | None = None) -> TransformersBackend:
        return TransformersBackend(
            self.policy_model,
            revision=self.policy_revision,
            dtype=self.dtype,
            batch_size=self.batch_size,
            device=device,
            image_max_pixels=self.image_max_pixels,
        )

    def row_seed(self, row_id: str) -> int:
        """The row's own seed: the same samples whatever the batch, shard or process it lands in."""
        return int.from_bytes(hashlib.sha256(f"{self.seed}:{row_id}".encode()).digest()[:8], "big") >> 1


@dataclass
class PolicySamplingArguments(PolicyArguments):
    """The policy, and N independent samples per prompt (`selfalign.samples.sample`)."""

    num_samples: int = field(default=5, metadata={"help": "Samples per prompt."})
    temperature: float = field(default=0.2, metadata={"help": "Sampling temperature; 0 for greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest sample, in tokens."})
    stop_strings: list[str] = field(default_factory=list, metadata={"help": "Strings that end a sample."})

    def params(self) -> SamplingParams:
        return SamplingParams(
            n=self.num_samples,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            stop_strings=tuple(self.stop_strings),
        )
