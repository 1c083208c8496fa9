"""CSR preference pairs: a sentence tree per image and prompt from the policy, CLIP-calibrated, best vs worst.

    python dataset_builders/csr_pairs.py --config recipes/llava-1.5-7b/csr/pairs.yaml
    torchrun --nproc_per_node 8 dataset_builders/csr_pairs.py --config recipes/llava-1.5-7b/csr/pairs.yaml

For each 'describe the image' prompt the policy grows a sentence tree (batched, on reused KV caches:
`selfalign.samples.search_trees`); every new sentence is cleaned and scored by CLIP against the image;
each child is ranked among its siblings by self-score and by CLIP score, a path scores the mean of
`(1 - a) * rank + a * clip_rank` (a = 0.9, the released code; or the paper's weighted sum with
`fusion: weighted`), and the best path is chosen, the worst rejected: one pair per prompt
(`selfalign.methods.csr`). Trees without a usable pair are counted as rejections, with the reason.
The same dataset comes out whatever the number of processes or the batch size, and a killed run
restarted with the same command resumes from its finished shards.

On shapes-world scenes, `--scorer scene_truth` scores sentences by each scene's known objects in CLIP's
place: an oracle ablation that shows how far CSR gets when its scorer never errs
(`selfalign.scores.scene_truth`).
"""

import logging
from collections import Counter

from datasets import Features, Image, List, Value

from selfalign.build.conversation import MESSAGES, assistant_turn, user_turn
from selfalign.build.policy import PolicyArguments, prompted_images
from selfalign.build.runner import (
    BuildArguments,
    ShardOutput,
    model_reference,
    process_rank,
    publish_build,
    recipe_values,
    run_sharded_build,
)
from selfalign.config import run_main
from selfalign.images import ImageSourceArguments, Rejection, open_source
from selfalign.methods.csr import CsrArguments, TreeScoring, pairs_from_trees
from selfalign.pairs import NO_PAIR_REASONS, NoPair
from selfalign.publish.dataset_card import DatasetCardInfo
from selfalign.publish.hub import check_can_push
from selfalign.samples import TreeSearchStats, search_trees
from selfalign.scores import DROP_REASONS, SCENE_TRUTH_SCORER

TRUNCATED = "truncated"  # shard tally: sentences cut to the scorer's text length (the others: DROP_REASONS)
# What the *_clip_score columns hold, by scorer.
SCORE_NAMES = {
    "clip": "CLIP score (logit scale x cosine)",
    "scene_truth": "scene-truth score (true object mentions minus ten per false one; an oracle in CLIP's place)",
}

FEATURES = Features(
    {
        "id": Value("string"),
        "images": List(Image()),
        "prompt": MESSAGES,
        "chosen": MESSAGES,
        "rejected": MESSAGES,
        "method": Value("string"),
        "iteration": Value("int32"),
        "policy_model": Value("string"),
        "scorer_model": Value("string"),
        "fusion": Value("string"),
        "chosen_score": Value("float64"),
        "rejected_score": Value("float64"),
        "chosen_clip_score": Value("float64"),
        "rejected_clip_score": Value("float64"),
        "num_candidates": Value("int32"),
        "num_nodes": Value("int32"),
    }
)


def main(
    source_args: ImageSourceArguments,
    policy_args: PolicyArguments,
    csr_args: CsrArguments,
    build_args: BuildArguments,
) -> None:
    if build_args.push_to_hub:
        check_can_push(build_args.hub_dataset_id, "hub_dataset_id")
    if not source_args.prompt_set:
        source_args.prompt_set = "describe"  # CSR's prompts are 'describe the image' style
    source = open_source(source_args)
    _, _, state = process_rank()
    # The scorer first: it is the smaller model, so a wrong clip_model fails before the policy loads.
    scorer = csr_args.sentence_scorer(source_args, device=str(state.device))
    backend = policy_args.backend(device=str(state.device))
    scorer_model = model_reference(csr_args.clip_model) if csr_args.scorer == "clip" else SCENE_TRUTH_SCORER
    tree_params = csr_args.tree_params()
    search_stats = TreeSearchStats()
    # The sum of scores has no weight to report.
    fusion = "sum" if csr_args.fusion == "sum" else f"{csr_args.fusion} (clip_weight {csr_args.clip_weight})"

    def process_shard(items) -> ShardOutput:
        prompted = prompted_images(source, items, source_args.prompt_set, policy_args)
        output = ShardOutput(rows=[], sources=[], rejections=prompted.rejections)
        accepted, instructions, ids = prompted.images, prompted.instructions, prompted.ids
        trees = search_trees(backend, prompted.requests, tree_params, search_stats)
        scoring, truncated_before = TreeScoring(), scorer.stats.sentences_truncated
        pairs = pairs_from_trees(scorer, csr_args, [loaded.image for loaded in accepted], trees, scoring)
        output.counts.update(scoring.dropped)  # sentences dropped by cleaning, per reason
        output.counts[TRUNCATED] = scorer.stats.sentences_truncated - truncated_before
        for loaded, text, rid, tree, pair in zip(accepted, instructions, ids, trees, pairs, strict=True):
            if isinstance(pair, NoPair):
                output.rejections.append(Rejection(loaded.item.source, pair.reason, pair.detail))
                continue
            output.rows.append(
                {
                    "id": rid,
                    "images": [loaded.image],
                    "prompt": user_turn(text),
                    "chosen": assistant_turn(pair.chosen),
                    "rejected": assistant_turn(pair.rejected),
                    "method": "csr",
                    "iteration": csr_args.iteration,
                    "policy_model": model_reference(policy_args.policy_model),
                    "scorer_model": scorer_model,
                    "fusion": fusion,
                    "chosen_score": pair.chosen_score,
                    "rejected_score": pair.rejected_score,
                    "chosen_clip_score": pair.chosen_clip_score,
                    "rejected_clip_score": pair.rejected_clip_score,
                    "num_candidates": pair.num_candidates,
                    "num_nodes": len(tree.nodes),
                }
            )
            output.sources.append(loaded.item.source)
        return output

    settings = recipe_values(source_args, policy_args, csr_args)
    for key in ("batch_size", "clip_batch_size"):  # rows do not depend on them: each row has its own seed
        del settings[key]
    result = run_sharded_build(source.items(), process_shard, FEATURES, build_args, settings=settings)
    if result is None:  # not the main process
        return
    # This process's work in this run (a resumed run skips finished shards, other processes have theirs).
    logging.getLogger("selfalign").info(
        "tree search: %d vision encoder calls for %d images; forward tokens %.2fx the minimum; "
        "%s scorer: %d images, %d sentences",
        search_stats.vision_encoder_calls,
        search_stats.images_encoded,
        search_stats.forward_token_ratio,
        csr_args.scorer,
        scorer.stats.images_encoded,
        scorer.stats.sentences_encoded,
    )
    # Every shard's tallies, whichever process or run built it.
    dropped = Counter({reason: count for reason, count in result.counts.items() if reason in DROP_REASONS})
    logging.getLogger("selfalign").info(
        "%d sentences dropped by cleaning %s; %d truncated to the scorer's text length",
        sum(dropped.values()),
        dict(dropped),
        result.counts[TRUNCATED],
    )
    models = {"policy": f"{backend.model_name_or_path}@{backend.revision}"}
    recipe = recipe_values(source_args, policy_args, csr_args, build_args)
    if csr_args.scorer == "clip":  # the scene truth is a program, described in the text
        models["scorer"] = f"{scorer.model_name_or_path}@{scorer.revision}"
    else:  # nor does the card's recipe name a CLIP that scored nothing
        for key in ("clip_model", "clip_revision", "clip_batch_size"):
            del recipe[key]
    card = DatasetCardInfo(
        pretty_name="CSR preference pairs",
        builder="dataset_builders/csr_pairs.py",
        recipe=recipe,
        models=models,
        method="csr",
        rejections=dict(result.rejections),
        rejection_reasons=NO_PAIR_REASONS,
        tags=("csr",),
        description=_description(csr_args, dropped, result.counts[TRUNCATED]),
        score_columns=("chosen_clip_score", "rejected_clip_score"),
        score_note=(
            f"The histograms and statistics below are of the mean {SCORE_NAMES[csr_args.scorer]} of the "
            "chosen and rejected responses' sentences. `chosen_score` / `rejected_score` hold the fused "
            f"path scores ({csr_args.fusion} fusion)."
        ),
    )
    publish_build(result, build_args, card)


def _description(args: CsrArguments, dropped: Counter, truncated: int) -> str:
    drops = "; ".join(
        f"{reason} ({DROP_REASONS[reason]}): {count}" for reason, count in sorted(dropped.items())
    )
    truncation = f" Sentences truncated to CLIP's text length: {truncated}." if args.scorer == "clip" else ""
    return (
        f"Iteration {args.iteration} of Calibrated Self-Rewarding (CSR). For each prompt the policy grew a "
        f"sentence-level tree ({args.children} children per node, {args.children_description()}; "
        f"after each depth the top {args.keep_top} and bottom {args.keep_bottom} unfinished nodes by self-score "
        f"kept; at most {args.max_depth} sentences and {args.max_total_tokens} tokens). A node's self-score is "
        f"its parent's plus the mean log-prob of its sentence; every sentence was scored "
        f"{args.scorer_description()}. Pairs: chosen = best path, rejected = worst, by {args.fusion_description()}. "
        "Sentences dropped by the released cleaning rules, with their subtrees: "
        f"{sum(dropped.values())}" + (f" ({drops})" if drops else "") + "." + truncation
    )


if __name__ == "__main__":
    run_main(main, (ImageSourceArguments, PolicyArguments, CsrArguments, BuildArguments))
