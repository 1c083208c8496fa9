"""The reference expander, the original's way: for each prompt and live node, one `generate` over
images + prompt + the node's response, re-encoding the image and the whole prefix for every node.
`search_trees_one_node_at_a_time` is the search it drives (the rules: `rules.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from transformers import BatchFeature, LogitsProcessor, StoppingCriteria

from selfalign.samples.sampler import GenerationRequest
from selfalign.samples.transformers_backend import TransformersBackend, _row_generator, _RowSampler
from selfalign.samples.tree.diverse_greedy import diverse_greedy
from selfalign.samples.tree.rules import (
    Parent,
    Sentence,
    SentenceEnd,
    SentenceTree,
    TreeSearchParams,
    TreeSearchStats,
    sentence_budget,
    sentence_done,
)
from selfalign.samples.tree.search_driver import grow_trees


@torch.inference_mode()
def search_trees_one_node_at_a_time(
    backend: TransformersBackend,
    requests: Sequence[GenerationRequest],
    params: TreeSearchParams,
    stats: TreeSearchStats | None = None,
) -> list[SentenceTree]:
    """The same trees as `search_trees`, the original's way: one `generate` per prompt and live node."""
    stats = TreeSearchStats() if stats is None else stats
    eos_token_ids = set(backend.eos_token_ids.tolist())
    trees = []
    for request in requests:
        expander = _OneNodeExpander(backend, request, params, stats)
        trees += grow_trees([request], params, backend.tokenizer, eos_token_ids, expander.expand, stats)
    return trees


class _DiverseChildren(LogitsProcessor):
    """`diverse_greedy` for `generate` over one node's children (its rows, in child order): chooses
    the running rows' tokens, forces `generate` to take them, and records their log-probs as
    `_RowSampler` does. Rows whose sentence is done no longer count; `generate` pads them."""

    def __init__(
        self, penalty: float, never_sampled: Sequence[int], sentence_done: Callable[[list[int]], bool]
    ):
        self.penalty = penalty
        self.never_sampled = never_sampled
        self.sentence_done = sentence_done
        self.tokens: list[list[int]] | None = None  # per row: the tokens chosen so far
        self.chosen_logprobs: list[torch.Tensor] = []  # one (rows,) tensor per step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.tokens is None:
            self.tokens = [[] for _ in range(len(scores))]
        running = [
            row for row, tokens in enumerate(self.tokens) if not (tokens and self.sentence_done(tokens))
        ]
        chosen, logprobs = diverse_greedy(
            scores[running], [0] * len(running), self.penalty, self.never_sampled
        )
        all_chosen = torch.zeros(len(scores), dtype=torch.long, device=scores.device)
        all_logprobs = torch.zeros(len(scores), dtype=scores.dtype, device=scores.device)
        all_chosen[running], all_logprobs[running] = chosen, logprobs
        for row, token in zip(running, chosen.tolist(), strict=True):
            self.tokens[row].append(token)
        self.chosen_logprobs.append(all_logprobs)
        forced = torch.full_like(scores, -math.inf)
        return forced.scatter_(1, all_chosen[:, None], 0.0)


class _SentenceEndCriteria(StoppingCriteria):
    """`SentenceEnd` for `generate`: per row, on the tokens after `prompt_length`."""

    def __init__(self, sentence_end: SentenceEnd, prompt_length: int):
        self.sentence_end = sentence_end
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        ends = [self.sentence_end(row[self.prompt_length :].tolist()) for row in input_ids]
        return torch.tensor(ends, dtype=torch.bool, device=input_ids.device)


class _OneNodeExpander:
    """The reference: expands each node of one prompt by its own `generate` over the whole prefix."""

    def __init__(
        self,
        backend: TransformersBackend,
        request: GenerationRequest,
        params: TreeSearchParams,
        stats: TreeSearchStats,
    ):
        self.backend = backend
        self.request = request
        self.params = params
        self.stats = stats
        self.sentence_end = SentenceEnd(backend.tokenizer, params.sentence_ends)
        self.never_sampled = backend.never_sampled

    def expand(self, parents: list[Parent]) -> list[list[Sentence]]:
        return [self._expand(parent) for parent in parents]

    def _expand(self, parent: Parent) -> list[Sentence]:
        inputs = self.backend._encode([self.request])
        prompt_length = inputs["input_ids"].shape[1]
        if not parent.response_ids:
            self.stats.prompt_tokens += prompt_length
        inputs = _with_response(inputs, parent.response_ids)
        children = self.params.children
        budget = sentence_budget(parent, self.params)
        if self.params.diversity_penalty:
            eos_token_ids = set(self.backend.eos_token_ids.tolist())
            sampler = _DiverseChildren(
                self.params.diversity_penalty,
                self.never_sampled,
                lambda tokens: sentence_done(tokens, budget, eos_token_ids, self.sentence_end),
            )
        else:
            generators = [_row_generator(self.request.seed, *parent.branch, j) for j in range(children)]
            sampler = _RowSampler(generators, self.params.temperature, self.params.top_p, self.never_sampled)
        stop = _SentenceEndCriteria(self.sentence_end, inputs["input_ids"].shape[1])
        generated, logprobs, finishes = self.backend._sample_rows(inputs, sampler, children, budget, stop)
        self.stats.vision_encoder_calls += 1
        self.stats.images_encoded += len(self.request.images)
        self.stats.kv_cache_tokens_peak = max(
            self.stats.kv_cache_tokens_peak, children * (inputs["input_ids"].shape[1] + generated.shape[1])
        )
        # generate repeats the prefix for every child, then forwards every row at every step but the last.
        self.stats.prompt_tokens_forwarded += children * prompt_length
        self.stats.generated_tokens_forwarded += children * (
            len(parent.response_ids) + generated.shape[1] - 1
        )
        return [
            Sentence(tuple(generated[row, :length].tolist()), float(logprobs[row, :length].sum()))
            for row, (length, _) in enumerate(finishes)
        ]


def _with_response(inputs: BatchFeature, response_ids: tuple[int, ...]) -> BatchFeature:
    """One prompt's model inputs followed by the response so far, as text tokens."""
    if not response_ids:
        return inputs
    response = torch.tensor(
        [response_ids], dtype=inputs["input_ids"].dtype, device=inputs["input_ids"].device
    )
    inputs["input_ids"] = torch.cat([inputs["input_ids"], response], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(response)], dim=1)
    if "mm_token_type_ids" in inputs:  # Qwen: 0 marks text tokens
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros_like(response)], dim=1
        )
    return inputs
