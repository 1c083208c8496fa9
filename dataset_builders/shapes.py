"""Build one split of the shapes world: synthetic scenes whose truth is known (selfalign.synthetic).

    python dataset_builders/shapes.py --config recipes/shapes/world.yaml --kind sft  --output_dir outputs/shapes/sft
    python dataset_builders/shapes.py --config recipes/shapes/world.yaml --kind eval --output_dir outputs/shapes/eval
    python dataset_builders/shapes.py --config recipes/shapes/world.yaml --kind clip --output_dir outputs/shapes/clip
    python dataset_builders/shapes.py --config recipes/shapes/world.yaml --kind qa   --output_dir outputs/shapes/qa

One run writes one kind of rows; the inputs are scene indices, so builds shard, resume and run
multi-process like every other builder. Rows:

- sft: `images`, `messages` (DESIGN.md §3 SFT contract): per scene one captioning conversation and
  `questions_per_scene` question/answer ones, for training a policy with scripts/sft.py. With the
  noisy annotator's rates (selfalign.synthetic.annotator), a caption may also name absent
  companions; `annotator_added` lists them (empty on true rows).
- eval: held-out scenes: `image`, `instruction` (a describe prompt), `reference` (a true caption),
  the ground-truth `objects` ("colour shape", the CHAIR list), their details and relations, counts,
  `pope` probes (random / popular / adversarial, balanced yes/no), and the world's `companions`
  (each object with its companion; empty in a world without them). Never noisy.
- clip: `image`, `caption` and per-object `sentences`, for training a tiny CLIP.
- qa: `image`, `instruction`, `reference` (a reference answer): IPA's input.

Kinds with one image per row name it `image`, with `instruction`/`reference`, so they also serve as
an image source (`dataset_name: <folder>`) for the sampling and pair builders.
"""

from collections.abc import Mapping
from dataclasses import asdict

from datasets import Features, Image, List, Value
from PIL.Image import Image as PILImage

from selfalign.build.conversation import MESSAGES, assistant_turn, user_turn
from selfalign.build.runner import (
    BuildArguments,
    ShardOutput,
    publish_build,
    recipe_values,
    run_sharded_build,
)
from selfalign.config import run_main
from selfalign.images import compute_content_hash, row_id
from selfalign.publish.dataset_card import DatasetCardInfo
from selfalign.publish.hub import check_can_push
from selfalign.synthetic import (
    CAPTION_PROMPTS,
    COLOURS,
    SHAPES,
    QuestionAnswer,
    Scene,
    ShapesWorldArguments,
    World,
    caption,
    object_frequencies,
    object_list,
    object_sentences,
    pope_probes,
    questions,
    render,
    rng_for,
)

TEXT = Value("string")
COMMON = {"id": TEXT, "scene_seed": Value("int64")}
FEATURES = {
    "sft": Features(
        {**COMMON, "images": List(Image()), "messages": MESSAGES, "task": TEXT, "annotator_added": List(TEXT)}
    ),
    "eval": Features(
        {
            **COMMON,
            "image": Image(),
            "instruction": TEXT,
            "reference": TEXT,
            "objects": List(TEXT),
            "object_details": List(
                {"colour": TEXT, "shape": TEXT, "size": TEXT, "region": TEXT, "box": List(Value("int32"))}
            ),
            "relations": List({"subject": Value("int32"), "relation": TEXT, "object": Value("int32")}),
            "num_objects": Value("int32"),
            "shape_counts": {shape: Value("int32") for shape in SHAPES},
            "colour_counts": {colour: Value("int32") for colour in COLOURS},
            "pope": List({"strategy": TEXT, "object": TEXT, "question": TEXT, "answer": TEXT}),
            "companions": List({"object": TEXT, "companion": TEXT}),
        }
    ),
    "clip": Features({**COMMON, "image": Image(), "caption": TEXT, "sentences": List(TEXT)}),
    "qa": Features(
        {**COMMON, "image": Image(), "instruction": TEXT, "reference": TEXT, "question_type": TEXT}
    ),
}

DESCRIPTIONS = {
    "sft": "Captioning and question-answering conversations about synthetic scenes of coloured shapes, "
    "for supervised fine-tuning; every answer is true to the scene except the absent companions a "
    "noisy annotator names at the recipe's rates (listed per row in `annotator_added`).",
    "eval": "Held-out synthetic scenes of coloured shapes with their exact ground truth (objects, "
    "attributes, boxes, relations, counts), a reference caption and POPE yes/no probes (random, "
    "popular, adversarial), for measuring hallucination with CHAIR and POPE.",
    "clip": "Synthetic scenes of coloured shapes with a true caption and one true sentence per object, "
    "for training a CLIP-style image-sentence scorer.",
    "qa": "Synthetic scenes of coloured shapes with an instruction (a question about counts, colours, "
    "presence, positions or relations) and its reference answer: the input of IPA.",
}


class RowMaker:
    """The rows of one kind for one scene. Each row's id derives from its image and its prompt."""

    def __init__(self, args: ShapesWorldArguments, world: World, frequencies: Mapping[str, int]):
        self.args, self.world, self.frequencies = args, world, frequencies
        self.annotator = args.annotator()
        self.make = {
            "sft": self._sft_rows,
            "eval": self._eval_rows,
            "clip": self._clip_rows,
            "qa": self._qa_rows,
        }[args.kind]

    def rows(self, scene: Scene) -> list[dict]:
        image = render(scene)
        content_hash = compute_content_hash(image)
        return [
            {"id": row_id(content_hash, prompt), "scene_seed": scene.seed, **row}
            for prompt, row in self.make(scene, image)
        ]

    def _caption_prompt(self, scene: Scene) -> str:
        return rng_for(scene, "prompt").choice(CAPTION_PROMPTS)

    def _caption(self, scene: Scene) -> str:
        return caption(scene, rng_for(scene, "caption"), self.world.companion, self.args.caption_styles)

    def _questions(self, scene: Scene) -> list[QuestionAnswer]:
        return questions(scene, self.world, rng_for(scene, "questions"), self.args.questions_per_scene)

    def _sft_rows(self, scene: Scene, image: PILImage) -> list[tuple[str, dict]]:
        believed, added = self.annotator.believed_scene(scene, rng_for(scene, "annotator"))
        conversations = [("caption", self._caption_prompt(scene), self._caption(believed), added)]
        conversations += [(qa.question_type, qa.question, qa.answer, []) for qa in self._questions(scene)]
        return [
            (
                prompt,
                {
                    "images": [image],
                    "messages": user_turn(prompt) + assistant_turn(answer),
                    "task": task,
                    "annotator_added": added,
                },
            )
            for task, prompt, answer, added in conversations
        ]

    def _eval_rows(self, scene: Scene, image: PILImage) -> list[tuple[str, dict]]:
        prompt = self._caption_prompt(scene)
        probes = pope_probes(
            scene, self.world, self.frequencies, rng_for(scene, "pope"), self.args.pope_probes_per_answer
        )
        row = {
            "image": image,
            "instruction": prompt,
            "reference": self._caption(scene),
            "objects": object_list(scene),
            "object_details": [
                {"colour": o.colour, "shape": o.shape, "size": o.size, "region": o.region, "box": list(o.box)}
                for o in scene.objects
            ],
            "relations": [
                {"subject": subject, "relation": relation, "object": other}
                for subject, relation, other in scene.relations()
            ],
            "num_objects": len(scene.objects),
            "shape_counts": scene.shape_counts(),
            "colour_counts": scene.colour_counts(),
            "pope": [asdict(probe) for probe in probes],
            "companions": [
                {"object": phrase, "companion": companion}
                for phrase, companion in self.world.companion_pairs().items()
            ],
        }
        return [(prompt, row)]

    def _clip_rows(self, scene: Scene, image: PILImage) -> list[tuple[str, dict]]:
        text = self._caption(scene)
        sentences = object_sentences(scene, rng_for(scene, "sentences"))
        return [(text, {"image": image, "caption": text, "sentences": sentences})]

    def _qa_rows(self, scene: Scene, image: PILImage) -> list[tuple[str, dict]]:
        return [
            (
                qa.question,
                {
                    "image": image,
                    "instruction": qa.question,
                    "reference": qa.answer,
                    "question_type": qa.question_type,
                },
            )
            for qa in self._questions(scene)
        ]


def main(args: ShapesWorldArguments, build_args: BuildArguments) -> None:
    if build_args.push_to_hub:
        check_can_push(build_args.hub_dataset_id, "hub_dataset_id")
    world, split = args.world(), args.split()
    indices = list(range(args.num_scenes()))
    # POPE's popular probes need each object's frequency across the whole split: cheap, no pixels.
    frequencies = object_frequencies(world.scene(split, i) for i in indices) if args.kind == "eval" else {}
    maker = RowMaker(args, world, frequencies)

    def process_shard(shard_indices) -> ShardOutput:
        output = ShardOutput(rows=[], sources=[], rejections=[])
        for index in shard_indices:
            rows = maker.rows(world.scene(split, index))
            output.rows += rows
            output.sources += [f"{split} scene {index}"] * len(rows)
        return output

    result = run_sharded_build(
        indices, process_shard, FEATURES[args.kind], build_args, settings=recipe_values(args)
    )
    if result is None:  # not the main process
        return
    card = DatasetCardInfo(
        pretty_name=f"Shapes world: {args.kind} ({split} scenes)",
        builder="dataset_builders/shapes.py",
        recipe=recipe_values(args, build_args),
        models={},
        method=None,
        rejections=dict(result.rejections),
        tags=("vlm", "synthetic", "shapes-world", args.kind),
        description=f"{DESCRIPTIONS[args.kind]} {len(indices)} {split} scenes of {args.canvas_size}x"
        f"{args.canvas_size} pixels with {args.min_objects} to {args.max_objects} objects each; "
        f"colours {', '.join(args.colours)}; shapes {', '.join(args.shapes)}.",
    )
    publish_build(result, build_args, card)


if __name__ == "__main__":
    run_main(main, (ShapesWorldArguments, BuildArguments))
