"""Shared-prefix attention gives what SDPA gives over each row's whole context, copied into the row."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from selfalign.errors import SelfAlignError
from selfalign.samples.tree.shared_prefix_attention import ATTENTION_NAME, SharedBlocks, SharedPrefix

HEAD_DIM = 8


def normal(generator, *shape):
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def random_level(generator, blocks, kv_heads, width, padding):
    """Keys, values and mask of `blocks` blocks; block b is left-padded by padding[b] tokens."""
    keys, values = (
        normal(generator, blocks, kv_heads, width, HEAD_DIM),
        normal(generator, blocks, kv_heads, width, HEAD_DIM),
    )
    mask = torch.ones(blocks, width, dtype=torch.bool)
    for block, pad in enumerate(padding):
        mask[block, :pad] = False
    return keys, values, mask


def sdpa_over_whole_rows(query, levels, keys, values, own_mask):
    """The plain way: each row's own copy of its blocks' KV, then its own, in one SDPA call."""
    queries = query.shape[2]
    whole_keys = torch.cat([level_keys[rows] for level_keys, _, _, rows in levels] + [keys], dim=2)
    whole_values = torch.cat([level_values[rows] for _, level_values, _, rows in levels] + [values], dim=2)
    mask = torch.cat(
        [mask[rows][:, None, None, :].expand(-1, 1, queries, -1) for _, _, mask, rows in levels] + [own_mask],
        dim=-1,
    )
    group = query.shape[1] // keys.shape[1]
    whole_keys = whole_keys.repeat_interleave(group, 1)
    whole_values = whole_values.repeat_interleave(group, 1)
    return F.scaled_dot_product_attention(query, whole_keys, whole_values, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "queries", "prompt_of_row", "parent_of_row"),
    [
        (4, 4, 1, [0, 0, 0, 1, 1, 2], None),  # every prompt has rows, unevenly
        (4, 2, 1, [2, 2, 0, 2, 0], None),  # grouped-query heads; rows out of order; prompt 1 has none
        (2, 1, 3, [1, 1], None),  # several queries a row (causal within its own part)
        # Two levels, as the tree search has them: prompts, then the parents' responses.
        (4, 2, 1, [0, 0, 0, 0, 2, 2, 2], [0, 0, 1, 1, 3, 3, 3]),
        # Rows already in slot order at both levels (grouping is a reshape); prompt 2 has no rows.
        (4, 4, 1, [0, 0, 1, 1], [0, 1, 2, 3]),
    ],
)
def test_attention_matches_sdpa_over_each_rows_whole_context(
    heads, kv_heads, queries, prompt_of_row, parent_of_row
):
    generator = torch.Generator().manual_seed(0)
    rows, own_width = len(prompt_of_row), 5
    prompt_keys, prompt_values, prompt_mask = random_level(generator, 3, kv_heads, 7, (3, 0, 1))
    levels = [(prompt_keys, prompt_values, prompt_mask, torch.tensor(prompt_of_row))]
    if parent_of_row is not None:
        parent_keys, parent_values, parent_mask = random_level(generator, 4, kv_heads, 4, (0, 2, 3, 1))
        levels.append((parent_keys, parent_values, parent_mask, torch.tensor(parent_of_row)))
    keys, values = (
        normal(generator, rows, kv_heads, own_width, HEAD_DIM),
        normal(generator, rows, kv_heads, own_width, HEAD_DIM),
    )
    own_mask = torch.ones(rows, 1, queries, own_width, dtype=torch.bool).tril(own_width - queries)
    own_mask[0, ..., :2] = False  # a shorter row, left-padded
    query = normal(generator, rows, heads, queries, HEAD_DIM)

    shared = []
    for level_keys, level_values, mask, block_of_row in levels:
        other_layer = (normal(generator, *level_keys.shape),) * 2
        blocks = SharedBlocks([other_layer, (level_keys, level_values)], mask)
        blocks.use_rows(block_of_row.tolist())
        shared.append(blocks)
    output = SharedPrefix(shared).attend(1, query, keys, values, own_mask, HEAD_DIM**-0.5)

    assert output.shape == (rows, queries, heads, HEAD_DIM)
    torch.testing.assert_close(output, sdpa_over_whole_rows(query, levels, keys, values, own_mask))


def test_rows_can_be_rearranged_between_calls():
    generator = torch.Generator().manual_seed(1)
    prompt_keys, prompt_values = normal(generator, 2, 2, 4, HEAD_DIM), normal(generator, 2, 2, 4, HEAD_DIM)
    blocks = SharedBlocks([(prompt_keys, prompt_values)], torch.ones(2, 4, dtype=torch.bool))
    shared = SharedPrefix([blocks])
    query, keys, values = (normal(generator, 3, 2, 1, HEAD_DIM) for _ in range(3))

    blocks.use_rows([0, 1, 1])
    first = shared.attend(0, query, keys, values, None, 1.0)
    blocks.use_rows([1])  # the rows left after the first two are dropped
    kept = shared.attend(0, query[2:], keys[2:], values[2:], None, 1.0)

    torch.testing.assert_close(kept, first[2:])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"sliding_window": 4}, "sliding window of 4"),
        ({"softcap": 30.0}, "softcap"),
        ({"s_aux": torch.zeros(2)}, "s_aux"),
    ],
)
def test_attention_options_it_does_not_implement_are_refused(option, message):
    """A model asking for a soft cap, sinks, or a window that would hide part of a context would
    silently get other attention; a window that holds the whole context hides nothing."""
    generator = torch.Generator().manual_seed(2)
    blocks = SharedBlocks([(normal(generator, 1, 2, 4, HEAD_DIM),) * 2], torch.ones(1, 4, dtype=torch.bool))
    blocks.use_rows([0])
    query, keys, values = (normal(generator, 1, 2, 1, HEAD_DIM) for _ in range(3))
    module = torch.nn.Module()
    module.layer_idx = 0
    attention = AttentionInterface()[ATTENTION_NAME]
    call = {"shared_prefix": SharedPrefix([blocks]), "scaling": 1.0}
    expected, _ = attention(module, query, keys, values, None, **call, sliding_window=None)
    # The row's context: the block's 4 tokens and its own 1.
    within, _ = attention(module, query, keys, values, None, **call, sliding_window=5)
    torch.testing.assert_close(within, expected)
    with pytest.raises(SelfAlignError, match=message):
        attention(module, query, keys, values, None, **call, **option)
