"""CSR's sentence tree on the tiny models: the batched search builds the reference's tree from far less work.

Tiny random models write garbage without full stops, so sentences here end at "e", which ends about
one token in eight: trees reach depth 2 and more within a few tokens per sentence.
"""

import json
import math
import shutil

import pytest
import torch
from transformers import DynamicCache

from selfalign.errors import SelfAlignError
from selfalign.samples import (
    GenerationRequest,
    SentenceTree,
    TransformersBackend,
    TreeSearchParams,
    TreeSearchStats,
    search_trees,
    search_trees_one_node_at_a_time,
)
from selfalign.tiny_zoo.data import draw_shape

# Prompts of different lengths and images of different sizes, so that the prompts of a batch are
# padded and (for Qwen) hold different numbers of image tokens.
PROMPTS = (
    "Describe the image.",
    "Describe the image in detail. Please look carefully and mention only what is visible.",
    "What is in the image?",
    "Tell me about the picture, every shape and colour of it.",
    "Describe it.",
)
IMAGE_SIZES = ((48, 48), (80, 40), (40, 72), (64, 64), (32, 56))
PARAMS = TreeSearchParams(
    children=3, max_depth=3, max_sentence_tokens=8, max_total_tokens=20, sentence_ends=("e",)
)


def make_requests(count: int, first_seed: int = 100) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            images=(draw_shape(("red", "blue", "green")[i % 3], "square", IMAGE_SIZES[i % 5]),),
            messages=(
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[i % 5]}]},
            ),
            seed=first_seed + i,
        )
        for i in range(count)
    ]


def structure(tree: SentenceTree) -> list[tuple]:
    """What must be identical between two searches (scores may differ in the last bits)."""
    return [
        (n.node_id, n.parent_id, n.depth, n.branch, n.sentence, n.token_ids, n.finish_reason, n.kept)
        for n in tree.nodes
    ]


def assert_same_trees(trees, expected) -> None:
    assert [structure(tree) for tree in trees] == [structure(tree) for tree in expected]
    for tree, other in zip(trees, expected, strict=True):
        assert tree.seed == other.seed
        for node, other_node in zip(tree.nodes, other.nodes, strict=True):
            assert node.score == pytest.approx(other_node.score, abs=1e-4)
            assert node.sentence_logprob == pytest.approx(other_node.sentence_logprob, abs=1e-4)


def new_nodes_by_depth(tree: SentenceTree) -> dict[int, list]:
    depths: dict[int, list] = {}
    for node in tree.nodes[1:]:
        depths.setdefault(node.depth, []).append(node)
    return depths


def expanded(trees) -> int:
    """How many nodes were expanded: each costs the reference one generate call."""
    return sum(len({node.parent_id for node in tree.nodes[1:]}) for tree in trees)


def teacher_forced_logprob(backend: TransformersBackend, request, tree: SentenceTree, node_id: int) -> float:
    """The log-likelihood of a node's sentence after the prompt and its parent's response, in one pass."""
    response = [token for node in tree.path(node_id) for token in node.token_ids]
    sentence = tree.nodes[node_id].token_ids
    inputs = backend._encode([request])
    continuation = torch.tensor([response])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], continuation], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(continuation)], dim=1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros_like(continuation)], dim=1
        )
    with torch.no_grad():
        logits = backend.model(**inputs).logits[0].double()
    first = inputs["input_ids"].shape[1] - len(sentence)
    predicted = logits[first - 1 : -1].log_softmax(-1)
    return float(predicted[torch.arange(len(sentence)), list(sentence)].sum())


class ForceEos:
    """Makes EOS certain where `after(last input token)` holds and impossible elsewhere (the random
    model would otherwise sample it now and then): lm_head sees the rows the embedding saw."""

    def __init__(self, backend: TransformersBackend, after):
        self.eos = backend.tokenizer.eos_token_id
        self.after = after
        self.last_inputs = None
        self.handles = [
            backend.model.get_input_embeddings().register_forward_hook(self.record),
            backend.model.lm_head.register_forward_hook(self.force),
        ]

    def record(self, module, args, output):
        self.last_inputs = args[0][:, -1].tolist()

    def force(self, module, args, output):
        rows = [row for row, token in enumerate(self.last_inputs) if self.after(token)]
        others = [row for row, token in enumerate(self.last_inputs) if not self.after(token)]
        output[rows, -1, self.eos] = output[rows, -1].max(dim=-1).values + 50
        output[others, -1, self.eos] = -math.inf
        return output

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def backends(tiny_model_dirs) -> dict[str, TransformersBackend]:
    return {
        family: TransformersBackend(str(tiny_model_dirs[family]), batch_size=5)
        for family in ("llava", "qwen2_vl")
    }


@pytest.fixture(scope="module")
def searched(backends):
    """Per family: the requests, then (trees, stats) of the batched search and of the reference."""
    results = {}
    for family, backend in backends.items():
        requests = make_requests(3)
        batched_stats, reference_stats = TreeSearchStats(), TreeSearchStats()
        batched = search_trees(backend, requests, PARAMS, batched_stats)
        reference = search_trees_one_node_at_a_time(backend, requests, PARAMS, reference_stats)
        results[family] = requests, (batched, batched_stats), (reference, reference_stats)
    return results


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_batched_search_builds_the_reference_tree_with_a_fraction_of_the_work(family, searched):
    requests, (batched, stats), (reference, reference_stats) = searched[family]
    assert_same_trees(batched, reference)
    assert all(max(node.depth for node in tree.nodes) >= 2 for tree in batched)
    assert any(not node.kept for tree in batched for node in tree.nodes)

    # Each prompt token and each generated token is processed about once, images encoded once per prompt...
    generated = sum(node.num_tokens for tree in batched for node in tree.nodes)
    assert stats.generated_tokens == reference_stats.generated_tokens == generated
    assert stats.prompt_tokens == reference_stats.prompt_tokens
    assert stats.vision_encoder_calls == 1 and stats.images_encoded == len(requests)
    assert stats.forward_token_ratio <= 1.2
    # ... while the reference re-encodes the image and the whole prefix for every node it expands.
    assert reference_stats.vision_encoder_calls == reference_stats.images_encoded == expanded(reference)
    assert reference_stats.forward_token_ratio > 3


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_pruning_keeps_the_top_and_bottom_scores_of_each_depth(family, searched, backends):
    requests, (trees, _), _ = searched[family]
    for tree in trees:
        for depth, nodes in new_nodes_by_depth(tree).items():
            kept = [node for node in nodes if node.kept]
            # Ended nodes are complete responses: always kept. The others compete for the places.
            ended = [node for node in nodes if node.finish_reason is not None]
            competing = [node for node in nodes if node.finish_reason is None]
            assert len(kept) == len(ended) + min(PARAMS.keep_top + PARAMS.keep_bottom, len(competing))
            ranked = sorted(competing, key=lambda node: (-node.score, node.node_id))
            expected = ended + ranked[: PARAMS.keep_top] + ranked[len(ranked) - PARAMS.keep_bottom :]
            assert {node.node_id for node in kept} == {node.node_id for node in expected}
            # Only kept nodes that did not end are expanded.
            parents = {node.parent_id for node in new_nodes_by_depth(tree).get(depth + 1, [])}
            assert parents == {node.node_id for node in kept if node.finish_reason is None}
        for node in tree.nodes[1:]:
            parent = tree.nodes[node.parent_id]
            assert node.score == pytest.approx(
                parent.score + node.sentence_logprob / node.num_tokens, abs=1e-9
            )
            assert node.num_tokens == len(node.token_ids) <= PARAMS.max_sentence_tokens
            response_length = sum(n.num_tokens for n in tree.path(node.node_id))
            assert response_length <= PARAMS.max_total_tokens
            if response_length == PARAMS.max_total_tokens:
                assert node.finish_reason in ("eos", "length")  # EOS wins when both end the response
            else:
                assert node.finish_reason != "length"
            if node.finish_reason is None and node.num_tokens < PARAMS.max_sentence_tokens:
                assert node.sentence.rstrip().endswith("e")
        assert tree.leaves() == tuple(n for n in tree.nodes if n.kept and n.finish_reason is not None)

    # The self-score's log-probs are the model's own: recompute a deep node's by teacher forcing.
    tree = trees[0]
    deepest = max(tree.nodes, key=lambda node: node.depth)
    expected = teacher_forced_logprob(backends[family], requests[0], tree, deepest.node_id)
    assert deepest.sentence_logprob == pytest.approx(expected, abs=1e-4)
    # A path's sentences joined are its tokens decoded at once, unless the bytes of a character
    # straddle two sentences (SentenceTree.text), which the random model's garbage can do.
    whole = [node for node in tree.nodes if "\ufffd" not in tree.text(node.node_id)]
    deepest_whole = max(whole, key=lambda node: node.depth)
    assert deepest_whole.depth >= 2
    assert tree.text(deepest_whole.node_id) == backends[family].tokenizer.decode(
        [token for node in tree.path(deepest_whole.node_id) for token in node.token_ids],
        skip_special_tokens=True,
    )


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_trees_do_not_depend_on_the_batch(family, backends, tiny_model_dirs):
    requests = make_requests(5)
    params = TreeSearchParams(
        children=2, keep_top=2, keep_bottom=1, max_depth=3, max_sentence_tokens=6, sentence_ends=("e",)
    )
    together = search_trees(backends[family], requests, params)
    one_by_one = search_trees(
        TransformersBackend(str(tiny_model_dirs[family]), batch_size=1), requests, params
    )
    assert_same_trees(one_by_one, together)
    reordered = search_trees(backends[family], requests[::-1], params)
    assert_same_trees(reordered[::-1], together)
    for tree in together:
        for nodes in new_nodes_by_depth(tree).values():
            competing = [node for node in nodes if node.finish_reason is None]
            assert sum(node.kept for node in competing) == min(3, len(competing))
            assert all(node.kept for node in nodes if node.finish_reason is not None)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_images_are_encoded_once_per_prompt(family, backends):
    backend = backends[family]
    tower = getattr(backend.model.model, "vision_tower", None) or backend.model.model.visual
    encoded = []  # per vision forward: how many images it encoded

    def count(module, args, kwargs, output):
        encoded.append(len(kwargs["grid_thw"]) if "grid_thw" in kwargs else len(args[0]))

    handle = tower.register_forward_hook(count, with_kwargs=True)
    try:
        stats = TreeSearchStats()
        search_trees(backend, make_requests(5), PARAMS, stats)
    finally:
        handle.remove()
    assert encoded == [5]  # one batch, one vision forward over its 5 images, for all depths
    assert stats.vision_encoder_calls == 1 and stats.images_encoded == 5


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_rows_hold_only_their_own_tokens_and_each_prompt_is_held_once(family, backends):
    backend = backends[family]
    requests = make_requests(5)
    prompt_lengths = backend._encode(requests)["attention_mask"].sum(dim=1)
    parent_steps, child_steps = [], []  # per one-token forward: the tokens each row's cache holds

    def record(module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            length = kwargs["past_key_values"].get_seq_length()
            # The children's steps need no mask: their rows are never padded.
            (child_steps if kwargs["attention_mask"] is None else parent_steps).append(length)

    handle = backend.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        stats = TreeSearchStats()
        search_trees(backend, requests, PARAMS, stats)
    finally:
        handle.remove()
    # No row's cache holds its prompt: a parent's holds its response so far (padded to the longest),
    # a child's only the sentence it is writing ...
    assert child_steps and max(child_steps) < PARAMS.max_sentence_tokens
    assert parent_steps and max(parent_steps) < PARAMS.max_total_tokens
    assert max(parent_steps + child_steps) < min(prompt_lengths)
    # ... the prompts are held once each (all but their last token), beside the rows.
    assert stats.kv_cache_tokens_peak >= int(prompt_lengths.max() - 1) * len(requests)


def test_children_that_all_end_at_once_at_eos_tie_and_end_the_search(backends):
    """EOS is certain: every child of the root is the empty sentence, with the same score."""
    backend = backends["llava"]
    requests = make_requests(2)
    params = TreeSearchParams(children=4, sentence_ends=("e",))
    stats, reference_stats = TreeSearchStats(), TreeSearchStats()
    with ForceEos(backend, after=lambda token: True):
        trees = search_trees(backend, requests, params, stats)
        assert_same_trees(search_trees_one_node_at_a_time(backend, requests, params, reference_stats), trees)
    for tree in trees:
        assert len(tree.nodes) == 5
        for node in tree.nodes[1:]:
            assert node.token_ids == (backend.tokenizer.eos_token_id,) and node.sentence == ""
            assert node.finish_reason == "eos" and node.score == tree.nodes[1].score
        # Ended nodes never compete for the places: all four are kept, complete (empty) responses.
        assert all(node.kept for node in tree.nodes[1:])
        assert [node.node_id for node in tree.leaves()] == [1, 2, 3, 4]
        assert tree.text(4) == ""
    assert stats.generated_tokens == reference_stats.generated_tokens == 8
    assert stats.generated_tokens_forwarded == 0  # the only forwarded token per tree is the prompt's last
    assert stats.prompt_tokens_forwarded >= stats.prompt_tokens


def test_eos_right_after_a_sentence_makes_every_child_empty(backends):
    """The model stops after a sentence: the node's children are all the empty sentence EOS."""
    backend = backends["qwen2_vl"]
    tokenizer = backend.tokenizer
    requests = make_requests(3)
    ends_sentence = {
        token for token in range(len(tokenizer)) if tokenizer.decode([token]).rstrip().endswith("e")
    }
    params = TreeSearchParams(children=3, max_sentence_tokens=16, sentence_ends=("e",))
    with ForceEos(backend, after=ends_sentence.__contains__):
        trees = search_trees(backend, requests, params)
        assert_same_trees(search_trees_one_node_at_a_time(backend, requests, params), trees)
    expanded_after_a_sentence = 0
    for tree in trees:
        for node in tree.nodes[1:]:
            children = [child for child in tree.nodes if child.parent_id == node.node_id]
            if children and node.sentence.endswith("e"):
                expanded_after_a_sentence += 1
                assert all(child.token_ids == (tokenizer.eos_token_id,) for child in children)
                assert all(child.finish_reason == "eos" and child.sentence == "" for child in children)
                assert {child.score for child in children} == {children[0].score}
                assert all(tree.text(child.node_id) == tree.text(node.node_id) for child in children)
    assert expanded_after_a_sentence >= 3


def test_a_response_that_ends_inside_its_first_sentence(backends):
    """EOS follows any token ending in "e" while no sentence end ever matches: one-sentence responses."""
    backend = backends["llava"]
    tokenizer = backend.tokenizer
    requests = make_requests(3)
    ends_in_e = {token for token in range(len(tokenizer)) if tokenizer.decode([token]).rstrip().endswith("e")}
    params = TreeSearchParams(children=3, max_sentence_tokens=24, max_depth=2, sentence_ends=("%%%",))
    with ForceEos(backend, after=ends_in_e.__contains__):
        trees = search_trees(backend, requests, params)
        assert_same_trees(search_trees_one_node_at_a_time(backend, requests, params), trees)
    for tree in trees:
        for node in tree.nodes[1:]:
            if node.finish_reason == "eos":
                assert node.token_ids[-2] in ends_in_e and node.sentence.rstrip().endswith("e")
                assert all(child.parent_id != node.node_id for child in tree.nodes)
            else:
                assert not ends_in_e & set(node.token_ids)
    one_sentence_trees = [tree for tree in trees if all(n.finish_reason == "eos" for n in tree.nodes[1:])]
    assert one_sentence_trees
    for tree in one_sentence_trees:
        assert max(node.depth for node in tree.nodes) == 1
        assert tree.leaves() == tree.nodes[1:]


def test_greedy_children_are_identical_and_ties_keep_the_first_and_last(backends):
    backend = backends["llava"]
    requests = make_requests(2)
    params = TreeSearchParams(
        children=4, temperature=0, max_depth=3, max_sentence_tokens=6, sentence_ends=("e",)
    )
    trees = search_trees(backend, requests, params)
    assert_same_trees(search_trees_one_node_at_a_time(backend, requests[:1], params), trees[:1])
    for tree in trees:
        for nodes in new_nodes_by_depth(tree).values():
            assert len({node.token_ids for node in nodes}) == 1
            assert len({node.score for node in nodes}) == 1
            competing = [node.kept for node in nodes if node.finish_reason is None]
            if (
                len(competing) > 3
            ):  # ties go by creation order: the first is the top one, the last two the bottom
                assert competing == [True] + [False] * (len(competing) - 3) + [True, True]
            assert all(node.kept for node in nodes if node.finish_reason is not None)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("penalty", [0.5, 100.0])
def test_diverse_greedy_children_avoid_their_elder_siblings_tokens(family, penalty, backends):
    """The released code's diverse beam search, one beam per group: child j is greedy on its log-probs
    minus the penalty for each earlier sibling that took the token at the same step."""
    backend = backends[family]
    requests = make_requests(3)
    shape = {"max_depth": 3, "max_sentence_tokens": 8, "max_total_tokens": 20, "sentence_ends": ("e",)}
    params = TreeSearchParams(children=3, temperature=0, diversity_penalty=penalty, **shape)
    trees = search_trees(backend, requests, params)
    assert_same_trees(search_trees_one_node_at_a_time(backend, requests, params), trees)
    # The first child has no elder sibling: it is the greedy sentence.
    greedy = search_trees(backend, requests, TreeSearchParams(children=1, temperature=0, **shape))
    for tree, greedy_tree in zip(trees, greedy, strict=True):
        assert tree.nodes[1].token_ids == greedy_tree.nodes[1].token_ids
    if penalty < 100:
        return
    # A penalty beyond any log-prob gap: siblings never take the same token at the same step.
    compared = 0
    for tree in trees:
        for node in tree.nodes:
            children = [child for child in tree.nodes if child.parent_id == node.node_id]
            for elder_index, elder in enumerate(children):
                for younger in children[elder_index + 1 :]:
                    steps = min(elder.num_tokens, younger.num_tokens)
                    assert all(elder.token_ids[t] != younger.token_ids[t] for t in range(steps))
                    compared += steps
    assert compared > 50


def test_a_sliding_window_that_holds_every_context_changes_nothing(tiny_model_dirs, tmp_path):
    """A Mistral-style model attends within a window: the batched search runs when no context can
    outgrow it (and builds the reference's trees), and says what to change when one could."""

    def with_window(window: int) -> TransformersBackend:
        folder = tmp_path / f"window-{window}"
        shutil.copytree(tiny_model_dirs["llava_next"], folder)
        config = json.loads((folder / "config.json").read_text())
        config["text_config"]["sliding_window"] = window
        (folder / "config.json").write_text(json.dumps(config))
        backend = TransformersBackend(str(folder), batch_size=2)
        assert all(DynamicCache(config=backend.model.config).is_sliding)
        return backend

    requests = make_requests(2)
    wide = with_window(4096)
    assert_same_trees(
        search_trees(wide, requests, PARAMS), search_trees_one_node_at_a_time(wide, requests, PARAMS)
    )
    with pytest.raises(SelfAlignError, match="lower max_total_tokens"):
        search_trees(with_window(24), requests, PARAMS)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"children": 0}, "child"),
        ({"diversity_penalty": -1.0, "temperature": 0}, "diversity_penalty"),
        ({"diversity_penalty": 3.0}, "temperature 0"),
        ({"keep_top": -1}, "keep_top"),
        ({"keep_top": 0, "keep_bottom": 0}, "keep_top \\+ keep_bottom"),
        ({"max_depth": 0}, "max_depth"),
        ({"max_sentence_tokens": 0}, "max_sentence_tokens"),
        ({"max_total_tokens": 0}, "max_total_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"sentence_ends": ()}, "sentence_ends"),
        ({"sentence_ends": (".", "")}, "sentence_ends"),
        ({"sentence_ends": (".", "\n")}, "only whitespace"),  # never matched: text is rstripped first
    ],
)
def test_invalid_tree_search_params_are_refused(values, message):
    with pytest.raises(SelfAlignError, match=message):
        TreeSearchParams(**values)
