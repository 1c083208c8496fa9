"""Turn a folder of images (or a manifest, or a dataset with an image column) into a clean,
deduplicated image dataset in Hub layout, published when asked. The first stage of every pipeline.

    python dataset_builders/images.py --config recipes/tiny/images.yaml \
        --image_folder path/to/images --output_dir outputs/my-images \
        --push_to_hub true --hub_dataset_id my-org/my-images

Every rejected input is listed with its reason in <output_dir>/rejects.jsonl and counted in the card.
"""

from datasets import Features, Image, Value

from selfalign.build.runner import (
    BuildArguments,
    ShardOutput,
    publish_build,
    recipe_values,
    run_sharded_build,
)
from selfalign.config import run_main
from selfalign.images import (
    ImageSourceArguments,
    LoadedImage,
    open_source,
    prompt_of,
    row_id,
    shareable_source,
)
from selfalign.publish.dataset_card import DatasetCardInfo
from selfalign.publish.hub import check_can_push

FEATURES = Features(
    {
        "id": Value("string"),
        "source_id": Value("string"),  # the id the manifest or dataset gave the input, if any
        "image": Image(),
        "instruction": Value("string"),
        "reference": Value("string"),
        "source": Value("string"),
        "note": Value("string"),
    }
)


def main(source_args: ImageSourceArguments, build_args: BuildArguments) -> None:
    if build_args.push_to_hub:
        check_can_push(build_args.hub_dataset_id, "hub_dataset_id")
    source = open_source(source_args)

    def process_shard(items) -> ShardOutput:
        output = ShardOutput(rows=[], sources=[], rejections=[])
        for item in items:
            loaded = source.load(item)
            if not isinstance(loaded, LoadedImage):
                output.rejections.append(loaded)
                continue
            # An images-only dataset needs no instruction; otherwise the input's own, else the prompt set's.
            wants_instruction = item.instruction or source_args.prompt_set
            instruction = prompt_of(loaded, source_args.prompt_set) if wants_instruction else None
            output.rows.append(
                {
                    # Always from content + prompt (DESIGN §3), so duplicates are found by content and the
                    # same input gets the same id in every dataset built from it.
                    "id": row_id(loaded.content_hash, instruction or ""),
                    "source_id": item.explicit_id,
                    "image": loaded.image,
                    "instruction": instruction,
                    "reference": item.reference,
                    "source": shareable_source(item.source),
                    "note": loaded.note,
                }
            )
            output.sources.append(item.source)
        return output

    result = run_sharded_build(
        source.items(), process_shard, FEATURES, build_args, settings=recipe_values(source_args)
    )
    if result is None:  # not the main process
        return
    card = DatasetCardInfo(
        pretty_name="Images",
        builder="dataset_builders/images.py",
        recipe=recipe_values(source_args, build_args),
        models={},
        method=None,
        rejections=dict(result.rejections),
        tags=("vlm", "images"),
        description="Validated, normalised (RGB, EXIF orientation applied) and deduplicated images, "
        "with the instruction and reference answer of each when the source gave one.",
    )
    publish_build(result, build_args, card)


if __name__ == "__main__":
    run_main(main, (ImageSourceArguments, BuildArguments))
