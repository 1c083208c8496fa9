"""Attention for many rows that share the start of their context, each shared block held once.

In the batched tree search (`shared_cache_expander.py`) every row being decoded is a child: it continues
its parent's response, which continues one prompt of the batch, and up to 15 rows share a prompt
(3 live nodes x 5 children), 5 a parent. Holding the whole context in every row costs memory rows x
context length (LLaVA-1.5-7B: 576 image + ~64 text tokens at 0.5 MiB a token, 0.31 GiB a row before
any response) and makes every step read each shared token once per row. Here the context is cut
into levels: each prompt's KV, held once (`SharedBlocks` of the prompts); each parent's response,
held once (`SharedBlocks` of the parents); and each row's own tokens (the model's KV cache). A step's
attention is computed per part and the parts merged by their softmax normalisers:

- per level, the queries of all rows that share a block against its keys and values: one matmul
  per block, which reads it once;
- each row's queries against its own keys and values.

The model runs it while `attention_over_shared_prefix(model)` is in effect and the forward pass is
given `shared_prefix=SharedPrefix(...)`: transformers hands that keyword to every attention call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from selfalign.errors import SelfAlignError

ATTENTION_NAME = "selfalign_shared_prefix"


class SharedBlocks:
    """One level of shared context: blocks of KV, each held once, and which block each row reads."""

    def __init__(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor):
        """`layers`: per layer, keys and values (blocks, kv_heads, tokens, head_dim); `mask`
        (blocks, tokens): True on each block's own tokens (the others are padding)."""
        self.layers = list(layers)
        # Added to the scores: 0 on a block's tokens, -inf on padding; broadcasts over heads and queries.
        self.score_bias = torch.where(mask, 0.0, -torch.inf)[:, None, None, :]
        self.use_rows([])

    @property
    def num_tokens(self) -> int:
        """Token slots held per layer, padding included."""
        return self.score_bias.shape[0] * self.score_bias.shape[-1]

    def use_rows(self, block_of_row: Sequence[int]) -> None:
        """Set which block each row (batch position) of the next forward passes reads.

        The rows of a block are gathered into that block's slots (as many a block as the most any
        block has) so that one matmul per block covers them all; a slot no row fills is computed
        and ignored.
        """
        counts: dict[int, int] = {}
        slot_of_row = []
        for block in block_of_row:
            slot_of_row.append((block, counts.get(block, 0)))
            counts[block] = counts.get(block, 0) + 1
        self.blocks = sorted(counts)  # the blocks that have rows, in the layout's order
        self.slots_per_block = max(counts.values(), default=0)
        group_of_block = {block: group for group, block in enumerate(self.blocks)}
        device = self.score_bias.device
        slots = [group_of_block[block] * self.slots_per_block + rank for block, rank in slot_of_row]
        self.slot_of_row = torch.tensor(slots, dtype=torch.long, device=device)
        row_of_slot = [0] * (len(self.blocks) * self.slots_per_block)
        for row, slot in enumerate(slots):
            row_of_slot[slot] = row
        self.row_of_slot = torch.tensor(row_of_slot, dtype=torch.long, device=device)
        # Rows already in slot order, every slot filled (a parent's children, as the search starts):
        # grouping is then a reshape.
        self.in_slot_order = slots == list(range(len(row_of_slot)))
        every_block = len(self.blocks) == self.score_bias.shape[0]
        self.active = None if every_block else torch.tensor(self.blocks, dtype=torch.long, device=device)
        self.active_score_bias = self.score_bias if every_block else self.score_bias[self.active]

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values and score bias of the blocks that have rows, in the layout's order.

        A subset of the blocks is gathered for each call and freed after it: kept for the layout,
        it would hold a second copy of the level's KV for every layer.
        """
        keys, values = self.layers[layer]
        if self.active is None:
            return keys, values, self.score_bias
        return keys.index_select(0, self.active), values.index_select(0, self.active), self.active_score_bias

    def group(self, per_row: torch.Tensor) -> torch.Tensor:
        """(rows, kv_heads, group, queries, n) -> (blocks, kv_heads, slots x group x queries, n)."""
        _, kv_heads, group, queries, n = per_row.shape
        if not self.in_slot_order:
            per_row = per_row[self.row_of_slot]
        slots = per_row.view(len(self.blocks), self.slots_per_block, kv_heads, -1, n)
        return slots.transpose(1, 2).reshape(len(self.blocks), kv_heads, -1, n)

    def ungroup(self, grouped: torch.Tensor, group_queries: tuple[int, int]) -> torch.Tensor:
        """The inverse of `group`: (blocks, kv_heads, slots x group x queries, n) -> per row."""
        blocks, kv_heads, _, n = grouped.shape
        slots = grouped.view(blocks, kv_heads, self.slots_per_block, *group_queries, n)
        per_row = slots.transpose(1, 2).reshape(-1, kv_heads, *group_queries, n)
        return per_row if self.in_slot_order else per_row[self.slot_of_row]


class SharedPrefix:
    """The shared levels of the rows' context, outermost first (e.g. prompts, then parents' responses)."""

    def __init__(self, levels: Sequence[SharedBlocks]):
        self.levels = list(levels)

    def context_tokens(self, own_tokens: int) -> int:
        """The most tokens a row's context can hold: every level's widest block, then its own."""
        return sum(level.score_bias.shape[-1] for level in self.levels) + own_tokens

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        own_mask: torch.Tensor | None,
        scaling: float,
    ) -> torch.Tensor:
        """Attention output (rows, queries, heads, head_dim) over the shared levels + each row's own KV.

        `query` (rows, heads, queries, head_dim); `keys`/`values` the rows' own KV (rows, kv_heads,
        tokens, head_dim); `own_mask` True where a query may see a row's own token, (rows, 1,
        queries, tokens), or None for all.
        """
        rows, heads, queries, head_dim = query.shape
        kv_heads = keys.shape[1]
        # Query heads sharing a KV head (grouped-query attention) become more queries of that head.
        # Scaled before the matmuls: scaling the scores instead flipped a float32 near-tie against
        # the SDPA reference in the bench (those trees then matched in float64 only).
        query = query.view(rows, kv_heads, heads // kv_heads, queries, head_dim) * scaling
        group_queries = query.shape[2:4]
        # Scores are softmaxed in float32 at least, as eager attention does, whatever the model's dtype;
        # the parts' outputs are summed and normalised in it too, and rounded to the model's once.
        # Shared parts stay grouped by block; only per-query numbers (maximum, sum) change layout.
        score_dtype = torch.promote_types(query.dtype, torch.float32)
        shared = []  # per level: (its blocks, their values, the grouped scores)
        for level in self.levels:
            level_keys, level_values, score_bias = level.layer(layer)
            scores = (level.group(query) @ level_keys.transpose(-1, -2)).to(score_dtype) + score_bias
            shared.append((level, level_values, scores))
        own_scores = (query @ keys[:, :, None].transpose(-1, -2)).to(score_dtype)
        if own_mask is not None:
            own_scores = own_scores.masked_fill(~own_mask[:, :, None], -torch.inf)
        # Every row sees at least one token of its outermost block, so the maximum is finite.
        top = own_scores.amax(-1, keepdim=True)
        for level, _, scores in shared:
            top = torch.maximum(top, level.ungroup(scores.amax(-1, keepdim=True), group_queries))
        own_weights = (own_scores - top).exp()
        normaliser = own_weights.sum(-1, keepdim=True)
        output = (own_weights.to(values.dtype) @ values[:, :, None]).to(score_dtype)
        for level, level_values, scores in shared:
            weights = (scores - level.group(top)).exp()
            normaliser = normaliser + level.ungroup(weights.sum(-1, keepdim=True), group_queries)
            part = (weights.to(level_values.dtype) @ level_values).to(score_dtype)
            output = output + level.ungroup(part, group_queries)
        output = (output / normaliser).to(query.dtype)
        return output.reshape(rows, heads, queries, head_dim).transpose(1, 2).contiguous()


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
    # Options this attention does not implement: ignoring them would silently change the model. A
    # sliding window that holds every token of the longest context masks nothing.
    unsupported = [name for name in ("softcap", "s_aux") if kwargs.get(name) is not None]
    if unsupported:
        raise SelfAlignError(f"the {ATTENTION_NAME} attention does not support {', '.join(unsupported)}")
    window, context = kwargs.get("sliding_window"), shared_prefix.context_tokens(key.shape[2])
    if window is not None and window < context:
        raise SelfAlignError(
            f"the {ATTENTION_NAME} attention attends to whole contexts, and one of {context} tokens "
            f"outgrows the model's sliding window of {window}"
        )
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        raise SelfAlignError(
            f"the {ATTENTION_NAME} attention expects a boolean mask, got {attention_mask.dtype}"
        )
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    return shared_prefix.attend(module.layer_idx, query, key, value, attention_mask, scaling), None


AttentionInterface.register(ATTENTION_NAME, _shared_prefix_attention)
# The rows' own part's mask is built as for SDPA: boolean, True where a query may attend.
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
