"""Small preference and SFT datasets of coloured shapes, built offline for tests and the demo.

Each image holds one shape of a known colour, so the chosen answer names it correctly and the
rejected one names a wrong colour. The shapes world (`selfalign.synthetic`) replaces this with
full scenes; this stays as the smallest data that exercises the trainers and the Hub round trip.
"""

from __future__ import annotations

import random
from pathlib import Path

from datasets import Dataset, Image, List
from PIL import Image as PILImage
from PIL import ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square")
PROMPTS = ("Describe the image.", "What is in the image?", "Describe the image in detail.")


def draw_shape(colour: str, shape: str, size: tuple[int, int]) -> PILImage.Image:
    image = PILImage.new("RGB", size, (245, 245, 245))
    width, height = size
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def _examples(num_rows: int, seed: int):
    rng = random.Random(seed)
    sizes = [(48, 48), (64, 40), (40, 64)]  # several aspect ratios, for anyres tiling
    for index in range(num_rows):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        wrong = rng.choice([other for other in COLOURS if other != colour])
        image = draw_shape(colour, shape, sizes[index % len(sizes)])
        yield image, rng.choice(PROMPTS), f"There is a {colour} {shape}.", f"There is a {wrong} {shape}."


def _user_turn(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def _assistant_turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def preference_dataset(num_rows: int = 8, seed: int = 0) -> Dataset:
    """Rows in the preference-pair contract of DESIGN.md §3 (TRL's conversational vision format)."""
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []}
    for image, prompt, right, wrong in _examples(num_rows, seed):
        rows["images"].append([image])
        rows["prompt"].append(_user_turn(prompt))
        rows["chosen"].append(_assistant_turn(right))
        rows["rejected"].append(_assistant_turn(wrong))
    return Dataset.from_dict(rows).cast_column("images", List(Image()))


def sft_dataset(num_rows: int = 8, seed: int = 0) -> Dataset:
    """Rows in the SFT contract: `images` and a user/assistant `messages` conversation."""
    rows = {"images": [], "messages": []}
    for image, prompt, right, _ in _examples(num_rows, seed):
        rows["images"].append([image])
        rows["messages"].append(_user_turn(prompt) + _assistant_turn(right))
    return Dataset.from_dict(rows).cast_column("images", List(Image()))


def save_hub_layout(dataset: Dataset, folder: str | Path, split: str = "train") -> Path:
    """Write `dataset` as `data/<split>-*.parquet` so `load_dataset(folder)` reads it like a Hub repo."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder
