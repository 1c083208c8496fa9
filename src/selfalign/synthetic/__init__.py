"""The shapes world: synthetic scenes whose truth is known, so hallucination is measured exactly.

`scenes` generates and renders scenes from seeds; `language` says true things about them (captions,
questions with reference answers, POPE probes) and defines the object vocabulary and matching rule
the CHAIR/POPE metrics use. `dataset_builders/shapes.py` publishes them as datasets, configured by
`ShapesWorldArguments`.
"""

from selfalign.synthetic.arguments import ShapesWorldArguments
from selfalign.synthetic.language import (
    CAPTION_PROMPTS,
    CAPTION_STYLES,
    POPE_STRATEGIES,
    QUESTION_TYPES,
    SYNONYMS,
    Probe,
    QuestionAnswer,
    caption,
    mentioned_objects,
    object_frequencies,
    object_list,
    object_sentences,
    pope_probes,
    questions,
    rng_for,
)
from selfalign.synthetic.scenes import (
    COLOURS,
    RELATIONS,
    SCENE_SPLITS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    World,
    generate_scene,
    render,
    scene_seed,
)

__all__ = [
    "CAPTION_PROMPTS",
    "CAPTION_STYLES",
    "COLOURS",
    "POPE_STRATEGIES",
    "QUESTION_TYPES",
    "RELATIONS",
    "SCENE_SPLITS",
    "SHAPES",
    "SIZES",
    "SYNONYMS",
    "Probe",
    "QuestionAnswer",
    "Scene",
    "SceneObject",
    "ShapesWorldArguments",
    "World",
    "caption",
    "generate_scene",
    "mentioned_objects",
    "object_frequencies",
    "object_list",
    "object_sentences",
    "pope_probes",
    "questions",
    "render",
    "rng_for",
    "scene_seed",
]
