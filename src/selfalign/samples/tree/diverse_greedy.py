"""Diverse greedy children's next tokens (the rule is in `rules.py`'s docstring), for the expanders
that choose tokens from torch logits."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch


def diverse_greedy(
    scores: torch.Tensor, siblings: Sequence[Hashable], penalty: float, never_sampled: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's next token for diverse greedy children, with its log-prob.

    Rows are children in child order; `siblings[row]` names the row's parent. A row's token is the
    argmax of its log-probs minus `penalty` x how many earlier rows of the same parent took each
    token at this step.
    """
    log_probs = scores.log_softmax(dim=-1)
    allowed = log_probs
    if never_sampled:
        banned = torch.tensor(never_sampled, dtype=torch.long, device=scores.device)
        allowed = log_probs.index_fill(1, banned, -math.inf)
    parents = {parent: index for index, parent in enumerate(dict.fromkeys(siblings))}
    parent_of_row = torch.tensor([parents[parent] for parent in siblings], device=scores.device)
    earlier: dict[Hashable, int] = {}
    turns = []  # per row: how many earlier rows of its parent choose before it
    for parent in siblings:
        turns.append(earlier.get(parent, 0))
        earlier[parent] = turns[-1] + 1
    turn_of_row = torch.tensor(turns, device=scores.device)
    taken = torch.zeros(len(parents), scores.shape[-1], dtype=scores.dtype, device=scores.device)
    chosen = torch.empty(len(siblings), dtype=torch.long, device=scores.device)
    for turn in range(max(turns, default=-1) + 1):
        rows = (turn_of_row == turn).nonzero().squeeze(1)
        tokens = (allowed[rows] - penalty * taken[parent_of_row[rows]]).argmax(dim=-1)
        chosen[rows] = tokens
        taken.index_put_(
            (parent_of_row[rows], tokens), torch.ones_like(tokens, dtype=scores.dtype), accumulate=True
        )
    return chosen, log_probs.gather(1, chosen[:, None]).squeeze(1)
