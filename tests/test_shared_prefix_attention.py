"""Shared-prefix attention gives what SDPA gives over each row's prompt followed by its response."""

import pytest
import torch
import torch.nn.functional as F

from selfalign.samples.shared_prefix_attention import SharedPrefix

HEAD_DIM = 8


def sdpa_over_whole_rows(
    query, prompt_keys, prompt_values, prompt_mask, keys, values, response_mask, prompt_of_row
):
    """The plain way: each row's own copy of its prompt's KV, then its response's, in one SDPA call."""
    whole_keys = torch.cat([prompt_keys[prompt_of_row], keys], dim=2)
    whole_values = torch.cat([prompt_values[prompt_of_row], values], dim=2)
    mask = torch.cat(
        [prompt_mask[prompt_of_row][:, None, None, :].expand(-1, 1, query.shape[2], -1), response_mask],
        dim=-1,
    )
    group = query.shape[1] // keys.shape[1]
    whole_keys, whole_values = (
        whole_keys.repeat_interleave(group, 1),
        whole_values.repeat_interleave(group, 1),
    )
    return F.scaled_dot_product_attention(query, whole_keys, whole_values, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "queries", "prompt_of_row"),
    [
        (4, 4, 1, [0, 0, 0, 1, 1, 2]),  # every prompt has rows, unevenly
        (4, 2, 1, [2, 2, 0, 2, 0]),  # grouped-query heads; rows out of prompt order; prompt 1 has none
        (2, 1, 3, [1, 1]),  # several queries a row (causal within the response), one prompt only
    ],
)
def test_attention_matches_sdpa_over_each_rows_whole_context(heads, kv_heads, queries, prompt_of_row):
    generator = torch.Generator().manual_seed(0)
    prompts, prompt_width, response_width, rows = 3, 7, 5, len(prompt_of_row)

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    prompt_keys, prompt_values = (
        normal(prompts, kv_heads, prompt_width, HEAD_DIM),
        normal(prompts, kv_heads, prompt_width, HEAD_DIM),
    )
    prompt_mask = torch.ones(prompts, prompt_width, dtype=torch.bool)
    prompt_mask[0, :3] = prompt_mask[2, :1] = False  # left padding: prompts of different lengths
    keys, values = (
        normal(rows, kv_heads, response_width, HEAD_DIM),
        normal(rows, kv_heads, response_width, HEAD_DIM),
    )
    response_mask = torch.ones(rows, 1, queries, response_width, dtype=torch.bool).tril(
        response_width - queries
    )
    response_mask[0, ..., :2] = False  # a shorter response, left-padded
    query = normal(rows, heads, queries, HEAD_DIM)

    shared = SharedPrefix(
        [(normal(prompts, kv_heads, prompt_width, HEAD_DIM),) * 2, (prompt_keys, prompt_values)], prompt_mask
    )
    shared.use_rows(prompt_of_row)
    output = shared.attend(1, query, keys, values, response_mask, HEAD_DIM**-0.5)

    expected = sdpa_over_whole_rows(
        query,
        prompt_keys,
        prompt_values,
        prompt_mask,
        keys,
        values,
        response_mask,
        torch.tensor(prompt_of_row),
    )
    assert output.shape == (rows, queries, heads, HEAD_DIM)
    torch.testing.assert_close(output, expected)


def test_rows_can_be_rearranged_between_calls():
    generator = torch.Generator().manual_seed(1)
    prompt_keys = torch.randn(2, 2, 4, HEAD_DIM, generator=generator)
    prompt_values = torch.randn(2, 2, 4, HEAD_DIM, generator=generator)
    shared = SharedPrefix([(prompt_keys, prompt_values)], torch.ones(2, 4, dtype=torch.bool))
    query, keys, values = (torch.randn(3, 2, 1, HEAD_DIM, generator=generator) for _ in range(3))

    shared.use_rows([0, 1, 1])
    first = shared.attend(0, query, keys, values, None, 1.0)
    shared.use_rows([1])  # the rows left after the first two are dropped
    kept = shared.attend(0, query[2:], keys[2:], values[2:], None, 1.0)

    torch.testing.assert_close(kept, first[2:])
