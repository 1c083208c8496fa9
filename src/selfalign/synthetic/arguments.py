"""Recipe keys of the shapes world (dataset_builders/shapes.py), parsed by `selfalign.config.parse_recipe`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from selfalign.errors import SelfAlignError
from selfalign.synthetic.annotator import NoisyAnnotator
from selfalign.synthetic.language import CAPTION_STYLES
from selfalign.synthetic.scenes import COLOURS, SHAPES, World


@dataclass
class ShapesWorldArguments:
    """Recipe keys of the shapes world and of the kind of rows to build from it."""

    kind: Literal["sft", "eval", "clip", "qa"] = field(
        default="sft",
        metadata={"help": "Rows to build: sft, eval, clip or qa (see the builder's docstring)."},
    )
    scene_split: Literal["train", "eval"] | None = field(
        default=None,
        metadata={
            "help": "Scenes to draw from: train or eval seeds. Default: eval for kind eval, else train."
        },
    )
    world_seed: int = field(
        default=0, metadata={"help": "Seed of the world: every scene seed derives from it."}
    )
    train_scenes: int = field(default=2000, metadata={"help": "Number of training scenes."})
    eval_scenes: int = field(default=200, metadata={"help": "Number of held-out evaluation scenes."})
    canvas_size: int = field(default=64, metadata={"help": "Side of the square images, in pixels."})
    min_objects: int = field(default=1, metadata={"help": "Fewest objects in a scene."})
    max_objects: int = field(default=4, metadata={"help": "Most objects in a scene (at most 9)."})
    colours: list[str] = field(
        default_factory=lambda: list(COLOURS),
        metadata={"help": f"Object colours, most common first; from: {', '.join(COLOURS)}."},
    )
    shapes: list[str] = field(
        default_factory=lambda: list(SHAPES),
        metadata={"help": f"Object shapes, most common first; from: {', '.join(SHAPES)}."},
    )
    caption_styles: list[str] = field(
        default_factory=lambda: list(CAPTION_STYLES),
        metadata={
            "help": "How captions are phrased, each caption one of these at random: there_is, image_shows, "
            "counted (one sentence naming every object), sentences (one sentence per object), relation "
            "(two objects only)."
        },
    )
    clutter: bool = field(default=True, metadata={"help": "Draw grey specks and faint lines (not objects)."})
    companions: bool = field(
        default=False,
        metadata={
            "help": "Give each object a companion: the next colour and the next shape in the lists "
            "(red circle -> green square)."
        },
    )
    companion_rate: float = field(
        default=0.0,
        metadata={
            "help": "How often a placed object's companion fills another cell of the scene (needs companions)."
        },
    )
    annotator_noise_rate: float = field(
        default=0.0,
        metadata={
            "help": "Kind sft: how often a caption also names the absent companion of a present object "
            "(the noisy annotator, selfalign.synthetic.annotator). Eval, CLIP and QA rows stay true."
        },
    )
    annotator_strong_objects: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Objects whose absent companion the annotator names at annotator_strong_noise_rate."
        },
    )
    annotator_strong_noise_rate: float = field(
        default=0.0, metadata={"help": "The noise rate of annotator_strong_objects."}
    )
    questions_per_scene: int = field(
        default=1, metadata={"help": "Question/answer rows per scene (kinds sft and qa), of distinct types."}
    )
    pope_probes_per_answer: int = field(
        default=3, metadata={"help": "Kind eval: at most this many yes and as many no probes per strategy."}
    )

    def __post_init__(self):
        counts = ("train_scenes", "eval_scenes", "questions_per_scene", "pope_probes_per_answer")
        negative = [name for name in counts if getattr(self, name) < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)} must not be negative")
        unknown = [style for style in self.caption_styles if style not in CAPTION_STYLES]
        if unknown or not set(self.caption_styles) - {"relation"}:
            raise ValueError(
                f"caption_styles must name at least one of {', '.join(CAPTION_STYLES[:-1])} (relation fits "
                f"only scenes of two objects), from: {', '.join(CAPTION_STYLES)}; got {self.caption_styles}"
            )
        try:  # the world's own checks, at parse time: a bad recipe fails before any build starts
            self.annotator()
        except SelfAlignError as error:
            raise ValueError(str(error)) from error

    def world(self) -> World:
        return World(
            seed=self.world_seed,
            canvas_size=self.canvas_size,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            colours=tuple(self.colours),
            shapes=tuple(self.shapes),
            clutter=self.clutter,
            companions=self.companions,
            companion_rate=self.companion_rate,
        )

    def annotator(self) -> NoisyAnnotator:
        return NoisyAnnotator(
            self.world(),
            noise_rate=self.annotator_noise_rate,
            strong_objects=tuple(self.annotator_strong_objects),
            strong_noise_rate=self.annotator_strong_noise_rate,
        )

    def split(self) -> str:
        return self.scene_split or ("eval" if self.kind == "eval" else "train")

    def num_scenes(self) -> int:
        return self.eval_scenes if self.split() == "eval" else self.train_scenes
