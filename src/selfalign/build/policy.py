"""The policy a builder samples from: its recipe keys, and the requests a shard of images becomes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from selfalign.build.conversation import user_turn
from selfalign.images import ImageSource, LoadedImage, Rejection, SourceItem, prompt_of, row_id
from selfalign.samples import GenerationRequest, SamplingParams, TransformersBackend


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


@dataclass
class PromptedImages:
    """A shard's images that loaded, each with its instruction, row id and generation request."""

    images: list[LoadedImage]
    instructions: list[str]
    ids: list[str]
    requests: list[GenerationRequest]
    rejections: list[Rejection]  # the inputs that did not load, with why


def prompted_images(
    source: ImageSource, items: Sequence[SourceItem], prompt_set: str | None, policy: PolicyArguments
) -> PromptedImages:
    """Load a shard's images and turn each into a request seeded by its row id (batch-independent samples)."""
    prompted = PromptedImages([], [], [], [], [])
    for item in items:
        loaded = source.load(item)
        if not isinstance(loaded, LoadedImage):
            prompted.rejections.append(loaded)
            continue
        instruction = prompt_of(loaded, prompt_set)
        rid = row_id(loaded.content_hash, instruction)
        prompted.images.append(loaded)
        prompted.instructions.append(instruction)
        prompted.ids.append(rid)
        prompted.requests.append(
            GenerationRequest(
                images=(loaded.image,), messages=tuple(user_turn(instruction)), seed=policy.row_seed(rid)
            )
        )
    return prompted
