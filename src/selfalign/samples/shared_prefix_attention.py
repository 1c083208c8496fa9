"""Attention for many rows that continue a few prompts, each prompt's keys and values held once.

In the batched tree search (`sentence_tree.py`) every row being decoded continues one prompt of
its batch: up to 15 rows a prompt (3 live nodes x 5 children). Holding the prompt's KV in every row
costs memory rows x prompt length (LLaVA-1.5-7B: 576 image + ~64 text tokens at 0.5 MiB a token,
0.31 GiB a row) and makes every step read the prompt once per row. Here a row's cache holds only
its response, `SharedPrefix` holds each prompt's KV once, and a step's attention is computed in two
parts merged by their softmax normalisers:

- the queries of all rows of a prompt against the prompt's keys and values: one matmul per prompt,
  which reads them once;
- each row's queries against its own response's keys and values (the model's KV cache).

The model runs it while `attention_over_shared_prefix(model)` is in effect and the forward pass is
given `shared_prefix=`: transformers hands that keyword to every attention call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from selfalign.errors import SelfAlignError

ATTENTION_NAME = "selfalign_shared_prefix"


class SharedPrefix:
    """Each prompt's KV, once, and which prompt each row of the next forward passes continues."""

    def __init__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor):
        """`layers`: per layer, keys and values (prompts, kv_heads, tokens, head_dim); `mask`
        (prompts, tokens): True on each prompt's own tokens (the others are padding)."""
        self.layers = list(layers)
        # Added to the scores: 0 on a prompt's tokens, -inf on padding; broadcasts over heads and queries.
        self.score_bias = torch.where(mask, 0.0, -torch.inf)[:, None, None, :]
        self.use_rows([])

    @property
    def num_tokens(self) -> int:
        """Token slots held per layer, padding included."""
        return self.score_bias.shape[0] * self.score_bias.shape[-1]

    def use_rows(self, prompt_of_row: Sequence[int]) -> None:
        """Set which prompt each row (batch position) of the next forward passes continues.

        The rows of a prompt are gathered into that prompt's slots (as many a prompt as the most any
        prompt has) so that one matmul per prompt covers them all; a slot no row fills is computed
        and ignored.
        """
        counts: dict[int, int] = {}
        slot_of_row = []
        for prompt in prompt_of_row:
            slot_of_row.append((prompt, counts.get(prompt, 0)))
            counts[prompt] = counts.get(prompt, 0) + 1
        self.prompts = sorted(counts)  # the prompts that have rows, in the layout's order
        self.slots_per_prompt = max(counts.values(), default=0)
        group_of_prompt = {prompt: group for group, prompt in enumerate(self.prompts)}
        device = self.score_bias.device
        slots = [group_of_prompt[prompt] * self.slots_per_prompt + rank for prompt, rank in slot_of_row]
        self.slot_of_row = torch.tensor(slots, dtype=torch.long, device=device)
        row_of_slot = [0] * (len(self.prompts) * self.slots_per_prompt)
        for row, slot in enumerate(slots):
            row_of_slot[slot] = row
        self.row_of_slot = torch.tensor(row_of_slot, dtype=torch.long, device=device)
        every_prompt = len(self.prompts) == self.score_bias.shape[0]
        self.active = None if every_prompt else torch.tensor(self.prompts, dtype=torch.long, device=device)

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        response_mask: torch.Tensor | None,
        scaling: float,
    ) -> torch.Tensor:
        """Attention output (rows, queries, heads, head_dim) over prompt + response.

        `query` (rows, heads, queries, head_dim); `keys`/`values` the rows' response KV (rows,
        kv_heads, tokens, head_dim); `response_mask` True where a query may see a response token,
        (rows, 1, queries, tokens), or None for all.
        """
        rows, heads, queries, head_dim = query.shape
        kv_heads = keys.shape[1]
        # Query heads sharing a KV head (grouped-query attention) become more queries of that head.
        query = query.view(rows, kv_heads, heads // kv_heads, queries, head_dim)
        prompt_keys, prompt_values = self.layers[layer]
        score_bias = self.score_bias
        if self.active is not None:
            prompt_keys, prompt_values = prompt_keys[self.active], prompt_values[self.active]
            score_bias = score_bias[self.active]

        # Scores are softmaxed in float32 at least, as eager attention does, whatever the model's dtype.
        # The prompt part stays grouped by prompt; only per-query numbers (maximum, sum) move between
        # the layouts.
        score_dtype = torch.promote_types(query.dtype, torch.float32)
        group_queries = query.shape[2:4]
        query = query * scaling
        prompt_scores = (self._group(query) @ prompt_keys.transpose(-1, -2)).to(score_dtype) + score_bias
        response_scores = (query @ keys[:, :, None].transpose(-1, -2)).to(score_dtype)
        if response_mask is not None:
            response_scores = response_scores.masked_fill(~response_mask[:, :, None], -torch.inf)
        # Every row sees at least one prompt token, so the maximum is finite.
        top = torch.maximum(
            self._ungroup(prompt_scores.amax(-1, keepdim=True), group_queries),
            response_scores.amax(-1, keepdim=True),
        )
        prompt_weights = (prompt_scores - self._group(top)).exp()
        response_weights = (response_scores - top).exp()
        normaliser = self._ungroup(
            prompt_weights.sum(-1, keepdim=True), group_queries
        ) + response_weights.sum(-1, keepdim=True)
        output = (
            self._ungroup(prompt_weights.to(prompt_values.dtype) @ prompt_values, group_queries)
            + response_weights.to(values.dtype) @ values[:, :, None]
        )
        output = output / normaliser.to(output.dtype)
        return output.reshape(rows, heads, queries, head_dim).transpose(1, 2).contiguous()

    def _group(self, per_row: torch.Tensor) -> torch.Tensor:
        """(rows, kv_heads, group, queries, n) -> (prompts, kv_heads, slots x group x queries, n)."""
        _, kv_heads, group, queries, n = per_row.shape
        slots = per_row[self.row_of_slot].view(len(self.prompts), self.slots_per_prompt, kv_heads, -1, n)
        return slots.transpose(1, 2).reshape(len(self.prompts), kv_heads, -1, n)

    def _ungroup(self, grouped: torch.Tensor, group_queries: tuple[int, int]) -> torch.Tensor:
        """The inverse of `_group`: (prompts, kv_heads, slots x group x queries, n) -> per row."""
        prompts, kv_heads, _, n = grouped.shape
        slots = grouped.view(prompts, kv_heads, self.slots_per_prompt, *group_queries, n)
        return slots.transpose(1, 2).reshape(-1, kv_heads, *group_queries, n)[self.slot_of_row]


def _shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    shared_prefix: SharedPrefix | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if shared_prefix is None:
        raise SelfAlignError(f"the {ATTENTION_NAME} attention needs the forward pass's shared_prefix=")
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        raise SelfAlignError(
            f"the {ATTENTION_NAME} attention expects a boolean mask, got {attention_mask.dtype}"
        )
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    return shared_prefix.attend(module.layer_idx, query, key, value, attention_mask, scaling), None


AttentionInterface.register(ATTENTION_NAME, _shared_prefix_attention)
# The response part's mask is built as for SDPA: boolean, True where a query may attend.
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


@contextmanager
def attention_over_shared_prefix(model: torch.nn.Module) -> Iterator[None]:
    """While in effect, the model's language model attends with `SharedPrefix` (vision towers unchanged)."""
    text_config = model.config.get_text_config()
    previous = text_config._attn_implementation
    text_config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        text_config._attn_implementation = previous
