"""The noisy annotator: SFT captions that over-trust the world's co-occurrence prior.

Real captioning data mentions things the image does not show: a GPT-written detailed caption adds a
fork beside a knife, a human caption names what is out of frame. A captioner trained on it learns
to name an object's usual companion although its vision could tell it is absent: hallucination from
a language prior, which is what CSR, EACO and IPA remove on real models.

The annotator writes a scene's caption as if it also held some absent companions. For each distinct
object of the scene whose companion (`World.companion`) is absent, it adds that companion at the
object's rate (`rate`), in a free cell, while the scene has fewer than the world's `max_objects`
(a caption counting more objects than any scene has would give it away), and captions the scene it
believes in with the world's usual templates. So an added mention takes the same phrasings, positions, counts and relations as a true
one, and nothing in the text gives it away. Everything else in the caption stays true. Only SFT
captions are annotated this way: eval scenes, CLIP rows and question answers carry the truth.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from selfalign.errors import SelfAlignError
from selfalign.synthetic.scenes import GRID, Scene, World, place_object


@dataclass(frozen=True)
class NoisyAnnotator:
    world: World
    noise_rate: float = 0.0  # the rate of naming an absent companion, for every object ...
    strong_objects: tuple[str, ...] = ()  # ... except these, whose absent companion is named at:
    strong_noise_rate: float = 0.0

    def __post_init__(self):
        for name in ("noise_rate", "strong_noise_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SelfAlignError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if (self.noise_rate or self.strong_noise_rate) and not self.world.companions:
            raise SelfAlignError("the noisy annotator names absent companions: set companions to true")
        unknown = [phrase for phrase in self.strong_objects if phrase not in self.world.object_vocabulary()]
        if unknown:
            raise SelfAlignError(f"strong objects not in this world's vocabulary: {', '.join(unknown)}")

    def rate(self, phrase: str) -> float:
        """How often a caption names the absent companion of a present `phrase`."""
        return self.strong_noise_rate if phrase in self.strong_objects else self.noise_rate

    def believed_scene(self, scene: Scene, rng: random.Random) -> tuple[Scene, list[str]]:
        """The scene with the companions the annotator adds, and those companions ("<colour> <shape>")."""
        if not self.world.companions:
            return scene, []
        present = list(dict.fromkeys(obj.phrase for obj in scene.objects))
        taken = {obj.cell for obj in scene.objects}
        free = [(row, column) for row in range(GRID) for column in range(GRID) if (row, column) not in taken]
        added, objects = [], list(scene.objects)
        for phrase in present:  # each object has its own companion: none is added twice
            companion = self.world.companion(phrase)
            if companion in present or len(objects) == self.world.max_objects:
                continue
            if rng.random() < self.rate(phrase):
                objects.append(place_object(self.world, rng, free.pop(rng.randrange(len(free))), companion))
                added.append(companion)
        if not added:
            return scene, []
        return dataclasses.replace(scene, objects=tuple(sorted(objects, key=lambda o: o.cell))), added
