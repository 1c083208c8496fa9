"""Sampling completions from a policy: the data classes, the backend interface and the transformers backend."""

from selfalign.samples.sampler import (
    Completion,
    FinishReason,
    GenerationBackend,
    GenerationRequest,
    SamplingParams,
    sample,
)
from selfalign.samples.transformers_backend import TransformersBackend

__all__ = [
    "Completion",
    "FinishReason",
    "GenerationBackend",
    "GenerationRequest",
    "SamplingParams",
    "TransformersBackend",
    "sample",
]
