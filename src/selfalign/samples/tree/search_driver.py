"""The depth loop every search shares: the rules (`rules.py`) grow the trees, an expander writes the
children's sentences."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from selfalign.samples.sampler import GenerationRequest
from selfalign.samples.tree.rules import (
    Parent,
    Sentence,
    SentenceTree,
    TreeBuilder,
    TreeSearchParams,
    TreeSearchStats,
)

logger = logging.getLogger(__name__)


def grow_trees(
    requests: Sequence[GenerationRequest],
    params: TreeSearchParams,
    tokenizer,
    eos_token_ids: set[int],
    expand: Callable[[list[Parent]], list[list[Sentence]]],
    stats: TreeSearchStats,
) -> list[SentenceTree]:
    """One tree per request, depth by depth; `expand` gives every parent its children's sentences."""
    builders = [TreeBuilder(request.seed, params, tokenizer, eos_token_ids) for request in requests]
    depth = 0
    while parents := [parent for index, builder in enumerate(builders) for parent in builder.parents(index)]:
        depth += 1
        children = expand(parents)
        stats.generated_tokens += sum(len(sentence.token_ids) for row in children for sentence in row)
        for index, builder in enumerate(builders):
            builder.grow(
                [(p, row) for p, row in zip(parents, children, strict=True) if p.prompt_index == index]
            )
        logger.debug("depth %d: expanded %d nodes of %d prompts", depth, len(parents), len(requests))
    return [builder.tree() for builder in builders]
