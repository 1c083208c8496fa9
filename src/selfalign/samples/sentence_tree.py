"""CSR's sentence-level tree search: batched on reused KV caches, and a one-node-at-a-time reference.

The search. A tree per request (images + a 'describe the image' prompt) starts from the empty
response (the root, depth 0, score 0). Each depth expands every live node into `children` children,
each one more sentence: generation of a child stops at the end of a sentence, at EOS, or after
`max_sentence_tokens`. A child's score is its parent's plus the mean log-prob per token of its new
sentence (EOS included, under the model's own unwarped distribution: `Completion.logprob` semantics).
A node ends, and is not expanded, at EOS ("eos"), when its response reaches `max_total_tokens`
("length"), or at `max_depth` ("max_depth"); a sentence cut by `max_sentence_tokens` alone leaves
its node live. Ended nodes are complete responses and always kept. Among the new nodes of a prompt
that did not end (across all parents, not per parent), the `keep_top` best and the `keep_bottom`
worst by score are kept (the worst on purpose, as negatives); the others are pruned: they stay in
the tree with `kept=False` and are not expanded. This is the released code's rule: only unfinished
children compete for the places, so every ended node is a candidate response. A prompt's search
ends when none of its kept nodes is live.

Ties. New nodes that did not end are ranked by score, best first, ties broken by creation order (node id; children
are created parent by parent in node-id order, and child by child). Nodes with the same response
(same tokens from the root) get exactly the same score, the first one computed, so that which of
them is kept never depends on float noise between batch rows.

Sentence ends. A sentence ends at the first token after which its decoded text, trailing whitespace
removed, ends with one of `sentence_ends`. So "3.5" is cut after "3." (and "e.g." after "e."); we
ignore that for now: descriptions of images rarely hold such numbers, and telling a decimal point
from a full stop needs the next token, which the rule would then have to wait for.

Children: sampled, or diverse greedy. The released code draws a node's 5 children by diverse beam
search (`num_beams = num_beam_groups = 5`, `diversity_penalty` 3.0, the full stop as EOS).
transformers 5.23 removed group beam search from its core (`generate(num_beam_groups > 1)` now loads
the `transformers-community/group-beam-search` repository from the Hub with `trust_remote_code=True`,
offline here), so both ways are implemented here:

- sampling (the default): temperature and top-p; temperature 0 alone makes every child of a node
  the same greedy sentence (use children=1 then);
- diverse greedy (`diversity_penalty` > 0, temperature 0): group beam search with one beam per
  group, as the released settings have it. At each step, child j takes the token of highest
  log-prob minus `diversity_penalty` x the number of its earlier siblings (children 0..j-1 still
  writing their sentence) that took that token at this step: the Hamming diversity of group beam
  search. Two simplifications against `generate`'s beam search: a child that takes a sentence end
  stops there (beam search would keep that hypothesis aside, continue the beam with its next-best
  token and return whichever scores better per token), and a finished sibling no longer counts
  (there, every beam steps until all have finished). Self-scores are the children's own log-probs,
  not the penalised beam scores.

Determinism. Child j of the node reached from the root by child indices (i1, ..., id) draws from its
own CPU generator, `_row_generator(seed, i1, ..., id, j)`, one uniform number per token, exactly as
`TransformersBackend` draws a sample (`_next_tokens`). A tree therefore depends only on the model,
the request and the params: not on which prompts share a batch, the batch size, or which of the two
implementations built it, up to float noise in the logits as for the sampler: noise can flip a
token, or which of two nodes whose scores differ by less than it is kept. As in the sampler, the
image and video placeholder tokens are never sampled (`TransformersBackend.never_sampled`).

Cache reuse in `search_trees`. A batch of `backend.batch_size` prompts is encoded once: one forward
pass over the left-padded images + prompts, all but each prompt's last token, fills a KV cache (the
vision encoder runs once for the batch), which is kept as shared blocks: each prompt's KV held once,
for all the rows that continue it (`shared_prefix_attention.py`). Every node keeps the
KV of its own segment: its parent's last token (the prompt's last token for a child of the root)
followed by its own tokens but the last. The KV of a node's whole context is thus the prompt's plus
the segments along its path, and only its last token is still to be forwarded. Each depth then
does, for all live nodes of all prompts at once:

1. assemble a cache row per live node from its path's segments (its response so far), left-padded
   to the longest (attention mask 0 on the padding), and forward each node's pending last token:
   one token per node. Attention covers the node's prompt, from its shared block, and its row.
   Positions are passed explicitly and are logical, not column indices: a response's k-th token
   sits k after the prompt's last token, whose position comes from the prompt's (attention-mask
   count for llava; for Qwen, M-RoPE's from the model's own `get_rope_index`, text tokens after the
   image continuing from its compressed extent with three equal components). Padding never shifts
   them, and the reused keys, rotated at their own positions, stay valid wherever they sit;
2. decode `children` children per node token by token, one model call per step for all of them.
   The parents' rows, pending token included, become a second level of shared blocks: a child
   attends to its prompt's block, its parent's block and its own tokens, which only its cache holds
   (room for a sentence, written in place: no copy of a context per child or per step). A row that
   ends its sentence has its segment copied out (its parent's pending token and its own tokens); it
   leaves the batch together with the other done rows once they are a third of it, a compromise
   between copying the cache at every step and forwarding done rows;
3. score and prune; segments of pruned and ended nodes are dropped at the next depth.

The shared attention attends to whole contexts: a model with sliding-window attention
(Mistral-7B-v0.1 style) is searched only when its window holds the longest context (the batch's
prompt + `max_total_tokens`), and refused otherwise.

Memory: each prompt's KV once, each live node's response once, each decoding row's sentence, and
the segments of the depth's nodes; `batch_size` bounds them. (`generate(num_return_sequences=n)`,
like the reference, copies the whole context into every row: for LLaVA-1.5, 576 image tokens.)

Beyond the minimum (each distinct prompt token once, each generated token once), only the prompt
padding of the first forward pass and the steps of done rows still in the batch are processed (and
a sentence's last token is forwarded only if its node is expanded); `TreeSearchStats` counts it.
`search_trees_one_node_at_a_time` is the original's way, kept as the reference: for each prompt
and live node, one `generate` over images + prompt + the node's response, re-encoding the image and
the whole prefix for every node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import BatchFeature, DynamicCache, LogitsProcessor, StoppingCriteria
from transformers.cache_utils import Cache, DynamicLayer

from selfalign.errors import SelfAlignError
from selfalign.samples.sampler import GenerationRequest
from selfalign.samples.shared_prefix_attention import SharedBlocks, SharedPrefix, attention_over_shared_prefix
from selfalign.samples.transformers_backend import (
    TransformersBackend,
    _next_tokens,
    _row_generator,
    _RowSampler,
)

logger = logging.getLogger(__name__)

NodeFinishReason = Literal["eos", "length", "max_depth"]

# Inputs with one value per prompt token, cut with the prompt (the rest: pixels, grids, image sizes).
_PER_TOKEN_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")
# Rows whose sentence is done leave the decoding batch together once they are this share of it.
_DONE_SHARE_TO_DROP = 1 / 3


@dataclass(frozen=True)
class TreeSearchParams:
    children: int = 5  # children per expanded node
    keep_top: int = 1  # new nodes kept per prompt and depth, best scores
    keep_bottom: int = 2  # ... and worst scores
    max_depth: int = 16  # sentences per response
    max_sentence_tokens: int = 64
    max_total_tokens: int = 512  # tokens per response, all sentences
    temperature: float = 1.0  # 0 means greedy: every child of a node is then the same sentence...
    top_p: float = 1.0
    diversity_penalty: float = 0.0  # ... unless this is > 0: diverse greedy children (module docstring)
    sentence_ends: tuple[str, ...] = (".", "!", "?")

    def __post_init__(self) -> None:
        if self.children < 1:
            raise SelfAlignError(f"each node needs at least 1 child, got children={self.children}")
        if self.keep_top < 0 or self.keep_bottom < 0:
            raise SelfAlignError(
                f"keep_top and keep_bottom must not be negative, got {self.keep_top} and {self.keep_bottom}"
            )
        if self.keep_top + self.keep_bottom < 1:
            raise SelfAlignError("keep_top + keep_bottom must be at least 1, or no node survives a depth")
        if self.max_depth < 1:
            raise SelfAlignError(f"max_depth must be at least 1, got {self.max_depth}")
        if self.max_sentence_tokens < 1:
            raise SelfAlignError(f"max_sentence_tokens must be at least 1, got {self.max_sentence_tokens}")
        if self.max_total_tokens < 1:
            raise SelfAlignError(f"max_total_tokens must be at least 1, got {self.max_total_tokens}")
        if self.temperature < 0:
            raise SelfAlignError(f"temperature must be 0 (greedy) or positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SelfAlignError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.diversity_penalty < 0:
            raise SelfAlignError(f"diversity_penalty must not be negative, got {self.diversity_penalty}")
        if self.diversity_penalty > 0 and self.temperature != 0:
            raise SelfAlignError(
                "diverse children are decoded greedily: set temperature 0 with a diversity_penalty "
                f"(got temperature {self.temperature}), or diversity_penalty 0 to sample them"
            )
        # A sentence's text is matched with its trailing whitespace removed, so a blank end never would.
        if not self.sentence_ends or any(not end.strip() for end in self.sentence_ends):
            raise SelfAlignError(
                "sentence_ends must hold at least one string, none of them empty or only whitespace "
                f"(they are matched at the end of the text, trailing whitespace removed), got {self.sentence_ends!r}"
            )


@dataclass(frozen=True)
class TreeNode:
    node_id: int  # index in SentenceTree.nodes, in creation order
    parent_id: int | None  # None for the root
    depth: int  # sentences from the root
    branch: tuple[int, ...]  # child indices from the root: the node's identity, which seeds its children
    sentence: str  # the text this node adds to its parent's response (leading space included)
    token_ids: tuple[int, ...]  # the sentence's tokens, EOS included if it ended the response
    sentence_logprob: float  # sum of the tokens' log-probs under the model's unwarped distribution
    num_tokens: int
    score: float  # parent's score + sentence_logprob / num_tokens; 0 for the root
    finish_reason: NodeFinishReason | None  # None while the response goes on (inner or pruned node)
    kept: bool  # survived the pruning of its depth (the root always does)


@dataclass(frozen=True)
class SentenceTree:
    seed: int  # the request's
    nodes: tuple[TreeNode, ...]  # in creation order, the root first

    def path(self, node_id: int) -> tuple[TreeNode, ...]:
        """The nodes from the root to `node_id`."""
        path = [self.nodes[node_id]]
        while path[-1].parent_id is not None:
            path.append(self.nodes[path[-1].parent_id])
        return tuple(reversed(path))

    def text(self, node_id: int) -> str:
        """The response from the root to `node_id`: its sentences joined, i.e. its tokens decoded at once
        (unless the bytes of one character straddle two sentences, which only garbage text does)."""
        return "".join(node.sentence for node in self.path(node_id))

    def leaves(self) -> tuple[TreeNode, ...]:
        """The kept nodes that ended: the complete responses the search produced."""
        return tuple(node for node in self.nodes if node.kept and node.finish_reason is not None)


@dataclass
class TreeSearchStats:
    """What a search made the model do; accumulates over the calls it is passed to."""

    vision_encoder_calls: int = 0  # model calls that encoded images
    images_encoded: int = 0
    prompt_tokens: int = 0  # distinct prompt tokens (image placeholders included), once per prompt
    prompt_tokens_forwarded: int = 0  # prompt positions the model processed, padding and repeats included
    generated_tokens: int = 0  # tokens of all the sentences of all nodes
    generated_tokens_forwarded: int = 0  # generated positions the model processed, repeats included
    kv_cache_tokens_peak: int = 0  # most KV token slots held at once, in a layer (padding, room too)

    @property
    def forward_token_ratio(self) -> float:
        """Positions processed over the minimum: each distinct prompt token and each generated token once."""
        minimum = self.prompt_tokens + self.generated_tokens
        if not minimum:
            return math.nan  # nothing was searched
        return (self.prompt_tokens_forwarded + self.generated_tokens_forwarded) / minimum


@torch.inference_mode()
def search_trees(
    backend: TransformersBackend,
    requests: Sequence[GenerationRequest],
    params: TreeSearchParams,
    stats: TreeSearchStats | None = None,
) -> list[SentenceTree]:
    """One tree per request, in request order, batches of `backend.batch_size` prompts sharing each step."""
    stats = TreeSearchStats() if stats is None else stats
    requests = list(requests)
    trees = []
    for start in range(0, len(requests), backend.batch_size):
        batch = requests[start : start + backend.batch_size]
        expander = _SharedCacheExpander(backend, batch, params, stats)
        trees += _grow_trees(backend, batch, params, expander.expand, stats)
    return trees


@torch.inference_mode()
def search_trees_one_node_at_a_time(
    backend: TransformersBackend,
    requests: Sequence[GenerationRequest],
    params: TreeSearchParams,
    stats: TreeSearchStats | None = None,
) -> list[SentenceTree]:
    """The same trees as `search_trees`, the original's way: one `generate` per prompt and live node."""
    stats = TreeSearchStats() if stats is None else stats
    trees = []
    for request in requests:
        expander = _OneNodeExpander(backend, request, params, stats)
        trees += _grow_trees(backend, [request], params, expander.expand, stats)
    return trees


@dataclass(frozen=True)
class _Parent:
    """A live node to expand, as the expanders see it."""

    prompt_index: int  # in the expander's requests
    node_id: int
    branch: tuple[int, ...]
    response_ids: tuple[int, ...]  # the tokens from the root to this node

    @property
    def node_key(self) -> tuple[int, int]:
        """The node among all prompts of an expander."""
        return (self.prompt_index, self.node_id)


@dataclass(frozen=True)
class _Sentence:
    token_ids: tuple[int, ...]
    logprob: float


def _sentence_budget(parent: _Parent, params: TreeSearchParams) -> int:
    return min(params.max_sentence_tokens, params.max_total_tokens - len(parent.response_ids))


class _SentenceEnd:
    """Whether a sentence's tokens so far end it (see the module docstring)."""

    def __init__(self, tokenizer, sentence_ends: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.sentence_ends = sentence_ends
        self._last_token_text: dict[int, str] = {}  # token id -> its text decoded alone, rstripped

    def __call__(self, token_ids: Sequence[int]) -> bool:
        # A token whose text alone is whole characters and not all whitespace ends the decoded text
        # with that text, so its own text decides; decoding every row's sentence at every step
        # costs more than the model's step. Otherwise (whitespace, special tokens, bytes of a
        # split character) the decoded sentence decides.
        last = token_ids[-1]
        if last not in self._last_token_text:
            self._last_token_text[last] = self.tokenizer.decode([last], skip_special_tokens=True).rstrip()
        text = self._last_token_text[last]
        if not text or "\ufffd" in text:
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True).rstrip()
        return text.endswith(self.sentence_ends)


def _sentence_done(
    tokens: Sequence[int], budget: int, eos_token_ids: set[int], sentence_end: _SentenceEnd
) -> bool:
    """Whether a child's sentence is over: at EOS, at its token budget, or at a sentence end."""
    return tokens[-1] in eos_token_ids or len(tokens) == budget or sentence_end(tokens)


def _diverse_greedy(
    scores: torch.Tensor, siblings: Sequence[Hashable], penalty: float, never_sampled: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's next token for diverse greedy children (module docstring), with its log-prob.

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


class _DiverseChildren(LogitsProcessor):
    """`_diverse_greedy` for `generate` over one node's children (its rows, in child order): chooses
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
        chosen, logprobs = _diverse_greedy(
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
    """`_SentenceEnd` for `generate`: per row, on the tokens after `prompt_length`."""

    def __init__(self, sentence_end: _SentenceEnd, prompt_length: int):
        self.sentence_end = sentence_end
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        ends = [self.sentence_end(row[self.prompt_length :].tolist()) for row in input_ids]
        return torch.tensor(ends, dtype=torch.bool, device=input_ids.device)


class _TreeBuilder:
    """One prompt's tree as it grows: creates a depth's children, scores them and prunes them."""

    def __init__(self, seed: int, params: TreeSearchParams, backend: TransformersBackend):
        self.seed = seed
        self.params = params
        self.tokenizer = backend.tokenizer
        self.eos_token_ids = set(backend.eos_token_ids.tolist())
        root = TreeNode(0, None, 0, (), "", (), 0.0, 0, 0.0, None, True)
        self.nodes = [root]
        self.response_ids: list[tuple[int, ...]] = [()]  # per node
        self.response_texts = [""]  # per node: its response decoded at once
        self.live = [0]  # kept nodes of the last depth that did not end

    def parents(self, prompt_index: int) -> list[_Parent]:
        return [
            _Parent(prompt_index, node_id, self.nodes[node_id].branch, self.response_ids[node_id])
            for node_id in self.live
        ]

    def grow(self, expanded: Sequence[tuple[_Parent, Sequence[_Sentence]]]) -> None:
        first_id = len(self.nodes)
        drafts = []
        score_of_response: dict[tuple[int, ...], float] = {}
        for parent, sentences in expanded:
            parent_node = self.nodes[parent.node_id]
            for child_index, sentence in enumerate(sentences):
                response_ids = parent.response_ids + sentence.token_ids
                mean_logprob = sentence.logprob / len(sentence.token_ids)
                score = score_of_response.setdefault(response_ids, parent_node.score + mean_logprob)
                depth = parent_node.depth + 1
                finish_reason = self._finish_reason(sentence.token_ids, len(response_ids), depth)
                drafts.append((parent_node, child_index, sentence, response_ids, score, finish_reason))
        ended = {index for index, draft in enumerate(drafts) if draft[5] is not None}
        ranked = sorted(set(range(len(drafts))) - ended, key=lambda index: (-drafts[index][4], index))
        kept = ended | set(ranked[: self.params.keep_top])
        kept |= set(ranked[max(0, len(ranked) - self.params.keep_bottom) :])
        self.live = []
        for index, (parent_node, child_index, sentence, response_ids, score, finish_reason) in enumerate(
            drafts
        ):
            node_id = first_id + index
            depth = parent_node.depth + 1
            text = self.tokenizer.decode(response_ids, skip_special_tokens=True)
            node = TreeNode(
                node_id=node_id,
                parent_id=parent_node.node_id,
                depth=depth,
                branch=parent_node.branch + (child_index,),
                sentence=self._sentence_text(text, self.response_texts[parent_node.node_id], sentence),
                token_ids=sentence.token_ids,
                sentence_logprob=sentence.logprob,
                num_tokens=len(sentence.token_ids),
                score=score,
                finish_reason=finish_reason,
                kept=index in kept,
            )
            self.nodes.append(node)
            self.response_ids.append(response_ids)
            self.response_texts.append(text)
            if node.kept and node.finish_reason is None:
                self.live.append(node_id)

    def _sentence_text(self, text: str, parent_text: str, sentence: _Sentence) -> str:
        # Decoding the whole response keeps the space before a sentence (SentencePiece drops it at the
        # start); a character whose bytes two sentences split has no such prefix, then decode alone.
        if text.startswith(parent_text):
            return text[len(parent_text) :]
        return self.tokenizer.decode(sentence.token_ids, skip_special_tokens=True)

    def _finish_reason(
        self, token_ids: tuple[int, ...], response_length: int, depth: int
    ) -> NodeFinishReason | None:
        if token_ids[-1] in self.eos_token_ids:
            return "eos"
        if response_length >= self.params.max_total_tokens:
            return "length"
        if depth >= self.params.max_depth:
            return "max_depth"
        return None

    def tree(self) -> SentenceTree:
        return SentenceTree(seed=self.seed, nodes=tuple(self.nodes))


def _grow_trees(
    backend: TransformersBackend,
    requests: Sequence[GenerationRequest],
    params: TreeSearchParams,
    expand: Callable[[list[_Parent]], list[list[_Sentence]]],
    stats: TreeSearchStats,
) -> list[SentenceTree]:
    """The search loop both implementations share; `expand` gives every parent its children's sentences."""
    builders = [_TreeBuilder(request.seed, params, backend) for request in requests]
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


_LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (heads, tokens, head_dim)


class _PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with room for more tokens.

    `DynamicLayer` concatenates every step's token onto the whole cache, copying it; here a step
    writes its token into the room, which the expander sizes for every token it will write.
    """

    def __init__(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int):
        """Buffers (rows, kv_heads, slots, head_dim) whose first `length` slots are written."""
        super().__init__()
        self.lazy_initialization(key_buffer, value_buffer)
        self._use(key_buffer, value_buffer, length)

    def _use(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int) -> None:
        self.key_buffer, self.value_buffer, self.length = key_buffer, value_buffer, length
        self.keys, self.values = key_buffer[..., :length, :], value_buffer[..., :length, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise SelfAlignError(
                f"a cache buffer of {self.key_buffer.shape[-2]} slots cannot hold {end} tokens"
            )
        self.key_buffer[..., self.length : end, :] = key_states
        self.value_buffer[..., self.length : end, :] = value_states
        self._use(self.key_buffer, self.value_buffer, end)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._use(
            self.key_buffer.index_select(0, indices), self.value_buffer.index_select(0, indices), self.length
        )


class _SharedCacheExpander:
    """Expands the live nodes of a batch of prompts on KV caches built from reused pieces (module docstring)."""

    def __init__(
        self,
        backend: TransformersBackend,
        requests: Sequence[GenerationRequest],
        params: TreeSearchParams,
        stats: TreeSearchStats,
    ):
        self.model = backend.model
        self.params = params
        self.stats = stats
        self.seeds = [request.seed for request in requests]
        self.eos_token_ids = set(backend.eos_token_ids.tolist())
        self.sentence_end = _SentenceEnd(backend.tokenizer, params.sentence_ends)
        self.never_sampled = backend.never_sampled
        self.prompts: SharedBlocks  # each prompt's KV, all its tokens but the last
        self.prompt_last_token: list[int] = []
        self.prompt_last_position: list[int] = []
        self.segments: dict[tuple[int, tuple[int, ...]], _LayerKV] = {}  # (prompt index, branch) -> KV
        self._encode_prompts(backend._encode(requests), requests)

    def _encode_prompts(self, inputs: BatchFeature, requests: Sequence[GenerationRequest]) -> None:
        cache = DynamicCache(config=self.model.config)
        if any(cache.is_sliding):
            self._check_window(inputs["input_ids"].shape[1])
        # The last token of each prompt (a text token: left padding puts it in the last column) is the
        # root's pending token, forwarded with the first depth.
        prefix = {name: inputs[name][:, :-1] for name in _PER_TOKEN_INPUTS if name in inputs}
        positions = self._prompt_positions({**inputs, **prefix})
        self.model(
            **{**inputs, **prefix},
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.prompts = SharedBlocks(
            [(layer.keys, layer.values) for layer in cache.layers], prefix["attention_mask"].bool()
        )
        for row in range(len(requests)):
            self.prompt_last_token.append(int(inputs["input_ids"][row, -1]))
            self.prompt_last_position.append(int(positions[..., row, -1].max()) + 1)
        self.stats.vision_encoder_calls += 1
        self.stats.images_encoded += sum(len(request.images) for request in requests)
        self.stats.prompt_tokens += int(inputs["attention_mask"].sum())
        self.stats.prompt_tokens_forwarded += prefix["input_ids"].numel()

    def _check_window(self, prompt_tokens: int) -> None:
        """Sliding-window attention is exact here only if no context outgrows the window: the shared
        attention attends to whole contexts, and reused pieces move between cache columns."""
        window = self.model.config.get_text_config().sliding_window
        longest = prompt_tokens + self.params.max_total_tokens
        if window is None or window < longest:
            raise SelfAlignError(
                f"this model attends to the last {window} tokens only, and a context of this batch can "
                f"reach {longest} ({prompt_tokens} prompt tokens + max_total_tokens "
                f"{self.params.max_total_tokens}): the batched tree search needs whole contexts in the "
                "window; lower max_total_tokens or use smaller images"
            )

    def _prompt_positions(self, inputs: dict) -> torch.Tensor:
        """Positions of the left-padded prompt tokens: (prompts, tokens), or (3, prompts, tokens) for M-RoPE."""
        attention_mask = inputs["attention_mask"]
        if hasattr(self.model.model, "get_rope_index"):  # Qwen2-VL family: image tokens get 3-D positions
            positions, _ = self.model.model.get_rope_index(
                inputs["input_ids"],
                mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=inputs.get("image_grid_thw"),
                attention_mask=attention_mask,
            )
            return positions
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def expand(self, parents: list[_Parent]) -> list[list[_Sentence]]:
        on_paths = {
            (p.prompt_index, p.branch[:depth]) for p in parents for depth in range(1, len(p.branch) + 1)
        }
        self.segments = {key: kv for key, kv in self.segments.items() if key in on_paths}
        cache, attention_mask = self._assemble(parents)
        pending = [
            p.response_ids[-1] if p.response_ids else self.prompt_last_token[p.prompt_index] for p in parents
        ]
        positions = torch.tensor(
            [self.prompt_last_position[p.prompt_index] + len(p.response_ids) for p in parents],
            device=self.model.device,
        )
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(parents), 1)], dim=1)
        self.prompts.use_rows([p.prompt_index for p in parents])
        logits = self._forward(
            torch.tensor(pending, device=self.model.device),
            attention_mask,
            positions,
            cache,
            SharedPrefix([self.prompts]),
        )
        roots = sum(1 for p in parents if not p.response_ids)
        self.stats.prompt_tokens_forwarded += roots
        self.stats.generated_tokens_forwarded += len(parents) - roots

        # Each parent's response, its pending token now included, is read by its children in place.
        responses = SharedBlocks(
            [(layer.keys, layer.values) for layer in cache.layers], attention_mask.bool()
        )
        children = self.params.children
        sentences = self._decode(
            [(parent, j) for parent in parents for j in range(children)],
            responses,
            positions.repeat_interleave(children),
            logits.repeat_interleave(children, dim=0),
        )
        return [sentences[start : start + children] for start in range(0, len(sentences), children)]

    def _decode(
        self,
        rows: list[tuple[_Parent, int]],
        responses: SharedBlocks,
        positions: torch.Tensor,
        logits: torch.Tensor,
    ) -> list[_Sentence]:
        """Each row's sentence (row: a parent and a child index, `children` rows a parent), all rows
        stepping together.

        A row attends to its prompt and its parent's response (`self.prompts`, `responses`: held
        once) and to its own tokens, which its cache holds. A row whose sentence ended stores its
        segment (its parent's pending token and its own tokens) and is done. It stays in the batch,
        forwarded for nothing, until a third of the batch is done: then the done rows leave at once.
        `positions` are those of the tokens last forwarded.
        """
        generators = [
            _row_generator(self.seeds[parent.prompt_index], *parent.branch, j) for parent, j in rows
        ]
        budgets = [_sentence_budget(parent, self.params) for parent, _ in rows]
        tokens: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        in_batch = list(range(len(rows)))  # the row at each batch position
        decoding = list(range(len(rows)))  # the batch positions of the rows still decoding
        shared = SharedPrefix([self.prompts, responses])

        def use_rows() -> None:
            self.prompts.use_rows([rows[row][0].prompt_index for row in in_batch])
            responses.use_rows([row // self.params.children for row in in_batch])

        use_rows()
        cache = self._sentence_cache(len(rows), max(budgets))
        self._count_cache(cache, responses)
        next_tokens = torch.zeros(len(rows), dtype=torch.long, device=self.model.device)
        while True:
            positions_decoding = torch.tensor(decoding, device=self.model.device)
            step_logits = logits if len(decoding) == len(in_batch) else logits[positions_decoding]
            if self.params.diversity_penalty:
                siblings = [rows[in_batch[position]][0].node_key for position in decoding]
                chosen, chosen_logprobs = _diverse_greedy(
                    step_logits, siblings, self.params.diversity_penalty, self.never_sampled
                )
            else:
                chosen, chosen_logprobs = _next_tokens(
                    step_logits,
                    [generators[in_batch[position]] for position in decoding],
                    self.params.temperature,
                    self.params.top_p,
                    self.never_sampled,
                )
            next_tokens[positions_decoding] = chosen
            still_decoding, ended = [], []
            for position, token, logprob in zip(
                decoding, chosen.tolist(), chosen_logprobs.tolist(), strict=True
            ):
                row = in_batch[position]
                tokens[row].append(token)
                logprobs[row].append(logprob)
                if _sentence_done(tokens[row], budgets[row], self.eos_token_ids, self.sentence_end):
                    ended.append(position)
                else:
                    still_decoding.append(position)
            if ended:
                self._store_segments(
                    [(in_batch[position], position) for position in ended], rows, tokens, responses, cache
                )
            if not still_decoding:
                break
            if len(in_batch) - len(still_decoding) >= _DONE_SHARE_TO_DROP * len(in_batch):
                self._count_cache(cache, responses)
                selected = torch.tensor(still_decoding, device=self.model.device)
                cache.batch_select_indices(selected)
                positions, next_tokens = positions[selected], next_tokens[selected]
                in_batch = [in_batch[position] for position in still_decoding]
                use_rows()
                still_decoding = list(range(len(in_batch)))
            decoding = still_decoding
            positions = positions + 1
            logits = self._forward(next_tokens, None, positions, cache, shared)
            self.stats.generated_tokens_forwarded += len(in_batch)
        self._count_cache(cache, responses)
        return [
            _Sentence(tuple(row_tokens), sum(row_logprobs))
            for row_tokens, row_logprobs in zip(tokens, logprobs, strict=True)
        ]

    def _store_segments(
        self,
        ended: list[tuple[int, int]],
        rows: list[tuple[_Parent, int]],
        tokens: list[list[int]],
        responses: SharedBlocks,
        cache: Cache,
    ) -> None:
        """Keep the segment of each row whose sentence just ended (row, batch position): its parent's
        pending token, then its own tokens but the last, which fill its cache's first columns (every
        row is forwarded from the first step). Gathered for all of them at once, then cut per row."""
        children = self.params.children
        device = self.model.device
        parents = torch.tensor([row // children for row, _ in ended], device=device)
        positions = torch.tensor([position for _, position in ended], device=device)
        gathered = [
            tuple(
                torch.cat(
                    [
                        parent_states[:, :, -1:].index_select(0, parents),
                        own_states.index_select(0, positions),
                    ],
                    dim=2,
                )
                for parent_states, own_states in ((parent_keys, layer.keys), (parent_values, layer.values))
            )
            for (parent_keys, parent_values), layer in zip(responses.layers, cache.layers, strict=True)
        ]
        for index, (row, _) in enumerate(ended):
            parent, j = rows[row]
            length = len(tokens[row])  # the pending token and the row's tokens but the last
            self.segments[(parent.prompt_index, parent.branch + (j,))] = [
                (keys[index, :, :length], values[index, :, :length]) for keys, values in gathered
            ]

    def _sentence_cache(self, rows: int, tokens: int) -> Cache:
        """An empty cache with room for `tokens` tokens per row: the steps of the longest sentence
        budget (a sentence's tokens but the last are forwarded, every row at every step)."""
        layers = []
        for prompt_keys, _ in self.prompts.layers:
            _, kv_heads, _, head_dim = prompt_keys.shape
            shape = (rows, kv_heads, tokens, head_dim)
            layers.append(_PreallocatedLayer(prompt_keys.new_empty(shape), prompt_keys.new_empty(shape), 0))
        return Cache(layers=layers)

    def _count_cache(self, cache: Cache, responses: SharedBlocks) -> None:
        """Update the peak of KV slots held: prompts, parents' responses, rows' sentences, segments."""
        rows, _, slots, _ = cache.layers[0].key_buffer.shape
        held = (
            self.prompts.num_tokens
            + responses.num_tokens
            + rows * slots
            + sum(segment[0][0].shape[1] for segment in self.segments.values())
        )
        self.stats.kv_cache_tokens_peak = max(self.stats.kv_cache_tokens_peak, held)

    def _assemble(self, parents: list[_Parent]) -> tuple[Cache, torch.Tensor]:
        """A cache row per parent (its path's segments: its response so far), left-padded; and its mask.

        Each row's buffer has room for the pending token, which the next forward pass writes.
        """
        paths = [
            [self.segments[(p.prompt_index, p.branch[:depth])] for depth in range(1, len(p.branch) + 1)]
            for p in parents
        ]
        lengths = [sum(segment[0][0].shape[1] for segment in path) for path in paths]
        width = max(lengths)
        layers = []
        for layer, (prompt_keys, _) in enumerate(self.prompts.layers):
            _, kv_heads, _, head_dim = prompt_keys.shape
            keys = prompt_keys.new_zeros(len(parents), kv_heads, width + 1, head_dim)
            values = torch.zeros_like(keys)
            for row, (path, length) in enumerate(zip(paths, lengths, strict=True)):
                column = width - length
                for segment in path:
                    segment_keys, segment_values = segment[layer]
                    end = column + segment_keys.shape[1]
                    keys[row, :, column:end], values[row, :, column:end] = segment_keys, segment_values
                    column = end
            layers.append(_PreallocatedLayer(keys, values, width))
        attention_mask = torch.zeros(len(parents), width, dtype=torch.long, device=self.model.device)
        for row, length in enumerate(lengths):
            attention_mask[row, width - length :] = 1
        return Cache(layers=layers), attention_mask

    def _forward(
        self,
        token_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        positions: torch.Tensor,
        cache: Cache,
        shared_prefix: SharedPrefix,
    ) -> torch.Tensor:
        """The next-token logits (float32, as `generate` gives them) after one more token per row.

        The cache and the mask (None: no padding) cover each row's own tokens; the rest of its
        context is `shared_prefix`'s.
        """
        with attention_over_shared_prefix(self.model):
            output = self.model(
                input_ids=token_ids[:, None],
                attention_mask=attention_mask,
                position_ids=positions[:, None],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                shared_prefix=shared_prefix,
            )
        return output.logits[:, -1].float()


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
        self.sentence_end = _SentenceEnd(backend.tokenizer, params.sentence_ends)
        self.never_sampled = backend.never_sampled

    def expand(self, parents: list[_Parent]) -> list[list[_Sentence]]:
        return [self._expand(parent) for parent in parents]

    def _expand(self, parent: _Parent) -> list[_Sentence]:
        inputs = self.backend._encode([self.request])
        prompt_length = inputs["input_ids"].shape[1]
        if not parent.response_ids:
            self.stats.prompt_tokens += prompt_length
        inputs = _with_response(inputs, parent.response_ids)
        children = self.params.children
        budget = _sentence_budget(parent, self.params)
        if self.params.diversity_penalty:
            eos_token_ids = set(self.backend.eos_token_ids.tolist())
            sampler = _DiverseChildren(
                self.params.diversity_penalty,
                self.never_sampled,
                lambda tokens: _sentence_done(tokens, budget, eos_token_ids, self.sentence_end),
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
            _Sentence(tuple(generated[row, :length].tolist()), float(logprobs[row, :length].sum()))
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
