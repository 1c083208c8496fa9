"""The batched expander: all live nodes of a batch of prompts expanded at once, on KV caches built
from reused pieces; `search_trees` is the search it drives (the rules: `rules.py`).

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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import BatchFeature, DynamicCache
from transformers.cache_utils import Cache

from selfalign.errors import SelfAlignError
from selfalign.samples.sampler import GenerationRequest
from selfalign.samples.transformers_backend import TransformersBackend, _next_tokens, _row_generator
from selfalign.samples.tree.diverse_greedy import diverse_greedy
from selfalign.samples.tree.preallocated_layer import PreallocatedLayer
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
from selfalign.samples.tree.shared_prefix_attention import (
    SharedBlocks,
    SharedPrefix,
    attention_over_shared_prefix,
)

# Inputs with one value per prompt token, cut with the prompt (the rest: pixels, grids, image sizes).
_PER_TOKEN_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")
# Rows whose sentence is done leave the decoding batch together once they are this share of it.
_DONE_SHARE_TO_DROP = 1 / 3

_LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (heads, tokens, head_dim)


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
    eos_token_ids = set(backend.eos_token_ids.tolist())
    trees = []
    for start in range(0, len(requests), backend.batch_size):
        batch = requests[start : start + backend.batch_size]
        expander = _SharedCacheExpander(backend, batch, params, stats)
        trees += grow_trees(batch, params, backend.tokenizer, eos_token_ids, expander.expand, stats)
    return trees


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
        self.sentence_end = SentenceEnd(backend.tokenizer, params.sentence_ends)
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

    def expand(self, parents: list[Parent]) -> list[list[Sentence]]:
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
        rows: list[tuple[Parent, int]],
        responses: SharedBlocks,
        positions: torch.Tensor,
        logits: torch.Tensor,
    ) -> list[Sentence]:
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
        budgets = [sentence_budget(parent, self.params) for parent, _ in rows]
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
            decoding_rows = [in_batch[position] for position in decoding]
            chosen, chosen_logprobs = self._choose(step_logits, decoding_rows, rows, generators)
            next_tokens[positions_decoding] = chosen
            still_decoding, ended = [], []
            for position, token, logprob in zip(
                decoding, chosen.tolist(), chosen_logprobs.tolist(), strict=True
            ):
                row = in_batch[position]
                tokens[row].append(token)
                logprobs[row].append(logprob)
                if sentence_done(tokens[row], budgets[row], self.eos_token_ids, self.sentence_end):
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
            Sentence(tuple(row_tokens), sum(row_logprobs))
            for row_tokens, row_logprobs in zip(tokens, logprobs, strict=True)
        ]

    def _choose(
        self,
        logits: torch.Tensor,
        decoding_rows: list[int],
        rows: list[tuple[Parent, int]],
        generators: list[torch.Generator],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of each decoding row (an index into `rows` and `generators`), and its log-prob."""
        if self.params.diversity_penalty:
            siblings = [rows[row][0].node_key for row in decoding_rows]
            return diverse_greedy(logits, siblings, self.params.diversity_penalty, self.never_sampled)
        return _next_tokens(
            logits,
            [generators[row] for row in decoding_rows],
            self.params.temperature,
            self.params.top_p,
            self.never_sampled,
        )

    def _store_segments(
        self,
        ended: list[tuple[int, int]],
        rows: list[tuple[Parent, int]],
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
            layers.append(PreallocatedLayer(prompt_keys.new_empty(shape), prompt_keys.new_empty(shape), 0))
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

    def _assemble(self, parents: list[Parent]) -> tuple[Cache, torch.Tensor]:
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
            layers.append(PreallocatedLayer(keys, values, width))
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
