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
from selfalign.samples.tree import (
    NodeFinishReason,
    SentenceTree,
    TreeNode,
    TreeSearchParams,
    TreeSearchStats,
    search_trees,
    search_trees_one_node_at_a_time,
)

__all__ = [
    "Completion",
    "FinishReason",
    "GenerationBackend",
    "GenerationRequest",
    "NodeFinishReason",
    "SamplingParams",
    "SentenceTree",
    "TransformersBackend",
    "TreeNode",
    "TreeSearchParams",
    "TreeSearchStats",
    "sample",
    "search_trees",
    "search_trees_one_node_at_a_time",
]
