"""Sample N responses per image and prompt from a policy VLM, batched, and publish them.

    python dataset_builders/samples.py --config recipes/tiny/samples.yaml
    torchrun --nproc_per_node 2 dataset_builders/samples.py --config recipes/tiny/samples.yaml

The same dataset comes out whatever the number of processes or the batch size: each row samples
with its own seed. A killed run restarted with the same command resumes from its finished shards.
"""

from datasets import Features, Image, List, Value

from selfalign.build.conversation import MESSAGES, user_turn
from selfalign.build.policy import PolicySamplingArguments, prompted_images
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
from selfalign.images import ImageSourceArguments, open_source
from selfalign.publish.dataset_card import DatasetCardInfo
from selfalign.publish.hub import check_can_push
from selfalign.samples import sample

FEATURES = Features(
    {
        "id": Value("string"),
        "images": List(Image()),
        "prompt": MESSAGES,
        "completions": List(Value("string")),
        "completion_logprobs": List(Value("float64")),
        "policy_model": Value("string"),
        "num_candidates": Value("int32"),
    }
)


def main(
    source_args: ImageSourceArguments, policy_args: PolicySamplingArguments, build_args: BuildArguments
) -> None:
    if build_args.push_to_hub:
        check_can_push(build_args.hub_dataset_id, "hub_dataset_id")
    if not source_args.prompt_set:
        source_args.prompt_set = "describe"  # sources without instructions get 'describe the image' prompts
    source = open_source(source_args)
    _, _, state = process_rank()
    backend = policy_args.backend(device=str(state.device))
    params = policy_args.params()

    def process_shard(items) -> ShardOutput:
        prompted = prompted_images(source, items, source_args.prompt_set, policy_args)
        output = ShardOutput(rows=[], sources=[], rejections=prompted.rejections)
        for loaded, text, rid, completions in zip(
            prompted.images,
            prompted.instructions,
            prompted.ids,
            sample(backend, prompted.requests, params),
            strict=True,
        ):
            output.rows.append(
                {
                    "id": rid,
                    "images": [loaded.image],
                    "prompt": user_turn(text),
                    "completions": [completion.text for completion in completions],
                    "completion_logprobs": [completion.logprob for completion in completions],
                    "policy_model": model_reference(policy_args.policy_model),
                    "num_candidates": len(completions),
                }
            )
            output.sources.append(loaded.item.source)
        return output

    settings = recipe_values(source_args, policy_args)
    del settings["batch_size"]  # rows do not depend on it: each row samples with its own seed
    result = run_sharded_build(source.items(), process_shard, FEATURES, build_args, settings=settings)
    if result is None:  # not the main process
        return
    card = DatasetCardInfo(
        pretty_name="Policy samples",
        builder="dataset_builders/samples.py",
        recipe=recipe_values(source_args, policy_args, build_args),
        models={"policy": f"{backend.model_name_or_path}@{backend.revision}"},
        method=None,
        rejections=dict(result.rejections),
        tags=("vlm", "samples"),
        description=f"{params.n} responses per image and prompt sampled from {policy_args.policy_model} "
        f"(temperature {params.temperature}, top-p {params.top_p}, at most {params.max_new_tokens} new tokens), "
        "each with its log-probability under the policy.",
    )
    publish_build(result, build_args, card)


if __name__ == "__main__":
    run_main(main, (ImageSourceArguments, PolicySamplingArguments, BuildArguments))
