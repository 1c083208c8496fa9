"""The tree search's rules and data, written once for every expander: what a node is, how its children
are scored, which of them end and which are kept. Nothing here runs a model.

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
the request and the params: not on which prompts share a batch, the batch size, or which expander
built it, up to float noise in the logits as for the sampler: noise can flip a token, or which of
two nodes whose scores differ by less than it is kept. As in the sampler, the image and video
placeholder tokens are never sampled (`TransformersBackend.never_sampled`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from selfalign.errors import SelfAlignError

NodeFinishReason = Literal["eos", "length", "max_depth"]


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


@dataclass(frozen=True)
class Parent:
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
class Sentence:
    """A child's new sentence, as an expander returns it."""

    token_ids: tuple[int, ...]
    logprob: float


def sentence_budget(parent: Parent, params: TreeSearchParams) -> int:
    """The most tokens a child of `parent` may write: a sentence's cap, or what its response has left."""
    return min(params.max_sentence_tokens, params.max_total_tokens - len(parent.response_ids))


class SentenceEnd:
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


def sentence_done(
    tokens: Sequence[int], budget: int, eos_token_ids: set[int], sentence_end: SentenceEnd
) -> bool:
    """Whether a child's sentence is over: at EOS, at its token budget, or at a sentence end."""
    return tokens[-1] in eos_token_ids or len(tokens) == budget or sentence_end(tokens)


class TreeBuilder:
    """One prompt's tree as it grows: creates a depth's children, scores them and prunes them."""

    def __init__(self, seed: int, params: TreeSearchParams, tokenizer, eos_token_ids: set[int]):
        self.seed = seed
        self.params = params
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        root = TreeNode(0, None, 0, (), "", (), 0.0, 0, 0.0, None, True)
        self.nodes = [root]
        self.response_ids: list[tuple[int, ...]] = [()]  # per node
        self.response_texts = [""]  # per node: its response decoded at once
        self.live = [0]  # kept nodes of the last depth that did not end

    def parents(self, prompt_index: int) -> list[Parent]:
        return [
            Parent(prompt_index, node_id, self.nodes[node_id].branch, self.response_ids[node_id])
            for node_id in self.live
        ]

    def grow(self, expanded: Sequence[tuple[Parent, Sequence[Sentence]]]) -> None:
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

    def _sentence_text(self, text: str, parent_text: str, sentence: Sentence) -> str:
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
