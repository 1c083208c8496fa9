"""Scenes of the shapes world: coloured shapes on a small canvas, generated from a seed, with their truth.

A scene is laid out on a 3x3 grid of cells and each object sits inside a cell of its own, at a
random offset. So objects never overlap, each lies in exactly one coarse region ("top left",
"center", ...), and "left of" / "above" between two objects follow from their cells without
borderline cases: the truth a caption or an answer is checked against is never ambiguous.

Shapes and colours are drawn from a mildly skewed prior (earlier in the world's lists is more
common), as objects are in real image sets; that is what gives POPE's "popular" probes meaning.
Optional clutter (grey specks, faint lines) is drawn under the objects and is never an object.

A world may give objects companions (`World.companions`): each "<colour> <shape>" has one, the next
colour and the next shape in the world's lists ("red circle" -> "green square"), so an object and its
companion differ in both colour and shape and a vision tower can see whether the companion is there.
With `companion_rate`, a placed object's companion fills another cell at that rate (while the
scene has cells left to fill): the co-occurrence a captioner's language prior learns.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass

from PIL import Image, ImageDraw

from selfalign.errors import SelfAlignError

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "heart", "hexagon")
SIZES = ("small", "large")
SCENE_SPLITS = ("train", "eval")

COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
}
BACKGROUND_RGB = (245, 245, 245)

GRID = 3
# Coarse region of each grid cell, by (row, column).
REGIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
# Relations from one object to another, read off their grid cells.
RELATIONS = ("left of", "right of", "above", "below")
# An object's side as a fraction of its cell's side, by size: large objects fill most of the cell.
SIZE_FRACTION = {"small": 0.5, "large": 0.85}
CELL_PADDING = 1  # pixels kept free inside each cell, so objects in neighbouring cells never touch
# Pixels are drawn at this multiple of the canvas and box-downsampled: anti-aliased edges, still fast.
SUPERSAMPLE = 4
MAX_OBJECTS = GRID * GRID
MIN_CANVAS_SIZE = 24


def scene_seed(world_seed: int, split: str, index: int) -> int:
    """The seed of scene `index` of `split` ("train" or "eval"): a hash, so the splits' seeds never meet.

    63 bits, so it fits an int64 column.
    """
    if split not in SCENE_SPLITS:
        raise SelfAlignError(f"unknown scene split '{split}'; use one of: {', '.join(SCENE_SPLITS)}")
    digest = hashlib.sha256(f"shapes-world/{world_seed}/{split}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: tuple[int, int]  # (row, column) in the 3x3 grid
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in canvas pixels, x1 and y1 exclusive

    @property
    def phrase(self) -> str:
        """The object as the metrics name it: "<colour> <shape>"."""
        return f"{self.colour} {self.shape}"

    @property
    def region(self) -> str:
        row, column = self.cell
        return REGIONS[row][column]


@dataclass(frozen=True)
class Scene:
    seed: int
    canvas_size: int
    objects: tuple[SceneObject, ...]  # in reading order of their cells
    specks: tuple[tuple[int, int, int], ...]  # (x, y, grey level)
    lines: tuple[tuple[int, int, int, int, int], ...]  # (x0, y0, x1, y1, grey level)

    def shape_counts(self) -> dict[str, int]:
        """Objects per shape, for every shape of the vocabulary (zeros included)."""
        counts = Counter(obj.shape for obj in self.objects)
        return {shape: counts[shape] for shape in SHAPES}

    def colour_counts(self) -> dict[str, int]:
        counts = Counter(obj.colour for obj in self.objects)
        return {colour: counts[colour] for colour in COLOURS}

    def relations(self) -> list[tuple[int, str, int]]:
        """Every true (subject index, relation, object index) between two objects of the scene."""
        found = []
        for i, first in enumerate(self.objects):
            for j, second in enumerate(self.objects):
                found += [(i, relation, j) for relation in relations_between(first, second)]
        return found


def relations_between(subject: SceneObject, other: SceneObject) -> list[str]:
    """The relations that hold from `subject` to `other` (none for the object itself)."""
    (row, column), (other_row, other_column) = subject.cell, other.cell
    return [
        relation
        for relation, holds in (
            ("left of", column < other_column),
            ("right of", column > other_column),
            ("above", row < other_row),
            ("below", row > other_row),
        )
        if holds
    ]


@dataclass(frozen=True)
class World:
    """What scenes can hold. The world's seed and a scene's split and index give its scene seed."""

    seed: int = 0
    canvas_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    colours: tuple[str, ...] = COLOURS
    shapes: tuple[str, ...] = SHAPES
    clutter: bool = True
    companions: bool = False
    companion_rate: float = 0.0

    def __post_init__(self):
        _check_subset("colours", self.colours, COLOURS)
        _check_subset("shapes", self.shapes, SHAPES)
        if not 0.0 <= self.companion_rate <= 1.0:
            raise SelfAlignError(f"companion_rate must be in [0, 1], got {self.companion_rate}")
        if self.companion_rate and not self.companions:
            raise SelfAlignError("companion_rate needs companions: set companions to true")
        if self.companions and (len(self.colours) < 2 or len(self.shapes) < 2):
            raise SelfAlignError("companions need at least two colours and two shapes")
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise SelfAlignError(
                f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
                f"got {self.min_objects} and {self.max_objects}"
            )
        if self.canvas_size < MIN_CANVAS_SIZE:
            raise SelfAlignError(f"canvas_size must be at least {MIN_CANVAS_SIZE}, got {self.canvas_size}")

    def object_vocabulary(self) -> tuple[str, ...]:
        """Every "<colour> <shape>" this world can draw, colour-major."""
        return tuple(f"{colour} {shape}" for colour in self.colours for shape in self.shapes)

    def scene(self, split: str, index: int) -> Scene:
        return generate_scene(self, scene_seed(self.seed, split, index))

    def companion(self, phrase: str) -> str | None:
        """The companion of "<colour> <shape>": the next colour and the next shape in the world's lists
        (cyclically); None in a world without companions."""
        if not self.companions:
            return None
        colour, shape = phrase.split()
        next_colour = self.colours[(self.colours.index(colour) + 1) % len(self.colours)]
        next_shape = self.shapes[(self.shapes.index(shape) + 1) % len(self.shapes)]
        return f"{next_colour} {next_shape}"

    def companion_pairs(self) -> dict[str, str]:
        """Every object of the vocabulary and its companion; empty without companions."""
        if not self.companions:
            return {}
        return {phrase: self.companion(phrase) for phrase in self.object_vocabulary()}


def _check_subset(name: str, chosen: tuple[str, ...], known: tuple[str, ...]) -> None:
    unknown = [word for word in chosen if word not in known]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise SelfAlignError(
            f"{name} must be distinct names from: {', '.join(known)} (got {', '.join(chosen) or 'none'})"
        )


def _prior(count: int) -> list[float]:
    """Zipf-like weights 1/sqrt(rank): the first choice is about 2.4 times as common as the sixth."""
    return [1 / math.sqrt(rank + 1) for rank in range(count)]


def generate_scene(world: World, seed: int) -> Scene:
    rng = random.Random(seed)
    count = rng.randint(world.min_objects, world.max_objects)
    cells = rng.sample([(row, column) for row in range(GRID) for column in range(GRID)], count)
    if world.companion_rate:
        objects = _place_with_companions(world, rng, cells)
    else:  # the draws of a world without co-occurrence, unchanged
        objects = tuple(place_object(world, rng, cell) for cell in sorted(cells))
    specks, lines = _clutter(world.canvas_size, rng) if world.clutter else ((), ())
    return Scene(seed, world.canvas_size, objects, specks, lines)


def _place_with_companions(world: World, rng: random.Random, cells: list) -> tuple[SceneObject, ...]:
    """Objects in the cells' random order, each one's companion in the next of them at `companion_rate`;
    returned in reading order, so the companion's position says nothing."""
    objects, companion = [], None
    for cell in cells:
        obj = place_object(world, rng, cell, phrase=companion)
        companion = world.companion(obj.phrase) if rng.random() < world.companion_rate else None
        objects.append(obj)
    return tuple(sorted(objects, key=lambda obj: obj.cell))


def _cell_bounds(canvas_size: int, index: int) -> tuple[int, int]:
    return round(canvas_size * index / GRID), round(canvas_size * (index + 1) / GRID)


def place_object(
    world: World, rng: random.Random, cell: tuple[int, int], phrase: str | None = None
) -> SceneObject:
    """An object in `cell`: `phrase` ("<colour> <shape>") if given, else drawn from the world's prior."""
    if phrase is None:
        shape = rng.choices(world.shapes, weights=_prior(len(world.shapes)))[0]
        colour = rng.choices(world.colours, weights=_prior(len(world.colours)))[0]
    else:
        colour, shape = phrase.split()
    size = rng.choice(SIZES)
    (top, bottom), (left, right) = (_cell_bounds(world.canvas_size, index) for index in cell)
    inner = min(bottom - top, right - left) - 2 * CELL_PADDING
    side = int(SIZE_FRACTION[size] * inner)
    x0 = left + CELL_PADDING + rng.randint(0, right - left - 2 * CELL_PADDING - side)
    y0 = top + CELL_PADDING + rng.randint(0, bottom - top - 2 * CELL_PADDING - side)
    return SceneObject(shape, colour, size, cell, (x0, y0, x0 + side, y0 + side))


def _clutter(canvas_size: int, rng: random.Random):
    """Grey specks and up to two faint lines: texture a model must learn not to call objects."""
    last = canvas_size - 1
    specks = tuple(
        (rng.randint(0, last), rng.randint(0, last), rng.randint(140, 200)) for _ in range(rng.randint(8, 24))
    )
    lines = tuple(
        (
            rng.randint(0, last),
            rng.randint(0, last),
            rng.randint(0, last),
            rng.randint(0, last),
            rng.randint(205, 225),
        )
        for _ in range(rng.randint(0, 2))
    )
    return specks, lines


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _regular_polygon(corners: int, radius: float, turn: float = 0.0) -> list[tuple[float, float]]:
    """Corners of a regular polygon centred in the unit square, the first one straight up (plus `turn`)."""
    return [
        (
            0.5 + radius * math.cos(-math.pi / 2 + turn + 2 * math.pi * k / corners),
            0.5 + radius * math.sin(-math.pi / 2 + turn + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def _star() -> list[tuple[float, float]]:
    outer, inner = _regular_polygon(5, 0.5), _regular_polygon(5, 0.2, turn=math.pi / 5)
    return [point for pair in zip(outer, inner, strict=True) for point in pair]


def _heart(points: int = 48) -> list[tuple[float, float]]:
    """The classic parametric heart curve, scaled into the unit square."""
    curve = [
        (
            16 * math.sin(t) ** 3,
            -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)),
        )
        for t in (2 * math.pi * k / points for k in range(points))
    ]
    xs, ys = [x for x, _ in curve], [y for _, y in curve]
    return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in curve]


# Outlines in the unit square (the circle is drawn as an ellipse).
OUTLINES = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (0.85, 0.5), (0.5, 1), (0.15, 0.5)],
    "star": _star(),
    "heart": _heart(),
    "hexagon": _regular_polygon(6, 0.5),
}


def render(scene: Scene) -> Image.Image:
    """The scene's pixels (RGB, canvas_size square); the same scene always gives the same pixels."""
    scale = SUPERSAMPLE
    image = Image.new("RGB", (scene.canvas_size * scale,) * 2, BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for x, y, grey in scene.specks:
        draw.rectangle((x * scale, y * scale, (x + 1) * scale - 1, (y + 1) * scale - 1), fill=(grey,) * 3)
    for x0, y0, x1, y1, grey in scene.lines:
        centre = scale // 2
        draw.line(
            (x0 * scale + centre, y0 * scale + centre, x1 * scale + centre, y1 * scale + centre),
            fill=(grey,) * 3,
            width=scale,
        )
    for obj in scene.objects:
        _draw_object(draw, obj, scale)
    return image.reduce(scale)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: int) -> None:
    x0, y0, x1, y1 = (coordinate * scale for coordinate in obj.box)
    # The last supersampled pixel inside the box is at x1 - 1, so the outline spans side - 1.
    width, height = x1 - 1 - x0, y1 - 1 - y0
    fill = COLOUR_RGB[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([(x0 + u * width, y0 + v * height) for u, v in OUTLINES[obj.shape]], fill=fill)
