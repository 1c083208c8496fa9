"""CSR's sentence-tree search: the batched search on reused KV caches vs the one-node-at-a-time reference.

    python bench/tree_search.py [--family llava] [--prompts 16] [--batch-size 16] [--threads N]
                                [--diversity-penalty 3.0] [--repeats 5]

Builds a tiny random VLM of the tiny zoo (size preset "shapes" by default) and a tiny CLIP, renders
shapes-world scenes, and searches one tree per scene with `search_trees` (batched) and with
`search_trees_one_node_at_a_time` (the released code's way, kept as the reference): same requests,
same params, one process. Both are warmed up on a batch of other prompts, then timed alternately,
`--repeats` times each. Prints JSON: the wall seconds of every run, the speed-up (the median
reference time over the median batched time, and each repeat's), whether the trees are identical,
forward tokens over the minimum, vision encodes per image, the most KV-cache token slots held at
once, and CLIP image encodes per image when every new sentence of every tree is scored.
The wall times of a virtual machine vary by 15% or more between identical runs, and slow spells
last seconds: alternating spreads a slow spell over both searches, and the medians of several
repeats are what to compare. On a machine shared with other jobs, `--threads 1` gives the most
repeatable times (docs/benchmarks.md).

The random models write garbage in which "." is rare (about 0.3% of tokens), so sentences also end
at "e" (about 13% of tokens): without it nearly every sentence would run to the token cap and the
trees would test length caps, not sentences.

Identical trees. Both searches draw each token from the same per-node random stream, so they build
the same trees up to float noise: batching pads and reshapes what the kernels see, which moves the
float32 logits in their last bits (a few 1e-7 here), and a draw that falls that close to the boundary
between two tokens can pick the other one; the tree then diverges from that node on. A random
model's next-token distribution is nearly flat (about 1000 tokens near 1e-3 each), so such near-ties
are common. Trees that differ are searched again both ways with float64 weights, where that noise
is about 1e9 times smaller: if precision alone made them differ, they then match; a bug would not.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from selfalign.samples import (
    GenerationRequest,
    SentenceTree,
    TransformersBackend,
    TreeSearchParams,
    TreeSearchStats,
    search_trees,
    search_trees_one_node_at_a_time,
)
from selfalign.scores import ClipScorer
from selfalign.synthetic import World, render
from selfalign.tiny_zoo import FAMILIES, PRESETS, build_tiny_clip, build_tiny_model

SCORE_TOLERANCE = 1e-4  # float noise between batch rows; the tests use the same bound
PROMPT = "Describe the image."


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_requests(count: int, first_index: int = 0) -> list[GenerationRequest]:
    world = World()
    return [
        GenerationRequest(
            images=(render(world.scene("eval", index)),),
            messages=({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},),
            seed=index,
        )
        for index in range(first_index, first_index + count)
    ]


@dataclass
class TimedSearch:
    trees: list[SentenceTree]
    stats: TreeSearchStats
    seconds: float
    cpu_seconds: (
        float  # of this process, all threads: less sensitive than wall time to other work on the cores
    )
    model_calls: int  # forward passes of the whole VLM: each costs Python and kernel-launch overhead


def timed_search(search, backend: TransformersBackend, requests, params: TreeSearchParams) -> TimedSearch:
    model_calls = 0

    def count_call(*_) -> None:
        nonlocal model_calls
        model_calls += 1

    hook = backend.model.register_forward_pre_hook(count_call)
    stats = TreeSearchStats()
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        trees = search(backend, requests, params, stats)
    finally:
        hook.remove()
    return TimedSearch(
        trees, stats, time.perf_counter() - started, time.process_time() - cpu_started, model_calls
    )


def difference(tree: SentenceTree, expected: SentenceTree) -> str | None:
    """Where two trees first differ; None if identical (structure exact, scores within tolerance)."""
    if len(tree.nodes) != len(expected.nodes):
        return f"{len(tree.nodes)} vs {len(expected.nodes)} nodes"
    for node, other in zip(tree.nodes, expected.nodes, strict=True):
        for field in ("parent_id", "branch", "token_ids", "sentence", "finish_reason", "kept"):
            if getattr(node, field) != getattr(other, field):
                return f"node {node.node_id} (branch {node.branch}): {field} differs"
        for field in ("score", "sentence_logprob"):
            gap = abs(getattr(node, field) - getattr(other, field))
            if gap > SCORE_TOLERANCE:
                return f"node {node.node_id} (branch {node.branch}): {field} differs by {gap:.2g}"
    return None


def differences(trees: list[SentenceTree], expected: list[SentenceTree]) -> dict[int, str]:
    """Request index -> where its two trees first differ, for the trees that differ."""
    found = {
        index: difference(tree, other)
        for index, (tree, other) in enumerate(zip(trees, expected, strict=True))
    }
    return {index: where for index, where in found.items() if where is not None}


def recheck_in_float64(
    model_dir: Path, requests: list[GenerationRequest], params: TreeSearchParams, args: argparse.Namespace
) -> dict:
    """Searches trees that differed again with float64 weights, both ways: float noise 1e9 times smaller
    leaves no near-tie to flip, so precision alone made them differ if they now match; a bug would not."""
    backend = TransformersBackend(str(model_dir), batch_size=args.batch_size, dtype="float64")
    batched = search_trees(backend, requests, params)
    reference = search_trees_one_node_at_a_time(backend, requests, params)
    return {"trees": len(requests), "still_differing": len(differences(batched, reference))}


def median_seconds(runs: list[TimedSearch]) -> tuple[float, float]:
    """The median wall and CPU seconds of a search's runs."""
    return statistics.median(run.seconds for run in runs), statistics.median(run.cpu_seconds for run in runs)


def search_report(runs: list[TimedSearch], images: int) -> dict:
    stats = runs[0].stats  # every run counts the same: it builds the same trees
    wall, cpu = median_seconds(runs)
    return {
        "wall_seconds": round(wall, 2),
        "wall_seconds_runs": [round(run.seconds, 2) for run in runs],
        "cpu_seconds": round(cpu, 2),
        "model_calls": runs[0].model_calls,
        "forward_token_ratio": round(stats.forward_token_ratio, 3),
        "vision_encoder_calls": stats.vision_encoder_calls,
        "vision_encoder_calls_per_image": round(stats.vision_encoder_calls / images, 3),
        "vision_encodes_per_image": round(stats.images_encoded / images, 2),
        "prompt_tokens": stats.prompt_tokens,
        "prompt_tokens_forwarded": stats.prompt_tokens_forwarded,
        "generated_tokens": stats.generated_tokens,
        "generated_tokens_forwarded": stats.generated_tokens_forwarded,
        "kv_cache_tokens_peak": stats.kv_cache_tokens_peak,
    }


def tree_shape(trees: list[SentenceTree]) -> dict:
    nodes_per_depth: dict[int, int] = {}
    finish_reasons: dict[str, int] = {}
    for tree in trees:
        for node in tree.nodes[1:]:
            nodes_per_depth[node.depth] = nodes_per_depth.get(node.depth, 0) + 1
            if node.finish_reason is not None:
                finish_reasons[node.finish_reason] = finish_reasons.get(node.finish_reason, 0) + 1
    new_nodes = [node for tree in trees for node in tree.nodes[1:]]
    return {
        "nodes": sum(len(tree.nodes) for tree in trees),  # roots included
        "expanded_nodes": sum(len({node.parent_id for node in tree.nodes[1:]}) for tree in trees),
        "nodes_per_depth": {str(depth): count for depth, count in sorted(nodes_per_depth.items())},
        "finish_reasons": dict(sorted(finish_reasons.items())),
        "mean_sentence_tokens": round(sum(node.num_tokens for node in new_nodes) / len(new_nodes), 2),
    }


def clip_report(clip_dir: Path, requests: list[GenerationRequest], trees: list[SentenceTree]) -> dict:
    """Scores every new sentence of every tree against its image in one call: each image is encoded once."""
    scorer = ClipScorer(str(clip_dir), device="cpu")
    images = [request.images[0] for request in requests]
    sentences = [[node.sentence for node in tree.nodes[1:]] for tree in trees]
    scorer.score(images, sentences)
    return {
        "sentences_scored": sum(len(group) for group in sentences),
        "images_encoded_per_image": round(scorer.stats.images_encoded / len(images), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=FAMILIES, default="llava")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="shapes")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per batch of the batched search")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each search, alternating; medians compared"
    )
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--max-sentence-tokens", type=int, default=16)
    parser.add_argument("--max-total-tokens", type=int, default=64)
    parser.add_argument(
        "--diversity-penalty",
        type=float,
        default=0.0,
        help="> 0: diverse greedy children (the released code's way) instead of sampled ones",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where to build the models (default: temp)"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be 1 or more, got {args.repeats}")
    load_at_start = round(os.getloadavg()[0], 2)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    params = TreeSearchParams(
        children=5,
        keep_top=1,
        keep_bottom=2,
        max_depth=args.max_depth,
        max_sentence_tokens=args.max_sentence_tokens,
        max_total_tokens=args.max_total_tokens,
        temperature=0.0 if args.diversity_penalty else 1.0,
        top_p=1.0,
        diversity_penalty=args.diversity_penalty,
        sentence_ends=(".", "!", "?", "e"),
    )
    with tempfile.TemporaryDirectory() as temp:
        work_dir = args.work_dir or Path(temp)
        log(f"building tiny {args.family} ({args.preset}) and tiny CLIP in {work_dir}")
        model_dir = build_tiny_model(
            args.family, work_dir / f"{args.family}-{args.preset}", preset=args.preset
        )
        clip_dir = build_tiny_clip(work_dir / "clip")
        backend = TransformersBackend(str(model_dir), batch_size=args.batch_size, dtype="float32")
        requests = make_requests(args.prompts)

        # One-time costs (first calls into kernels at each shape, allocator growth, tokenizer and
        # processor caches) are not the search's: warm up on a batch of other prompts.
        warm_up = make_requests(min(args.batch_size, args.prompts), first_index=args.prompts)
        log(f"warming up on {len(warm_up)} other prompts")
        search_trees(backend, warm_up, params)
        search_trees_one_node_at_a_time(backend, warm_up, params)

        batched_runs: list[TimedSearch] = []
        reference_runs: list[TimedSearch] = []
        for repeat in range(1, args.repeats + 1):
            log(f"repeat {repeat}/{args.repeats}: batched search, {args.prompts} prompts")
            batched_runs.append(timed_search(search_trees, backend, requests, params))
            log(f"  {batched_runs[-1].seconds:.2f} s; reference search")
            reference_runs.append(timed_search(search_trees_one_node_at_a_time, backend, requests, params))
            log(f"  {reference_runs[-1].seconds:.2f} s")
        batched, reference = batched_runs[0], reference_runs[0]
        # Each search draws from per-node random streams: its repeats must build the very same trees.
        unrepeatable = sum(
            bool(differences(run.trees, runs[0].trees))
            for runs in (batched_runs, reference_runs)
            for run in runs[1:]
        )
        differing = differences(batched.trees, reference.trees)
        float64_recheck = None
        if differing:
            log(f"  {len(differing)} trees differ; searching them again in float64")
            float64_recheck = recheck_in_float64(
                model_dir, [requests[index] for index in differing], params, args
            )
        log("CLIP scores")
        clip = clip_report(clip_dir, requests, batched.trees)

    batched_wall, batched_cpu = median_seconds(batched_runs)
    reference_wall, reference_cpu = median_seconds(reference_runs)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        # The 2 cores are shared with other work: a load above 0 slows both searches, unevenly.
        "load_average_1min": {"start": load_at_start, "end": round(os.getloadavg()[0], 2)},
        "model": {
            "family": args.family,
            "preset": args.preset,
            "parameters": sum(parameter.numel() for parameter in backend.model.parameters()),
            "dtype": str(backend.model.dtype).removeprefix("torch."),
        },
        "prompts": args.prompts,
        "batch_size": args.batch_size,
        "params": {
            "children": params.children,
            "keep_top": params.keep_top,
            "keep_bottom": params.keep_bottom,
            "max_depth": params.max_depth,
            "max_sentence_tokens": params.max_sentence_tokens,
            "max_total_tokens": params.max_total_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "diversity_penalty": params.diversity_penalty,
        },
        "sentence_ends": list(params.sentence_ends),
        "trees": tree_shape(batched.trees),
        "identical_trees": not differing,
        "differing_trees": {str(index): where for index, where in differing.items()},
        "float64_recheck": float64_recheck,
        "repeats": args.repeats,
        "repeats_with_other_trees": unrepeatable,
        "batched": search_report(batched_runs, args.prompts),
        "reference": search_report(reference_runs, args.prompts),
        # Medians over the repeats, and each repeat's pair (the runs made one after the other).
        "speedup": round(reference_wall / batched_wall, 2),
        "speedup_per_repeat": [
            round(ref.seconds / run.seconds, 2) for run, ref in zip(batched_runs, reference_runs, strict=True)
        ],
        "cpu_speedup": round(reference_cpu / batched_cpu, 2),
        "clip": clip,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
